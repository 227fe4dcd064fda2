//! Container-side plumbing that does not talk to containerd itself: the stdio FIFOs handed to
//! the shim (`io`) and the CRI log writer that drains them (`logs`).

pub mod io;
pub mod logs;
