//! ExecSync: run a command in a running container and return its output and exit code.
//!
//! The command runs as an exec process of the container's task, with the container's own
//! process settings (env, user, cwd, capabilities, rlimits, AppArmor/SELinux, no_new_privs)
//! taken from the OCI spec containerd stores. kubelet runs exec probes through this RPC every
//! few seconds, so two things matter most: a timeout kills the exec process only, never the
//! container; and every exec process and FIFO is cleaned up, even when kubelet gives up on the
//! request first.

use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use serde_json::Value;

use super::stored_spec;
use crate::containerd::Containerd;
use crate::cri;
use crate::error::{ctrd, Error, Result};
use crate::keys::type_url;
use crate::runtime::Runtime;
use crate::stdio::{capture, ContainerIo};
use crate::store::Phase;

/// Most stdout (and, separately, stderr) kept from one ExecSync, as containerd's CRI plugin.
pub const OUTPUT_LIMIT: usize = 16 << 20;
/// After the exec process exits, how long its output may take to reach EOF. A background
/// child that inherited stdout keeps the FIFO open; the answer must not wait for it forever.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How long a SIGKILLed exec process may take to be reaped before peapod deletes it anyway.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub async fn exec_sync(
    rt: Arc<Runtime>,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse> {
    if req.cmd.is_empty() {
        return Err(Error::invalid("ExecSync: cmd must not be empty"));
    }
    if req.timeout < 0 {
        return Err(Error::invalid(format!(
            "ExecSync: timeout {} must not be negative",
            req.timeout
        )));
    }
    let c = rt.containers.get(&req.container_id)?;
    if c.state().phase != Phase::Running {
        return Err(Error::FailedPrecondition(format!(
            "container {} is not running ({:?}); cannot exec in it",
            c.id,
            c.state().phase
        )));
    }
    let id = c.id.clone();
    // A task of its own: if kubelet cancels the RPC, the exec still runs to its end (or its
    // timeout) and is cleaned up, instead of leaking a process and FIFOs in the shim.
    tokio::spawn(async move { run(&rt, &id, req.cmd, req.timeout as u64).await })
        .await
        .map_err(|e| Error::internal(format!("exec task failed: {e}")))?
}

/// The exec process spec: the container's process with `args` replaced, no terminal.
pub fn exec_process(spec: &Value, cmd: &[String]) -> Result<Value> {
    let mut process = spec
        .get("process")
        .cloned()
        .ok_or_else(|| Error::internal("container OCI spec has no process"))?;
    let obj = process
        .as_object_mut()
        .ok_or_else(|| Error::internal("container OCI spec's process is not an object"))?;
    obj.insert("args".into(), Value::from(cmd.to_vec()));
    obj.insert("terminal".into(), Value::Bool(false));
    obj.remove("consoleSize");
    Ok(process)
}

/// Where exec processes' FIFOs live (swept at start: no exec outlives its peapod).
pub fn fifo_dir(rt: &Runtime) -> std::path::PathBuf {
    rt.config.state_dir.join("exec")
}

async fn run(
    rt: &Runtime,
    id: &str,
    cmd: Vec<String>,
    timeout_s: u64,
) -> Result<cri::ExecSyncResponse> {
    let c = &rt.ctrd;
    let base = stored_spec::exec_base(rt, id).await?;
    let process = exec_process(&base, &cmd)?;
    let process = serde_json::to_vec(&process)
        .map_err(|e| Error::internal(format!("encode exec process spec: {e}")))?;
    // containerd limits exec ids to 76 characters; 32 hex is plenty of randomness.
    let exec_id = crate::id::generate()[..32].to_string();
    let io = ContainerIo::create(&fifo_dir(rt), &exec_id, false, false)?;
    // The read ends must be open before the shim opens the write ends at exec start.
    let output = match capture(&io, OUTPUT_LIMIT) {
        Ok(cap) => cap,
        Err(e) => {
            let _ = io.remove();
            return Err(e);
        }
    };
    let paths = io.stdio_paths();
    let created = c
        .tasks()
        .exec(c.req(ExecProcessRequest {
            container_id: id.to_string(),
            stdin: String::new(),
            stdout: paths.stdout,
            stderr: paths.stderr,
            terminal: false,
            spec: Some(prost_types::Any {
                type_url: type_url::PROCESS.to_string(),
                value: process,
            }),
            exec_id: exec_id.clone(),
        }))
        .await
        .map_err(ctrd(format!("exec in container {id}")));
    if let Err(e) = created {
        let _ = io.remove();
        return Err(e);
    }
    let exit_code = match start_and_wait(c, id, &exec_id, &cmd, timeout_s).await {
        Ok(code) => code,
        Err(e) => {
            delete_process(c, id, &exec_id).await;
            let _ = io.remove();
            return Err(e);
        }
    };
    // Drain before deleting the process: the shim finishes copying output into the FIFOs
    // only while someone reads them.
    let out = match tokio::time::timeout(DRAIN_LIMIT, output.wait()).await {
        Ok(out) => out,
        Err(_) => {
            tracing::warn!(container = id, exec = %exec_id,
                "exec output still open {}s after the command exited (a background child holds it); returning without it",
                DRAIN_LIMIT.as_secs());
            Default::default()
        }
    };
    delete_process(c, id, &exec_id).await;
    if let Err(e) = io.remove() {
        tracing::warn!(container = id, error = %e, "removing exec fifos failed");
    }
    if out.truncated {
        tracing::debug!(
            container = id,
            "exec output truncated to {OUTPUT_LIMIT} bytes"
        );
    }
    Ok(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code,
    })
}

