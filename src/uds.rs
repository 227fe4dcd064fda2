//! gRPC channels over unix sockets. tonic's transport dials TCP only, so each client of a
//! unix socket (peapod to containerd, `peapod check` and `peapodctl` to peapod) dials through
//! this connector; the URI tonic passes is a placeholder and ignored.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::Endpoint;

/// An endpoint whose URI only satisfies tonic; [`connector`] decides where it goes.
pub fn endpoint(connect_timeout: Duration) -> Endpoint {
    Endpoint::from_static("http://[::]").connect_timeout(connect_timeout)
}

/// Dials `path` for every connection the channel opens (again after containerd restarts).
pub fn connector(
    path: PathBuf,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) }
    })
}
