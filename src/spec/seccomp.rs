//! Seccomp profiles: peapod's RuntimeDefault profile and Localhost profiles read from files.
//!
//! The default profile is an allow-list in the spirit of the common runtimes' defaults: every
//! ordinary syscall is allowed, the rest fail with EPERM. Syscalls that only make sense with a
//! capability (mount, module loading, reboot, namespace creation, clock setting, …) are
//! allowed only when the container holds that capability, so `add: [SYS_ADMIN]` keeps working
//! under the default profile. Without CAP_SYS_ADMIN `clone` is allowed only without namespace
//! flags and `clone3` returns ENOSYS (its flags live in memory seccomp cannot inspect; libc then
//! falls back to `clone`). runc ignores names its libseccomp does not know, so the list may name
//! syscalls of other architectures or newer kernels.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde_json::Value;

use crate::error::{oci_err, Error, Result};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Namespace flags of clone(2): CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

/// Syscalls every container may make.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // ptrace and friends: safe under seccomp since Linux 4.8 (the filter is re-checked after
    // the tracer changes the syscall), and needed by debuggers and `ps`-like tools.
    "ptrace",
    "kcmp",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    // Architecture-specific, harmless where they exist.
    "arch_prctl",
    "modify_ldt",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
    "riscv_flush_icache",
    "riscv_hwprobe",
];

/// Syscalls allowed only to holders of a capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (Capability::SysPtrace, &["process_madvise"]),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

/// The seccomp architectures of this host (the native one plus its compat ABIs).
pub fn native_arches() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "x86" => vec![Arch::ScmpArchX86],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "arm" => vec![Arch::ScmpArchArm],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        "powerpc64" => vec![Arch::ScmpArchPpc64le],
        "loongarch64" => vec![Arch::ScmpArchLoongarch64],
        _ => vec![Arch::ScmpArchNative],
    }
}

fn allow(names: Vec<String>) -> Result<LinuxSyscall> {
    LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .map_err(oci_err)
}

/// Allows `name` only when its first argument satisfies `op` against `value` (and `mask`
/// for a masked comparison).
fn allow_if_arg0(
    name: &str,
    value: u64,
    mask: Option<u64>,
    op: LinuxSeccompOperator,
) -> Result<LinuxSyscall> {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(value)
        .op(op);
    if let Some(m) = mask {
        arg = arg.value_two(m);
    }
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg.build().map_err(oci_err)?])
        .build()
        .map_err(oci_err)
}

/// peapod's RuntimeDefault profile for a container holding `caps` (its bounding set).
pub fn default_profile(caps: &Capabilities) -> Result<LinuxSeccomp> {
    let mut syscalls = vec![allow(ALLOWED.iter().map(|s| s.to_string()).collect())?];

    let mut extra: Vec<String> = Vec::new();
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            for n in *names {
                if !extra.iter().any(|e| e == n) {
                    extra.push((*n).to_string());
                }
            }
        }
    }
    if !extra.is_empty() {
        syscalls.push(allow(extra)?);
    }

    // personality(2): only the harmless personas (PER_LINUX, PER_LINUX32, UNAME26 variants, query).
    for persona in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(allow_if_arg0(
            "personality",
            persona,
            None,
            LinuxSeccompOperator::ScmpCmpEq,
        )?);
    }

    if !caps.contains(&Capability::SysAdmin) {
        // clone without any CLONE_NEW* flag (x86/arm: flags are argument 0).
        syscalls.push(allow_if_arg0(
            "clone",
            0,
            Some(CLONE_NS_FLAGS),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )?);
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()
                .map_err(oci_err)?,
        );
    }

    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(native_arches())
        .syscalls(syscalls)
        .build()
        .map_err(oci_err)
}

/// Resolves a Localhost profile reference to a file path. With `root`, relative references
/// are taken inside it and absolute ones must lie inside it.
pub fn localhost_path(reference: &str, root: Option<&Path>) -> Result<PathBuf> {
    if reference.is_empty() {
        return Err(Error::invalid(
            "seccomp: a Localhost profile needs localhost_ref (the profile's path)",
        ));
    }
    let p = Path::new(reference);
    match root {
        None if p.is_absolute() => Ok(p.to_path_buf()),
        None => Err(Error::invalid(format!(
            "seccomp localhost profile {reference:?}: path must be absolute"
        ))),
        Some(root) => {
            let joined = if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            };
            let canon = joined.canonicalize().map_err(|e| {
                Error::invalid(format!(
                    "seccomp localhost profile {}: {e}",
                    joined.display()
                ))
            })?;
            let root_canon = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
            if !canon.starts_with(&root_canon) {
                return Err(Error::invalid(format!(
                    "seccomp localhost profile {}: not inside the allowed profile directory {}",
                    joined.display(),
                    root.display()
                )));
            }
            Ok(canon)
        }
    }
}

