//! The WebSocket side of the streaming server (tokio-tungstenite over hyper's upgrade):
//!
//! * exec/attach with the channel protocols: `v5.channel.k8s.io` (client-go's WebSocket
//!   executor, `crictl --transport websocket`), `v4.channel.k8s.io`, `channel.k8s.io` and the
//!   base64 text variants. Each message is one channel's data: binary messages start with the
//!   channel byte, base64 ones with `'0' + channel` and then standard base64. Channels: 0 stdin,
//!   1 stdout, 2 stderr, 3 error (the status), 4 resize; v5 adds the client's `[255, ch]` close.
//!   Mirrors kubelet's `remotecommand/websocket.go`, apimachinery's `wsstream/conn.go` and
//!   apiserver's `util/proxy/websocket.go` (v5).
//! * port forwarding: SPDY tunnelled in binary messages (`SPDY/3.1+portforward.k8s.io`, client-go
//!   `tools/portforward/tunneling_connection.go`), and the legacy v4 channel protocol (data on
//!   channel 2i, errors on 2i+1 for the i-th requested port; kubelet's
//!   `portforward/websocket.go`).
//!
//! A handshake peapod cannot serve (no key, an unknown subprotocol) is refused with 400/403 before
//! any upgrade, which is what makes a Go client fall back to SPDY.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::http::{header_contains, header_list, plain, Body, PORT_FORWARD_PROTOCOL};
use super::limits::IDLE_TIMEOUT;
use super::portforward::{self, ClientTx, Target};
use super::session::{ResizeDecoder, Session, OUTPUT_QUEUE};
use super::status::Outcome;
use super::tokens::Request as Cached;
use super::{attach, exec};
use crate::runtime::Runtime;

/// `remotecommand/constants.go` `StreamProtocolV5Name`.
pub const V5: &str = "v5.channel.k8s.io";
/// `wsstream/conn.go`: the channel protocols kubelet's library accepts.
pub const V4_BINARY: &str = "v4.channel.k8s.io";
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const V1_BINARY: &str = "channel.k8s.io";
pub const V1_BASE64: &str = "base64.channel.k8s.io";
/// `portforward/constants.go`: `WebsocketsSPDYTunnelingPrefix` + `ProtocolV1Name`.
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// `wsstream/conn.go` / `remotecommand/constants.go` `StreamClose`: v5's half-close message.
const CLOSE_CHANNEL: u8 = 255;
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// How long the status write and the close handshake may take (the apiserver's v5 handler
/// uses a 10 s write deadline for the status).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// `wsstream.IsWebSocketRequest`: `Upgrade: websocket` and a `Connection` naming upgrade.
pub fn is_websocket_request(h: &HeaderMap) -> bool {
    h.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.eq_ignore_ascii_case("websocket"))
    }) && header_contains(h, "connection", "upgrade")
}

/// How messages are framed on a channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub base64: bool,
    /// JSON status always (v4, v5) rather than text on failure only.
    pub v4_status: bool,
    /// Understands the `[255, ch]` close message.
    pub v5: bool,
}

/// The channel protocol for exec/attach: the first offered one peapod speaks (`""`, none
/// offered, is binary v1 as in kubelet's library).
pub fn remotecommand_protocol(offered: &[String]) -> Option<(String, Framing)> {
    let framing = |p: &str| match p {
        V5 => Some(Framing {
            base64: false,
            v4_status: true,
            v5: true,
        }),
        V4_BINARY => Some(Framing {
            base64: false,
            v4_status: true,
            v5: false,
        }),
        V4_BASE64 => Some(Framing {
            base64: true,
            v4_status: true,
            v5: false,
        }),
        V1_BINARY | "" => Some(Framing {
            base64: false,
            v4_status: false,
            v5: false,
        }),
        V1_BASE64 => Some(Framing {
            base64: true,
            v4_status: false,
            v5: false,
        }),
        _ => None,
    };
    if offered.is_empty() {
        return framing("").map(|f| (String::new(), f));
    }
    offered
        .iter()
        .find_map(|p| framing(p).map(|f| (p.clone(), f)))
}

/// Port forwarding: the SPDY tunnel, or the v4 channel protocol (binary/base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortForwardKind {
    Tunnel,
    Channels { base64: bool },
}

pub fn port_forward_protocol(offered: &[String]) -> Option<(String, PortForwardKind)> {
    if offered.is_empty() {
        return Some((String::new(), PortForwardKind::Channels { base64: false }));
    }
    offered.iter().find_map(|p| match p.as_str() {
        SPDY_TUNNEL => Some((p.clone(), PortForwardKind::Tunnel)),
        V4_BINARY => Some((p.clone(), PortForwardKind::Channels { base64: false })),
        V4_BASE64 => Some((p.clone(), PortForwardKind::Channels { base64: true })),
        _ => None,
    })
}

