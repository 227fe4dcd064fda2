//! Workload containers: the record and index (`record`), stdio FIFOs (`io`), the CRI
//! log writer (`logs`), ExecSync (`exec`), resource updates (`update`), stats (`stats`, over
//! `cgroup`) and the event stream (`events`).

pub mod cgroup;
pub mod events;
pub mod exec;
pub mod io;
pub mod logs;
pub mod record;
pub mod stats;
pub mod stored_spec;
pub mod update;

pub use record::{Container, ContainerMeta, ContainerState, Containers, Phase};
