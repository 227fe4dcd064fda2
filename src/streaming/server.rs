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
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::dispatch::serve_spdy;
use super::endpoint::Streaming;
use super::http::{
    header_contains, negotiate, plain, Body, PORT_FORWARD_PROTOCOL, PROTOCOL_HEADER,
};
use super::remotecommand::SPDY_PROTOCOLS;
use super::tokens::Request as Cached;
use super::ws;
use crate::runtime::Runtime;

impl Streaming {
    /// Serves the streaming HTTP server on `listener` until the process ends.
    pub fn spawn(self: &Arc<Self>, rt: Arc<Runtime>, listener: tokio::net::TcpListener) {
        tokio::spawn(serve(rt, self.clone(), listener));
    }
}

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
        let _session = crate::metrics::streaming_session(cached.kind());
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
