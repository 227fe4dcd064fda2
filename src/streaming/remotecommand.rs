//! Exec and attach over SPDY (`v4.channel.k8s.io` down to `channel.k8s.io`): collects the
//! client's streams, turns them into a [`Session`], and ends the streams in the order Go clients
//! need.
//!
//! Mirrors kubelet's `pkg/cri/streaming/remotecommand/httpstream.go` (stream collection,
//! protocol versions) and `exec.go`/`attach.go` (status). Go's client waits for stdout and
//! stderr to reach EOF before it reads the error stream's status (client-go
//! `remotecommand/v2.go`), and stops reading at GOAWAY, so the end is: output FINs, status +
//! FIN on the error stream, FIN on stdin, then GOAWAY.

use std::future::Future;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::limits::{IDLE_TIMEOUT, STREAM_CREATION_TIMEOUT};
use super::session::{ResizeDecoder, Session, TermSize, OUTPUT_QUEUE};
use super::spdy::{Connection, Incoming, Role, StreamReader, StreamWriter};
use super::status::Outcome;

/// The remotecommand subprotocols, newest first (`remotecommand/constants.go`
/// `SupportedStreamingProtocols`). v5 is not offered over SPDY: over SPDY a v5 client behaves
/// exactly as v4 (client-go `remotecommand/v5.go`), and kubelet's library does not list it.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// `api/core/v1/types.go` `StreamType*`: the `streamType` header of each stream.
pub const STREAM_TYPE_HEADER: &str = "streamtype";

/// The protocol version negotiated (1 = `channel.k8s.io`).
pub fn version_of(protocol: &str) -> u8 {
    match protocol {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    }
}

/// Which stdio the cached CRI request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

#[derive(Default)]
struct Streams {
    error: Option<StreamWriter>,
    error_reader: Option<StreamReader>,
    stdin: Option<(StreamReader, StreamWriter)>,
    stdout: Option<StreamWriter>,
    stderr: Option<StreamWriter>,
    resize: Option<(StreamReader, StreamWriter)>,
}

/// Serves one exec/attach over an upgraded SPDY connection: `run` gets the session and says how
/// the command ended.
pub async fn serve<T, F, Fut>(io: T, protocol: &str, wanted: Wanted, run: F)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let version = version_of(protocol);
    let (conn, mut incoming) = Connection::new(io, Role::Server, IDLE_TIMEOUT);
    let streams = match tokio::time::timeout(
        STREAM_CREATION_TIMEOUT,
        collect(&mut incoming, version, wanted),
    )
    .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::debug!("client went away before opening its streams");
            conn.close().await;
            return;
        }
        Err(_) => {
            tracing::warn!(
                "client did not open its streams within {}s; nothing was started",
                STREAM_CREATION_TIMEOUT.as_secs()
            );
            conn.close().await;
            return;
        }
    };
    // Streams opened later (none are expected) are refused by dropping them.
    tokio::spawn(async move { while incoming.next().await.is_some() {} });

    let (gone_tx, gone) = watch::channel(false);
    let watcher = tokio::spawn({
        let peer_gone = conn.peer_gone();
        async move {
            peer_gone.await;
            let _ = gone_tx.send(true);
        }
    });

    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    let (stdin_rx, stdin_writer) = match streams.stdin {
        Some((reader, writer)) => (Some(forward_input(reader)), Some(writer)),
        None => (None, None),
    };
    let stdout = streams.stdout.map(|w| {
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        pumps.push(tokio::spawn(pump_output(rx, w)));
        tx
    });
    let stderr = streams.stderr.map(|w| {
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        pumps.push(tokio::spawn(pump_output(rx, w)));
        tx
    });
    let (resize, resize_writer) = match streams.resize {
        Some((reader, writer)) => (Some(decode_resizes(reader)), Some(writer)),
        None => (None, None),
    };
    let session = Session {
        stdin: stdin_rx,
        stdout,
        stderr,
        resize,
        gone,
    };
    let outcome = run(session).await;

    // The back-end dropped its output senders: the pumps FIN stdout/stderr once they are empty.
    for p in pumps {
        let _ = p.await;
    }
    if let Some(err) = streams.error {
        let status = if version >= 4 {
            outcome.v4_bytes()
        } else {
            outcome.text_bytes()
        };
        if !status.is_empty() {
            let _ = err.write(Bytes::from(status)).await;
        }
        err.close().await;
    }
    if let Some(w) = stdin_writer {
        w.close().await;
    }
    if let Some(w) = resize_writer {
        w.close().await;
    }
    drop(streams.error_reader);
    watcher.abort();
    conn.close().await;
}

/// Replies to every stream the client opens and classifies it by `streamType`, until the
/// streams the request implies have all arrived. `None` if the client left first.
async fn collect(incoming: &mut Incoming, version: u8, wanted: Wanted) -> Option<Streams> {
    let expected = 1
        + usize::from(wanted.stdin)
        + usize::from(wanted.stdout)
        + usize::from(wanted.stderr)
        + usize::from(wanted.tty && version >= 3);
    let mut s = Streams::default();
    let mut got = 0;
    while got < expected {
        let stream = incoming.next().await?;
        // kubelet's library replies to every stream as it arrives, known or not.
        if stream
            .writer
            .reply(super::spdy::Headers::new())
            .await
            .is_err()
        {
            return None;
        }
        let kind = stream
            .headers
            .get(STREAM_TYPE_HEADER)
            .unwrap_or("")
            .to_ascii_lowercase();
        let slot_taken = match kind.as_str() {
            "error" if s.error.is_none() => {
                s.error = Some(stream.writer);
                s.error_reader = Some(stream.reader);
                false
            }
            "stdin" if s.stdin.is_none() => {
                s.stdin = Some((stream.reader, stream.writer));
                false
            }
            "stdout" if s.stdout.is_none() => {
                s.stdout = Some(stream.writer);
                false
            }
            "stderr" if s.stderr.is_none() => {
                s.stderr = Some(stream.writer);
                false
            }
            "resize" if version >= 3 && s.resize.is_none() => {
                s.resize = Some((stream.reader, stream.writer));
                false
            }
            other => {
                tracing::debug!(stream_type = other, "ignoring an unexpected stream");
                true
            }
        };
        if !slot_taken {
            got += 1;
        }
    }
    Some(s)
}

/// Client input → a channel the back-end reads; the channel closes at the client's FIN.
fn forward_input(mut reader: StreamReader) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    tokio::spawn(async move {
        while let Some(b) = reader.recv().await {
            if tx.send(b).await.is_err() {
                // The back-end stopped reading: discard the rest so other streams flow.
                reader.drain().await;
                return;
            }
        }
    });
    rx
}

/// Back-end output → the client's stream, then FIN. If the client is gone, output is still
/// drained so the back-end never blocks on it.
async fn pump_output(mut rx: mpsc::Receiver<Bytes>, w: StreamWriter) {
    let mut ok = true;
    while let Some(b) = rx.recv().await {
        if ok && w.write(b).await.is_err() {
            ok = false;
        }
    }
    w.close().await;
}

fn decode_resizes(mut reader: StreamReader) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    tokio::spawn(async move {
        let mut dec = ResizeDecoder::default();
        while let Some(b) = reader.recv().await {
            for size in dec.push(&b) {
                if tx.send(size).await.is_err() {
                    reader.drain().await;
                    return;
                }
            }
        }
    });
    rx
}
