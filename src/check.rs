//! `peapod check`: what would stop this node from running pods through peapod, found before
//! kubelet finds it. Each check asks the same code the daemon uses for that fact (the
//! containerd connection and its capability probe, the CNI loader behind Status' NetworkReady,
//! the image inventory and the puller's resolve), so `check` and the daemon cannot disagree.
//!
//! kubelet's configuration file is read by hand for its two top-level scalars
//! (`cgroupDriver`, `containerRuntimeEndpoint`): KubeletConfiguration files are YAML block
//! mappings or JSON, both of which the line scan below reads, and a YAML library (serde_yaml
//! is unmaintained, yaml-rust2 is a whole parser) would be a dependency of the daemon for
//! two keys. A file the scan cannot read is reported as such, never guessed at.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::cgroup::Driver;
use crate::config::{CheckArgs, Config};
use crate::containerd::Containerd;
use crate::containerd_caps::{self, Capabilities};
use crate::image::{ImageStore, Inventory, Puller};
use crate::network::cni;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fail,
    /// Not checked, because a check it depends on failed.
    Skip,
}

/// One line of the report: what was checked, and what was found (for a failure: what is
/// wrong, then how to fix it).
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub message: String,
}

impl Finding {
    fn ok(check: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            check,
            verdict: Verdict::Ok,
            message: message.into(),
        }
    }
    fn fail(
        check: &'static str,
        what: impl std::fmt::Display,
        fix: impl std::fmt::Display,
    ) -> Finding {
        Finding {
            check,
            verdict: Verdict::Fail,
            message: format!("{what}. Fix: {fix}"),
        }
    }
    fn skip(check: &'static str, why: impl Into<String>) -> Finding {
        Finding {
            check,
            verdict: Verdict::Skip,
            message: why.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        // One line each, whatever the underlying error said.
        let msg = self.message.replace('\n', " ");
        write!(f, "{tag}  {}: {msg}", self.check)
    }
}

/// Runs every check with `config` (as the daemon would run) and returns the findings in
/// report order.
pub async fn run(config: &Config, args: &CheckArgs) -> Vec<Finding> {
    let mut out = vec![privileges()];
    let ctrd = Containerd::connect_lazy(&config.containerd_socket, &config.namespace);
    let (f, caps) = containerd(&ctrd).await;
    out.push(f);
    match &caps {
        Some(caps) => {
            out.push(builtin_cri(caps));
            out.push(sandbox_image(&ctrd, config).await);
        }
        None => {
            out.push(Finding::skip(
                "containerd CRI plugin",
                "containerd is not reachable",
            ));
            out.push(Finding::skip(
                "sandbox image",
                "containerd is not reachable",
            ));
        }
    }
    out.push(runc(&config.runtime));
    out.push(cni_network(config));
    out.push(cgroup_driver(
        config.cgroup_driver,
        args.kubelet_config.as_deref(),
    ));
    if let Some(f) = runtime_endpoint(config, args.kubelet_config.as_deref()) {
        out.push(f);
    }
    out.push(socket(&config.listen).await);
    out.push(state_dir(&config.state_dir));
    out
}

fn privileges() -> Finding {
    if nix::unistd::geteuid().is_root() {
        Finding::ok("privileges", "running as root")
    } else {
        Finding::fail(
            "privileges",
            format!(
                "running as uid {}: peapod creates network namespaces, mounts and cgroups",
                nix::unistd::geteuid()
            ),
            "run peapod (and this check) as root",
        )
    }
}

async fn containerd(c: &Containerd) -> (Finding, Option<Capabilities>) {
    match c.capabilities().await {
        Ok(caps) => (
            Finding::ok(
                "containerd",
                format!(
                    "{} answering on {} (namespace {})",
                    caps.version,
                    c.socket().display(),
                    c.namespace()
                ),
            ),
            Some(caps),
        ),
        Err(e) => (
            Finding::fail(
                "containerd",
                e,
                format!(
                    "start containerd (systemctl start containerd), or set --containerd-socket \
                     to the socket it listens on (not {})",
                    c.socket().display()
                ),
            ),
            None,
        ),
    }
}

