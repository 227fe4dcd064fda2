//! OCI runtime spec generation for pod containers.
//!
//! A pure translation: CRI `ContainerConfig` + the pod's `PodSandboxConfig` + the image's
//! configuration + facts about the sandbox and the host → `oci_spec::runtime::Spec`, following
//! containerd's CRI plugin. The only I/O is reading what the request names (host paths of
//! mounts and devices, seccomp profile files, `/dev` for privileged containers); host facts
//! are passed in ([`HostInfo`]) so tests can choose them.
//!
//! - [`container`]: the builder, [`container_spec`]
//! - [`mounts`]: default, sandbox and request mounts
//! - [`devices`]: request and host devices
//! - [`security`]: privileged, capabilities, masked/readonly paths, seccomp/AppArmor/SELinux choice
//! - [`seccomp`]: the RuntimeDefault profile and Localhost profile files
//! - [`user`]: `/etc/passwd` and `/etc/group` of the rootfs, the process user and groups
//! - [`resources`]: cgroup resources and `oom_score_adj`

pub mod apparmor;
pub mod base;
pub mod container;
pub mod devices;
pub mod features;
pub mod input;
pub mod mounts;
pub mod resources;
pub mod sandbox;
pub mod seccomp;
pub mod security;
pub mod user;

pub use container::container_spec;
pub use input::{ContainerSpecInput, HostInfo, SandboxInfo};
pub use resources::CgroupHost;
pub use sandbox::{sandbox_spec, SandboxSpecInput};
pub use security::HostSecurity;
pub use user::{ResolvedUser, UserDb};
