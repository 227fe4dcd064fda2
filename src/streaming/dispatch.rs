//! A cached request served on an upgraded SPDY connection: exec and attach through the
//! remotecommand protocol, port forwarding through its own.

use std::sync::Arc;

use super::remotecommand::{self, Wanted};
use super::tokens::Request as Cached;
use super::{attach, exec, portforward};
use crate::runtime::Runtime;

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
