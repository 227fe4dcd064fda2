//! The Exec back-end: a process in the container's task, its stdio streamed to the client.
//!
//! The process is set up as ExecSync's (`container::exec`: the container's env, user, cwd and
//! security settings from the stored OCI spec), plus a terminal when the request has `tty`
//! (with `TERM=xterm`, as containerd adds). Its stdio are FIFOs under the exec FIFO directory.
//! Like containerd's, the process runs to its own end even if the client goes away (its stdin
//! then closes), and its exit is its own: the container is never touched.

use std::sync::Arc;

use bytes::Bytes;
use containerd_client::services::v1::{
    CloseIoRequest, ExecProcessRequest, ResizePtyRequest, StartRequest,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::session::{Session, TermSize};
use super::status::Outcome;
use crate::container::exec::{delete_process, exec_process, fifo_dir, wait_exec, DRAIN_LIMIT};
use crate::container::stored_spec;
use crate::containerd::Containerd;
use crate::cri;
use crate::error::{ctrd, Error, Result};
use crate::keys::type_url;
use crate::runtime::Runtime;
use crate::stdio::ContainerIo;

/// Runs the cached request's command and reports how it ended.
pub async fn run(rt: Arc<Runtime>, req: cri::ExecRequest, session: Session) -> Outcome {
    // A task of its own, so the exec is followed to its end (and cleaned up) whatever happens
    // to the connection that started it.
    let id = req.container_id.clone();
    match tokio::spawn(async move { exec(&rt, req, session).await }).await {
        Ok(Ok(code)) => Outcome::Exited(code),
        Ok(Err(e)) => {
            tracing::warn!(container = %id, error = %e, "exec failed");
            Outcome::Failed(format!("error executing command in container: {e}"))
        }
        Err(e) => Outcome::Failed(format!("error executing command in container: {e}")),
    }
}

/// The exec process spec: the container's process, `cmd`, and a terminal if asked.
pub fn process_spec(spec: &Value, cmd: &[String], tty: bool) -> Result<Value> {
    let mut p = exec_process(spec, cmd)?;
    if tty {
        p["terminal"] = Value::Bool(true);
        let env = p
            .as_object_mut()
            .ok_or_else(|| Error::internal("exec process spec is not an object"))?
            .entry("env")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = env.as_array_mut() {
            let has_term = list
                .iter()
                .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")));
            if !has_term {
                list.push(Value::from("TERM=xterm"));
            }
        }
    }
    Ok(p)
}

async fn exec(rt: &Runtime, req: cri::ExecRequest, mut s: Session) -> Result<u32> {
    let c = &rt.ctrd;
    let id = req.container_id.as_str();
    let base = stored_spec::exec_base(rt, id).await?;
    let process = serde_json::to_vec(&process_spec(&base, &req.cmd, req.tty)?)
        .map_err(|e| Error::internal(format!("encode exec process spec: {e}")))?;
    // containerd limits exec ids to 76 characters; 32 hex is plenty of randomness.
    let exec_id = crate::id::generate()[..32].to_string();
    let io = ContainerIo::create(&fifo_dir(rt), &exec_id, req.stdin, req.tty)?;
    let result = run_process(c, id, &exec_id, &io, process, req.tty, &mut s).await;
    // The process has exited (or never started): the client's answer need not wait for the
    // clean-up, which is idempotent (an exec that was never created is simply not found).
    let (c, id) = (c.clone(), id.to_string());
    tokio::spawn(async move {
        delete_process(&c, &id, &exec_id).await;
        if let Err(e) = io.remove() {
            tracing::warn!(container = %id, error = %e, "removing exec fifos failed");
        }
    });
    result
}

async fn run_process(
    c: &Containerd,
    id: &str,
    exec_id: &str,
    io: &ContainerIo,
    process: Vec<u8>,
    tty: bool,
    s: &mut Session,
) -> Result<u32> {
    // Read ends open before the shim opens the write ends; stdin's write end before it reads.
    let stdout = io.open_stdout()?;
    let stderr = io.open_stderr()?;
    let stdin = io.open_stdin()?;
    let paths = io.stdio_paths();
    c.tasks()
        .exec(c.req(ExecProcessRequest {
            container_id: id.to_string(),
            stdin: paths.stdin,
            stdout: paths.stdout,
            stderr: paths.stderr,
            terminal: tty,
            spec: Some(prost_types::Any {
                type_url: type_url::PROCESS.to_string(),
                value: process,
            }),
            exec_id: exec_id.to_string(),
        }))
        .await
        .map_err(ctrd(format!("exec in container {id}")))?;

    let mut outputs = vec![tokio::spawn(copy_output(stdout, s.stdout.take()))];
    if let Some(rx) = stderr {
        outputs.push(tokio::spawn(copy_output(rx, s.stderr.take())));
    }
    // Without a terminal there is no stderr FIFO to carry it; the sender just closes.
    s.stderr.take();

    let started = c
        .tasks()
        .start(c.req(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }))
        .await
        .map_err(ctrd(format!("start exec {exec_id} in container {id}")));
    if let Err(e) = started {
        for o in &outputs {
            o.abort();
        }
        return Err(e);
    }
    let input = match (s.stdin.take(), stdin) {
        (Some(rx), Some(tx)) => Some(tokio::spawn(copy_input(
            c.clone(),
            id.to_string(),
            exec_id.to_string(),
            rx,
            tx,
        ))),
        _ => None,
    };
    let resizes = s.resize.take().map(|rx| {
        tokio::spawn(apply_resizes(
            c.clone(),
            id.to_string(),
            exec_id.to_string(),
            rx,
        ))
    });

    let code = wait_exec(c, id, exec_id).await;
    // The output ends when the shim closes the FIFOs; a background child that inherited them
    // must not hold the client forever.
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        for o in &mut outputs {
            let _ = o.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            container = id,
            exec = exec_id,
            "exec output still open after its exit"
        );
    }
    for h in outputs {
        h.abort();
    }
    if let Some(h) = input {
        h.abort();
    }
    if let Some(h) = resizes {
        h.abort();
    }
    Ok(code? as u32)
}

