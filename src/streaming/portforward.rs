//! PortForward: each forwarded connection is a TCP connection to `localhost:PORT` inside the
//! pod's network namespace (the host's for a host-network pod), copied both ways.
//!
//! Over SPDY (`portforward.k8s.io`, kubelet's `pkg/cri/streaming/portforward/httpstream.go`):
//! the client opens two streams per connection, `error` and `data`, both carrying `port` and
//! `requestID` headers; once a pair is complete it is forwarded, and any number of pairs share
//! one SPDY connection. A failure (nothing listening, say) is written to that pair's error
//! stream only; its data stream is reset, and the other pairs go on.
//!
//! The dial happens on a dedicated thread that enters the pod's netns with `setns(2)`: a socket
//! belongs to the namespace it was created in, so the connected socket is then handed to tokio
//! while the thread (and its namespace) ends. Like containerd, IPv4 first, then IPv6, serially.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::limits::{IDLE_TIMEOUT, STREAM_CREATION_TIMEOUT};
use super::spdy::frame::RST_CANCEL;
use super::spdy::{Connection, Headers, Role, Stream, StreamReader, StreamWriter};
use crate::cri;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// `api/core/v1/types.go` `PortHeader`, `PortForwardRequestIDHeader` (lower case on the wire).
pub const PORT_HEADER: &str = "port";
pub const REQUEST_ID_HEADER: &str = "requestid";
/// After one direction of a forwarded connection ends, how long the other may go on
/// (containerd `sandbox_portforward_linux.go` and CRI-O wait 1 s as well).
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// A connect that neither succeeds nor fails (a filtered port) gives up after this.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pod's ports are dialled from.
#[derive(Debug, Clone)]
pub struct Target {
    pub sandbox_id: String,
    pub uid: String,
    /// The pod's pinned netns; `None` = the host's (host-network pod).
    pub netns: Option<PathBuf>,
}

impl Target {
    /// Looks the sandbox up now: it must still exist and be ready.
    pub fn of(rt: &Runtime, sandbox_id: &str) -> Result<Target> {
        let sb = rt.sandboxes.get(sandbox_id)?;
        if !sb.is_ready() {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        let netns = if sb.host_network() {
            None
        } else {
            Some(sb.netns_path().ok_or_else(|| {
                Error::FailedPrecondition(format!("pod sandbox {} has no network namespace", sb.id))
            })?)
        };
        Ok(Target {
            sandbox_id: sb.id.clone(),
            uid: sb.metadata().uid,
            netns,
        })
    }

    /// kubelet's message on a pair's error stream.
    pub fn error_message(&self, port: u16, e: &dyn std::fmt::Display) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid {}: {e}",
            self.sandbox_id, self.uid
        )
    }
}

/// Connects to `localhost:port` in the target's network namespace.
pub async fn dial(target: &Target, port: u16) -> io::Result<TcpStream> {
    let Some(ns) = target.netns.clone() else {
        return connect_local(port).await;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Not the blocking pool: a pool thread would stay in the pod's namespace afterwards.
    std::thread::Builder::new()
        .name("peapod-portforward".into())
        .spawn(move || {
            let _ = tx.send(connect_in_netns(&ns, port));
        })?;
    let std_stream = rx
        .await
        .map_err(|_| io::Error::other("port-forward dial thread died"))??;
    std_stream.set_nonblocking(true)?;
    TcpStream::from_std(std_stream)
}

fn connect_in_netns(ns: &std::path::Path, port: u16) -> io::Result<std::net::TcpStream> {
    let f = std::fs::File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("open netns {}: {e}", ns.display())))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("enter netns {}: {e}", ns.display())))?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, DIAL_TIMEOUT).map_err(|_| e4)
        }
    }
}

async fn connect_local(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(v4)).await {
        Ok(Ok(s)) => Ok(s),
        first => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(v6)).await {
                Ok(Ok(s)) => Ok(s),
                _ => Err(match first {
                    Ok(Err(e)) => e,
                    _ => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                }),
            }
        }
    }
}

/// The client's side of one forwarded connection, inbound: the next chunk, `None` at its end.
pub trait ClientRx: Send {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send;
}

/// The client's side of one forwarded connection, outbound: an error means it is gone.
pub trait ClientTx: Send {
    fn send(&mut self, data: Bytes) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

impl ClientRx for StreamReader {
    async fn recv(&mut self) -> Option<Bytes> {
        StreamReader::recv(self).await
    }
}

impl ClientTx for StreamWriter {
    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.write(data).await
    }
}

