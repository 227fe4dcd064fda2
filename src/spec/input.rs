//! What the spec builders are given: facts about the node ([`HostInfo`]), about the sandbox a
//! container joins ([`SandboxInfo`]), and a container's whole input ([`ContainerSpecInput`]).

use std::path::PathBuf;

use oci_spec::image::ImageConfiguration;

use super::resources::{self, CgroupHost};
use super::security::HostSecurity;
use super::user::UserDb;
use crate::cri;

/// What the spec needs to know about the pod sandbox the container joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Sandbox id (annotation `io.kubernetes.cri.sandbox-id`).
    pub id: String,
    /// PID of the sandbox's pause process; its `/proc/<pid>/ns/{net,ipc,uts,pid}` are joined.
    pub pid: u32,
    /// The pod uses the host's network (and UTS) namespace.
    pub host_network: bool,
    /// The pod uses the host's IPC namespace (and the host's /dev/shm).
    pub host_ipc: bool,
    /// The pod uses the host's PID namespace.
    pub host_pid: bool,
    /// The pod's hostname, for the `HOSTNAME` environment variable (for a host-network pod the
    /// caller passes the node's hostname). Empty: the sandbox config's hostname.
    pub hostname: String,
    /// The sandbox's files bind-mounted into every container (absent: not mounted).
    pub hostname_path: Option<PathBuf>,
    pub hosts_path: Option<PathBuf>,
    pub resolv_conf_path: Option<PathBuf>,
    /// The sandbox's /dev/shm directory (ignored with `host_ipc`).
    pub shm_path: Option<PathBuf>,
    /// The pod's cgroup parent (from `LinuxPodSandboxConfig.cgroup_parent`); empty: none.
    pub cgroup_parent: String,
}

/// Facts about the node, detected once at start-up ([`HostInfo::detect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub cgroup_driver: crate::cgroup::Driver,
    pub cgroup: CgroupHost,
    /// The optional cgroup controllers limits may use; the others' limits are dropped.
    pub limits: crate::cgroup::Enforceable,
    pub security: HostSecurity,
    /// peapod's own `oom_score_adj`; container values are clamped to no lower than it.
    pub own_oom_score_adj: i32,
    /// Where host devices are listed from for privileged containers (normally `/dev`).
    pub dev_dir: PathBuf,
}

impl HostInfo {
    /// Detects cgroup version, swap accounting and controllers (hugepage limits off, as
    /// `disable_hugetlb_controller` defaults), AppArmor/SELinux and peapod's oom_score_adj.
    pub fn detect(cgroup_driver: crate::cgroup::Driver) -> Self {
        HostInfo {
            cgroup_driver,
            cgroup: CgroupHost::detect(),
            limits: crate::cgroup::Enforceable::detect(true),
            security: HostSecurity::detect(),
            own_oom_score_adj: resources::own_oom_score_adj(),
            dev_dir: PathBuf::from("/dev"),
        }
    }

    /// [`HostInfo::detect`] with the settings of peapod's configuration (cgroup driver,
    /// hugetlb, seccomp profile root).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let mut host = Self::detect(config.cgroup_driver);
        if !config.disable_hugetlb_controller {
            host.limits = crate::cgroup::Enforceable::detect(false);
        }
        host.security.seccomp_profile_root = config.seccomp_profile_root.clone();
        host
    }
}

/// Everything [`container_spec`] needs.
#[derive(Debug, Clone, Copy)]
pub struct ContainerSpecInput<'a> {
    /// The new container's id (64 hex characters).
    pub id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub sandbox_config: &'a cri::PodSandboxConfig,
    /// The image's configuration (entrypoint, cmd, env, working dir, user).
    pub image: &'a ImageConfiguration,
    /// The image's `/etc/passwd` and `/etc/group` ([`UserDb::from_rootfs`] on the container's
    /// rootfs, or an empty db for images without them).
    pub users: &'a UserDb,
    pub sandbox: &'a SandboxInfo,
    /// PID of the target container's task, for PID namespace mode TARGET.
    pub target_pid: Option<u32>,
    pub host: &'a HostInfo,
}
