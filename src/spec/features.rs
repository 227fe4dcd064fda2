//! What this node's kernel and OCI runtime can do, for the spec builder and for the
//! `Status` RPC's runtime features. Detected once and cached.

use std::process::Command;
use std::sync::OnceLock;

/// The OCI runtime binary containerd's runc shim runs when its options name none.
pub const RUNC: &str = "runc";

/// Recursive read-only bind mounts need `mount_setattr(2)` with `AT_RECURSIVE` (Linux 5.12)
/// and an OCI runtime that applies the `rro` mount option (runc ≥ 1.1, which lists it under
/// `mountOptions` in `runc features`). A runtime too old for `runc features` counts as not
/// supporting it: an unknown `rro` would be silently dropped by older runc, leaving the
/// submounts writable, which is worse than refusing.
pub fn recursive_read_only_mounts() -> bool {
    static CACHE: OnceLock<bool> = OnceLock::new();
    *CACHE.get_or_init(|| {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        kernel_at_least(&kernel, (5, 12)) && runtime_mount_option(RUNC, "rro")
    })
}

/// Whether a kernel release string (`6.1.0-18-amd64`) is at least `want`.
pub fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// Whether `<runtime> features` lists `option` among its mount options.
pub fn runtime_mount_option(runtime: &str, option: &str) -> bool {
    match Command::new(runtime).arg("features").output() {
        Ok(out) if out.status.success() => features_list_mount_option(&out.stdout, option),
        _ => false,
    }
}

/// Parses the JSON `runc features` prints (opencontainers/runtime-spec features.md).
pub fn features_list_mount_option(json: &[u8], option: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("mountOptions").cloned())
        .and_then(|m| m.as_array().cloned())
        .is_some_and(|opts| opts.iter().any(|o| o.as_str() == Some(option)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert!(kernel_at_least("6.1.0-18-amd64", (5, 12)));
        assert!(kernel_at_least("5.12.0", (5, 12)));
        assert!(!kernel_at_least("5.10.0-28-amd64", (5, 12)));
        assert!(!kernel_at_least("4.19.0", (5, 12)));
        assert!(!kernel_at_least("", (5, 12)));
        assert!(!kernel_at_least("garbage", (5, 12)));
    }

    #[test]
    fn features_output() {
        let json = br#"{"ociVersionMin":"1.0.0","mountOptions":["ro","rro","rbind"]}"#;
        assert!(features_list_mount_option(json, "rro"));
        assert!(!features_list_mount_option(json, "rnosymfollow"));
        assert!(!features_list_mount_option(b"{}", "rro"));
        assert!(!features_list_mount_option(b"not json", "rro"));
    }

    #[test]
    fn missing_runtime_supports_nothing() {
        assert!(!runtime_mount_option("/nonexistent/runc", "rro"));
    }
}