/// Checks the handshake, picks the subprotocol, answers 101 and serves the WebSocket.
pub fn upgrade(rt: Arc<Runtime>, cached: Cached, req: Request<Incoming>) -> Response<Body> {
    let h = req.headers();
    let Some(key) = h.get("sec-websocket-key").cloned() else {
        return plain(
            StatusCode::BAD_REQUEST,
            "websocket handshake: Sec-WebSocket-Key is required",
        );
    };
    if h.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
        let mut r = plain(
            StatusCode::BAD_REQUEST,
            "websocket handshake: only Sec-WebSocket-Version 13 is supported",
        );
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return r;
    }
    let offered = header_list(h, "sec-websocket-protocol");
    enum Plan {
        Remote(Framing),
        Forward(PortForwardKind),
    }
    let (protocol, plan) = match &cached {
        Cached::Exec(_) | Cached::Attach(_) => match remotecommand_protocol(&offered) {
            Some((p, f)) => (p, Plan::Remote(f)),
            None => return refuse(&offered, &[V5, V4_BINARY, V4_BASE64, V1_BINARY, V1_BASE64]),
        },
        Cached::PortForward(pf) => match port_forward_protocol(&offered) {
            Some((p, kind)) => {
                if kind != PortForwardKind::Tunnel && pf.port.is_empty() {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "websocket port forwarding needs the ports in the PortForward request",
                    );
                }
                (p, Plan::Forward(kind))
            }
            None => return refuse(&offered, &[SPDY_TUNNEL, V4_BINARY, V4_BASE64]),
        },
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = resp.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        rh.insert("sec-websocket-accept", v);
    }
    if !protocol.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&protocol) {
            rh.insert("sec-websocket-protocol", v);
        }
    }
    tokio::spawn(async move {
        let _session = crate::metrics::streaming_session(cached.kind());
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, None).await;
        match (cached, plan) {
            (Cached::Exec(req), Plan::Remote(f)) => {
                let wanted = (req.stdin, req.stdout, req.stderr, req.tty);
                serve_remotecommand(ws, f, wanted, |s| exec::run(rt, req, s)).await
            }
            (Cached::Attach(req), Plan::Remote(f)) => {
                let wanted = (req.stdin, req.stdout, req.stderr, req.tty);
                serve_remotecommand(ws, f, wanted, |s| attach::run(rt, req, s)).await
            }
            (Cached::PortForward(req), Plan::Forward(PortForwardKind::Tunnel)) => {
                let (ours, theirs) = tokio::io::duplex(256 * 1024);
                tokio::spawn(bridge(ws, ours));
                super::dispatch::serve_spdy(
                    rt,
                    Cached::PortForward(req),
                    PORT_FORWARD_PROTOCOL,
                    theirs,
                )
                .await
            }
            (Cached::PortForward(req), Plan::Forward(PortForwardKind::Channels { base64 })) => {
                serve_port_forward(rt, req, ws, base64).await
            }
            _ => {}
        }
    });
    resp
}

fn refuse(offered: &[String], supported: &[&str]) -> Response<Body> {
    plain(
        StatusCode::FORBIDDEN,
        format!(
            "websocket handshake: unsupported subprotocols {offered:?}; supported: {supported:?}"
        ),
    )
}

/// One outgoing message: `(channel, data)`, or the close handshake.
enum Out {
    Data(u8, Bytes),
    Close,
}

fn encode(framing_base64: bool, ch: u8, data: &[u8]) -> Message {
    if framing_base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push(char::from(b'0' + ch));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::text(s)
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(ch);
        v.extend_from_slice(data);
        Message::binary(v)
    }
}

/// `(channel, payload)` of a received message; `None` for an empty or undecodable one.
fn decode(msg: &Message) -> Option<(u8, Vec<u8>)> {
    match msg {
        Message::Binary(b) if !b.is_empty() => Some((b[0], b[1..].to_vec())),
        Message::Text(t) if !t.is_empty() => {
            let t = t.as_str();
            let ch = t.as_bytes()[0].checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&t[1..])
                .ok()?;
            Some((ch, data))
        }
        _ => None,
    }
}

