//! Watching a running container until it exits, recording how it ended, and the container
//! events every transition emits.

use std::sync::Arc;
use std::time::Duration;

use super::stored_spec;
use crate::cgroup::Cgroup;
use crate::cri;
use crate::runtime::Runtime;
use crate::store::{Container, Phase};
use crate::task;

/// How long the exit path waits for the log writer to reach EOF on its own before cutting
/// it off: output still buffered in the pipes is written either way, but a grandchild that
/// kept the container's stdout open must not keep the container "running" for ever.
const LOG_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Exit code of a container that failed to start (containerd's CRI uses the same).
pub const START_ERROR_EXIT_CODE: i32 = 128;
/// Exit code recorded when the real one is lost.
pub const UNKNOWN_EXIT_CODE: i32 = 255;
/// The exit code of a process killed by SIGKILL, as the OOM killer does.
const SIGKILL_EXIT_CODE: i32 = 128 + libc::SIGKILL;
/// How long an exit by SIGKILL whose cgroup could not be read waits for containerd's OOM
/// event (the shim publishes it within milliseconds of the kill).
const OOM_EVENT_GRACE: Duration = Duration::from_secs(1);
/// The longest wait between retries of a state write that failed.
const PERSIST_RETRY_MAX: Duration = Duration::from_secs(10);
/// The CRI reason of a container the kernel OOM-killed.
pub const OOM_KILLED: &str = "OOMKilled";

/// Sends a container event with the container's and its sandbox's current status.
/// Nobody listening is fine.
pub fn emit(rt: &Runtime, c: &Container, kind: cri::ContainerEventType) {
    let pod_sandbox_status = rt
        .sandboxes
        .get(&c.meta.sandbox_id)
        .ok()
        .and_then(|sb| sb.status().status);
    let _ = rt.events.send(cri::ContainerEventResponse {
        container_id: c.id.clone(),
        container_event_type: kind as i32,
        created_at: task::now_ns(),
        pod_sandbox_status,
        containers_statuses: vec![c.status()],
    });
}

/// Spawns the task that waits for the container's task to exit and records the exit.
pub fn spawn(rt: Arc<Runtime>, c: Arc<Container>) {
    tokio::spawn(async move {
        let exit = task::wait(&rt.ctrd, &c.id).await;
        record_exit(&rt, &c, exit).await;
    });
}

/// Records a task's exit: OOM or not (the cgroup's counter is read before the task and its
/// cgroup are deleted), lets the log writer finish, marks the container EXITED (so whoever
/// sees EXITED also sees the complete log and the OOM mark), emits STOPPED, and only then
/// deletes the task so the shim frees its resources: until the exit is persisted,
/// containerd's stopped task is the only record of the real exit status, which recovery
/// reads if peapod dies in between.
pub async fn record_exit(rt: &Arc<Runtime>, c: &Arc<Container>, exit: task::Exit) {
    let code = exit.code as i32;
    let oom_kills = c.state().cgroup.and_then(|cg| cg.oom_kills());
    if oom_kills.is_none() && code == SIGKILL_EXIT_CODE && !c.state().oom_killed {
        // No counter to read: containerd's OOM event is all there is, and it may trail the
        // exit by the time the shim takes to publish it.
        wait_for_oom_event(c, OOM_EVENT_GRACE).await;
    }
    crate::timed!("m.finishlog", finish_log(c).await);
    c.stdin.lock().await.take();
    remove_fifos(rt, &c.id);
    let at = if exit.at_ns == 0 {
        task::now_ns()
    } else {
        exit.at_ns
    };
    let (st, written) = c.apply(|s| {
        // Decided under the state lock: an OOM event recorded meanwhile is not lost.
        s.oom_killed |= oom_kills.is_some_and(|n| n > 0);
        s.phase = Phase::Exited;
        s.exit_code = code;
        s.finished_at = at;
        s.reason = if s.oom_killed {
            OOM_KILLED
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string();
    });
    tracing::info!(container = %c.id, code, reason = %st.reason, "container exited");
    emit(rt, c, cri::ContainerEventType::ContainerStoppedEvent);
    match written {
        Ok(()) => delete_exited_task(rt, c).await,
        Err(e) => {
            // The exit stands in memory; containerd's stopped task keeps the real status for
            // a restarted peapod until the record is on disk, so the task stays until then.
            tracing::error!(container = %c.id, error = %e, "cannot persist the container's exit; retrying");
            rt.unpersisted.note(&c.id, &e.to_string());
            tokio::spawn(persist_exit_later(rt.clone(), c.clone()));
        }
    }
}

async fn delete_exited_task(rt: &Runtime, c: &Container) {
    if let Err(e) = crate::timed!("m.taskdel", task::delete(&rt.ctrd, &c.id).await) {
        tracing::warn!(container = %c.id, error = %e, "delete exited task");
    }
}

/// Records that the container ended without a real exit to report (its start failed, or it
/// vanished while peapod was down): EXITED now with `code`, `reason` and `message`, its stdin
/// closed and its stdio FIFOs removed.
pub async fn record_lost_exit(
    rt: &Runtime,
    c: &Container,
    code: i32,
    reason: &str,
    message: String,
) -> crate::error::Result<()> {
    c.stdin.lock().await.take();
    remove_fifos(rt, &c.id);
    c.update(|s| {
        s.phase = Phase::Exited;
        s.exit_code = code;
        s.finished_at = task::now_ns();
        s.reason = reason.to_string();
        s.message = message;
    })
    .map(|_| ())
}

/// Retries writing an exit that could not be persisted, with backoff, until it is written
/// or the container is removed; then deletes the exited task.
async fn persist_exit_later(rt: Arc<Runtime>, c: Arc<Container>) {
    let mut delay = Duration::from_millis(500);
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(PERSIST_RETRY_MAX);
        if rt.containers.get(&c.id).is_err() {
            rt.unpersisted.clear(&c.id);
            return;
        }
        match c.persist() {
            Ok(()) => {
                tracing::info!(container = %c.id, "container exit persisted after a failed write");
                rt.unpersisted.clear(&c.id);
                delete_exited_task(&rt, &c).await;
                return;
            }
            Err(e) => rt.unpersisted.note(&c.id, &e.to_string()),
        }
    }
}

/// Waits until an OOM event marks the container, at most `limit`.
async fn wait_for_oom_event(c: &Container, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = c.changed.notified();
        tokio::pin!(notified);
        // Registered before the check, so a mark between the check and the wait is seen.
        notified.as_mut().enable();
        if c.state().oom_killed {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

/// Waits (bounded) for the log writer to drain, then cuts it off.
pub async fn finish_log(c: &Container) {
    let log = c.log.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(log) = log {
        if tokio::time::timeout(LOG_DRAIN_LIMIT, log.closed())
            .await
            .is_err()
        {
            tracing::debug!(container = %c.id, "stdout still open after the exit; closing the log");
            log.force_close();
            let _ = tokio::time::timeout(LOG_DRAIN_LIMIT, log.closed()).await;
        }
    }
}

pub fn remove_fifos(rt: &Runtime, id: &str) {
    for s in ["stdin", "stdout", "stderr"] {
        let p = rt.fifo_dir().join(format!("{id}-{s}"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(fifo = %p.display(), error = %e, "remove fifo"),
        }
    }
}

/// Where a just-started (or recovered running) container's cgroup is: the `cgroupsPath` its
/// spec in containerd gave runc, else its process's own. None if neither can be found.
pub async fn locate_cgroup(rt: &Runtime, id: &str, pid: u32) -> Option<Cgroup> {
    let spec_path = match stored_spec::cgroups_path(&rt.ctrd, id).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(container = id, error = %e, "no stored spec to locate the cgroup");
            None
        }
    };
    let cg = Cgroup::of_container(spec_path.as_deref(), pid);
    if cg.is_none() {
        // Typically a container without a cgroupsPath that exited at once: its cgroup went
        // with its process, and containerd's OOM event is what remains.
        tracing::debug!(
            container = id,
            pid,
            ?spec_path,
            "cannot locate the container's cgroup"
        );
    }
    cg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ContainerMeta, ContainerState};

    #[tokio::test]
    async fn events_carry_the_container_status() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            state_dir: dir.path().to_path_buf(),
            containerd_socket: dir.path().join("absent.sock"),
            ..Default::default()
        };
        let rt = Runtime::new(config);
        let mut rx = rt.events.subscribe();
        let c = Container::new(
            "ab".repeat(32),
            "n".into(),
            cri::ContainerConfig::default(),
            ContainerMeta {
                sandbox_id: "cd".repeat(32),
                ..Default::default()
            },
            dir.path(),
            ContainerState {
                phase: Phase::Exited,
                exit_code: 3,
                ..Default::default()
            },
        );
        emit(&rt, &c, cri::ContainerEventType::ContainerStoppedEvent);
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.container_id, c.id);
        assert_eq!(
            ev.container_event_type,
            cri::ContainerEventType::ContainerStoppedEvent as i32
        );
        assert!(ev.created_at > 0);
        // The sandbox is unknown here: no sandbox status, but the container's own.
        assert!(ev.pod_sandbox_status.is_none());
        assert_eq!(ev.containers_statuses.len(), 1);
        assert_eq!(ev.containers_statuses[0].exit_code, 3);
        assert_eq!(
            ev.containers_statuses[0].state,
            cri::ContainerState::ContainerExited as i32
        );
    }
}
