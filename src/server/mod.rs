//! The CRI gRPC layer: a unix socket, per-RPC tracing, and the two services.

pub mod authority;
mod deadline;
mod image_rpc;
pub mod metrics;
pub mod recovery;
mod runtime_rpc;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::net::UnixListener;

use crate::cri::{
    image_service_server::ImageServiceServer, runtime_service_server::RuntimeServiceServer,
};
use crate::error::{Error, Result};
use crate::pod::Node;
use crate::runtime::Runtime;

/// The tonic service object: a cheap handle on the node.
#[derive(Clone)]
pub struct Peapod {
    pub node: Arc<Node>,
    /// Where Exec/Attach/PortForward requests are cached and served.
    pub streaming: Arc<crate::streaming::Streaming>,
}

impl Peapod {
    /// The shared context the domain modules work through.
    pub fn rt(&self) -> &Arc<Runtime> {
        &self.node.rt
    }
}

/// Binds the CRI socket. A stale socket file is replaced; a live peapod already serving
/// there is an error, so two runtimes never split kubelet's requests between them.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("create {}: {e}", dir.display())))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(Error::AlreadyExists(format!(
                "another process is already serving on {}; stop it or choose another --listen",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::internal(format!("remove stale socket {}: {e}", path.display())))?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| Error::internal(format!("bind {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::internal(format!("chmod {}: {e}", path.display())))?;
    Ok(l)
}

/// Serves both CRI services on `listener` until `shutdown` resolves, then lets the
/// RPCs in flight finish (the caller bounds how long it waits).
///
/// The routes are served on hyper directly rather than through tonic's transport server
/// for two reasons: each connection goes through [`authority::AuthorityFix`] (kubelet sends
/// the socket path as `:authority`), and the client's deadline is answered with
/// DEADLINE_EXCEEDED by [`deadline::Deadline`], where tonic's would say CANCELLED. RPCs that
/// need the indexes wait for recovery behind [`recovery::Recovered`].
pub async fn serve(
    node: Arc<Node>,
    streaming: Arc<crate::streaming::Streaming>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let rt = node.rt.clone();
    let svc = Peapod { node, streaming };
    let routes = tonic::service::Routes::new(
        RuntimeServiceServer::new(svc.clone())
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(64 << 20),
    )
    .add_service(
        ImageServiceServer::new(svc)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(64 << 20),
    )
    .prepare();
    // The deadline inside the trace, so a call cut short by it is logged and counted with
    // the DEADLINE_EXCEEDED it answered.
    let service = RpcTrace(deadline::Deadline(recovery::Recovered {
        inner: routes,
        rt,
    }));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, service.clone(), closing.clone()));
                }
                Err(e) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept on the CRI socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection<S>(
    stream: tokio::net::UnixStream,
    service: S,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(authority::AuthorityFix::new(stream));
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        // As tonic's server: no cap on concurrent calls from the one trusted client.
        .max_concurrent_streams(None)
        .serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "CRI connection ended with an error");
    }
}

static NEXT_RPC: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Logs every RPC's method, gRPC status and latency at debug level, and records them in
/// [`crate::metrics`].
#[derive(Clone)]
pub struct RpcTrace<S>(S);

impl<S, B> tower::Service<http::Request<B>> for RpcTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::result::Result<S::Response, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let method = path.rsplit('/').next().unwrap_or_default().to_string();
        // Everything logged while serving this call carries its sequence number and method,
        // so one RPC's lines can be picked out of a busy node's log.
        let seq = NEXT_RPC.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = tracing::debug_span!("rpc", seq, method = %method);
        let fut = {
            let _entered = span.enter();
            self.0.call(req)
        };
        let mut call = CallRecord {
            path,
            start: Instant::now(),
            done: false,
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let res = fut.await;
                let code = match &res {
                    Ok(r) => crate::metrics::header_code(r.headers()),
                    Err(_) => tonic::Code::Internal,
                };
                call.finish(code);
                res
            },
            span,
        ))
    }
}

/// One CRI call being served: logged and recorded in the metrics when answered, or, if the
/// client goes away first (its future is dropped), as `Cancelled`.
struct CallRecord {
    path: String,
    start: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: tonic::Code) {
        self.done = true;
        let elapsed = self.start.elapsed();
        tracing::debug!(
            rpc = %self.path.rsplit('/').next().unwrap_or_default(),
            grpc_status = code as i32,
            latency_us = elapsed.as_micros() as u64,
            "CRI call"
        );
        crate::metrics::cri_call(&self.path, code, elapsed);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.done {
            self.finish(tonic::Code::Cancelled);
        }
    }
}