/// The writer task: serialises messages; on `Close` sends a normal close (1000, which Go's
/// client treats as EOF) and ends.
async fn write_loop(
    mut sink: futures::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Out>,
    base64: bool,
) {
    while let Some(m) = rx.recv().await {
        match m {
            Out::Data(ch, data) => {
                if sink.send(encode(base64, ch, &data)).await.is_err() {
                    break;
                }
            }
            Out::Close => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame))))
                    .await;
                break;
            }
        }
    }
    // Anything still queued goes nowhere; let senders finish.
    while rx.recv().await.is_some() {}
}

/// Exec/attach over a channel protocol.
async fn serve_remotecommand<F, Fut>(
    ws: Ws,
    framing: Framing,
    (want_stdin, want_stdout, want_stderr, tty): (bool, bool, bool, bool),
    run: F,
) where
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let (sink, mut stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Out>(OUTPUT_QUEUE);
    let writer = tokio::spawn(write_loop(sink, out_rx, framing.base64));
    // kubelet's library opens with an empty message on the lowest writable channel.
    if !framing.v5 {
        let first = if want_stdout {
            STDOUT
        } else if want_stderr {
            STDERR
        } else {
            ERROR
        };
        let _ = out_tx.send(Out::Data(first, Bytes::new())).await;
    }

    let (stdin_tx, stdin_rx) = mpsc::channel(OUTPUT_QUEUE);
    let (resize_tx, resize_rx) = mpsc::channel(OUTPUT_QUEUE);
    let (gone_tx, gone) = watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut stdin_tx = want_stdin.then_some(stdin_tx);
        let mut resize_tx = tty.then_some(resize_tx);
        let mut resizes = ResizeDecoder::default();
        loop {
            let msg = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
                Ok(Some(Ok(m))) => m,
                _ => break,
            };
            if msg.is_close() {
                break;
            }
            let Some((ch, data)) = decode(&msg) else {
                continue;
            };
            match ch {
                STDIN => {
                    if let Some(tx) = &stdin_tx {
                        if !data.is_empty() && tx.send(Bytes::from(data)).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                RESIZE => {
                    if let Some(tx) = &resize_tx {
                        for s in resizes.push(&data) {
                            if tx.send(s).await.is_err() {
                                resize_tx = None;
                                break;
                            }
                        }
                    }
                }
                CLOSE_CHANNEL if framing.v5 => match data.as_slice() {
                    [STDIN] => stdin_tx = None,
                    [RESIZE] => resize_tx = None,
                    [c] if *c <= RESIZE => {}
                    _ => break, // malformed: abort, as the apiserver does
                },
                _ => {}
            }
        }
        let _ = gone_tx.send(true);
    });

    let mut pumps = Vec::new();
    let mut output = |want: bool, ch: u8| {
        want.then(|| {
            let (tx, mut rx) = mpsc::channel::<Bytes>(OUTPUT_QUEUE);
            let out = out_tx.clone();
            pumps.push(tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if out.send(Out::Data(ch, b)).await.is_err() {
                        while rx.recv().await.is_some() {}
                        return;
                    }
                }
            }));
            tx
        })
    };
    let stdout = output(want_stdout, STDOUT);
    let stderr = output(want_stderr, STDERR);
    let session = Session {
        stdin: want_stdin.then_some(stdin_rx),
        stdout,
        stderr,
        resize: tty.then_some(resize_rx),
        gone,
    };
    let outcome = run(session).await;
    for p in pumps {
        let _ = p.await;
    }
    let status = if framing.v4_status {
        outcome.v4_bytes()
    } else {
        outcome.text_bytes()
    };
    if !status.is_empty() {
        let _ = out_tx.send(Out::Data(ERROR, Bytes::from(status))).await;
    }
    let _ = out_tx.send(Out::Close).await;
    drop(out_tx);
    let _ = writer.await;
    // Give the client a moment to answer the close handshake, then drop the socket.
    let mut reader = reader;
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

/// SPDY tunnelled in binary messages: copies between the WebSocket and one end of a byte pipe
/// whose other end the SPDY server reads.
async fn bridge(ws: Ws, pipe: tokio::io::DuplexStream) {
    let (mut sink, mut stream) = ws.split();
    let (mut pr, mut pw) = tokio::io::split(pipe);
    let inbound = async {
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            match msg {
                Message::Binary(b) if pw.write_all(&b).await.is_err() => break,
                Message::Binary(_) => {}
                Message::Close(_) => break,
                Message::Text(_) => {
                    tracing::debug!("text message in a SPDY tunnel; closing");
                    break;
                }
                _ => {}
            }
        }
        let _ = pw.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    };
    tokio::join!(inbound, outbound);
}

/// A port's data channel towards the client.
struct ChannelTx {
    ch: u8,
    out: mpsc::Sender<Out>,
}

