//! Pod orchestration: what spans a sandbox and its containers, or a domain module and the
//! images, above `sandbox/`, `container/` and `image/`, which never call each other.
//!
//! - [`node`]: the [`Node`] context (the shared runtime plus network, images, host facts)
//!   and the node-level answers (Version, Status, RuntimeConfig)
//! - [`lifecycle`]: RunPodSandbox, CreateContainer, StopPodSandbox, RemovePodSandbox
//! - [`recover`]: rebuilding the indexes at start-up
//! - [`stats`]: container and pod sandbox stats ([`readings`]: what they keep between calls)

pub mod lifecycle;
pub mod node;
pub mod readings;
pub mod recover;
pub mod stats;

pub use lifecycle::{create_container, remove_sandbox, run_sandbox, stop_sandbox};
pub use node::Node;
pub use recover::recover;
