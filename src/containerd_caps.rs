//! What differs between the containerd versions peapod runs on (1.6 from Debian 12, 1.7 from
//! Debian 13, 2.x upstream), in one place, detected when peapod connects and again whenever
//! containerd answers with another version (an upgrade under a running peapod).
//!
//! Most of containerd's API is the same on all of them for what peapod uses (containers,
//! tasks and Wait, content, snapshots, diff, images, leases, and the `/tasks/oom` event
//! topic with its `containerd.events.TaskOOM` payload): peapod pulls by itself rather than
//! through the Transfer service (1.7+) and creates no Sandbox API objects (1.7+). What does
//! differ:
//! - the version string: `1.6.20~ds1` (Debian), `v2.1.5` (upstream);
//! - the built-in CRI: one plugin (`io.containerd.grpc.v1.cri`) up to 1.7; in 2.x the gRPC
//!   service plus `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`, which
//!   stay loaded (and read the CNI config) when only the gRPC plugin is disabled;
//! - deprecation warnings in `Introspection.Server`: 1.7 and later (1.6 has none); 2.x
//!   migrates a `version = 2` config in memory and says so in its log;
//! - a task that exits while containerd is down: 1.6 still reports its exit code after
//!   containerd's restart, 1.7 and 2.1 have dropped the task (the code is lost: 255);
//! - runc options (`containerd.runc.v1.Options`): the field set changed (criu_path removed
//!   in 2.0) and 1.6's shim resolves only the bare type name, so peapod sends the bare name
//!   and only fields every version knows.

use std::collections::BTreeMap;

/// A containerd release, parsed from what its Version service says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Release {
    /// `1.6.20~ds1`, `1.7.24~ds1-6`, `v2.1.5`, `2.1.5+unknown` → 1.6.20, 1.7.24, 2.1.5.
    pub fn parse(version: &str) -> Option<Release> {
        let v = version.trim().trim_start_matches('v');
        let end = v
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(v.len());
        let mut parts = v[..end].split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Release {
            major,
            minor,
            patch,
        })
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The gRPC plugin that serves a second CRI on containerd's socket: the one that fights
/// peapod for pods and CNI, on every version.
pub const CRI_GRPC_PLUGIN: &str = "io.containerd.grpc.v1.cri";

/// The plugins that make up containerd's built-in CRI on `release` (all of them belong in
/// `disabled_plugins` next to peapod). Unknown releases get the 2.x set: disabling a plugin
/// id that a version lacks is harmless.
pub fn builtin_cri_plugins(release: Option<Release>) -> &'static [&'static str] {
    match release {
        Some(r) if r.major < 2 => &[CRI_GRPC_PLUGIN],
        _ => &[
            CRI_GRPC_PLUGIN,
            "io.containerd.cri.v1.images",
            "io.containerd.cri.v1.runtime",
        ],
    }
}

/// The `disabled_plugins` line for a containerd config that leaves pods to peapod.
pub fn disabled_plugins_line(release: Option<Release>) -> String {
    let ids: Vec<String> = builtin_cri_plugins(release)
        .iter()
        .map(|p| format!("{p:?}"))
        .collect();
    format!("disabled_plugins = [{}]", ids.join(", "))
}

/// Whether `Introspection.Server` reports deprecation warnings (added in 1.7).
pub fn reports_deprecations(release: Option<Release>) -> bool {
    release.is_none_or(|r| (r.major, r.minor) >= (1, 7))
}

/// Whether a task that exits while containerd is down keeps its exit code for `Tasks.Wait`
/// once containerd is back. 1.6 reconnects the shim and still has the stopped task; 1.7 and
/// 2.1 no longer list the task after their restart (seen with `ctr tasks ls` on 2.1.5 and
/// through peapod's Wait on 1.7.24 and 2.1.5), so peapod can only report the exit as
/// unknown (255).
pub fn exit_code_survives_restart(release: Option<Release>) -> bool {
    release.is_some_and(|r| (r.major, r.minor) < (1, 7))
}