/// Copies between the client and `tcp` until both directions ended, or one ended and the other
/// had [`HALF_CLOSE_GRACE`] more. The caller closes the client's side.
pub async fn copy(rx: &mut impl ClientRx, tx: &mut impl ClientTx, tcp: TcpStream) {
    let (mut tr, mut tw) = tcp.into_split();
    let up = async {
        while let Some(b) = rx.recv().await {
            if tw.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = tw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(HALF_CLOSE_GRACE, &mut down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(HALF_CLOSE_GRACE, &mut up).await; }
    }
}

/// Serves port forwarding over an upgraded SPDY connection.
pub async fn serve_spdy<T>(rt: Arc<Runtime>, req: cri::PortForwardRequest, io: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (conn, mut incoming) = Connection::new(io, Role::Server, IDLE_TIMEOUT);
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut forwards = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            s = incoming.next() => {
                let Some(s) = s else { break };
                if let Some(pair) = accept(&mut pending, s).await {
                    let rt = rt.clone();
                    let sandbox = req.pod_sandbox_id.clone();
                    forwards.spawn(async move { forward_pair(&rt, &sandbox, pair).await });
                }
            }
            _ = sweep.tick() => expire(&mut pending).await,
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // The client is gone: its pairs cannot go on.
    forwards.shutdown().await;
    conn.close().await;
}

struct Pair {
    port: u16,
    since: Instant,
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Validates and replies to a new stream, and pairs it; returns a completed pair.
async fn accept(pending: &mut HashMap<String, Pair>, s: Stream) -> Option<Pair> {
    let port = s
        .headers
        .get(PORT_HEADER)
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p >= 1);
    let kind = s.headers.get("streamtype").map(str::to_ascii_lowercase);
    let (Some(port), Some(kind)) = (port, kind) else {
        tracing::debug!(headers = ?s.headers, "port-forward stream without a valid port or streamType");
        s.writer.reset(RST_CANCEL).await;
        return None;
    };
    if kind != "error" && kind != "data" {
        s.writer.reset(RST_CANCEL).await;
        return None;
    }
    if s.writer.reply(Headers::new()).await.is_err() {
        return None;
    }
    // Old clients send no requestID: error and data streams are then consecutive ids.
    let request_id = match s.headers.get(REQUEST_ID_HEADER) {
        Some(r) => r.to_string(),
        None if kind == "error" => s.id.to_string(),
        None => s.id.saturating_sub(2).to_string(),
    };
    let pair = pending.entry(request_id.clone()).or_insert_with(|| Pair {
        port,
        since: Instant::now(),
        error: None,
        data: None,
    });
    let slot = if kind == "error" {
        &mut pair.error
    } else {
        &mut pair.data
    };
    if slot.is_some() {
        tracing::debug!(request_id, kind, "duplicate port-forward stream");
        s.writer.reset(RST_CANCEL).await;
        return None;
    }
    *slot = Some(s);
    if pair.error.is_some() && pair.data.is_some() {
        return pending.remove(&request_id);
    }
    None
}

/// Drops pairs whose second stream did not come in time, telling the client why.
async fn expire(pending: &mut HashMap<String, Pair>) {
    let stale: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.since.elapsed() >= STREAM_CREATION_TIMEOUT)
        .map(|(k, _)| k.clone())
        .collect();
    for k in stale {
        if let Some(p) = pending.remove(&k) {
            let msg = format!("timed out waiting for the other stream of port-forward request {k}");
            if let Some(e) = &p.error {
                let _ = e.writer.write(Bytes::from(msg)).await;
                e.writer.close().await;
            }
            if let Some(d) = &p.data {
                d.writer.reset(RST_CANCEL).await;
            }
        }
    }
}

async fn forward_pair(rt: &Runtime, sandbox_id: &str, pair: Pair) {
    let (Some(mut error), Some(mut data)) = (pair.error, pair.data) else {
        return;
    };
    // The client half-closes the error stream at once; it writes nothing there.
    tokio::spawn(async move { error.reader.drain().await });
    let port = pair.port;
    let dialled = match Target::of(rt, sandbox_id) {
        Ok(t) => dial(&t, port).await.map_err(|e| t.error_message(port, &e)),
        Err(e) => Err(format!(
            "error forwarding port {port} to pod {sandbox_id}: {e}"
        )),
    };
    match dialled {
        Ok(tcp) => {
            let mut tx = data.writer.clone();
            copy(&mut data.reader, &mut tx, tcp).await;
            data.writer.close().await;
            error.writer.close().await;
        }
        Err(msg) => {
            tracing::debug!(sandbox = sandbox_id, port, "{msg}");
            let _ = error.writer.write(Bytes::from(msg)).await;
            error.writer.close().await;
            data.writer.reset(RST_CANCEL).await;
        }
    }
}
