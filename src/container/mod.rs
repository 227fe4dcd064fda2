//! Workload containers: the lifecycle RPCs (`lifecycle`), exit monitoring and events
//! (`monitor`), containerd's OOM events (`oom`), recovery after a restart (`recover`), reading
//! the image's users (`rootfs`), ExecSync (`exec`), resource updates (`update`), the event
//! stream (`events`), the verbose status (`inspect`) and the OCI spec containerd keeps
//! (`stored_spec`). Their records are in [`crate::store`], their stdio in [`crate::stdio`].

pub mod events;
pub mod exec;
pub mod inspect;
pub mod lifecycle;
pub mod monitor;
pub mod oom;
pub mod recover;
pub mod rootfs;
pub mod stored_spec;
pub mod update;
