//! peapod's own state, beside what containerd keeps: the records and in-memory indexes of
//! sandboxes and containers (served to List and Status RPCs without a containerd round
//! trip), name reservations, and the status files that survive a restart.
//!
//! Records hold data and what reads it back as CRI; the domain modules that change them
//! (`sandbox`, `container`, `pod`) all sit above this one, which is why a container can read
//! its sandbox's record without calling into the sandbox module.

pub mod container;
pub mod files;
pub mod index;
pub mod names;
pub mod sandbox;

pub use container::{
    Container, ContainerMeta, ContainerState, ContainerUserIds, Containers, Phase,
};
pub use files::{read_json, sweep_temp_files, write_json_atomic, Unpersisted};
pub use index::{labels_match, resolve_prefix, Index, Indexed};
pub use names::{Names, Reservation};
pub use sandbox::{Sandbox, SandboxState, Sandboxes};
