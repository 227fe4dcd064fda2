//! SPDY/3.1 as the Kubernetes streaming protocols use it: the framing, the zlib-compressed
//! header blocks, and a multiplexed connection over any byte stream.
//!
//! Hand-written because no crate fits: crates.io has no SPDY server (`spdy` and `spdystream` do
//! not exist there; `spdy-mux` is a GPL-3.0 client-only multiplexer that rejects the peer's
//! SYN_STREAMs, which is all a server receives). The peer is always Go's `moby/spdystream`
//! (client-go, kubelet's proxy, crictl), so this module speaks exactly the subset it does and
//! nothing else: no flow control (spdystream never grants window, so a server enforcing it would
//! stall), no server pings, no server-initiated streams. Each constant names the upstream Go
//! source it mirrors. `/work/shared/streaming.md` §3 is the protocol brief.
//!
//! * [`frame`]: frame layouts and their encoding/decoding.
//! * [`headers`]: header blocks and the per-direction zlib streams with the SPDY dictionary.
//! * [`conn`]: a connection (server or client role): a read loop, one writer, streams as
//!   channels.

pub mod conn;
pub mod frame;
pub mod headers;

pub use conn::{Connection, Incoming, Role, Stream, StreamReader, StreamWriter};
pub use frame::Frame;
pub use headers::Headers;