/// containerd's own CRI, from the same probe the daemon logs at start (`containerd_caps`).
fn builtin_cri(caps: &Capabilities) -> Finding {
    const CHECK: &str = "containerd CRI plugin";
    let line = containerd_caps::disabled_plugins_line(caps.parsed_release());
    if caps.builtin_cri_serving() {
        Finding::fail(
            CHECK,
            "containerd's built-in CRI plugin is enabled: it would manage pods and CNI on this \
             node beside peapod",
            format!(
                "add {line} to containerd's config.toml (as deploy/containerd-config.toml does) \
                 and restart containerd"
            ),
        )
    } else if caps.cri_plugins_loaded.is_empty() {
        Finding::ok(CHECK, "containerd's built-in CRI is disabled")
    } else {
        Finding::ok(
            CHECK,
            format!(
                "containerd serves no CRI; its plugins {:?} are loaded (they read their own \
                 config and CNI; to leave them out: {line})",
                caps.cri_plugins_loaded
            ),
        )
    }
}

async fn sandbox_image(c: &Containerd, config: &Config) -> Finding {
    const CHECK: &str = "sandbox image";
    let image = &config.sandbox_image;
    let store = ImageStore::new(c.clone(), &config.snapshotter);
    let inventory = Inventory {
        ctrd: c,
        store: &store,
        snapshotter: &config.snapshotter,
        sandbox_image: image,
    };
    match inventory.find(image).await {
        Ok(Some(g)) => {
            return Finding::ok(
                CHECK,
                format!(
                    "{image} is present in namespace {} ({})",
                    config.namespace, g.records[0].id
                ),
            )
        }
        Ok(None) => {}
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("cannot look up {image}: {e}"),
                "check containerd's log",
            )
        }
    }
    let puller = Puller::new(&store, config);
    match tokio::time::timeout(std::time::Duration::from_secs(60), puller.resolve(image)).await {
        Ok(Ok((host, digest))) => Finding::ok(
            CHECK,
            format!("{image} is not present but pullable from {host} ({digest})"),
        ),
        Ok(Err(e)) => Finding::fail(
            CHECK,
            format!(
                "{image} is not in namespace {} and cannot be pulled: {e}",
                config.namespace
            ),
            format!(
                "import it (ctr -n {} images import), make its registry reachable (mirrors in \
                 {}), or set --sandbox-image to an image you have",
                config.namespace,
                config.registry_config_dir.display()
            ),
        ),
        Err(_) => Finding::fail(
            CHECK,
            format!("{image} is not present and its registry did not answer within 60s"),
            format!(
                "import it (ctr -n {} images import) or configure a mirror in {}",
                config.namespace,
                config.registry_config_dir.display()
            ),
        ),
    }
}

