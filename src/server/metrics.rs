//! The Prometheus endpoint: `GET /metrics` on `--metrics-address`, plain HTTP/1.1 on hyper
//! (the HTTP server peapod already has), as containerd serves its `[metrics] address`. No
//! TLS and no authentication: bind it to localhost or a node-internal address.
//!
//! What is recorded lives in [`crate::metrics`]; this layer only adds what is read at scrape
//! time from the runtime (pods and containers by state) and serves the text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::cri;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// Binds the metrics address; a taken port fails peapod's start, as any bad setting does.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::invalid(format!("metrics_address {addr}: cannot listen: {e}")))
}

/// Serves scrapes until peapod exits.
pub fn spawn(rt: Arc<Runtime>, listener: TcpListener) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the metrics address failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let rt = rt.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let rt = rt.clone();
                    async move { Ok::<_, Infallible>(answer(&rt, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    });
}

fn answer<B>(rt: &Runtime, req: &http::Request<B>) -> http::Response<String> {
    let reply = |status: http::StatusCode, ctype: &str, body: String| {
        let mut r = http::Response::new(body);
        *r.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        r
    };
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            record_object_counts(rt);
            reply(
                http::StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                crate::metrics::encode(),
            )
        }
        (_, "/metrics") => reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
        _ => reply(
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "peapod serves its metrics at /metrics\n".into(),
        ),
    }
}

/// Pods and containers by state, counted from the in-memory index (no containerd call).
fn record_object_counts(rt: &Runtime) {
    let (mut ready, mut notready) = (0, 0);
    for s in rt.sandboxes.all() {
        if s.is_ready() {
            ready += 1;
        } else {
            notready += 1;
        }
    }
    let mut by_state = [0i64; 4];
    for c in rt.containers.all() {
        let i = match c.cri_state() {
            cri::ContainerState::ContainerCreated => 0,
            cri::ContainerState::ContainerRunning => 1,
            cri::ContainerState::ContainerExited => 2,
            cri::ContainerState::ContainerUnknown => 3,
        };
        by_state[i] += 1;
    }
    crate::metrics::set_object_counts(
        &[("ready", ready), ("notready", notready)],
        &[
            ("created", by_state[0]),
            ("running", by_state[1]),
            ("exited", by_state[2]),
            ("unknown", by_state[3]),
        ],
    );
}
