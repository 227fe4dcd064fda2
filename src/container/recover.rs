//! Rebuilding the container index after a peapod restart: containerd holds the containers
//! (config and meta in extensions), the state files hold what containerd cannot, and the
//! tasks say what happened while peapod was down.

use std::collections::HashSet;
use std::sync::Arc;

use containerd_client::services::v1::ListContainersRequest;
use prost::Message;

use super::io::ContainerIo;
use super::lifecycle::LABEL_NAME;
use super::record::{state_file, EXT_CONTAINER_CONFIG, EXT_CONTAINER_META, KIND_CONTAINER};
use super::{logs, monitor, Container, ContainerMeta, ContainerState, Phase};
use crate::cri;
use crate::error::{ctrd, Result};
use crate::runtime::Runtime;
use crate::sandbox::LABEL_KIND;
use crate::{id, store, task};

pub async fn recover(rt: &Arc<Runtime>) -> Result<()> {
    let list = rt
        .ctrd
        .containers()
        .list(rt.ctrd.req(ListContainersRequest {
            filters: vec![format!("labels.\"{LABEL_KIND}\"=={KIND_CONTAINER}")],
        }))
        .await
        .map_err(ctrd("list workload containers"))?
        .into_inner()
        .containers;
    let mut known = HashSet::new();
    for ctr in list {
        let id = ctr.id.clone();
        known.insert(id.clone());
        let config = ctr
            .extensions
            .get(EXT_CONTAINER_CONFIG)
            .map(|a| cri::ContainerConfig::decode(a.value.as_slice()));
        let meta = ctr
            .extensions
            .get(EXT_CONTAINER_META)
            .map(|a| serde_json::from_slice::<ContainerMeta>(&a.value));
        let (Some(Ok(config)), Some(Ok(meta))) = (config, meta) else {
            tracing::warn!(container = %id, "containerd container lacks a readable config or meta; skipping");
            continue;
        };
        let name = ctr.labels.get(LABEL_NAME).cloned().unwrap_or_default();
        let state: ContainerState = store::read_json(&state_file(&rt.config.state_dir, &id))
            .unwrap_or_else(|e| {
                tracing::warn!(container = %id, error = %e, "unreadable container state");
                None
            })
            .unwrap_or_default();
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
        if let Err(e) = reconcile(rt, &c).await {
            tracing::warn!(container = %id, error = %e, "cannot reconcile container with its task");
        }
        if !name.is_empty() {
            rt.names.restore(&name, &id);
        }
        rt.containers.insert(c.clone());
        tracing::info!(container = %id, phase = ?c.state().phase, "recovered container");
    }
    // Views a crashed CreateContainer left mounted.
    super::rootfs::clean_views(&super::lifecycle::rootfs_views_dir(rt));
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
async fn reconcile(rt: &Arc<Runtime>, c: &Arc<Container>) -> Result<()> {
    let phase = c.state().phase;
    let task_state = task::state(&rt.ctrd, &c.id).await?;
    match task_state.clone() {
        task::State::Created { .. } => {
            // peapod died between task create and start: the start is not trusted.
            task::kill_and_delete(&rt.ctrd, &c.id, std::time::Duration::from_secs(10)).await?;
            monitor::remove_fifos(rt, &c.id);
            c.update(|s| {
                s.phase = Phase::Exited;
                s.exit_code = monitor::START_ERROR_EXIT_CODE;
                s.finished_at = task::now_ns();
                s.reason = "StartError".into();
                s.message = "peapod restarted while the container was starting".into();
            })?;
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
                monitor::remove_fifos(rt, &c.id);
                c.update(|s| {
                    s.phase = Phase::Exited;
                    s.exit_code = monitor::UNKNOWN_EXIT_CODE;
                    s.finished_at = task::now_ns();
                    s.reason = "Unknown".into();
                    s.message = "container exited while peapod was down".into();
                })?;
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
