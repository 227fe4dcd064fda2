//! What the pause and workload specs are built on. oci-spec's `Default`s are a docker-like
//! spec of their own (capabilities, rlimits, mounts, namespaces, masked paths); these start
//! from them with every such choice cleared, so nothing reaches runc that the builders in
//! [`super::container`] and [`super::sandbox`] did not set themselves.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{Linux, Mount, Process, Root, Spec, User};

/// A process with nothing chosen: each builder sets its user, args, env, cwd, capabilities
/// and limits.
pub fn process() -> Process {
    let mut p = Process::default();
    p.set_terminal(Some(false))
        .set_console_size(None)
        .set_user(user(0, 0, Vec::new()))
        .set_args(None)
        .set_command_line(None)
        .set_env(None)
        .set_cwd(PathBuf::from("/"))
        .set_capabilities(None)
        .set_rlimits(None)
        .set_no_new_privileges(None)
        .set_apparmor_profile(None)
        .set_oom_score_adj(None)
        .set_selinux_label(None)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);
    p
}

/// The user a process starts as, by ids only.
pub fn user(uid: u32, gid: u32, additional_gids: Vec<u32>) -> User {
    User::default()
        .set_uid(uid)
        .set_gid(gid)
        .set_additional_gids(Some(additional_gids))
        .set_umask(None)
        .set_username(None)
        .clone()
}

/// Linux settings with nothing chosen: no namespaces, resources, paths or devices.
pub fn linux() -> Linux {
    let mut l = Linux::default();
    l.set_net_devices(None)
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl(None)
        .set_resources(None)
        .set_cgroups_path(None)
        .set_namespaces(None)
        .set_devices(None)
        .set_seccomp(None)
        .set_rootfs_propagation(None)
        .set_masked_paths(None)
        .set_readonly_paths(None)
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_memory_policy(None)
        .set_personality(None)
        .set_time_offsets(None);
    l
}

/// The spec around them: the root filesystem at `rootfs` in the bundle (containerd's
/// layout), no hooks, no domain name.
pub fn spec(
    readonly_rootfs: bool,
    mounts: Vec<Mount>,
    process: Process,
    hostname: Option<String>,
    annotations: HashMap<String, String>,
    linux: Linux,
) -> Spec {
    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"))
        .set_readonly(Some(readonly_rootfs));
    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string())
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_hostname(hostname)
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(annotations))
        .set_linux(Some(linux));
    spec
}
