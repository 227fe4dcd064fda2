//! containerd task operations shared by pause and workload containers: create/start, kill,
//! waiting for an exit that never depends on one stream, and idempotent delete.

use std::time::Duration;

use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::Mount;

use crate::containerd::Containerd;
use crate::error::{ctrd, Error, Result};

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    /// Unix nanoseconds; 0 when containerd did not say.
    pub at_ns: i64,
}

/// What containerd says of a task right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No task exists for the container.
    Absent,
    Created {
        pid: u32,
    },
    Running {
        pid: u32,
    },
    Stopped(Exit),
    Other(i32),
}

pub struct TaskIo<'a> {
    pub stdin: &'a str,
    pub stdout: &'a str,
    pub stderr: &'a str,
    pub terminal: bool,
}

pub const NO_IO: TaskIo<'static> = TaskIo {
    stdin: "",
    stdout: "",
    stderr: "",
    terminal: false,
};

pub async fn create(c: &Containerd, id: &str, rootfs: Vec<Mount>, io: TaskIo<'_>) -> Result<u32> {
    let resp = c
        .tasks()
        .create(c.req(CreateTaskRequest {
            container_id: id.to_string(),
            rootfs,
            stdin: io.stdin.to_string(),
            stdout: io.stdout.to_string(),
            stderr: io.stderr.to_string(),
            terminal: io.terminal,
            checkpoint: None,
            options: None,
            runtime_path: String::new(),
        }))
        .await
        .map_err(ctrd(format!("create task {id}")))?;
    Ok(resp.into_inner().pid)
}

pub async fn start(c: &Containerd, id: &str) -> Result<u32> {
    let resp = c
        .tasks()
        .start(c.req(StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await
        .map_err(ctrd(format!("start task {id}")))?;
    Ok(resp.into_inner().pid)
}

/// Sends `signal` to the task's init process (and all its processes with `all`).
/// A task that is gone or already stopped is not an error.
pub async fn kill(c: &Containerd, id: &str, signal: u32, all: bool) -> Result<()> {
    match c
        .tasks()
        .kill(c.req(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal,
            all,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) if s.message().contains("process already finished") => Ok(()),
        Err(s) => Err(ctrd(format!("kill task {id}"))(s)),
    }
}

pub async fn state(c: &Containerd, id: &str) -> Result<State> {
    match c
        .tasks()
        .get(c.req(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(r) => {
            let Some(p) = r.into_inner().process else {
                return Ok(State::Absent);
            };
            Ok(match TaskStatus::try_from(p.status) {
                Ok(TaskStatus::Created) => State::Created { pid: p.pid },
                Ok(TaskStatus::Running) | Ok(TaskStatus::Paused) | Ok(TaskStatus::Pausing) => {
                    State::Running { pid: p.pid }
                }
                Ok(TaskStatus::Stopped) => State::Stopped(Exit {
                    code: p.exit_status,
                    at_ns: p.exited_at.map(ts_ns).unwrap_or(0),
                }),
                _ => State::Other(p.status),
            })
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok(State::Absent),
        Err(s) => Err(ctrd(format!("get task {id}"))(s)),
    }
}

/// How long recovery asks again while containerd answers UNKNOWN for a task.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// containerd answers UNKNOWN (pid 0) when the shim misses its 2 s state timeout: a busy
/// shim (a grouped pod's shim in the middle of a kill or delete, a loaded node) or one a
/// cut-off request left wedged. One answer decides nothing, so this asks again until the
/// answer is definite or `limit` has passed; then UNKNOWN stands and the caller decides.
pub async fn settled_state(c: &Containerd, id: &str, limit: Duration) -> Result<State> {
    let start = tokio::time::Instant::now();
    loop {
        let st = state(c, id).await?;
        if !matches!(st, State::Other(_)) || start.elapsed() >= limit {
            return Ok(st);
        }
        tracing::debug!(task = id, "task state UNKNOWN; asking again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// [`settled_state`] of many tasks at once (at most `SETTLE_CONCURRENCY` in flight), so
/// one busy shim does not hold up the answers for all the others.
pub async fn settled_states(
    c: &Containerd,
    ids: Vec<String>,
    limit: Duration,
) -> std::collections::HashMap<String, Result<State>> {
    use futures::StreamExt;
    futures::stream::iter(ids)
        .map(|id| async move {
            let st = settled_state(c, &id, limit).await;
            (id, st)
        })
        .buffer_unordered(SETTLE_CONCURRENCY)
        .collect()
        .await
}

const SETTLE_CONCURRENCY: usize = 16;

/// Waits for the task to exit. The Wait stream can break (containerd restarting, shim
/// connection lost); then the task's status is polled instead, so a stop never hangs on
/// one lost notification. A task that vanished counts as exited with code 255 (unknown).
pub async fn wait(c: &Containerd, id: &str) -> Exit {
    loop {
        let w = c
            .tasks()
            .wait(c.req(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await;
        match w {
            Ok(r) => {
                let r = r.into_inner();
                return Exit {
                    code: r.exit_status,
                    at_ns: r.exited_at.map(ts_ns).unwrap_or_else(now_ns),
                };
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Exit {
                    code: 255,
                    at_ns: now_ns(),
                }
            }
            Err(s) => {
                tracing::debug!(task = id, error = %s, "task wait broke; polling its status");
            }
        }
        match state(c, id).await {
            Ok(State::Stopped(e)) => {
                return Exit {
                    at_ns: if e.at_ns == 0 { now_ns() } else { e.at_ns },
                    ..e
                }
            }
            Ok(State::Absent) => {
                return Exit {
                    code: 255,
                    at_ns: now_ns(),
                }
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Deletes the task (it must have exited); absent is fine. Returns the exit if known.
pub async fn delete(c: &Containerd, id: &str) -> Result<Option<Exit>> {
    match c
        .tasks()
        .delete(c.req(DeleteTaskRequest {
            container_id: id.to_string(),
        }))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            Ok(Some(Exit {
                code: r.exit_status,
                at_ns: r.exited_at.map(ts_ns).unwrap_or(0),
            }))
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        // A concurrent delete of the same task (the exit monitor's, say) can win, and the
        // shim then exits under this one ("ttrpc: closed"): if the task is gone, so be it.
        Err(s) => match state(c, id).await {
            Ok(State::Absent) => Ok(None),
            _ => Err(ctrd(format!("delete task {id}"))(s)),
        },
    }
}

/// SIGKILLs the task, waits up to `limit` for it to exit, and deletes it.
pub async fn kill_and_delete(c: &Containerd, id: &str, limit: Duration) -> Result<()> {
    match state(c, id).await? {
        State::Absent => return Ok(()),
        State::Stopped(_) => {}
        _ => {
            kill(c, id, libc::SIGKILL as u32, true).await?;
            if tokio::time::timeout(limit, wait(c, id)).await.is_err() {
                return Err(Error::DeadlineExceeded(format!(
                    "task {id} did not exit within {}s of SIGKILL",
                    limit.as_secs()
                )));
            }
        }
    }
    delete(c, id).await.map(|_| ())
}

pub fn ts_ns(t: prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.nanos))
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub fn ns_to_ts(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}
