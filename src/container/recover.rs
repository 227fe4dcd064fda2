//! Rebuilding the container index after a peapod restart: containerd holds the containers
//! (config and meta in extensions), the state files hold what containerd cannot, and the
//! tasks say what happened while peapod was down.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;

use super::monitor;
use crate::cri;
use crate::error::Result;
use crate::keys::{extension, label};
use crate::runtime::Runtime;
use crate::stdio::{log as logs, ContainerIo};
use crate::store::container::state_file;
use crate::store::{Container, ContainerMeta, ContainerState, Phase};
use crate::{id, store, task};

pub async fn recover(rt: &Arc<Runtime>) -> Result<()> {
    let list = rt.ctrd.list_containers(label::KIND_CONTAINER).await?;
    let ids = list.iter().map(|c| c.id.clone()).collect();
    let mut task_states = task::settled_states(&rt.ctrd, ids, task::SETTLE_LIMIT).await;
    let mut known = HashSet::new();
    for ctr in list {
        let id = ctr.id.clone();
        known.insert(id.clone());
        let config = ctr
            .extensions
            .get(extension::CONTAINER_CONFIG)
            .map(|a| cri::ContainerConfig::decode(a.value.as_slice()));
        let meta = ctr
            .extensions
            .get(extension::CONTAINER_META)
            .map(|a| serde_json::from_slice::<ContainerMeta>(&a.value));
        let (Some(Ok(config)), Some(Ok(meta))) = (config, meta) else {
            tracing::warn!(container = %id, "containerd container lacks a readable config or meta; skipping");
            continue;
        };
        let name = ctr.labels.get(label::NAME).cloned().unwrap_or_default();
        let state: ContainerState = store::read_json(&state_file(&rt.config.state_dir, &id))
            .unwrap_or_else(|e| {
                tracing::warn!(container = %id, error = %e, "unreadable container state");
                None
            })
            .unwrap_or_default();
        if state.removing {
            // RemoveContainer answered, and peapod stopped before containerd's objects were
            // gone: the container stays out of the index, and the removal is finished before
            // peapod serves (so CRI and containerd agree from the first List); only while
            // containerd refuses is it left to a background retry (RemovePodSandbox waits).
            let path = state_file(&rt.config.state_dir, &id);
            if super::lifecycle::finish_removal_once(rt, &id, &meta, &path)
                .await
                .is_err()
            {
                let under_way = rt.containers.removal_started(&id, &meta.sandbox_id);
                let rt = rt.clone();
                tokio::spawn(async move {
                    super::lifecycle::finish_removal(&rt, &id, &meta, &path).await;
                    drop(under_way);
                });
            }
            continue;
        }
        let c = Arc::new(Container::new(
            id.clone(),
            name.clone(),
            config,
            meta,
            &rt.config.state_dir,
            state,
        ));
        // One container containerd cannot settle must not keep peapod from serving the rest
        // (containerd being down fails the listing above, and recovery retries).
        let task_state = task_states
            .remove(&id)
            .unwrap_or_else(|| Ok(task::State::Absent));
        if let Err(e) = reconcile(rt, &c, task_state).await {
            tracing::warn!(container = %id, error = %e, "cannot reconcile container with its task");
        }
        if !name.is_empty() {
            rt.names.restore(&name, &id);
        }
        rt.containers.insert(c.clone());
        tracing::info!(container = %id, phase = ?c.state().phase, "recovered container");
    }
    // Views a crashed CreateContainer left mounted.
    super::rootfs::clean_views(&super::rootfs::views_dir(rt));
    // State files without a containerd container: a create that crashed before making it.
    if let Ok(rd) = std::fs::read_dir(rt.config.state_dir.join("containers")) {
        for e in rd.flatten() {
            let file = e.file_name().to_string_lossy().to_string();
            let Some(id) = file.strip_suffix(".json") else {
                continue;
            };
            if !known.contains(id) && id::is_valid_ref(id) {
                let _ = std::fs::remove_file(e.path());
                let _ = rt.ctrd.remove_snapshot(&rt.config.snapshotter, id).await;
                let _ = rt.ctrd.delete_lease(id).await;
                monitor::remove_fifos(rt, id);
                tracing::info!(container = %id, "removed leftovers of an unfinished container");
            }
        }
    }
    Ok(())
}

/// Brings the recorded state in line with the task.
async fn reconcile(
    rt: &Arc<Runtime>,
    c: &Arc<Container>,
    task_state: Result<task::State>,
) -> Result<()> {
    let phase = c.state().phase;
    let task_state = task_state?;
    match task_state.clone() {
        task::State::Created { .. } => {
            // peapod died between task create and start: the start is not trusted.
            task::kill_and_delete(&rt.ctrd, &c.id, std::time::Duration::from_secs(10)).await?;
            monitor::record_lost_exit(
                rt,
                c,
                monitor::START_ERROR_EXIT_CODE,
                "StartError",
                "peapod restarted while the container was starting".into(),
            )
            .await?;
        }
        task::State::Running { .. } | task::State::Other(_) => {
            let pid = match task_state {
                task::State::Running { pid } => pid,
                _ => c.state().pid,
            };
            // Located at start; a start peapod did not get to record is located now.
            let cgroup = match c.state().cgroup {
                Some(cg) => Some(cg),
                None => monitor::locate_cgroup(rt, &c.id, pid).await,
            };
            // A start that peapod did not get to record still counts as started.
            c.update(|s| {
                s.phase = Phase::Running;
                s.pid = pid;
                if s.started_at == 0 {
                    s.started_at = task::now_ns();
                }
                s.cgroup = cgroup;
            })?;
            reattach_log(rt, c);
            monitor::spawn(rt.clone(), c.clone());
        }
        task::State::Stopped(exit) => {
            // Exited while peapod was down: containerd kept the task, with the real status.
            if phase == Phase::Running || phase == Phase::Created {
                monitor::record_exit(rt, c, exit).await;
            } else {
                task::delete(&rt.ctrd, &c.id).await?;
            }
        }
        task::State::Absent => {
            if phase == Phase::Running {
                monitor::record_lost_exit(
                    rt,
                    c,
                    monitor::UNKNOWN_EXIT_CODE,
                    "Unknown",
                    "container exited while peapod was down".into(),
                )
                .await?;
            } else {
                c.update(|_| {})?;
            }
        }
    }
    Ok(())
}

/// Re-opens the FIFOs of a running task so its output keeps reaching the log. If the task
/// exits before the shim sees our reader, the exit monitor cuts the writer off.
fn reattach_log(rt: &Runtime, c: &Container) {
    let tty = c.config.tty;
    let attached = ContainerIo::reopen_existing(&rt.fifo_dir(), &c.id, false, tty)
        .and_then(|io| logs::spawn_log_writer(&io, c.meta.log_target(), tty));
    match attached {
        Ok(h) => *c.log.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(h)),
        Err(e) => {
            tracing::warn!(container = %c.id, error = %e, "cannot re-attach the container's log")
        }
    }
    // The shim holds its own write end of stdin, so the container did not see EOF while
    // peapod was away; take the FIFO up again for attached clients.
    if c.config.stdin {
        let stdin = ContainerIo::reopen_existing(&rt.fifo_dir(), &c.id, true, tty)
            .and_then(|io| io.open_stdin());
        match stdin {
            Ok(tx) => {
                if let Ok(mut g) = c.stdin.try_lock() {
                    *g = tx;
                }
            }
            Err(e) => {
                tracing::warn!(container = %c.id, error = %e, "cannot re-open the container's stdin")
            }
        }
    }
}
