//! The streaming HTTP/1.1 server (hyper): routes `/{exec,attach,portforward}/{token}`, consumes
//! the token, negotiates SPDY or WebSocket, answers 101 and hands the upgraded connection to
//! the protocol adapter. Anything it cannot serve gets a plain 4xx and the connection is not
//! upgraded, so a Go client falls back or fails at once instead of hanging.
//!
//! Mirrors kubelet's `pkg/cri/streaming/server.go` (routes, 404 for a bad token) and
//! apimachinery's `httpstream.Handshake` / `spdy/upgrade.go` (negotiation, status codes).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::remotecommand::{self, Wanted, SPDY_PROTOCOLS};
use super::tokens::Request as Cached;
use super::{attach, exec, portforward, ws, Streaming};
use crate::runtime::Runtime;

/// The header a SPDY client lists its subprotocols in, one value per line
/// (`httpstream.HeaderProtocolVersion`).
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// Sent with a 403 when no offered protocol is supported
/// (`httpstream.HeaderAcceptedProtocolVersions`).
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";
/// `portforward/constants.go` `ProtocolV1Name`.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

pub type Body = Full<Bytes>;

pub async fn serve(rt: Arc<Runtime>, st: Arc<Streaming>, listener: tokio::net::TcpListener) {
    tracing::info!(url = %st.base_url(), "streaming server listening");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "streaming server accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (rt, st) = (rt.clone(), st.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (rt, st) = (rt.clone(), st.clone());
                async move { Ok::<_, Infallible>(handle(rt, st, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
            }
        });
    }
}

pub fn plain(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn handle(rt: Arc<Runtime>, st: Arc<Streaming>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/')
    {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and POST are served",
        );
    }
    let Some(cached) = st.tokens.consume(token, kind) else {
        tracing::debug!(
            kind,
            "streaming request with an unknown, used or expired token"
        );
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    };
    tracing::debug!(kind, "streaming request");
    if ws::is_websocket_request(req.headers()) {
        return ws::upgrade(rt, cached, req);
    }
    spdy_upgrade(rt, cached, req)
}

/// True if any `name` header contains `needle`, ignoring case.
pub fn header_contains(h: &HeaderMap, name: &str, needle: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.to_ascii_lowercase().contains(needle))
            .unwrap_or(false)
    })
}

/// Every value of a list header, split on commas (one header line per value is what Go sends,
/// comma lists are accepted too), in the client's order.
pub fn header_list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first protocol the client offers that the server supports (the client's order wins),
/// or the response to send instead (`httpstream.Handshake`).
pub fn negotiate(h: &HeaderMap, supported: &[&'static str]) -> Result<String, Box<Response<Body>>> {
    let offered = header_list(h, PROTOCOL_HEADER);
    if offered.is_empty() {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {PROTOCOL_HEADER} is required"),
        )));
    }
    if let Some(p) = offered.iter().find(|p| supported.contains(&p.as_str())) {
        return Ok(p.clone());
    }
    let mut r = plain(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
        ),
    );
    for p in supported {
        r.headers_mut()
            .append(ACCEPTED_PROTOCOLS_HEADER, HeaderValue::from_static(p));
    }
    Err(Box::new(r))
}

fn spdy_upgrade(rt: Arc<Runtime>, cached: Cached, req: Request<Incoming>) -> Response<Body> {
    let h = req.headers();
    if !header_contains(h, "connection", "upgrade") || !header_contains(h, "upgrade", "spdy/3.1") {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request (this URL speaks SPDY/3.1 or WebSocket)",
        );
    }
    let supported: &[&'static str] = match cached {
        Cached::PortForward(_) => &[PORT_FORWARD_PROTOCOL],
        _ => SPDY_PROTOCOLS,
    };
    let protocol = match negotiate(h, supported) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = resp.headers_mut();
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    rh.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(&protocol) {
        rh.insert(PROTOCOL_HEADER, v);
    }
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        serve_spdy(rt, cached, &protocol, upgraded).await;
    });
    resp
}

/// Serves a cached request over a SPDY byte stream (an upgraded HTTP connection, or the
/// tunnel inside a WebSocket).
pub async fn serve_spdy<T>(rt: Arc<Runtime>, cached: Cached, protocol: &str, io: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    match cached {
        Cached::Exec(req) => {
            let wanted = Wanted {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
            };
            remotecommand::serve(io, protocol, wanted, |s| exec::run(rt, req, s)).await
        }
        Cached::Attach(req) => {
            let wanted = Wanted {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
            };
            remotecommand::serve(io, protocol, wanted, |s| attach::run(rt, req, s)).await
        }
        Cached::PortForward(req) => portforward::serve_spdy(rt, req, io).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_clients_first_supported_protocol_wins() {
        // client-go's SPDY executor offers v5 first, one header line each.
        let h = headers(&[
            (PROTOCOL_HEADER, "v5.channel.k8s.io"),
            (PROTOCOL_HEADER, "v4.channel.k8s.io"),
            (PROTOCOL_HEADER, "v3.channel.k8s.io"),
        ]);
        assert_eq!(negotiate(&h, SPDY_PROTOCOLS).unwrap(), "v4.channel.k8s.io");
        let h = headers(&[(PROTOCOL_HEADER, "v2.channel.k8s.io, v4.channel.k8s.io")]);
        assert_eq!(negotiate(&h, SPDY_PROTOCOLS).unwrap(), "v2.channel.k8s.io");
    }

    #[test]
    fn no_protocol_is_400_and_no_match_is_403_with_the_accepted_list() {
        let r = negotiate(&HeaderMap::new(), SPDY_PROTOCOLS).unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let h = headers(&[(PROTOCOL_HEADER, "v9.channel.k8s.io")]);
        let r = negotiate(&h, &[PORT_FORWARD_PROTOCOL]).unwrap_err();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let accepted: Vec<_> = r
            .headers()
            .get_all(ACCEPTED_PROTOCOLS_HEADER)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(accepted, vec![PORT_FORWARD_PROTOCOL]);
    }

    #[test]
    fn upgrade_header_checks_ignore_case() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "SPDY/3.1"),
        ]);
        assert!(header_contains(&h, "connection", "upgrade"));
        assert!(header_contains(&h, "upgrade", "spdy/3.1"));
        assert!(!header_contains(&h, "upgrade", "websocket"));
    }
}
