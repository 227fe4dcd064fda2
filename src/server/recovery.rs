//! Until peapod has rebuilt its indexes from containerd at start-up, the RPCs that read or
//! change sandboxes and containers answer UNAVAILABLE (kubelet retries them) rather than act
//! on an empty index; the others answer at once, so Status can say why the runtime is not
//! ready. One layer in front of every RPC, so no handler repeats the check.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;

use crate::runtime::Runtime;

/// The gRPC path prefix of the RuntimeService; the ImageService needs no index.
const RUNTIME_SERVICE: &str = "/runtime.v1.RuntimeService/";

/// RuntimeService methods that read no sandbox or container record, answered before recovery.
const ANSWER_BEFORE_RECOVERY: &[&str] = &[
    "Version",
    "Status",
    "RuntimeConfig",
    "UpdateRuntimeConfig",
    "GetContainerEvents",
    "CheckpointContainer",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
];

/// Whether the RPC at `path` must wait for recovery.
pub fn needs_recovery(path: &str) -> bool {
    path.strip_prefix(RUNTIME_SERVICE)
        .is_some_and(|method| !ANSWER_BEFORE_RECOVERY.contains(&method))
}

#[derive(Clone)]
pub struct Recovered<S> {
    pub inner: S,
    pub rt: Arc<Runtime>,
}

impl<S, B> tower::Service<http::Request<B>> for Recovered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if needs_recovery(req.uri().path()) {
            if let Err(e) = self.rt.require_recovered() {
                let status: tonic::Status = e.into();
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_level_rpcs_answer_before_recovery() {
        for m in ["Version", "Status", "RuntimeConfig", "GetContainerEvents"] {
            assert!(!needs_recovery(&format!("{RUNTIME_SERVICE}{m}")), "{m}");
        }
        for m in [
            "RunPodSandbox",
            "ListContainers",
            "ExecSync",
            "PodSandboxStats",
            "Exec",
        ] {
            assert!(needs_recovery(&format!("{RUNTIME_SERVICE}{m}")), "{m}");
        }
        assert!(!needs_recovery("/runtime.v1.ImageService/ListImages"));
    }

    #[tokio::test]
    async fn an_index_rpc_before_recovery_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(Runtime::new(crate::config::Config {
            state_dir: dir.path().to_path_buf(),
            containerd_socket: dir.path().join("absent.sock"),
            ..Default::default()
        }));
        let ok = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let mut svc = Recovered {
            inner: ok,
            rt: rt.clone(),
        };
        let call = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
        let res = tower::Service::call(&mut svc, call("/runtime.v1.RuntimeService/ListContainers"))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(res.headers()).expect("a grpc status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let res = tower::Service::call(&mut svc, call("/runtime.v1.RuntimeService/Version"))
            .await
            .unwrap();
        assert!(tonic::Status::from_header_map(res.headers()).is_none());
        rt.set_recovered();
        let res = tower::Service::call(&mut svc, call("/runtime.v1.RuntimeService/ListContainers"))
            .await
            .unwrap();
        assert!(tonic::Status::from_header_map(res.headers()).is_none());
    }
}
