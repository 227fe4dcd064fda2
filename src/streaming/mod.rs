//! The streaming server behind Exec, Attach and PortForward.
//!
//! The RPCs only validate and cache the request under a single-use token (`tokens`), and answer
//! with an absolute `http://IP:PORT/{exec,attach,portforward}/{token}` URL on this server. The
//! client (crictl directly, or kubelet's proxy for kubectl) upgrades that URL to SPDY/3.1 or a
//! WebSocket (`server`), and the stream is then served from the cached request: kubelet's proxy
//! does not forward the query string.
//!
//! * `spdy`: the SPDY/3.1 protocol itself (hand-written; see its top comment).
//! * `endpoint`: what the RPCs use, the checks and the token cache behind the URLs.
//! * `server`: HTTP/1.1 (hyper), routing and the SPDY upgrade; `http`: the negotiation and
//!   responses the SPDY and WebSocket upgrades share; `dispatch`: a cached request served on
//!   an upgraded SPDY connection; `limits`: kubelet's timeouts.
//! * `remotecommand` (exec/attach over SPDY), `ws` (the WebSocket channel protocols),
//!   `portforward` (over SPDY and WebSocket): protocol adapters that turn a connection into a
//!   [`session::Session`] or forwarded TCP connections.
//! * `exec`, `attach`: the back-ends, on containerd's task API and the container's stdio.
//!
//! The semantics follow kubelet's streaming library (`k8s.io/kubelet/pkg/cri/streaming`), which
//! containerd and CRI-O both serve; `/work/shared/streaming.md` is the protocol brief.

pub mod attach;
pub mod client;
pub mod dispatch;
pub mod endpoint;
pub mod exec;
pub mod http;
pub mod limits;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod session;
pub mod spdy;
pub mod status;
pub mod tokens;
pub mod ws;

pub use endpoint::Streaming;
pub use limits::{IDLE_TIMEOUT, STREAM_CREATION_TIMEOUT};
