//! What peapod knows of each workload container: the in-memory index served to
//! List/Status, and the status containerd cannot keep, persisted per container.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::files::write_json_atomic;
use super::index::{labels_match, Index, Indexed};
use crate::cri;
use crate::error::Result;

/// Fixed at create, stored in containerd with the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerMeta {
    pub sandbox_id: String,
    /// The image as the request named it (kubelet shows it back).
    pub image: String,
    /// The resolved image: id (config digest) and a repo digest reference if known.
    pub image_id: String,
    pub image_ref: String,
    /// Absolute log path (sandbox log_directory joined with the config's log_path); empty = none.
    pub log_path: String,
    /// The sandbox's log_directory: the log file is opened inside it and never outside.
    #[serde(default)]
    pub log_directory: String,
    pub created_at: i64,
    /// The image's STOPSIGNAL, recorded at create (the CRI stop_signal wins when set).
    pub image_stop_signal: String,
    /// uid, gid and supplemental groups of the container's first process.
    #[serde(default)]
    pub user: Option<ContainerUserIds>,
}

impl ContainerMeta {
    /// Where the log writer writes: `log_path` inside `log_directory` (records written before
    /// `log_directory` was kept: inside the log file's own directory).
    pub fn log_target(&self) -> crate::stdio::log::LogTarget {
        let full = PathBuf::from(&self.log_path);
        match full.strip_prefix(&self.log_directory) {
            Ok(rel) if !self.log_directory.is_empty() => crate::stdio::log::LogTarget {
                root: PathBuf::from(&self.log_directory),
                rel: rel.to_path_buf(),
            },
            _ => full.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerUserIds {
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Created,
    Running,
    Exited,
    Unknown,
}

/// Status that changes, written atomically to `<state_dir>/containers/<id>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub phase: Phase,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    /// Completed, Error, OOMKilled, or a start failure reason.
    pub reason: String,
    pub message: String,
    pub pid: u32,
    /// The graceful stop signal has been sent; repeated stops do not send it again.
    pub stop_signal_sent: bool,
    /// Resources as changed by UpdateContainerResources (hex of the protobuf
    /// LinuxContainerResources); None while the create-time ones apply.
    #[serde(default)]
    pub updated_resources: Option<String>,
    /// Where the running task's cgroup is, located once at start from the `cgroupsPath` in
    /// the container's spec (or its process when the spec leaves placement to runc): exit
    /// monitoring reads the OOM counter there and stats the usage, even after a restart.
    #[serde(default)]
    pub cgroup: Option<crate::cgroup::Cgroup>,
    /// The kernel OOM-killed a process of the container (containerd's `/tasks/oom` event or
    /// the cgroup's counter): its exit is reported as OOMKilled.
    #[serde(default)]
    pub oom_killed: bool,
}

pub struct Container {
    pub id: String,
    /// Reserved name `name_sandboxname_namespace_uid_attempt`.
    pub name: String,
    pub config: cri::ContainerConfig,
    pub meta: ContainerMeta,
    state_path: PathBuf,
    state: Mutex<ContainerState>,
    /// Serialises start/stop/remove of this container.
    pub op: tokio::sync::Mutex<()>,
    /// The log writer while the container's stdio is attached (shared so ReopenContainerLog
    /// can use it without holding the lock across an await).
    pub log: Mutex<Option<Arc<crate::stdio::log::LogHandle>>>,
    /// The write end of the container's stdin FIFO while it is open (containers created with
    /// `stdin: true`): attached clients write here; `None` once closed (`stdin_once`) or exited.
    pub stdin: tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>,
    /// Notified whenever the state changes (exit observers wait on it).
    pub changed: tokio::sync::Notify,
}

impl Container {
    pub fn new(
        id: String,
        name: String,
        config: cri::ContainerConfig,
        meta: ContainerMeta,
        state_dir: &Path,
        state: ContainerState,
    ) -> Self {
        Container {
            state_path: state_file(state_dir, &id),
            id,
            name,
            config,
            meta,
            state: Mutex::new(state),
            op: tokio::sync::Mutex::new(()),
            log: Mutex::new(None),
            stdin: tokio::sync::Mutex::new(None),
            changed: tokio::sync::Notify::new(),
        }
    }

    pub fn state(&self) -> ContainerState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the state, persisting it before anyone can observe the change.
    pub fn update(&self, f: impl FnOnce(&mut ContainerState)) -> Result<ContainerState> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = g.clone();
        f(&mut next);
        write_json_atomic(&self.state_path, &next)?;
        *g = next.clone();
        drop(g);
        self.changed.notify_waiters();
        Ok(next)
    }

    /// Changes the state in memory at once, then persists it. The change stands even when
    /// persisting fails (a full disk, a read-only state directory): it is what happened, and
    /// a container left RUNNING in memory after its exit wedges every later Stop and Remove.
    /// The write error is returned for the caller to retry with [`Container::persist`].
    pub fn apply(&self, f: impl FnOnce(&mut ContainerState)) -> (ContainerState, Result<()>) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
        let next = g.clone();
        let written = write_json_atomic(&self.state_path, &next);
        drop(g);
        self.changed.notify_waiters();
        (next, written)
    }

