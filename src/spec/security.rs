//! The container security context: privileged mode, capabilities, masked and read-only
//! paths, seccomp, AppArmor and SELinux.
//!
//! Behaviour follows containerd's CRI plugin (`internal/cri/server/container_create_linux.go`
//! and `internal/cri/opts/spec_linux*.go`) unless a comment says otherwise.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp};

use super::seccomp;
use crate::cri;
use crate::cri::security_profile::ProfileType;
use crate::error::{Error, Result};

/// containerd's CRI default capability set (docker's, minus nothing).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability peapod knows, in kernel bit order (`ALL_CAPABILITIES[n]` is bit `n`).
pub const ALL_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The capabilities in a `/proc/<pid>/status` capability mask (hex).
pub fn capabilities_from_mask(hex: &str) -> Option<Capabilities> {
    let mask = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(
        ALL_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1u64 << bit) != 0)
            .map(|(_, c)| *c)
            .collect(),
    )
}

/// peapod's own bounding set: what "all capabilities" can mean for its containers (runc cannot
/// grant a capability its parent lacks).
pub fn own_bounding_set() -> Option<Capabilities> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    capabilities_from_mask(line)
}

/// containerd's default masked paths (kubelet sends the same list for `procMount: Default`).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The host's security modules and policy settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSecurity {
    /// AppArmor is enabled (`/sys/kernel/security/apparmor` exists).
    pub apparmor_enabled: bool,
    /// Name of the loaded AppArmor profile that RuntimeDefault means.
    pub apparmor_default_profile: Option<String>,
    /// Why the default profile could not be loaded, when AppArmor is enabled but
    /// `apparmor_default_profile` is unset: RuntimeDefault containers then fail to create
    /// rather than run unconfined.
    pub apparmor_load_error: Option<String>,
    /// SELinux is enabled (selinuxfs mounted).
    pub selinux_enabled: bool,
    /// The capabilities "ALL" and privileged grant: peapod's own bounding set (like containerd);
    /// `None` means [`ALL_CAPABILITIES`].
    pub capabilities: Option<Capabilities>,
    /// When set, Localhost seccomp profiles must lie in this directory (relative references are
    /// taken inside it).
    pub seccomp_profile_root: Option<PathBuf>,
    /// The kernel and runc can make recursive read-only mounts
    /// ([`super::features::recursive_read_only_mounts`]).
    pub recursive_read_only_mounts: bool,
}

impl HostSecurity {
    /// Detects AppArmor, SELinux and recursive read-only mount support on this host; no default
    /// AppArmor profile, no profile root.
    pub fn detect() -> Self {
        let apparmor_enabled = Path::new("/sys/kernel/security/apparmor").exists()
            && std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .map(|s| s.trim_start().starts_with('Y'))
                .unwrap_or(true);
        let selinux_enabled = Path::new("/sys/fs/selinux/enforce").exists();
        let (apparmor_default_profile, apparmor_load_error) = if apparmor_enabled {
            match super::apparmor::ensure_default_loaded() {
                Ok(name) => (Some(name), None),
                Err(e) => {
                    tracing::warn!(error = %e, "AppArmor default profile not loaded; RuntimeDefault containers will fail to create");
                    (None, Some(e))
                }
            }
        } else {
            (None, None)
        };
        HostSecurity {
            apparmor_enabled,
            apparmor_default_profile,
            apparmor_load_error,
            selinux_enabled,
            capabilities: own_bounding_set(),
            recursive_read_only_mounts: super::features::recursive_read_only_mounts(),
            ..Default::default()
        }
    }
}

/// Whether the container is privileged; a privileged container needs a privileged sandbox.
pub fn privileged(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    sandbox: &cri::PodSandboxConfig,
) -> Result<bool> {
    if !sc.is_some_and(|s| s.privileged) {
        return Ok(false);
    }
    let sandbox_privileged = sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if !sandbox_privileged {
        return Err(Error::invalid(
            "security_context.privileged: a privileged container needs a privileged pod sandbox \
             (sandbox security_context.privileged is false)",
        ));
    }
    Ok(true)
}