/// Starts the exec process and waits for its exit code; on timeout kills it (only it).
async fn start_and_wait(
    c: &Containerd,
    id: &str,
    exec_id: &str,
    cmd: &[String],
    timeout_s: u64,
) -> Result<i32> {
    c.tasks()
        .start(c.req(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }))
        .await
        .map_err(ctrd(format!("start exec {exec_id} in container {id}")))?;
    if timeout_s == 0 {
        return wait_exec(c, id, exec_id).await;
    }
    match tokio::time::timeout(Duration::from_secs(timeout_s), wait_exec(c, id, exec_id)).await {
        Ok(r) => r,
        Err(_) => {
            kill_exec(c, id, exec_id).await;
            if tokio::time::timeout(KILL_WAIT, wait_exec(c, id, exec_id))
                .await
                .is_err()
            {
                tracing::warn!(
                    container = id,
                    exec = exec_id,
                    "exec process not reaped after SIGKILL"
                );
            }
            Err(Error::DeadlineExceeded(format!(
                "command {cmd:?} in container {id} timed out after {timeout_s}s"
            )))
        }
    }
}

/// Waits for the exec process's exit code. A broken Wait stream (containerd restarting)
/// falls back to polling the process status.
pub async fn wait_exec(c: &Containerd, id: &str, exec_id: &str) -> Result<i32> {
    loop {
        let w = c
            .tasks()
            .wait(c.req(WaitRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        match w {
            Ok(r) => return Ok(r.into_inner().exit_status as i32),
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(ctrd(format!("wait for exec {exec_id} in container {id}"))(
                    s,
                ))
            }
            Err(s) => tracing::debug!(exec = exec_id, error = %s, "exec wait broke; polling"),
        }
        let got = c
            .tasks()
            .get(c.req(GetRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        match got {
            Ok(r) => {
                if let Some(p) = r.into_inner().process {
                    if TaskStatus::try_from(p.status) == Ok(TaskStatus::Stopped) {
                        return Ok(p.exit_status as i32);
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(ctrd(format!("exec {exec_id} in container {id}"))(s))
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn kill_exec(c: &Containerd, id: &str, exec_id: &str) {
    let r = c
        .tasks()
        .kill(c.req(KillRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal: libc::SIGKILL as u32,
            all: false,
        }))
        .await;
    if let Err(s) = r {
        if s.code() != tonic::Code::NotFound {
            tracing::warn!(container = id, exec = exec_id, error = %s, "killing timed-out exec failed");
        }
    }
}

pub async fn delete_process(c: &Containerd, id: &str, exec_id: &str) {
    let r = c
        .tasks()
        .delete_process(c.req(DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }))
        .await;
    if let Err(s) = r {
        if s.code() != tonic::Code::NotFound {
            tracing::warn!(container = id, exec = exec_id, error = %s, "deleting exec process failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_process_keeps_the_container_process_but_args_and_terminal() {
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": true,
                "consoleSize": {"height": 24, "width": 80},
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
                "args": ["sleep", "infinity"],
                "env": ["PATH=/bin", "FOO=bar"],
                "cwd": "/work",
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]},
                "noNewPrivileges": true,
                "apparmorProfile": "cri-containerd.apparmor.d",
                "oomScoreAdj": 5
            },
            "root": {"path": "rootfs"}
        });
        let p = exec_process(&spec, &["echo".into(), "hi".into()]).unwrap();
        assert_eq!(p["args"], serde_json::json!(["echo", "hi"]));
        assert_eq!(p["terminal"], Value::Bool(false));
        assert!(p.get("consoleSize").is_none());
        for k in [
            "user",
            "env",
            "cwd",
            "capabilities",
            "noNewPrivileges",
            "apparmorProfile",
            "oomScoreAdj",
        ] {
            assert_eq!(p[k], spec["process"][k], "{k}");
        }
    }

    #[test]
    fn exec_process_needs_a_process() {
        let e = exec_process(&serde_json::json!({"root": {}}), &["true".into()]).unwrap_err();
        assert!(matches!(e, Error::Internal(_)));
        let e = exec_process(&serde_json::json!({"process": 1}), &["true".into()]).unwrap_err();
        assert!(matches!(e, Error::Internal(_)));
    }
}
