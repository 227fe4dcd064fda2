//! cgroups, in one place: the driver, the `cgroupsPath` every pause and workload container is
//! given, where a container's cgroup really is on this host, which optional controllers the
//! host has ([`controllers`]), and reading a cgroup's counters ([`counters`]).
//!
//! The spec builders write the paths made here; everything that later needs a container's
//! cgroup (OOM detection, stats) locates it from the `cgroupsPath` in the container's own
//! spec, or from its process when the spec leaves the placement to runc, and never
//! recomputes it from the pod.

pub mod controllers;
pub mod counters;
pub mod driver;
pub mod location;

pub use controllers::{CgroupHost, Enforceable};
pub use counters::{Memory, Sample};
pub use driver::{cgroups_path_dir, expand_slice, Driver};
pub use location::{is_v2, remove_leftover, Cgroup, ROOT};