impl ClientTx for ChannelTx {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        self.out
            .send(Out::Data(self.ch, data))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "websocket closed"))
    }
}

impl portforward::ClientRx for mpsc::Receiver<Bytes> {
    async fn recv(&mut self) -> Option<Bytes> {
        mpsc::Receiver::recv(self).await
    }
}

/// Legacy v4 port forwarding: one TCP connection per requested port for the life of the
/// WebSocket; each channel first carries its port number (2 bytes, little-endian).
async fn serve_port_forward(
    rt: Arc<Runtime>,
    req: crate::cri::PortForwardRequest,
    ws: Ws,
    base64: bool,
) {
    let (sink, mut stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Out>(OUTPUT_QUEUE);
    let writer = tokio::spawn(write_loop(sink, out_rx, base64));
    let ports: Vec<u16> = req
        .port
        .iter()
        .filter_map(|p| u16::try_from(*p).ok())
        .collect();
    let mut inputs: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = out_tx
                .send(Out::Data(ch, Bytes::copy_from_slice(&port.to_le_bytes())))
                .await;
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(OUTPUT_QUEUE);
        inputs.push(Some(tx));
        let out = out_tx.clone();
        let rt = rt.clone();
        let sandbox = req.pod_sandbox_id.clone();
        forwards.spawn(async move {
            let dialled = match Target::of(&rt, &sandbox) {
                Ok(t) => portforward::dial(&t, port)
                    .await
                    .map_err(|e| t.error_message(port, &e)),
                Err(e) => Err(format!(
                    "error forwarding port {port} to pod {sandbox}: {e}"
                )),
            };
            match dialled {
                Ok(tcp) => {
                    let mut tx = ChannelTx { ch: data_ch, out };
                    portforward::copy(&mut rx, &mut tx, tcp).await;
                }
                Err(msg) => {
                    let _ = out.send(Out::Data(err_ch, Bytes::from(msg))).await;
                }
            }
        });
    }
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => match m {
                Ok(Some(Ok(m))) => m,
                _ => break,
            },
            // Every forward ended: nothing left to serve.
            None = forwards.join_next() => break,
        };
        if msg.is_close() {
            break;
        }
        let Some((ch, data)) = decode(&msg) else {
            continue;
        };
        let idx = usize::from(ch / 2);
        if ch % 2 == 0 {
            if let Some(Some(tx)) = inputs.get(idx) {
                if tx.send(Bytes::from(data)).await.is_err() {
                    inputs[idx] = None;
                }
            }
        }
    }
    inputs.clear();
    forwards.shutdown().await;
    let _ = out_tx.send(Out::Close).await;
    drop(out_tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn channel_protocols_in_the_clients_order() {
        let (p, f) = remotecommand_protocol(&s(&[V5, V4_BINARY])).unwrap();
        assert_eq!(p, V5);
        assert!(f.v5 && f.v4_status && !f.base64);
        let (p, f) = remotecommand_protocol(&s(&["v9", V4_BASE64, V4_BINARY])).unwrap();
        assert_eq!(p, V4_BASE64);
        assert!(f.base64 && f.v4_status && !f.v5);
        let (p, f) = remotecommand_protocol(&[]).unwrap();
        assert_eq!(p, "");
        assert!(!f.v4_status);
        assert!(remotecommand_protocol(&s(&["v9.channel.k8s.io"])).is_none());
    }

    #[test]
    fn port_forward_protocols() {
        assert_eq!(
            port_forward_protocol(&s(&[SPDY_TUNNEL])).unwrap().1,
            PortForwardKind::Tunnel
        );
        assert_eq!(
            port_forward_protocol(&s(&[V4_BASE64])).unwrap().1,
            PortForwardKind::Channels { base64: true }
        );
        // Plain channel.k8s.io is not a port-forward protocol.
        assert!(port_forward_protocol(&s(&[V1_BINARY])).is_none());
    }

    #[test]
    fn messages_round_trip_in_both_framings() {
        for b64 in [false, true] {
            let m = encode(b64, STDERR, b"hello\0world");
            assert_eq!(decode(&m), Some((STDERR, b"hello\0world".to_vec())));
        }
        assert_eq!(encode(false, STDOUT, b"x"), Message::binary(vec![1, b'x']));
        assert_eq!(encode(true, STDOUT, b"hi"), Message::text("1aGk="));
        assert_eq!(decode(&Message::binary(Vec::new())), None);
        assert_eq!(decode(&Message::text("0!!!")), None);
    }

    #[test]
    fn websocket_requests_are_recognised_as_kubelet_does() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        assert!(is_websocket_request(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(!is_websocket_request(&h));
    }
}
