//! Workload containers: the record and index (`record`), stdio FIFOs (`io`) and the CRI
//! log writer (`logs`).

pub mod io;
pub mod logs;
pub mod record;

pub use record::{Container, ContainerMeta, ContainerState, Containers, Phase};