    /// Writes the current state (a retry after [`Container::apply`] could not).
    pub fn persist(&self) -> Result<()> {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        write_json_atomic(&self.state_path, &*g)
    }

    /// The resources in force: the last update's, else the create request's.
    pub fn resources(&self) -> Option<cri::LinuxContainerResources> {
        use prost::Message;
        let updated = self
            .state()
            .updated_resources
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| cri::LinuxContainerResources::decode(b.as_slice()).ok());
        updated.or_else(|| self.config.linux.as_ref().and_then(|l| l.resources.clone()))
    }

    /// Records an applied UpdateContainerResources: fields the request left unset keep
    /// their value, as the cgroup update does.
    pub fn record_resources_update(&self, req: &cri::LinuxContainerResources) -> Result<()> {
        use prost::Message;
        let mut cur = self.resources().unwrap_or_default();
        merge_resources(&mut cur, req);
        let encoded = hex::encode(cur.encode_to_vec());
        self.update(|s| s.updated_resources = Some(encoded))
            .map(|_| ())
    }

    /// The signal a graceful stop sends ([`crate::signal::stop_signal`]).
    pub fn stop_signal(&self) -> Result<u32> {
        crate::signal::stop_signal(self.config.stop_signal, &self.meta.image_stop_signal)
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    pub fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    pub fn cri_state(&self) -> cri::ContainerState {
        match self.state().phase {
            Phase::Created => cri::ContainerState::ContainerCreated,
            Phase::Running => cri::ContainerState::ContainerRunning,
            Phase::Exited => cri::ContainerState::ContainerExited,
            Phase::Unknown => cri::ContainerState::ContainerUnknown,
        }
    }

    pub fn to_cri(&self) -> cri::Container {
        cri::Container {
            id: self.id.clone(),
            pod_sandbox_id: self.meta.sandbox_id.clone(),
            metadata: Some(self.metadata()),
            image: Some(cri::ImageSpec {
                image: self.meta.image.clone(),
                ..Default::default()
            }),
            image_ref: self.meta.image_ref.clone(),
            state: self.cri_state() as i32,
            created_at: self.meta.created_at,
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            image_id: self.meta.image_id.clone(),
        }
    }

    pub fn status(&self) -> cri::ContainerStatus {
        let st = self.state();
        cri::ContainerStatus {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state() as i32,
            created_at: self.meta.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            exit_code: st.exit_code,
            image: Some(cri::ImageSpec {
                image: self.meta.image.clone(),
                ..Default::default()
            }),
            image_ref: self.meta.image_ref.clone(),
            reason: st.reason.clone(),
            message: st.message.clone(),
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            mounts: self.config.mounts.clone(),
            log_path: self.meta.log_path.clone(),
            resources: self.resources().map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
            image_id: self.meta.image_id.clone(),
            user: self.meta.user.as_ref().map(|u| cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: i64::from(u.uid),
                    gid: i64::from(u.gid),
                    supplemental_groups: u
                        .supplemental_groups
                        .iter()
                        .map(|&g| i64::from(g))
                        .collect(),
                }),
            }),
            stop_signal: self
                .stop_signal()
                .map(crate::signal::cri_signal_value)
                .unwrap_or(0),
        }
    }
}

fn merge_resources(cur: &mut cri::LinuxContainerResources, req: &cri::LinuxContainerResources) {
    macro_rules! nonzero {
        ($($f:ident),*) => {$( if req.$f != 0 { cur.$f = req.$f; } )*};
    }
    nonzero!(
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes,
        oom_score_adj,
        memory_swap_limit_in_bytes
    );
    if !req.cpuset_cpus.is_empty() {
        cur.cpuset_cpus = req.cpuset_cpus.clone();
    }
    if !req.cpuset_mems.is_empty() {
        cur.cpuset_mems = req.cpuset_mems.clone();
    }
    if !req.hugepage_limits.is_empty() {
        cur.hugepage_limits = req.hugepage_limits.clone();
    }
    if !req.unified.is_empty() {
        cur.unified = req.unified.clone();
    }
}

pub fn state_file(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("containers").join(format!("{id}.json"))
}

impl Indexed for Container {
    const KIND: &'static str = "container";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The in-memory index of workload containers.
#[derive(Default)]
pub struct Containers(Index<Container>);

impl std::ops::Deref for Containers {
    type Target = Index<Container>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Containers {
    pub fn in_sandbox(&self, sandbox_id: &str) -> Vec<Arc<Container>> {
        self.all()
            .into_iter()
            .filter(|c| c.meta.sandbox_id == sandbox_id)
            .collect()
    }

    pub fn list(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        let mut out: Vec<cri::Container> = self
            .all()
            .iter()
            .map(|c| c.to_cri())
            .filter(|c| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty()
                            || c.pod_sandbox_id.starts_with(&f.pod_sandbox_id))
                        && f.state.as_ref().map(|s| s.state == c.state).unwrap_or(true)
                        && labels_match(&c.labels, &f.label_selector)
                }
            })
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }
}

/// kubelet's container name: `name_sandboxname_namespace_uid_attempt`.
pub fn reserved_name(c: &cri::ContainerMetadata, pod: &cri::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}_{}",
        c.name, pod.name, pod.namespace, pod.uid, c.attempt
    )
}
