//! The AppArmor profile RuntimeDefault means: its text, and loading it into the kernel with
//! `apparmor_parser`, as containerd's CRI plugin does with its `cri-containerd.apparmor.d`
//! profile (containerd `contrib/apparmor`, itself the Docker default profile).
//!
//! Hand-written: no Rust crate generates or loads AppArmor profiles. The policy is the one
//! containerd, Docker and Podman share (broad file, network and capability access; no
//! mounts; no writes to the host-wide parts of /proc and /sys; signals and ptrace only
//! within the profile or from the runtime), written out here in peapod's own terms.

use std::path::Path;
use std::process::Command;

/// Name of peapod's default profile (containerd's is `cri-containerd.apparmor.d`).
pub const DEFAULT_PROFILE: &str = "peapod-default";

/// Where the kernel lists the loaded profiles, one `name (mode)` per line.
const LOADED_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";
const APPARMOR_D: &str = "/etc/apparmor.d";

/// The profile text. `tunables` and `base`: whether `/etc/apparmor.d/tunables/global` and
/// `abstractions/base` exist to be included (without the former, `@{PROC}` is defined here).
pub fn profile_text(name: &str, tunables: bool, base: bool) -> String {
    let mut p = String::from("abi <abi/3.0>,\n\n");
    if tunables {
        p.push_str("#include <tunables/global>\n\n");
    } else {
        p.push_str("@{PROC}=/proc/\n\n");
    }
    p.push_str(&format!(
        "profile {name} flags=(attach_disconnected,mediate_deleted) {{\n"
    ));
    if base {
        p.push_str("  #include <abstractions/base>\n\n");
    }
    let rules: &[&str] = &[
        "# What a container does on its own: files, network, capabilities it was given.",
        "network,",
        "capability,",
        "file,",
        "umount,",
        "# Signals from the host, from runc, and among the container's own processes.",
        "signal (receive) peer=unconfined,",
        "signal (receive) peer=runc,",
        "signal (receive) peer=crun,",
        "__SELF_SIGNALS__",
        "# /proc: writable only below /proc/<pid> and /proc/sys/kernel/shm*.",
        "deny @{PROC}/* w,",
        "deny @{PROC}/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}/** w,",
        "deny @{PROC}/sys/[^k]** w,",
        "deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,",
        "deny @{PROC}/sysrq-trigger rwklx,",
        "deny @{PROC}/kcore rwklx,",
        "# No new mounts.",
        "deny mount,",
        "# /sys: nothing writable outside the container's own cgroup filesystem.",
        "deny /sys/[^f]*/** wklx,",
        "deny /sys/f[^s]*/** wklx,",
        "deny /sys/fs/[^c]*/** wklx,",
        "deny /sys/fs/c[^g]*/** wklx,",
        "deny /sys/fs/cg[^r]*/** wklx,",
        "deny /sys/firmware/** rwklx,",
        "deny /sys/devices/virtual/powercap/** rwklx,",
        "deny /sys/kernel/security/** rwklx,",
        "__SELF_PTRACE__",
    ];
    for r in rules {
        let line = match *r {
            "__SELF_SIGNALS__" => format!("signal (send,receive) peer={name},"),
            "__SELF_PTRACE__" => format!(
                "# ps inside the container reads its own processes.\n  ptrace (trace,read,tracedby,readby) peer={name},"
            ),
            other => other.to_string(),
        };
        p.push_str("  ");
        p.push_str(&line);
        p.push('\n');
    }
    p.push_str("}\n");
    p
}

/// Whether `name` appears in the kernel's list of loaded profiles (`text`).
pub fn is_loaded(name: &str, text: &str) -> bool {
    text.lines().any(|l| {
        let n = l.rsplit_once(" (").map_or(l, |(n, _)| n);
        n.trim() == name
    })
}

/// Loads [`DEFAULT_PROFILE`] unless the kernel has it already; returns its name. The error
/// says why the host cannot give RuntimeDefault containers their profile.
pub fn ensure_default_loaded() -> Result<String, String> {
    let name = DEFAULT_PROFILE;
    if std::fs::read_to_string(LOADED_PROFILES).is_ok_and(|t| is_loaded(name, &t)) {
        return Ok(name.to_string());
    }
    let text = profile_text(
        name,
        Path::new(APPARMOR_D).join("tunables/global").exists(),
        Path::new(APPARMOR_D).join("abstractions/base").exists(),
    );
    let file = tempfile_path();
    std::fs::write(&file, text).map_err(|e| format!("write {}: {e}", file.display()))?;
    // -K: keep no cache; -r: replace a profile of the same name if one is loaded.
    let out = Command::new("apparmor_parser")
        .arg("-Kr")
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    match out {
        Ok(o) if o.status.success() => Ok(name.to_string()),
        Ok(o) => Err(format!(
            "apparmor_parser could not load the {name} profile: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "cannot run apparmor_parser to load the {name} profile (install apparmor): {e}"
        )),
    }
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "peapod-apparmor-{}-{}",
        std::process::id(),
        crate::id::generate()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_confines_like_containerds_default() {
        let p = profile_text("peapod-default", true, true);
        assert!(p.starts_with("abi <abi/3.0>,"));
        assert!(p.contains("#include <tunables/global>"));
        assert!(p.contains("profile peapod-default flags=(attach_disconnected,mediate_deleted) {"));
        assert!(p.contains("  #include <abstractions/base>"));
        for rule in [
            "  deny mount,",
            "  deny @{PROC}/sysrq-trigger rwklx,",
            "  deny @{PROC}/kcore rwklx,",
            "  deny /sys/kernel/security/** rwklx,",
            "  deny /sys/firmware/** rwklx,",
            "  signal (receive) peer=runc,",
            "  signal (send,receive) peer=peapod-default,",
            "  ptrace (trace,read,tracedby,readby) peer=peapod-default,",
            "  file,",
            "  network,",
            "  capability,",
        ] {
            assert!(p.lines().any(|l| l == rule), "missing {rule:?} in\n{p}");
        }
        assert!(p.trim_end().ends_with('}'));
        // Braces balance (the /proc globs use their own).
        let opens = p.matches('{').count();
        assert_eq!(opens, p.matches('}').count(), "{p}");
        // Without tunables, @{PROC} is defined by the profile itself.
        let p = profile_text("x", false, false);
        assert!(p.contains("@{PROC}=/proc/"));
        assert!(!p.contains("#include"));
    }

    #[test]
    fn loaded_profiles_are_found_by_exact_name() {
        let t = "docker-default (enforce)\npeapod-default (enforce)\n/usr/bin/x (complain)\n";
        assert!(is_loaded("peapod-default", t));
        assert!(is_loaded("/usr/bin/x", t));
        assert!(!is_loaded("peapod", t));
        assert!(!is_loaded("peapod-default", "peapod-default-2 (enforce)\n"));
    }
}
