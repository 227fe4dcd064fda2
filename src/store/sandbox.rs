//! What peapod knows of each pod sandbox: the in-memory index served to List/Status, and the
//! state containerd cannot keep, persisted per sandbox.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::files::write_json_atomic;
use super::index::{labels_match, Index, Indexed};
use crate::cri;
use crate::error::Result;

/// What peapod remembers of a sandbox beyond containerd, written atomically to
/// `<state_dir>/sandboxes/<id>/state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SandboxState {
    pub ready: bool,
    pub created_at: i64,
    /// Pinned network namespace, None for host network (or once removed).
    pub netns_path: Option<PathBuf>,
    pub ips: Vec<String>,
    /// The pause process.
    pub pid: u32,
    /// CNI was attached and not yet torn down.
    pub network_attached: bool,
}

pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    /// `<state_dir>/sandboxes/<id>`: state file, hostname, hosts, resolv.conf, shm.
    pub dir: PathBuf,
    /// What List and Status read: held only to copy or swap the state, never across a write.
    state: Mutex<SandboxState>,
    /// Serialises the writers of the state file (whose fsync happens under this lock, not
    /// under `state`).
    writer: Mutex<()>,
    /// Serialises stop/remove of one sandbox.
    pub op: tokio::sync::Mutex<()>,
}

impl Sandbox {
    pub fn new(
        id: String,
        name: String,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
        dir: PathBuf,
        state: SandboxState,
    ) -> Self {
        Sandbox {
            id,
            name,
            config,
            runtime_handler,
            dir,
            state: Mutex::new(state),
            writer: Mutex::new(()),
            op: tokio::sync::Mutex::new(()),
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, SandboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> SandboxState {
        self.lock_state().clone()
    }

    /// Changes the state and persists it before anyone can observe the change. Readers keep
    /// seeing the previous state while the file is written.
    pub fn update(&self, f: impl FnOnce(&mut SandboxState)) -> Result<()> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.state();
        f(&mut next);
        if self.dir.exists() {
            write_json_atomic(&state_file(&self.dir), &next)?;
        }
        *self.lock_state() = next;
        Ok(())
    }

    pub fn namespace_options(&self) -> cri::NamespaceOption {
        self.config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default()
    }
    pub fn host_network(&self) -> bool {
        self.namespace_options().network == cri::NamespaceMode::Node as i32
    }
    pub fn host_ipc(&self) -> bool {
        self.namespace_options().ipc == cri::NamespaceMode::Node as i32
    }
    /// POD: containers share the pause container's PID namespace; NODE: the host's.
    pub fn pid_mode(&self) -> cri::NamespaceMode {
        cri::NamespaceMode::try_from(self.namespace_options().pid)
            .unwrap_or(cri::NamespaceMode::Container)
    }
    pub fn pid(&self) -> u32 {
        self.lock_state().pid
    }
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.state().netns_path
    }
    pub fn cgroup_parent(&self) -> String {
        self.config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default()
    }
    pub fn hostname_path(&self) -> PathBuf {
        self.dir.join("hostname")
    }
    pub fn hosts_path(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn resolv_conf_path(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    /// The pod's /dev/shm: its own tmpfs, or the host's with host IPC.
    pub fn shm_path(&self) -> PathBuf {
        if self.host_ipc() {
            PathBuf::from("/dev/shm")
        } else {
            self.dir.join("shm")
        }
    }
    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }
    pub fn is_ready(&self) -> bool {
        self.lock_state().ready
    }

    fn created_at(&self) -> i64 {
        self.lock_state().created_at
    }

    pub fn to_cri(&self) -> cri::PodSandbox {
        cri::PodSandbox {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: cri_state(self.is_ready()) as i32,
            created_at: self.created_at(),
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            runtime_handler: self.runtime_handler.clone(),
        }
    }

    /// The status without verbose info (`sandbox::inspect` adds that).
    pub fn status(&self) -> cri::PodSandboxStatusResponse {
        let st = self.state();
        let mut ips = st.ips.iter();
        let network = cri::PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        };
        let status = cri::PodSandboxStatus {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: cri_state(st.ready) as i32,
            created_at: st.created_at,
            network: Some(network),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(self.namespace_options()),
                }),
            }),
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            runtime_handler: self.runtime_handler.clone(),
        };
        cri::PodSandboxStatusResponse {
            status: Some(status),
            info: Default::default(),
            containers_statuses: vec![],
            timestamp: 0,
        }
    }
}

fn cri_state(ready: bool) -> cri::PodSandboxState {
    if ready {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

impl Indexed for Sandbox {
    const KIND: &'static str = "pod sandbox";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The in-memory index of sandboxes.
#[derive(Default)]
pub struct Sandboxes(Index<Sandbox>);

impl std::ops::Deref for Sandboxes {
    type Target = Index<Sandbox>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Sandboxes {
    pub fn list(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        // Filtered before anything is copied out of the records.
        let mut out: Vec<cri::PodSandbox> = self
            .all()
            .iter()
            .filter(|s| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || s.id.starts_with(&f.id))
                        && f.state
                            .as_ref()
                            .map(|st| st.state == cri_state(s.is_ready()) as i32)
                            .unwrap_or(true)
                        && labels_match(&s.config.labels, &f.label_selector)
                }
            })
            .map(|s| s.to_cri())
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }
}

/// The name kubelet's metadata reserves: `name_namespace_uid_attempt`.
pub fn reserved_name(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}
