//! The CRI gRPC layer: a unix socket, per-RPC tracing, and the two services.

mod image_rpc;
mod runtime_rpc;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::cri::{
    image_service_server::ImageServiceServer, runtime_service_server::RuntimeServiceServer,
};
use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// The tonic service object: a cheap handle on the shared runtime.
#[derive(Clone)]
pub struct Peapod {
    pub rt: Arc<Runtime>,
    /// Where Exec/Attach/PortForward requests are cached and served.
    pub streaming: Arc<crate::streaming::Streaming>,
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

/// Serves both CRI services on `listener` until `shutdown` resolves.
pub async fn serve(
    rt: Arc<Runtime>,
    streaming: Arc<crate::streaming::Streaming>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let svc = Peapod { rt, streaming };
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(RpcTrace))
        .add_service(
            RuntimeServiceServer::new(svc.clone())
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(
            ImageServiceServer::new(svc)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::internal(format!("CRI server: {e}")))
}

static NEXT_RPC: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Logs every RPC's method, gRPC status and latency at debug level.
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
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        // Everything logged while serving this call carries its sequence number and method,
        // so one RPC's lines can be picked out of a busy node's log.
        let seq = NEXT_RPC.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = tracing::debug_span!("rpc", seq, method = %method);
        let fut = {
            let _entered = span.enter();
            self.0.call(req)
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let start = Instant::now();
                let res = fut.await;
                let grpc_status = res
                    .as_ref()
                    .ok()
                    .and_then(|r| r.headers().get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string();
                tracing::debug!(
                    rpc = %method,
                    grpc_status = %grpc_status,
                    latency_us = start.elapsed().as_micros() as u64,
                    "CRI call"
                );
                res
            },
            span,
        ))
    }
}