/// runc, which the runc shim (`io.containerd.runc.*`) runs by name from its PATH.
fn runc(runtime: &str) -> Finding {
    const CHECK: &str = "runc";
    if !runtime.starts_with("io.containerd.runc.") {
        return Finding::skip(CHECK, format!("runtime {runtime} is not runc's shim"));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("runc"))
            .find(|p| is_executable(p))
    });
    let Some(path) = found else {
        return Finding::fail(
            CHECK,
            "runc is not on PATH",
            "install runc (apt-get install runc) where containerd's shim finds it",
        );
    };
    match std::process::Command::new(&path).arg("--version").output() {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            Finding::ok(
                CHECK,
                format!(
                    "{} ({})",
                    v.lines().next().unwrap_or("runc").trim(),
                    path.display()
                ),
            )
        }
        Ok(o) => Finding::fail(
            CHECK,
            format!("{} --version failed: {}", path.display(), o.status),
            "reinstall runc",
        ),
        Err(e) => Finding::fail(
            CHECK,
            format!("cannot run {}: {e}", path.display()),
            "reinstall runc",
        ),
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The network Status reports NetworkReady for: the first valid configuration in the CNI
/// config directory, and every plugin it names in the plugin directories.
fn cni_network(config: &Config) -> Finding {
    const CHECK: &str = "CNI";
    let dirs = config
        .cni_bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let list = match cni::load_default(&config.cni_conf_dir) {
        Ok(l) => l,
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("no usable network configuration: {e}"),
                format!(
                    "put a .conflist for your pod network in {} (a bridge example is in \
                     scripts/run.sh), or set --cni-conf-dir",
                    config.cni_conf_dir.display()
                ),
            )
        }
    };
    if let Err(e) = list.check_plugins(&config.cni_bin_dirs) {
        return Finding::fail(
            CHECK,
            format!("network {:?} ({}): {e}", list.name, list.source.display()),
            format!(
                "install the CNI plugins (apt-get install containernetworking-plugins puts them \
                 in /usr/lib/cni) into one of {dirs}, or add their directory with --cni-bin-dir"
            ),
        );
    }
    Finding::ok(
        CHECK,
        format!(
            "network {:?} from {}, plugins {} found in {dirs}",
            list.name,
            list.source.display(),
            list.plugin_types().join(", ")
        ),
    )
}

/// A top-level scalar of a KubeletConfiguration file, YAML block style or JSON.
fn kubelet_setting(text: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    text.lines().find_map(|line| {
        let rest = match line.strip_prefix(key) {
            // YAML: unindented `key: value`, so nothing nested is taken for it.
            Some(r) => r.trim_start().strip_prefix(':')?,
            None => {
                let i = line.find(&quoted)?;
                line[i + quoted.len()..].trim_start().strip_prefix(':')?
            }
        };
        let rest = rest.trim_start();
        // A quoted scalar ends at its closing quote; a plain one at a comment or, in JSON,
        // at the next member.
        let v = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest
                .split(" #")
                .next()
                .unwrap_or("")
                .split([',', '}'])
                .next()
                .unwrap_or("")
                .trim(),
        };
        (!v.is_empty()).then(|| v.to_string())
    })
}

fn cgroup_driver(driver: Driver, kubelet_config: Option<&Path>) -> Finding {
    const CHECK: &str = "cgroup driver";
    if driver == Driver::Systemd && !Path::new("/run/systemd/system").is_dir() {
        return Finding::fail(
            CHECK,
            "peapod's cgroup driver is systemd, but systemd is not running as init here",
            "set --cgroup-driver cgroupfs (and kubelet's cgroupDriver: cgroupfs)",
        );
    }
    let Some(path) = kubelet_config else {
        return Finding::ok(
            CHECK,
            format!("{driver} (give --kubelet-config to compare it with kubelet's)"),
        );
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("cannot read kubelet's config {}: {e}", path.display()),
                "give --kubelet-config the path of kubelet's --config file",
            )
        }
    };
    // kubelet 1.28 defaults to cgroupfs when its configuration does not say.
    let kubelet = kubelet_setting(&text, "cgroupDriver").unwrap_or_else(|| "cgroupfs".into());
    if kubelet == driver.to_string() {
        Finding::ok(
            CHECK,
            format!("{driver}, as kubelet's ({})", path.display()),
        )
    } else {
        Finding::fail(
            CHECK,
            format!(
                "peapod uses {driver} but kubelet's cgroupDriver is {kubelet} ({}): pods would \
                 get cgroups kubelet does not manage",
                path.display()
            ),
            format!(
                "make them equal: peapod --cgroup-driver {kubelet} (cgroup_driver in \
                 peapod's config.toml), or cgroupDriver: {driver} in {}",
                path.display()
            ),
        )
    }
}