/// Type URL of the runc shim's options (`cgroup::Driver::runc_options` builds them), in the
/// bare form every containerd version takes ([`crate::keys::type_url::RUNC_OPTIONS`]).
pub use crate::keys::type_url::RUNC_OPTIONS as RUNC_OPTIONS_TYPE_URL;

/// What peapod found out about the containerd it is connected to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// As containerd says it (`1.6.20~ds1`, `v2.1.5`).
    pub version: String,
    pub revision: String,
    /// major.minor.patch, when the version parses.
    pub release: Option<String>,
    /// The built-in CRI plugins this version has, and those of them that are loaded.
    pub cri_plugins: Vec<String>,
    pub cri_plugins_loaded: Vec<String>,
    /// Deprecation warnings containerd reports (1.7+), id → message.
    pub deprecations: BTreeMap<String, String>,
}

impl Capabilities {
    pub fn parsed_release(&self) -> Option<Release> {
        Release::parse(&self.version)
    }

    /// True when containerd serves its own CRI next to peapod.
    pub fn builtin_cri_serving(&self) -> bool {
        self.cri_plugins_loaded.iter().any(|p| p == CRI_GRPC_PLUGIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_and_upstream_versions() {
        let r = |a, b, c| Release {
            major: a,
            minor: b,
            patch: c,
        };
        assert_eq!(Release::parse("1.6.20~ds1"), Some(r(1, 6, 20)));
        assert_eq!(Release::parse("1.7.24~ds1-6+deb13u1"), Some(r(1, 7, 24)));
        assert_eq!(Release::parse("v2.1.5"), Some(r(2, 1, 5)));
        assert_eq!(Release::parse("2.1.5+unknown"), Some(r(2, 1, 5)));
        assert_eq!(Release::parse("v2.2"), Some(r(2, 2, 0)));
        assert_eq!(Release::parse("devel"), None);
        assert_eq!(Release::parse(""), None);
        assert_eq!(r(1, 7, 24).to_string(), "1.7.24");
    }

    #[test]
    fn cri_plugins_split_in_2x() {
        let v16 = Release::parse("1.6.20");
        let v21 = Release::parse("v2.1.5");
        assert_eq!(builtin_cri_plugins(v16), &[CRI_GRPC_PLUGIN]);
        assert_eq!(builtin_cri_plugins(v21).len(), 3);
        assert!(builtin_cri_plugins(None).contains(&"io.containerd.cri.v1.runtime"));
        assert_eq!(
            disabled_plugins_line(v16),
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
        );
        assert_eq!(
            disabled_plugins_line(v21),
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]"#
        );
    }

    #[test]
    fn exits_during_an_outage_survive_only_on_1_6() {
        assert!(exit_code_survives_restart(Release::parse("1.6.20~ds1")));
        assert!(!exit_code_survives_restart(Release::parse("1.7.24~ds1")));
        assert!(!exit_code_survives_restart(Release::parse("v2.1.5")));
    }

    #[test]
    fn deprecations_from_1_7() {
        assert!(!reports_deprecations(Release::parse("1.6.20~ds1")));
        assert!(reports_deprecations(Release::parse("1.7.24~ds1")));
        assert!(reports_deprecations(Release::parse("v2.1.5")));
    }

    #[test]
    fn runc_options_go_under_the_bare_type_name() {
        assert_eq!(RUNC_OPTIONS_TYPE_URL, "containerd.runc.v1.Options");
        let any = crate::cgroup::Driver::Systemd
            .runc_options("io.containerd.runc.v2")
            .unwrap();
        assert_eq!(any.type_url, RUNC_OPTIONS_TYPE_URL);
    }

    #[test]
    fn builtin_cri_serving_means_the_grpc_plugin() {
        let mut c = Capabilities {
            cri_plugins_loaded: vec!["io.containerd.cri.v1.images".into()],
            ..Default::default()
        };
        assert!(!c.builtin_cri_serving());
        c.cri_plugins_loaded.push(CRI_GRPC_PLUGIN.into());
        assert!(c.builtin_cri_serving());
    }
}