/// Parses a CRI capability name: with or without `CAP_`, any case.
pub fn parse_capability(name: &str, field: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    serde_json::from_value::<Capability>(serde_json::Value::String(format!("CAP_{bare}")))
        .map_err(|_| Error::invalid(format!("{field}: unknown capability {name:?}")))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The process capabilities.
///
/// Privileged: every capability (`all`: the host's, see [`HostSecurity::capabilities`]). Otherwise the default set, then (as containerd does) `ALL` in
/// add, `ALL` in drop, the named adds, the named drops. Bounding, effective and permitted are
/// that set. Inheritable is empty (like containerd ≥ 1.6.18 / runc after CVE-2022-29162: a
/// non-empty inheritable set lets an exec'd file with inheritable file caps gain them), except
/// for `add_ambient_capabilities`, which the kernel only keeps when they are also inheritable
/// and permitted; those go into every set.
pub fn capabilities(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    host: &HostSecurity,
) -> Result<LinuxCapabilities> {
    let all: Capabilities = match &host.capabilities {
        Some(c) => c.clone(),
        None => ALL_CAPABILITIES.iter().copied().collect(),
    };
    const ADD: &str = "security_context.capabilities.add_capabilities";
    const DROP: &str = "security_context.capabilities.drop_capabilities";
    const AMBIENT: &str = "security_context.capabilities.add_ambient_capabilities";

    let mut set: Capabilities = if privileged {
        all.clone()
    } else {
        DEFAULT_CAPABILITIES.iter().copied().collect()
    };
    let mut ambient = Capabilities::new();
    if let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) {
        if !privileged {
            if c.add_capabilities.iter().any(|n| is_all(n)) {
                set = all.clone();
            }
            if c.drop_capabilities.iter().any(|n| is_all(n)) {
                set.clear();
            }
            for n in c.add_capabilities.iter().filter(|n| !is_all(n)) {
                set.insert(parse_capability(n, ADD)?);
            }
            for n in c.drop_capabilities.iter().filter(|n| !is_all(n)) {
                set.remove(&parse_capability(n, DROP)?);
            }
        } else {
            // Still reject nonsense, even though privileged ignores add/drop.
            for n in c.add_capabilities.iter().filter(|n| !is_all(n)) {
                parse_capability(n, ADD)?;
            }
            for n in c.drop_capabilities.iter().filter(|n| !is_all(n)) {
                parse_capability(n, DROP)?;
            }
        }
        for n in &c.add_ambient_capabilities {
            let cap = parse_capability(n, AMBIENT)?;
            ambient.insert(cap);
            set.insert(cap);
        }
    }
    Ok(LinuxCapabilities::default()
        .set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(Some(ambient.clone()))
        .set_ambient(Some(ambient))
        .clone())
}