/// The largest Localhost profile read; containerd's own default profile is about 20 KiB.
const MAX_PROFILE: u64 = 1 << 20;

/// Loads a Localhost profile. Both the OCI form (`LinuxSeccomp`) and the Docker/containerd
/// profile form are accepted: `name` is taken as `names`, `includes`/`excludes` conditions on
/// capabilities and architectures are evaluated against `caps` and this host, and `archMap`
/// supplies the architectures when `architectures` is absent.
pub fn load_localhost(path: &Path, caps: &Capabilities) -> Result<LinuxSeccomp> {
    let bad = |what: String| {
        Error::invalid(format!(
            "seccomp localhost profile {}: {what}",
            path.display()
        ))
    };
    // The path comes from a pod spec: a FIFO or /dev/zero must neither hang nor exhaust us.
    let bytes =
        crate::safe_fs::read_host_file(path, MAX_PROFILE).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    let mut v: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object".into()))?;

    let native = native_arches();
    let native_names: Vec<String> = native.iter().map(arch_name).collect();

    if !obj.contains_key("architectures") {
        if let Some(Value::Array(map)) = obj.remove("archMap") {
            let mut arches = Vec::new();
            for entry in map {
                if entry.get("architecture").and_then(Value::as_str)
                    == native_names.first().map(String::as_str)
                {
                    arches.push(entry["architecture"].clone());
                    if let Some(Value::Array(subs)) = entry.get("subArchitectures") {
                        arches.extend(subs.iter().cloned());
                    }
                }
            }
            if !arches.is_empty() {
                obj.insert("architectures".into(), Value::Array(arches));
            }
        }
    } else {
        obj.remove("archMap");
    }

    if let Some(Value::Array(calls)) = obj.get_mut("syscalls") {
        let cap_names: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
        calls.retain_mut(|call| {
            let Some(c) = call.as_object_mut() else {
                return true;
            };
            if let Some(name) = c.remove("name") {
                let mut names = match c.remove("names") {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                names.push(name);
                c.insert("names".into(), Value::Array(names));
            }
            let keep_inc = c.remove("includes").is_none_or(|inc| {
                list(&inc, "caps").iter().all(|x| cap_names.contains(x)) && {
                    let a = list(&inc, "arches");
                    a.is_empty() || a.iter().any(|x| native_names.contains(&arch_alias(x)))
                }
            });
            let keep_exc = c.remove("excludes").is_none_or(|exc| {
                let caps_ex = list(&exc, "caps");
                let arches_ex = list(&exc, "arches");
                !caps_ex.iter().any(|x| cap_names.contains(x))
                    && !arches_ex
                        .iter()
                        .any(|x| native_names.contains(&arch_alias(x)))
            });
            c.remove("comment");
            keep_inc && keep_exc
        });
    }
    serde_json::from_value::<LinuxSeccomp>(v)
        .map_err(|e| bad(format!("not a seccomp profile: {e}")))
}

fn list(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn arch_name(a: &Arch) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Docker profiles name architectures in `includes.arches` by Go arch (`amd64`).
fn arch_alias(go: &str) -> String {
    match go {
        "amd64" => "SCMP_ARCH_X86_64",
        "386" | "x86" => "SCMP_ARCH_X86",
        "x32" => "SCMP_ARCH_X32",
        "arm64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "s390x" => "SCMP_ARCH_S390X",
        "ppc64le" => "SCMP_ARCH_PPC64LE",
        other => other,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &LinuxSeccomp, name: &str) -> bool {
        p.syscalls().as_ref().unwrap().iter().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow
                && s.args().is_none()
                && s.names().iter().any(|n| n == name)
        })
    }

    fn caps(list: &[Capability]) -> Capabilities {
        list.iter().copied().collect()
    }

    #[test]
    fn default_profile_denies_with_eperm() {
        let p = default_profile(&caps(&[])).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert!(!p.architectures().as_ref().unwrap().is_empty());
        for ok in [
            "read",
            "write",
            "openat",
            "execve",
            "futex",
            "socket",
            "epoll_wait",
        ] {
            assert!(allowed(&p, ok), "{ok} should be allowed");
        }
    }

    #[test]
    fn default_profile_blocks_dangerous_syscalls_without_caps() {
        let p = default_profile(&caps(&[Capability::Chown, Capability::NetRaw])).unwrap();
        for bad in [
            "mount",
            "umount2",
            "reboot",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "unshare",
            "setns",
            "sethostname",
            "setdomainname",
            "swapon",
            "pivot_root",
            "keyctl",
            "add_key",
            "bpf",
            "chroot",
            "acct",
            "clock_settime",
            "open_by_handle_at",
            "userfaultfd",
            "io_uring_setup",
        ] {
            assert!(
                !allowed(&p, bad),
                "{bad} must not be allowed unconditionally"
            );
        }
    }

    #[test]
    fn clone_is_filtered_without_sys_admin() {
        let p = default_profile(&caps(&[])).unwrap();
        let clone = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names() == &["clone".to_string()])
            .unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value_two(), Some(CLONE_NS_FLAGS));
        assert_eq!(arg.value(), 0);
        assert_ne!(CLONE_NS_FLAGS & 0x1000_0000, 0, "CLONE_NEWUSER is masked");
        let clone3 = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names() == &["clone3".to_string()])
            .unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(ENOSYS));
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let p = default_profile(&caps(&[
            Capability::SysAdmin,
            Capability::SysModule,
            Capability::SysBoot,
            Capability::SysTime,
            Capability::SysChroot,
        ]))
        .unwrap();
        for ok in [
            "mount",
            "umount2",
            "unshare",
            "clone",
            "clone3",
            "sethostname",
            "setdomainname",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "clock_settime",
            "chroot",
        ] {
            assert!(
                allowed(&p, ok),
                "{ok} should be allowed with its capability"
            );
        }
        assert!(!allowed(&p, "kexec_load"));
    }

    #[test]
    fn localhost_path_rules() {
        assert!(matches!(
            localhost_path("", None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            localhost_path("rel.json", None),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            localhost_path("/p/x.json", None).unwrap(),
            PathBuf::from("/p/x.json")
        );
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x.json"), "{}").unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("y.json"), "{}").unwrap();
        assert!(localhost_path("x.json", Some(root.path())).is_ok());
        let outside = other.path().join("y.json");
        let e = localhost_path(outside.to_str().unwrap(), Some(root.path())).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("not inside")));
        let e = localhost_path("../../etc/passwd", Some(root.path())).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
    }

    #[test]
    fn load_missing_or_invalid_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = load_localhost(&missing, &caps(&[])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("missing.json")));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = load_localhost(&bad, &caps(&[])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("bad.json")));
        std::fs::write(&bad, r#"{"syscalls": []}"#).unwrap();
        let e = load_localhost(&bad, &caps(&[])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("bad.json")));
    }

    #[test]
    fn load_oci_form() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(
            &f,
            r#"{"defaultAction":"SCMP_ACT_LOG","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
                "args":[{"index":1,"value":448,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let p = load_localhost(&f, &caps(&[])).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActLog);
        let s = &p.syscalls().as_ref().unwrap()[0];
        assert_eq!(s.errno_ret(), Some(13));
        assert_eq!(s.args().as_ref().unwrap()[0].value(), 448);
    }

    #[test]
    fn load_docker_form() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.json");
        let native = arch_name(&native_arches()[0]);
        std::fs::write(
            &f,
            format!(
                r#"{{"defaultAction":"SCMP_ACT_ERRNO",
                "archMap":[{{"architecture":"{native}","subArchitectures":["SCMP_ARCH_X86"]}},
                           {{"architecture":"SCMP_ARCH_MIPS","subArchitectures":[]}}],
                "syscalls":[
                  {{"name":"read","action":"SCMP_ACT_ALLOW"}},
                  {{"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{{"caps":["CAP_SYS_ADMIN"]}}}},
                  {{"names":["write"],"action":"SCMP_ACT_ALLOW","excludes":{{"caps":["CAP_SYS_ADMIN"]}},"comment":"x"}}
                ]}}"#
            ),
        )
        .unwrap();
        let p = load_localhost(&f, &caps(&[])).unwrap();
        let arches = p.architectures().as_ref().unwrap();
        assert_eq!(arches[0], native_arches()[0]);
        assert!(!arches.contains(&Arch::ScmpArchMips));
        let names: Vec<&String> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.names())
            .collect();
        assert_eq!(names, ["read", "write"]);
        let p = load_localhost(&f, &caps(&[Capability::SysAdmin])).unwrap();
        let names: Vec<&String> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.names())
            .collect();
        assert_eq!(names, ["read", "mount"]);
    }

    #[test]
    fn localhost_profiles_that_are_not_regular_files_fail_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let caps = Capabilities::default();
        let e = load_localhost(&fifo, &caps).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        let e = load_localhost(Path::new("/dev/zero"), &caps)
            .unwrap_err()
            .to_string();
        assert!(e.contains("character device"), "{e}");
        let big = dir.path().join("big.json");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_PROFILE + 1)
            .unwrap();
        let e = load_localhost(&big, &caps).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
    }
}
