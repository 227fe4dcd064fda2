//! Workload containers: the record and index (`record`), stdio FIFOs (`io`), the CRI log
//! writer (`logs`), the lifecycle RPCs (`lifecycle`), exit monitoring and events (`monitor`),
//! recovery after a restart (`recover`) and reading the image's users (`rootfs`).

pub mod io;
pub mod lifecycle;
pub mod logs;
pub mod monitor;
pub mod record;
pub mod recover;
pub mod rootfs;

pub use record::{Container, ContainerMeta, ContainerState, Containers, Phase};
