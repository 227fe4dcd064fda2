//! Watching a running container until it exits, recording how it ended, and the container
//! events every transition emits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::container::{Container, Phase};
use crate::cri;
use crate::runtime::Runtime;
use crate::task;

/// How long the exit path waits for the log writer to reach EOF on its own before cutting
/// it off: output still buffered in the pipes is written either way, but a grandchild that
/// kept the container's stdout open must not keep the container "running" for ever.
const LOG_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Exit code of a container that failed to start (containerd's CRI uses the same).
pub const START_ERROR_EXIT_CODE: i32 = 128;
/// Exit code recorded when the real one is lost.
pub const UNKNOWN_EXIT_CODE: i32 = 255;

/// Sends a container event with the container's and its sandbox's current status.
/// Nobody listening is fine.
pub fn emit(rt: &Runtime, c: &Container, kind: cri::ContainerEventType) {
    let pod_sandbox_status = rt
        .sandboxes
        .get(&c.meta.sandbox_id)
        .ok()
        .and_then(|sb| sb.status(false).status);
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

/// Records a task's exit: OOM or not (read before the task and its cgroup are deleted),
/// lets the log writer finish, marks the container EXITED (so whoever sees EXITED also sees
/// the complete log), emits STOPPED, and only then deletes the task so the shim frees its
/// resources: until the exit is persisted, containerd's stopped task is the only record of
/// the real exit status, which recovery reads if peapod dies in between.
pub async fn record_exit(rt: &Runtime, c: &Container, exit: task::Exit) {
    let oom = oom_killed(rt, c);
    finish_log(c).await;
    c.stdin.lock().await.take();
    remove_fifos(rt, &c.id);
    let code = exit.code as i32;
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let at = if exit.at_ns == 0 {
        task::now_ns()
    } else {
        exit.at_ns
    };
    let res = c.update(|s| {
        s.phase = Phase::Exited;
        s.exit_code = code;
        s.finished_at = at;
        s.reason = reason.to_string();
    });
    if let Err(e) = res {
        tracing::error!(container = %c.id, error = %e, "cannot record container exit");
        return;
    }
    tracing::info!(container = %c.id, code, reason, "container exited");
    emit(rt, c, cri::ContainerEventType::ContainerStoppedEvent);
    if let Err(e) = task::delete(&rt.ctrd, &c.id).await {
        tracing::warn!(container = %c.id, error = %e, "delete exited task");
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

/// True when the kernel OOM-killed a process in the container's memory cgroup: the
/// `oom_kill` counter of `memory.oom_control` (cgroup v1) or `memory.events` (v2).
/// The cgroup exists until the task is deleted, so this is read before that.
fn oom_killed(rt: &Runtime, c: &Container) -> bool {
    let Some(dir) = memory_cgroup_dir(rt, c) else {
        return false;
    };
    ["memory.oom_control", "memory.events"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .any(|text| oom_kill_count(&text) > 0)
}

fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|v| v.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// The container's memory cgroup directory, from the same cgroups path its spec got.
fn memory_cgroup_dir(rt: &Runtime, c: &Container) -> Option<PathBuf> {
    let parent = rt
        .sandboxes
        .get(&c.meta.sandbox_id)
        .ok()
        .map(|sb| sb.cgroup_parent())
        .unwrap_or_default();
    let path = crate::spec::container::cgroups_path(rt.host.cgroup_driver, &parent, &c.id)?;
    let rel = match rt.host.cgroup_driver {
        cri::CgroupDriver::Systemd => systemd_cgroup_dir(&path.to_string_lossy())?,
        cri::CgroupDriver::Cgroupfs => path,
    };
    let rel = rel.strip_prefix("/").unwrap_or(&rel).to_path_buf();
    let v1 = PathBuf::from("/sys/fs/cgroup/memory").join(&rel);
    if v1.is_dir() {
        return Some(v1);
    }
    Some(PathBuf::from("/sys/fs/cgroup").join(rel))
}

/// `slice:prefix:name` as runc's systemd driver lays it out: `a-b.slice` nests under
/// `a.slice`, the unit is `<prefix>-<name>.scope`.
fn systemd_cgroup_dir(path: &str) -> Option<PathBuf> {
    let mut parts = path.splitn(3, ':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    let mut dir = PathBuf::from("/");
    if slice != "-.slice" && !slice.is_empty() {
        let base = slice.strip_suffix(".slice")?;
        let mut acc = String::new();
        for part in base.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            dir.push(format!("{acc}.slice"));
        }
    }
    dir.push(format!("{prefix}-{name}.scope"));
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{ContainerMeta, ContainerState};

    #[tokio::test]
    async fn events_carry_the_container_status() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            state_dir: dir.path().to_path_buf(),
            containerd_socket: dir.path().join("absent.sock"),
            ..Default::default()
        };
        let rt = Runtime::new(config).unwrap();
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

    #[test]
    fn oom_kill_counter_is_read_from_v1_and_v2_files() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
            1
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn systemd_paths_nest_slices() {
        assert_eq!(
            systemd_cgroup_dir("kubepods-besteffort-pod1.slice:cri-peapod:abc").unwrap(),
            PathBuf::from(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-peapod-abc.scope"
            )
        );
    }
}
