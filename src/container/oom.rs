//! OOM kills as containerd reports them. The runc shim watches each task's memory cgroup
//! (cgroup v1 and v2 alike) and publishes `/tasks/oom` when the kernel's OOM killer acts in
//! it; peapod marks the container, so its exit is reported as `OOMKilled`.
//!
//! The exit monitor also reads the cgroup's own `oom_kill` counter when the container exits
//! ([`super::monitor::record_exit`]); the event covers what the counter cannot see (a cgroup
//! that could not be located), and the counter what the event cannot (an event published
//! while peapod was down, or one that trails the exit).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::runtime::Runtime;
use crate::store::Phase;

/// containerd's topic for OOM events (`runtime.TaskOOMEventTopic`).
pub const TOPIC: &str = "/tasks/oom";
/// A reason a late OOM event replaces: the exit was recorded before the event arrived.
const REPLACEABLE: [&str; 2] = ["Error", "Completed"];

/// Follows containerd's OOM events for as long as peapod runs, subscribing again whenever
/// containerd goes away and comes back.
pub fn watch(rt: Arc<Runtime>) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match rt.ctrd.subscribe(TOPIC).await {
                Ok(mut events) => {
                    delay = Duration::from_millis(200);
                    tracing::debug!("following containerd's OOM events");
                    loop {
                        match events.message().await {
                            Ok(Some(env)) => {
                                let Some(any) = env.event else { continue };
                                match containerd_client::events::TaskOom::decode(
                                    any.value.as_slice(),
                                ) {
                                    Ok(ev) => mark(&rt, &ev.container_id),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "undecodable TaskOOM event")
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(s) => {
                                tracing::debug!(error = %s, "containerd's event stream broke");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot subscribe to OOM events yet"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}

/// Records that the kernel OOM-killed a process of container `id` (if it is one of
/// peapod's workload containers; sandboxes and other clients' containers are ignored).
pub fn mark(rt: &Runtime, id: &str) {
    let Ok(c) = rt.containers.get(id) else {
        return;
    };
    // `get` takes prefixes; an event names one task exactly.
    if c.id != id {
        return;
    }
    let res = c.update(|s| {
        s.oom_killed = true;
        if s.phase == Phase::Exited && REPLACEABLE.contains(&s.reason.as_str()) {
            s.reason = super::monitor::OOM_KILLED.to_string();
        }
    });
    match res {
        Ok(st) => {
            tracing::info!(container = %c.id, phase = ?st.phase, "container hit its memory limit (OOM kill)")
        }
        Err(e) => tracing::error!(container = %c.id, error = %e, "cannot record an OOM kill"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Container, ContainerMeta, ContainerState};

    fn runtime(dir: &std::path::Path) -> Runtime {
        Runtime::new(crate::config::Config {
            state_dir: dir.to_path_buf(),
            containerd_socket: dir.join("absent.sock"),
            ..Default::default()
        })
    }

    fn container(rt: &Runtime, dir: &std::path::Path, id: &str, st: ContainerState) {
        rt.containers.insert(Arc::new(Container::new(
            id.to_string(),
            "n".into(),
            Default::default(),
            ContainerMeta::default(),
            dir,
            st,
        )));
    }

    #[tokio::test]
    async fn an_oom_event_marks_the_container_and_its_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let running = "ab".repeat(32);
        container(
            &rt,
            dir.path(),
            &running,
            ContainerState {
                phase: Phase::Running,
                ..Default::default()
            },
        );
        mark(&rt, &running);
        let c = rt.containers.get(&running).unwrap();
        assert!(c.state().oom_killed);
        let on_disk: ContainerState = crate::store::read_json(c.state_path()).unwrap().unwrap();
        assert!(on_disk.oom_killed, "the mark survives a restart");
        assert_eq!(c.state().phase, Phase::Running, "an event is not an exit");
    }

    #[tokio::test]
    async fn a_late_event_turns_an_error_exit_into_oomkilled() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let exited = "cd".repeat(32);
        container(
            &rt,
            dir.path(),
            &exited,
            ContainerState {
                phase: Phase::Exited,
                exit_code: 137,
                reason: "Error".into(),
                ..Default::default()
            },
        );
        mark(&rt, &exited);
        assert_eq!(
            rt.containers.get(&exited).unwrap().state().reason,
            "OOMKilled"
        );
    }

    #[tokio::test]
    async fn events_for_other_tasks_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let id = "ef".repeat(32);
        container(&rt, dir.path(), &id, ContainerState::default());
        // A prefix of ours (another client's task with a short id), and a stranger.
        mark(&rt, "ef");
        mark(&rt, &"01".repeat(32));
        assert!(!rt.containers.get(&id).unwrap().state().oom_killed);
    }
}
