//! The Attach back-end: a client joins the container's own stdio.
//!
//! Output: the container's log writer copies every chunk it reads to attached clients too
//! (`container::logs::Tee`), so the CRI log keeps everything, TTY containers included, and any
//! number of clients may attach at once. Input: the container's stdin FIFO, held open by peapod
//! from the start for containers created with `stdin: true`; every attached client writes into
//! it. As in containerd (`internal/cri/io/container_io.go` Attach): when a client closes its
//! stdin, a `stdin_once` non-TTY container has its stdin closed for good (the first client's
//! EOF is the container's EOF), and otherwise that client is detached. The attach ends when the
//! container's output ends (it exited), or when the client detaches or goes away.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::exec::{apply_resizes, close_stdin};
use super::session::Session;
use super::status::Outcome;
use crate::cri;
use crate::runtime::Runtime;
use crate::stdio::log::Stream;
use crate::store::Container;

pub async fn run(rt: Arc<Runtime>, req: cri::AttachRequest, session: Session) -> Outcome {
    match rt.containers.get(&req.container_id) {
        Ok(c) => {
            attach(&rt, c, session).await;
            Outcome::Exited(0)
        }
        Err(e) => Outcome::Failed(format!("error attaching to container: {e}")),
    }
}

async fn attach(rt: &Runtime, c: Arc<Container>, mut s: Session) {
    let log = c.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(log) = log else {
        return; // the container's stdio is gone: it exited
    };
    let tee = log.tee().clone();
    let mut outputs = Vec::new();
    // Subscribed even if the client did not ask for the stream: its end is the container's.
    outputs.push(tokio::spawn(forward(
        tee.subscribe(Stream::Stdout),
        s.stdout.take(),
    )));
    if !c.config.tty {
        outputs.push(tokio::spawn(forward(
            tee.subscribe(Stream::Stderr),
            s.stderr.take(),
        )));
    }
    s.stderr.take();
    let resizes = s.resize.take().map(|rx| {
        tokio::spawn(apply_resizes(
            rt.ctrd.clone(),
            c.id.clone(),
            String::new(),
            rx,
        ))
    });
    let aborts: Vec<_> = outputs.iter().map(|h| h.abort_handle()).collect();
    let (done_tx, done) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        for o in outputs {
            let _ = o.await;
        }
        let _ = done_tx.send(true);
    });
    let output_done = |mut done: tokio::sync::watch::Receiver<bool>| async move {
        let _ = done.wait_for(|d| *d).await;
    };
    let input = async {
        match s.stdin.take() {
            Some(rx) => copy_stdin(rt, &c, rx).await,
            None => std::future::pending().await,
        }
    };
    let client_gone = |mut gone: tokio::sync::watch::Receiver<bool>| async move {
        let _ = gone.wait_for(|g| *g).await;
    };
    tokio::select! {
        _ = output_done(done.clone()) => {}
        detach = input => {
            if !detach {
                // stdin_once: the container's stdin is closed; stay until its output ends.
                tokio::select! {
                    _ = output_done(done.clone()) => {}
                    _ = client_gone(s.gone.clone()) => {}
                }
            }
        }
        _ = client_gone(s.gone.clone()) => {}
    }
    for a in aborts {
        a.abort();
    }
    if let Some(r) = resizes {
        r.abort();
    }
}

/// The container's output → the client (or nowhere, if it did not ask for this stream).
async fn forward(mut from: mpsc::Receiver<Bytes>, to: Option<mpsc::Sender<Bytes>>) {
    let mut to = to;
    while let Some(b) = from.recv().await {
        if let Some(tx) = &to {
            if tx.send(b).await.is_err() {
                to = None;
            }
        }
    }
}

/// Client input → the container's stdin. At the client's EOF: true = detach this client;
/// false = the container's stdin was closed for good (`stdin_once`, no TTY).
async fn copy_stdin(rt: &Runtime, c: &Container, mut rx: mpsc::Receiver<Bytes>) -> bool {
    while let Some(b) = rx.recv().await {
        let mut g = c.stdin.lock().await;
        let Some(w) = g.as_mut() else {
            continue; // no stdin (not asked for at create, or already closed): discarded
        };
        if let Err(e) = w.write_all(&b).await {
            tracing::debug!(container = %c.id, error = %e, "writing to the container's stdin failed");
        }
    }
    if c.config.stdin_once && !c.config.tty {
        if c.stdin.lock().await.take().is_some() {
            close_stdin(&rt.ctrd, &c.id, "").await;
        }
        return false;
    }
    true
}
