//! Workload containers: the record and index (`record`), stdio FIFOs (`io`), the CRI log
//! writer (`logs`), the lifecycle RPCs (`lifecycle`), exit monitoring and events (`monitor`),
//! containerd's OOM events (`oom`), recovery after a restart (`recover`), reading the image's
//! users (`rootfs`), ExecSync (`exec`), resource updates (`update`), stats (`stats`, over
//! [`crate::cgroup`]), the event stream (`events`) and the verbose status (`inspect`).

pub mod events;
pub mod exec;
pub mod inspect;
pub mod io;
pub mod lifecycle;
pub mod logs;
pub mod monitor;
pub mod oom;
pub mod record;
pub mod recover;
pub mod rootfs;
pub mod stats;
pub mod stored_spec;
pub mod update;

pub use record::{Container, ContainerMeta, ContainerState, Containers, Phase};