/// Masked paths: none when privileged; the request's list when it has one (kubelet fills it);
/// containerd's defaults otherwise. An empty list cannot be told apart from an absent one in
/// proto3; kubelet only sends an empty list for `procMount: Unmasked`, which needs a user
/// namespace, which peapod does not support, so "empty means defaults" loses nothing.
pub fn masked_paths(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Vec<String> {
    paths_or_default(
        sc.map(|s| s.masked_paths.as_slice()),
        privileged,
        DEFAULT_MASKED_PATHS,
    )
}

/// Read-only paths: as [`masked_paths`].
pub fn readonly_paths(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Vec<String> {
    paths_or_default(
        sc.map(|s| s.readonly_paths.as_slice()),
        privileged,
        DEFAULT_READONLY_PATHS,
    )
}

fn paths_or_default(req: Option<&[String]>, privileged: bool, defaults: &[&str]) -> Vec<String> {
    if privileged {
        return Vec::new();
    }
    match req {
        Some(p) if !p.is_empty() => p.to_vec(),
        _ => defaults.iter().map(|s| s.to_string()).collect(),
    }
}

/// A requested security profile, from the typed field or the deprecated string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Profile {
    Unset,
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

fn typed_profile(p: &cri::SecurityProfile) -> Profile {
    match p.profile_type() {
        ProfileType::RuntimeDefault => Profile::RuntimeDefault,
        ProfileType::Unconfined => Profile::Unconfined,
        ProfileType::Localhost => Profile::Localhost(p.localhost_ref.clone()),
    }
}

fn string_profile(s: &str, field: &str) -> Result<Profile> {
    Ok(match s {
        "" => Profile::Unset,
        "unconfined" => Profile::Unconfined,
        "runtime/default" | "docker/default" => Profile::RuntimeDefault,
        s => match s.strip_prefix("localhost/") {
            Some(rest) => Profile::Localhost(rest.to_string()),
            None => {
                return Err(Error::invalid(format!(
                    "{field}: unknown profile {s:?} (want runtime/default, docker/default, \
                     unconfined or localhost/<path>)"
                )))
            }
        },
    })
}

/// The seccomp filter: none for privileged containers and Unconfined (also the default when
/// nothing is requested, as in containerd); peapod's default profile for RuntimeDefault; the
/// file's profile for Localhost. `caps` is the container's bounding set.
#[allow(deprecated)] // seccomp_profile_path: still sent by older kubelets
pub fn seccomp(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    caps: &Capabilities,
    host: &HostSecurity,
) -> Result<Option<LinuxSeccomp>> {
    let profile = match sc {
        None => Profile::Unset,
        Some(s) => match &s.seccomp {
            Some(p) => typed_profile(p),
            None => string_profile(
                &s.seccomp_profile_path,
                "security_context.seccomp_profile_path",
            )?,
        },
    };
    if privileged {
        return Ok(None);
    }
    match profile {
        Profile::Unset | Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => seccomp::default_profile(caps).map(Some),
        Profile::Localhost(r) => {
            let path = seccomp::localhost_path(&r, host.seccomp_profile_root.as_deref())?;
            seccomp::load_localhost(&path, caps).map(Some)
        }
    }
}

/// The AppArmor profile name for the process, if any.
///
/// Without AppArmor on the host a Localhost profile is an error (the pod asked for confinement
/// peapod cannot give); RuntimeDefault and Unconfined are satisfied by "no profile", as in
/// containerd. With AppArmor, unset means RuntimeDefault (kubernetes#51746); RuntimeDefault is
/// the host's default profile, except for privileged containers.
#[allow(deprecated)] // apparmor_profile: still sent by older kubelets
pub fn apparmor(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    host: &HostSecurity,
) -> Result<Option<String>> {
    let profile = match sc {
        None => Profile::Unset,
        Some(s) => match &s.apparmor {
            Some(p) => typed_profile(p),
            None => string_profile(&s.apparmor_profile, "security_context.apparmor_profile")?,
        },
    };
    if !host.apparmor_enabled {
        if let Profile::Localhost(name) = profile {
            return Err(Error::invalid(format!(
                "security_context.apparmor: profile {name:?} requested but AppArmor is not \
                 enabled on this host (/sys/kernel/security/apparmor is missing)"
            )));
        }
        return Ok(None);
    }
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::Unset | Profile::RuntimeDefault if privileged => Ok(None),
        Profile::Unset | Profile::RuntimeDefault => match &host.apparmor_default_profile {
            Some(p) => Ok(Some(p.clone())),
            // Running it unconfined would silently drop the confinement asked for.
            None => Err(Error::FailedPrecondition(format!(
                "security_context.apparmor: RuntimeDefault needs peapod's default AppArmor                  profile, which is not loaded: {}",
                host.apparmor_load_error
                    .as_deref()
                    .unwrap_or("no default profile configured")
            ))),
        },
        Profile::Localhost(name) => {
            let name = name.strip_prefix("localhost/").unwrap_or(&name).to_string();
            if name.is_empty() {
                return Err(Error::invalid(
                    "security_context.apparmor: a Localhost profile needs localhost_ref",
                ));
            }
            Ok(Some(name))
        }
    }
}

/// SELinux labels: `(process label, mount label)`.
///
/// The container's `selinux_options`, else the sandbox's; missing parts default to
/// `system_u:system_r:container_t:s0` (files: `system_u:object_r:container_file_t`). Options on a
/// host without SELinux are an error. Without options no label is set (peapod does not allocate
/// per-pod MCS categories).
pub fn selinux(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    sandbox: &cri::PodSandboxConfig,
    host: &HostSecurity,
) -> Result<Option<(String, String)>> {
    let requested = |o: &&cri::SeLinuxOption| {
        !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
    };
    let opts = sc
        .and_then(|s| s.selinux_options.as_ref())
        .filter(requested)
        .or_else(|| {
            sandbox
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.selinux_options.as_ref())
                .filter(requested)
        });
    let Some(o) = opts else {
        return Ok(None);
    };
    if !host.selinux_enabled {
        return Err(Error::invalid(
            "security_context.selinux_options: SELinux options requested but SELinux is not \
             enabled on this host",
        ));
    }
    let or = |v: &str, d: &str| {
        if v.is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    let user = or(&o.user, "system_u");
    let level = or(&o.level, "s0");
    let process = format!(
        "{user}:{}:{}:{level}",
        or(&o.role, "system_r"),
        or(&o.r#type, "container_t")
    );
    let mount = format!("{user}:object_r:container_file_t:{level}");
    Ok(Some((process, mount)))
}

#[cfg(test)]
#[allow(deprecated)] // the deprecated string fields are tested too
mod tests {
    use super::*;

    fn sc() -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext::default()
    }

    fn sandbox(privileged: bool) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_caps(add: &[&str], drop: &[&str]) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: vec![],
            }),
            ..Default::default()
        }
    }

    fn bounding(c: &LinuxCapabilities) -> Capabilities {
        c.bounding().clone().unwrap()
    }

    #[test]
    fn privileged_needs_privileged_sandbox() {
        let mut s = sc();
        assert!(!privileged(Some(&s), &sandbox(false)).unwrap());
        s.privileged = true;
        let e = privileged(Some(&s), &sandbox(false)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("privileged")));
        assert!(privileged(Some(&s), &sandbox(true)).unwrap());
        assert!(privileged(Some(&s), &cri::PodSandboxConfig::default()).is_err());
    }

    #[test]
    fn default_capabilities() {
        let c = capabilities(None, false, &HostSecurity::default()).unwrap();
        let b = bounding(&c);
        assert_eq!(b.len(), 14);
        assert!(b.contains(&Capability::NetBindService) && b.contains(&Capability::AuditWrite));
        assert!(!b.contains(&Capability::SysAdmin));
        assert_eq!(c.effective().clone().unwrap(), b);
        assert_eq!(c.permitted().clone().unwrap(), b);
        assert!(c.inheritable().as_ref().unwrap().is_empty());
        assert!(c.ambient().as_ref().unwrap().is_empty());
    }

    #[test]
    fn add_and_drop_by_any_spelling() {
        let c = capabilities(
            Some(&with_caps(
                &["sys_admin", "CAP_NET_ADMIN"],
                &["cap_chown", "KILL"],
            )),
            false,
            &HostSecurity::default(),
        )
        .unwrap();
        let b = bounding(&c);
        assert!(b.contains(&Capability::SysAdmin) && b.contains(&Capability::NetAdmin));
        assert!(!b.contains(&Capability::Chown) && !b.contains(&Capability::Kill));
    }

    #[test]
    fn all_in_add_and_drop() {
        let c = capabilities(
            Some(&with_caps(&["ALL"], &["CHOWN"])),
            false,
            &HostSecurity::default(),
        )
        .unwrap();
        let b = bounding(&c);
        assert_eq!(b.len(), ALL_CAPABILITIES.len() - 1);
        assert!(!b.contains(&Capability::Chown));
        let c = capabilities(
            Some(&with_caps(&["NET_BIND_SERVICE"], &["all"])),
            false,
            &HostSecurity::default(),
        )
        .unwrap();
        assert_eq!(
            bounding(&c),
            [Capability::NetBindService].into_iter().collect()
        );
    }

    #[test]
    fn unknown_capability_names_the_field() {
        let e = capabilities(
            Some(&with_caps(&["NOPE"], &[])),
            false,
            &HostSecurity::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument(m) if m.contains("add_capabilities") && m.contains("NOPE"))
        );
        let e = capabilities(
            Some(&with_caps(&[], &["CAP_BOGUS"])),
            false,
            &HostSecurity::default(),
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("drop_capabilities")));
    }

    #[test]
    fn ambient_capabilities_go_in_every_set() {
        let mut s = sc();
        s.capabilities = Some(cri::Capability {
            add_ambient_capabilities: vec!["NET_ADMIN".into()],
            ..Default::default()
        });
        let c = capabilities(Some(&s), false, &HostSecurity::default()).unwrap();
        let one: Capabilities = [Capability::NetAdmin].into_iter().collect();
        assert_eq!(c.ambient().clone().unwrap(), one);
        assert_eq!(c.inheritable().clone().unwrap(), one);
        assert!(bounding(&c).contains(&Capability::NetAdmin));
    }

    #[test]
    fn all_means_the_hosts_capabilities() {
        let host = HostSecurity {
            capabilities: capabilities_from_mask("000001fffeffffff"),
            ..Default::default()
        };
        let c = capabilities(None, true, &host).unwrap();
        assert_eq!(bounding(&c).len(), ALL_CAPABILITIES.len() - 1);
        assert!(!bounding(&c).contains(&Capability::SysResource));
        let c = capabilities(Some(&with_caps(&["ALL"], &[])), false, &host).unwrap();
        assert!(!bounding(&c).contains(&Capability::SysResource));
        assert_eq!(
            capabilities_from_mask("a80425fb").unwrap(),
            DEFAULT_CAPABILITIES
                .iter()
                .copied()
                .collect::<Capabilities>()
        );
        assert!(own_bounding_set().is_some());
    }

    #[test]
    fn privileged_gets_all_capabilities_and_ignores_drop() {
        let c = capabilities(
            Some(&with_caps(&[], &["CHOWN"])),
            true,
            &HostSecurity::default(),
        )
        .unwrap();
        assert_eq!(bounding(&c).len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn masked_and_readonly_paths() {
        assert_eq!(masked_paths(None, false).len(), DEFAULT_MASKED_PATHS.len());
        assert_eq!(
            readonly_paths(None, false).len(),
            DEFAULT_READONLY_PATHS.len()
        );
        assert!(masked_paths(None, true).is_empty());
        assert!(readonly_paths(None, true).is_empty());
        let mut s = sc();
        s.masked_paths = vec!["/proc/x".into()];
        s.readonly_paths = vec!["/proc/y".into()];
        assert_eq!(masked_paths(Some(&s), false), vec!["/proc/x"]);
        assert_eq!(readonly_paths(Some(&s), false), vec!["/proc/y"]);
        assert!(masked_paths(Some(&s), true).is_empty());
    }

    fn caps_default() -> Capabilities {
        DEFAULT_CAPABILITIES.iter().copied().collect()
    }

    #[test]
    fn seccomp_selection() {
        let host = HostSecurity::default();
        let c = caps_default();
        assert!(seccomp(None, false, &c, &host).unwrap().is_none());
        let mut s = sc();
        s.seccomp = Some(cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        assert!(seccomp(Some(&s), false, &c, &host).unwrap().is_some());
        assert!(
            seccomp(Some(&s), true, &c, &host).unwrap().is_none(),
            "privileged: none"
        );
        s.seccomp = Some(cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        });
        assert!(seccomp(Some(&s), false, &c, &host).unwrap().is_none());
    }

    #[test]
    fn seccomp_deprecated_strings() {
        let host = HostSecurity::default();
        let c = caps_default();
        let mut s = sc();
        for (path, some) in [
            ("runtime/default", true),
            ("docker/default", true),
            ("unconfined", false),
            ("", false),
        ] {
            s.seccomp_profile_path = path.into();
            assert_eq!(
                seccomp(Some(&s), false, &c, &host).unwrap().is_some(),
                some,
                "{path}"
            );
        }
        s.seccomp_profile_path = "bogus".into();
        let e = seccomp(Some(&s), false, &c, &host).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("seccomp_profile_path")));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(&f, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        s.seccomp_profile_path = format!("localhost/{}", f.display());
        let p = seccomp(Some(&s), false, &c, &host).unwrap().unwrap();
        assert_eq!(
            p.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
        );
    }

    #[test]
    fn seccomp_localhost_missing_file_is_invalid() {
        let mut s = sc();
        s.seccomp = Some(cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: "/nonexistent/profile.json".into(),
        });
        let e = seccomp(Some(&s), false, &caps_default(), &HostSecurity::default()).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("/nonexistent/profile.json")));
    }

    fn aa(t: ProfileType, r: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn apparmor_without_host_support() {
        let host = HostSecurity::default();
        let e = apparmor(Some(&aa(ProfileType::Localhost, "my-prof")), false, &host).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("AppArmor is not enabled")));
        assert_eq!(
            apparmor(Some(&aa(ProfileType::RuntimeDefault, "")), false, &host).unwrap(),
            None
        );
        let mut s = sc();
        s.apparmor_profile = "localhost/x".into();
        assert!(apparmor(Some(&s), false, &host).is_err());
    }

    #[test]
    fn apparmor_with_host_support() {
        let host = HostSecurity {
            apparmor_enabled: true,
            apparmor_default_profile: Some("peapod-default".into()),
            ..Default::default()
        };
        let p = |s: &cri::LinuxContainerSecurityContext, priv_: bool| {
            apparmor(Some(s), priv_, &host).unwrap()
        };
        assert_eq!(
            p(&aa(ProfileType::Localhost, "my-prof"), false).as_deref(),
            Some("my-prof")
        );
        assert_eq!(
            p(&aa(ProfileType::Localhost, "localhost/my-prof"), false).as_deref(),
            Some("my-prof")
        );
        assert_eq!(
            p(&aa(ProfileType::RuntimeDefault, ""), false).as_deref(),
            Some("peapod-default")
        );
        assert_eq!(p(&aa(ProfileType::RuntimeDefault, ""), true), None);
        assert_eq!(p(&aa(ProfileType::Unconfined, ""), false), None);
        assert_eq!(
            p(&sc(), false).as_deref(),
            Some("peapod-default"),
            "unset means default"
        );
        let mut s = sc();
        s.apparmor_profile = "unconfined".into();
        assert_eq!(p(&s, false), None);
        s.apparmor_profile = "weird".into();
        assert!(apparmor(Some(&s), false, &host).is_err());
    }

    #[test]
    fn apparmor_runtime_default_is_never_silently_unconfined() {
        // AppArmor enabled, but the default profile failed to load.
        let host = HostSecurity {
            apparmor_enabled: true,
            apparmor_load_error: Some("apparmor_parser: not found".into()),
            ..Default::default()
        };
        for s in [aa(ProfileType::RuntimeDefault, ""), sc()] {
            let e = apparmor(Some(&s), false, &host).unwrap_err();
            assert!(
                matches!(&e, Error::FailedPrecondition(m) if m.contains("apparmor_parser")),
                "{e}"
            );
        }
        assert!(
            apparmor(None, false, &host).is_err(),
            "no security context means RuntimeDefault too"
        );
        // Privileged and Unconfined still need no profile.
        assert_eq!(apparmor(Some(&sc()), true, &host).unwrap(), None);
        assert_eq!(
            apparmor(Some(&aa(ProfileType::Unconfined, "")), false, &host).unwrap(),
            None
        );
    }

    #[test]
    fn selinux_labels() {
        let mut s = sc();
        assert_eq!(
            selinux(Some(&s), &sandbox(false), &HostSecurity::default()).unwrap(),
            None
        );
        s.selinux_options = Some(cri::SeLinuxOption {
            level: "s0:c1,c2".into(),
            ..Default::default()
        });
        let e = selinux(Some(&s), &sandbox(false), &HostSecurity::default()).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("SELinux")));
        let host = HostSecurity {
            selinux_enabled: true,
            ..Default::default()
        };
        let (p, m) = selinux(Some(&s), &sandbox(false), &host).unwrap().unwrap();
        assert_eq!(p, "system_u:system_r:container_t:s0:c1,c2");
        assert_eq!(m, "system_u:object_r:container_file_t:s0:c1,c2");
        // Falls back to the sandbox's options.
        let mut sb = sandbox(false);
        sb.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .selinux_options = Some(cri::SeLinuxOption {
            user: "u".into(),
            role: "r".into(),
            r#type: "t".into(),
            level: "s0".into(),
        });
        let (p, _) = selinux(None, &sb, &host).unwrap().unwrap();
        assert_eq!(p, "u:r:t:s0");
    }
}
