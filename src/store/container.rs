//! What peapod knows of each workload container: the in-memory index served to
//! List/Status, and the status containerd cannot keep, persisted per container.

use std::collections::HashMap;
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
    /// The `cgroupsPath` written into the container's spec (None: runc places it).
    #[serde(default)]
    pub cgroups_path: Option<String>,
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
    /// RemoveContainer has answered: what containerd still holds of the container is being
    /// deleted, and a restarted peapod finishes that instead of recovering the container.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
}

pub struct Container {
    pub id: String,
    /// Reserved name `name_sandboxname_namespace_uid_attempt`.
    pub name: String,
    pub config: cri::ContainerConfig,
    pub meta: ContainerMeta,
    state_path: PathBuf,
    /// What List and Status read: held only to copy or swap the state, never across a write.
    state: Mutex<ContainerState>,
    /// Serialises the writers of the state file, so the file always ends with the latest
    /// state; the state file's fsync happens under this lock, not under `state`.
    writer: Mutex<()>,
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
    /// The process of the container's OCI spec as `{"process": ...}`, kept after the first
    /// exec so later ones (kubelet's exec probes, every few seconds) skip containerd's
    /// Containers.Get and the parse of the whole spec. Nothing changes the process after
    /// create (UpdateContainerResources changes `linux.resources` only).
    pub exec_base: std::sync::OnceLock<Arc<serde_json::Value>>,
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
            writer: Mutex::new(()),
            op: tokio::sync::Mutex::new(()),
            log: Mutex::new(None),
            stdin: tokio::sync::Mutex::new(None),
            changed: tokio::sync::Notify::new(),
            exec_base: std::sync::OnceLock::new(),
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, ContainerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> ContainerState {
        self.lock_state().clone()
    }

    /// The phase alone, without copying the rest of the state.
    pub fn phase(&self) -> Phase {
        self.lock_state().phase
    }

    /// Changes the state, persisting it before anyone can observe the change. Readers keep
    /// seeing the previous state while the file is written.
    pub fn update(&self, f: impl FnOnce(&mut ContainerState)) -> Result<ContainerState> {
        let _w = self.lock_writer();
        let mut next = self.state();
        f(&mut next);
        write_json_atomic(&self.state_path, &next)?;
        *self.lock_state() = next.clone();
        self.changed.notify_waiters();
        Ok(next)
    }

    /// Changes the state in memory at once, then persists it. The change stands even when
    /// persisting fails (a full disk, a read-only state directory): it is what happened, and
    /// a container left RUNNING in memory after its exit wedges every later Stop and Remove.
    /// The write error is returned for the caller to retry with [`Container::persist`].
    pub fn apply(&self, f: impl FnOnce(&mut ContainerState)) -> (ContainerState, Result<()>) {
        let _w = self.lock_writer();
        let next = {
            let mut g = self.lock_state();
            f(&mut g);
            g.clone()
        };
        self.changed.notify_waiters();
        let written = write_json_atomic(&self.state_path, &next);
        (next, written)
    }

    /// Writes the current state (a retry after [`Container::apply`] could not).
    pub fn persist(&self) -> Result<()> {
        let _w = self.lock_writer();
        let now = self.state();
        write_json_atomic(&self.state_path, &now)
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
        match self.phase() {
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

/// The in-memory index of workload containers, and the removals still under way in the
/// background (RemoveContainer answers once the removal is recorded).
#[derive(Default)]
pub struct Containers {
    index: Index<Container>,
    removals: Arc<Mutex<HashMap<String, Removal>>>,
}

struct Removal {
    sandbox_id: String,
    done: tokio::sync::watch::Receiver<bool>,
}

/// Held by a background removal; dropping it marks the removal finished.
pub struct RemovalUnderWay {
    id: String,
    done: tokio::sync::watch::Sender<bool>,
    removals: Arc<Mutex<HashMap<String, Removal>>>,
}

impl Drop for RemovalUnderWay {
    fn drop(&mut self) {
        self.removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        let _ = self.done.send(true);
    }
}

impl std::ops::Deref for Containers {
    type Target = Index<Container>;
    fn deref(&self) -> &Self::Target {
        &self.index
    }
}

impl Containers {
    /// Records that container `id` of `sandbox_id` is being removed in the background.
    pub fn removal_started(&self, id: &str, sandbox_id: &str) -> RemovalUnderWay {
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.to_string(),
                Removal {
                    sandbox_id: sandbox_id.to_string(),
                    done: rx,
                },
            );
        RemovalUnderWay {
            id: id.to_string(),
            done: tx,
            removals: self.removals.clone(),
        }
    }

    /// Waits until no removal of a container of `sandbox_id` is under way, at most `limit`.
    /// True when none is left.
    pub async fn removals_settled(&self, sandbox_id: &str, limit: std::time::Duration) -> bool {
        let pending: Vec<tokio::sync::watch::Receiver<bool>> = self
            .removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| r.sandbox_id == sandbox_id)
            .map(|r| r.done.clone())
            .collect();
        let all = futures::future::join_all(pending.into_iter().map(|mut rx| async move {
            // A dropped sender also means done.
            let _ = rx.wait_for(|d| *d).await;
        }));
        tokio::time::timeout(limit, all).await.is_ok()
    }

    pub fn in_sandbox(&self, sandbox_id: &str) -> Vec<Arc<Container>> {
        self.all()
            .into_iter()
            .filter(|c| c.meta.sandbox_id == sandbox_id)
            .collect()
    }

    pub fn list(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        // Filtered before anything is copied out of the records.
        let mut out: Vec<cri::Container> = self
            .all()
            .iter()
            .filter(|c| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty()
                            || c.meta.sandbox_id.starts_with(&f.pod_sandbox_id))
                        && f.state
                            .as_ref()
                            .map(|s| s.state == c.cri_state() as i32)
                            .unwrap_or(true)
                        && labels_match(&c.config.labels, &f.label_selector)
                }
            })
            .map(|c| c.to_cri())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn container(dir: &Path) -> Container {
        Container::new(
            "ab".repeat(32),
            "n".into(),
            Default::default(),
            ContainerMeta::default(),
            dir,
            ContainerState::default(),
        )
    }

    #[test]
    fn readers_do_not_wait_for_a_state_write() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(container(dir.path()));
        // A writer in the middle of writing the file holds the writer lock.
        let _writing = c.lock_writer();
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || (c.phase(), c.to_cri().state, c.status().state))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !reader.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "List/Status blocked behind a state write"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (phase, _, _) = reader.join().unwrap();
        assert_eq!(phase, Phase::Created);
    }

    #[test]
    fn an_update_is_seen_only_once_written_and_not_at_all_when_the_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let c = container(dir.path());
        c.update(|s| s.phase = Phase::Running).unwrap();
        let on_disk: ContainerState = super::super::files::read_json(c.state_path())
            .unwrap()
            .unwrap();
        assert_eq!(on_disk.phase, Phase::Running);
        // The state directory becomes a file: every write now fails.
        std::fs::remove_dir_all(dir.path().join("containers")).unwrap();
        std::fs::write(dir.path().join("containers"), "").unwrap();
        assert!(c.update(|s| s.phase = Phase::Exited).is_err());
        assert_eq!(c.phase(), Phase::Running, "a failed write changes nothing");
        // apply keeps the change in memory and reports the failed write.
        let (st, written) = c.apply(|s| s.phase = Phase::Exited);
        assert_eq!(st.phase, Phase::Exited);
        assert!(written.is_err());
        assert_eq!(c.phase(), Phase::Exited);
        assert!(!st.removing, "not removing unless RemoveContainer says so");
    }
}