/// Whether kubelet's configuration points at peapod's socket (only when it names one: the
/// endpoint may come from kubelet's command line instead).
fn runtime_endpoint(config: &Config, kubelet_config: Option<&Path>) -> Option<Finding> {
    const CHECK: &str = "kubelet endpoint";
    let text = std::fs::read_to_string(kubelet_config?).ok()?;
    let want = format!("unix://{}", config.listen.display());
    Some(match kubelet_setting(&text, "containerRuntimeEndpoint") {
        None => Finding::ok(
            CHECK,
            format!(
                "not in kubelet's config file; kubelet needs --container-runtime-endpoint={want}"
            ),
        ),
        Some(ep) if ep == want || Path::new(&ep) == config.listen => {
            Finding::ok(CHECK, format!("kubelet talks to {want}"))
        }
        Some(ep) => Finding::fail(
            CHECK,
            format!("kubelet's containerRuntimeEndpoint is {ep}, but peapod serves {want}"),
            format!("set containerRuntimeEndpoint: {want} in kubelet's config, or --listen"),
        ),
    })
}

/// The CRI socket: its directory must not be writable by others (whoever can replace the
/// socket can impersonate the runtime), and nothing but peapod may serve on it.
async fn socket(path: &Path) -> Finding {
    const CHECK: &str = "CRI socket";
    if let Some(f) = loose_dir(CHECK, path.parent()) {
        return f;
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Finding::ok(CHECK, format!("{} is free", path.display())),
    };
    if !meta.file_type().is_socket() {
        return Finding::fail(
            CHECK,
            format!("{} exists and is not a socket", path.display()),
            "remove it, or choose another --listen",
        );
    }
    match serving_runtime(path).await {
        None => Finding::ok(
            CHECK,
            format!(
                "{} is a stale socket; peapod replaces it at start",
                path.display()
            ),
        ),
        Some(name) if name == crate::RUNTIME_NAME => {
            if meta.permissions().mode() & 0o007 != 0 {
                return Finding::fail(
                    CHECK,
                    format!(
                        "{} is open to all users (mode {:o})",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    ),
                    format!("chmod 0660 {}", path.display()),
                );
            }
            Finding::ok(CHECK, format!("peapod is serving on {}", path.display()))
        }
        Some(other) => Finding::fail(
            CHECK,
            format!("{other} is already serving the CRI on {}", path.display()),
            "stop it (or point kubelet at one runtime only), or choose another --listen",
        ),
    }
}

/// The runtime name a CRI server on `path` reports, None when nothing answers.
async fn serving_runtime(path: &Path) -> Option<String> {
    use crate::cri::runtime_service_client::RuntimeServiceClient;
    let channel = crate::uds::endpoint(std::time::Duration::from_secs(2))
        .connect_with_connector(crate::uds::connector(path.to_path_buf()))
        .await
        .ok()?;
    let mut client = RuntimeServiceClient::new(channel);
    let v = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.version(crate::cri::VersionRequest::default()),
    )
    .await
    .ok()?;
    Some(match v {
        Ok(v) => v.into_inner().runtime_name,
        Err(s) => format!("a server that refuses CRI Version ({})", s.message()),
    })
}

/// peapod's state: status files kubelet's view of every container is rebuilt from.
fn state_dir(dir: &Path) -> Finding {
    const CHECK: &str = "state directory";
    match std::fs::metadata(dir) {
        Err(_) => loose_dir(CHECK, dir.parent()).unwrap_or_else(|| {
            Finding::ok(CHECK, format!("{} will be created at start", dir.display()))
        }),
        Ok(m) if !m.is_dir() => Finding::fail(
            CHECK,
            format!("{} is not a directory", dir.display()),
            "remove it, or set --state-dir",
        ),
        Ok(_) => loose_dir(CHECK, Some(dir))
            .unwrap_or_else(|| Finding::ok(CHECK, format!("{} is root's", dir.display()))),
    }
}