/// FIFO → client; without a client stream the output is still read, so the process never
/// blocks on a full pipe.
async fn copy_output(mut fifo: pipe::Receiver, to: Option<mpsc::Sender<Bytes>>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut to = to;
    loop {
        match fifo.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if let Some(tx) = &to {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        to = None;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "reading exec output failed");
                return;
            }
        }
    }
}

/// Client → the process's stdin; at the client's EOF the stdin is closed (our FIFO end and the
/// shim's, which holds one too), so the process sees EOF.
async fn copy_input(
    c: Containerd,
    id: String,
    exec_id: String,
    mut from: mpsc::Receiver<Bytes>,
    mut fifo: pipe::Sender,
) {
    while let Some(b) = from.recv().await {
        if let Err(e) = fifo.write_all(&b).await {
            tracing::debug!(error = %e, "writing exec stdin failed");
            break;
        }
    }
    drop(fifo);
    close_stdin(&c, &id, &exec_id).await;
}

/// Closes a process's stdin in the shim (`CloseIO`); `exec_id` empty = the container's own.
pub async fn close_stdin(c: &Containerd, id: &str, exec_id: &str) {
    let r = c
        .tasks()
        .close_io(c.req(CloseIoRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: true,
        }))
        .await;
    if let Err(e) = r {
        tracing::debug!(container = id, exec = exec_id, error = %e, "closing stdin failed");
    }
}

/// Terminal sizes → the process's pty; `exec_id` empty = the container's own.
pub async fn apply_resizes(
    c: Containerd,
    id: String,
    exec_id: String,
    mut sizes: mpsc::Receiver<TermSize>,
) {
    while let Some(sz) = sizes.recv().await {
        let r = c
            .tasks()
            .resize_pty(c.req(ResizePtyRequest {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
                width: u32::from(sz.width),
                height: u32::from(sz.height),
            }))
            .await;
        if let Err(e) = r {
            tracing::debug!(container = %id, exec = %exec_id, error = %e, "resize failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tty_exec_gets_a_terminal_and_term() {
        let spec = serde_json::json!({"process": {"args": ["sleep"], "env": ["PATH=/bin"], "terminal": false}});
        let p = process_spec(&spec, &["sh".into()], true).unwrap();
        assert_eq!(p["terminal"], true);
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "TERM=xterm"]));
        let spec = serde_json::json!({"process": {"env": ["TERM=vt100"]}});
        let p = process_spec(&spec, &["sh".into()], true).unwrap();
        assert_eq!(p["env"], serde_json::json!(["TERM=vt100"]));
        let p = process_spec(&spec, &["sh".into()], false).unwrap();
        assert_eq!(p["terminal"], false);
        assert_eq!(p["env"], serde_json::json!(["TERM=vt100"]));
    }
}
