//! Container stdio: the FIFOs a task's or exec process's stdio goes through ([`fifo`]), and
//! what reads them: the CRI log writer ([`log`]) and ExecSync's in-memory capture.

pub mod fifo;
pub mod log;

pub use fifo::{capture, ContainerIo, StdioPaths};
pub use log::LogHandle;