/// A failure if `dir` (when it exists) is not root's or others may write to it.
fn loose_dir(check: &'static str, dir: Option<&Path>) -> Option<Finding> {
    let dir = dir?;
    let m = std::fs::metadata(dir).ok()?;
    let mode = m.permissions().mode();
    // Sticky directories (/tmp) keep others from replacing what root made.
    let writable_by_others = mode & 0o022 != 0 && mode & 0o1000 == 0;
    if m.uid() != 0 || writable_by_others {
        return Some(Finding::fail(
            check,
            format!(
                "{} is owned by uid {} with mode {:o}: others could replace what peapod keeps \
                 there",
                dir.display(),
                m.uid(),
                mode & 0o7777
            ),
            format!("chown root {0} && chmod go-w {0}", dir.display()),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_settings_are_read_from_yaml_and_json() {
        let yaml = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                    cgroupDriver: \"systemd\"   # as kind's\nauthentication:\n  cgroupDriver: nested\n\
                    containerRuntimeEndpoint: unix:///run/peapod/peapod.sock\n";
        assert_eq!(
            kubelet_setting(yaml, "cgroupDriver").as_deref(),
            Some("systemd")
        );
        assert_eq!(
            kubelet_setting(yaml, "containerRuntimeEndpoint").as_deref(),
            Some("unix:///run/peapod/peapod.sock")
        );
        let json = r#"{"kind": "KubeletConfiguration", "cgroupDriver": "cgroupfs", "x": 1}"#;
        assert_eq!(
            kubelet_setting(json, "cgroupDriver").as_deref(),
            Some("cgroupfs")
        );
        assert_eq!(kubelet_setting("staticPodPath: /x\n", "cgroupDriver"), None);
        assert_eq!(
            kubelet_setting("  cgroupDriver: systemd\n", "cgroupDriver"),
            None
        );
    }

    #[test]
    fn a_cgroup_driver_mismatch_names_both_drivers() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kubelet.yaml");
        std::fs::write(&k, "kind: KubeletConfiguration\ncgroupDriver: systemd\n").unwrap();
        let f = cgroup_driver(Driver::Cgroupfs, Some(&k));
        assert_eq!(f.verdict, Verdict::Fail, "{f}");
        assert!(
            f.to_string().contains("kubelet's cgroupDriver is systemd"),
            "{f}"
        );
        assert!(f.message.contains("Fix:"), "{f}");
        std::fs::write(&k, "kind: KubeletConfiguration\n").unwrap();
        assert_eq!(
            cgroup_driver(Driver::Cgroupfs, Some(&k)).verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn a_directory_others_can_write_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = nix::unistd::geteuid().is_root();
        assert_eq!(state_dir(&d).verdict == Verdict::Ok, root);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let f = state_dir(&d);
        assert_eq!(f.verdict, Verdict::Fail);
        assert!(f.message.contains("chmod go-w"), "{f}");
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert_eq!(state_dir(&dir.path().join("file")).verdict, Verdict::Fail);
    }

    #[test]
    fn containerds_own_cri_fails_the_check_with_the_line_for_its_version() {
        let caps = |version: &str, loaded: &[&str]| Capabilities {
            version: version.into(),
            cri_plugins_loaded: loaded.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        let f = builtin_cri(&caps("v2.1.5", &[containerd_caps::CRI_GRPC_PLUGIN]));
        assert_eq!(f.verdict, Verdict::Fail);
        assert!(f.message.contains("io.containerd.cri.v1.images"), "{f}");
        let f = builtin_cri(&caps("1.6.20~ds1", &[containerd_caps::CRI_GRPC_PLUGIN]));
        assert!(!f.message.contains("io.containerd.cri.v1.images"), "{f}");
        assert_eq!(builtin_cri(&caps("1.6.20", &[])).verdict, Verdict::Ok);
        let f = builtin_cri(&caps("v2.1.5", &["io.containerd.cri.v1.images"]));
        assert_eq!(f.verdict, Verdict::Ok, "{f}");
        assert!(f.message.contains("to leave them out"), "{f}");
    }

    #[test]
    fn every_finding_prints_on_one_line() {
        let f = Finding::fail("x", "a\nb", "c");
        assert_eq!(f.to_string(), "FAIL  x: a b. Fix: c");
    }
}
