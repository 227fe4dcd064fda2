//! peapod's settings: built-in defaults, overridden by a TOML file, overridden by flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::cgroup::Driver;
use crate::error::{Error, Result};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/peapod/config.toml";

/// Every setting peapod has. The TOML file uses the same names (snake_case).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket peapod serves the CRI on (kubelet's --container-runtime-endpoint).
    pub listen: PathBuf,
    /// Directory for peapod's own state: per-object status files and sandbox files.
    pub state_dir: PathBuf,
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// containerd namespace holding every pod, container and image peapod manages.
    pub namespace: String,
    /// containerd snapshotter used for images and container root filesystems.
    pub snapshotter: String,
    /// containerd runtime (shim) that runs pods.
    pub runtime: String,
    /// Directory holding CNI network configurations (*.conflist, *.conf, *.json).
    pub cni_conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Directory where pod network namespaces are pinned (bind mounts), as `ip netns` does.
    pub netns_dir: PathBuf,
    /// Image of each pod's infra (pause) container.
    pub sandbox_image: String,
    /// cgroup driver: "cgroupfs" or "systemd"; must match kubelet's --cgroup-driver.
    pub cgroup_driver: Driver,
    /// Leave out hugepage limits (kubelet sets one per page size on every container), as
    /// containerd's option of the same name does; false applies them where the host has a
    /// hugetlb cgroup controller. Limits of any controller the host lacks are always left out.
    pub disable_hugetlb_controller: bool,
    /// containerd-style registry host configuration directory (<dir>/<host>/hosts.toml).
    pub registry_config_dir: PathBuf,
    /// Optional credentials file (docker config.json format) used when a pull has no AuthConfig.
    pub registry_credentials_file: Option<PathBuf>,
    /// A pull that transfers no bytes for this many seconds fails.
    pub image_pull_progress_timeout_secs: u64,
    /// A CNI plugin call (ADD, DEL) that takes longer is killed and fails, so a hung plugin
    /// cannot hold RunPodSandbox or StopPodSandbox forever.
    pub cni_plugin_timeout_secs: u64,
    /// Address of the streaming server for Exec/Attach/PortForward.
    pub stream_address: String,
    /// Port of the streaming server (0 picks a free one).
    pub stream_port: u16,
    /// Log filter (RUST_LOG syntax), e.g. "info" or "peapod=debug".
    pub log_level: String,
    /// Log output format: "text" or "json".
    pub log_format: String,
    /// When set, seccomp Localhost profiles must lie in this directory (kubelet keeps them in
    /// `/var/lib/kubelet/seccomp`); relative references are taken inside it. Unset: any
    /// absolute path.
    pub seccomp_profile_root: Option<PathBuf>,
    /// Address (host:port) of the Prometheus metrics endpoint (`/metrics`). Unset: no
    /// endpoint, as containerd's `[metrics] address` defaults to none.
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "/run/peapod/peapod.sock".into(),
            state_dir: "/var/lib/peapod".into(),
            containerd_socket: "/run/containerd/containerd.sock".into(),
            namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
            runtime: "io.containerd.runc.v2".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            netns_dir: "/var/run/netns".into(),
            sandbox_image: "registry.k8s.io/pause:3.10".into(),
            cgroup_driver: Driver::Cgroupfs,
            disable_hugetlb_controller: true,
            registry_config_dir: "/etc/containerd/certs.d".into(),
            registry_credentials_file: None,
            image_pull_progress_timeout_secs: 300,
            cni_plugin_timeout_secs: 60,
            stream_address: "127.0.0.1".into(),
            stream_port: 0,
            log_level: "info".into(),
            log_format: "text".into(),
            seccomp_profile_root: None,
            metrics_address: None,
        }
    }
}

/// Command-line flags. Each flag overrides the same-named setting of the config file, and
/// can also be given in the environment (`PEAPOD_` and the setting's name in capitals).
#[derive(Debug, Parser, Default)]
#[command(
    name = "peapod",
    version,
    about = "Kubernetes CRI v1 runtime on containerd's native API",
    long_about = "Kubernetes CRI v1 runtime on containerd's native API.\n\n\
        Without a command, peapod serves the CRI on --listen until SIGTERM (as kubelet's and \
        systemd's units run it). Settings come from the built-in defaults, then the config \
        file, then PEAPOD_* environment variables, then flags; `peapod config show` prints \
        the result.",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML config file; settings missing from it keep their defaults. [default: /etc/peapod/config.toml, read only if present]
    #[arg(long, env = "PEAPOD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Unix socket to serve the CRI on. [default: /run/peapod/peapod.sock]
    #[arg(long, env = "PEAPOD_LISTEN", global = true)]
    pub listen: Option<PathBuf>,
    /// Directory for peapod's state (status files, sandbox files). [default: /var/lib/peapod]
    #[arg(long, env = "PEAPOD_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// containerd's gRPC socket. [default: /run/containerd/containerd.sock]
    #[arg(long, env = "PEAPOD_CONTAINERD_SOCKET", global = true)]
    pub containerd_socket: Option<PathBuf>,
    /// containerd namespace for pods, containers and images. [default: k8s.io]
    #[arg(long, env = "PEAPOD_NAMESPACE", global = true)]
    pub namespace: Option<String>,
    /// containerd snapshotter. [default: overlayfs]
    #[arg(long, env = "PEAPOD_SNAPSHOTTER", global = true)]
    pub snapshotter: Option<String>,
    /// containerd runtime (shim) name. [default: io.containerd.runc.v2]
    #[arg(long, env = "PEAPOD_RUNTIME", global = true)]
    pub runtime: Option<String>,
    /// CNI configuration directory. [default: /etc/cni/net.d]
    #[arg(long, env = "PEAPOD_CNI_CONF_DIR", global = true)]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory; repeat for several (or separate with ':'), searched in order. [default: /opt/cni/bin, /usr/lib/cni]
    #[arg(
        long = "cni-bin-dir",
        env = "PEAPOD_CNI_BIN_DIRS",
        value_delimiter = ':',
        global = true
    )]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Directory where pod network namespaces are pinned. [default: /var/run/netns]
    #[arg(long, env = "PEAPOD_NETNS_DIR", global = true)]
    pub netns_dir: Option<PathBuf>,
    /// Image for each pod's pause container. [default: registry.k8s.io/pause:3.10]
    #[arg(long, env = "PEAPOD_SANDBOX_IMAGE", global = true)]
    pub sandbox_image: Option<String>,
    /// cgroup driver, "cgroupfs" or "systemd"; must match kubelet's. [default: cgroupfs]
    #[arg(long, env = "PEAPOD_CGROUP_DRIVER", global = true)]
    pub cgroup_driver: Option<String>,
    /// Leave out hugepage limits, as containerd does by default; false applies them where the host has a hugetlb controller. [default: true]
    #[arg(
        long,
        value_name = "BOOL",
        env = "PEAPOD_DISABLE_HUGETLB_CONTROLLER",
        global = true
    )]
    pub disable_hugetlb_controller: Option<bool>,
    /// Registry hosts directory in containerd's hosts.toml layout. [default: /etc/containerd/certs.d]
    #[arg(long, env = "PEAPOD_REGISTRY_CONFIG_DIR", global = true)]
    pub registry_config_dir: Option<PathBuf>,
    /// Docker-style credentials file used when a pull carries no credentials. [default: none]
    #[arg(long, env = "PEAPOD_REGISTRY_CREDENTIALS_FILE", global = true)]
    pub registry_credentials_file: Option<PathBuf>,
    /// Seconds without pull progress before a pull fails. [default: 300]
    #[arg(long, env = "PEAPOD_IMAGE_PULL_PROGRESS_TIMEOUT_SECS", global = true)]
    pub image_pull_progress_timeout_secs: Option<u64>,
    /// Seconds a CNI plugin call may take before it is killed and fails. [default: 60]
    #[arg(long)]
    pub cni_plugin_timeout_secs: Option<u64>,
    /// Streaming server address for Exec/Attach/PortForward. [default: 127.0.0.1]
    #[arg(long, env = "PEAPOD_STREAM_ADDRESS", global = true)]
    pub stream_address: Option<String>,
    /// Streaming server port, 0 for any free port. [default: 0]
    #[arg(long, env = "PEAPOD_STREAM_PORT", global = true)]
    pub stream_port: Option<u16>,
    /// Log filter in RUST_LOG syntax; RUST_LOG wins when set. [default: info]
    #[arg(long, env = "PEAPOD_LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Log format, "text" or "json". [default: text]
    #[arg(long, env = "PEAPOD_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// Directory seccomp Localhost profiles must lie in; relative references are taken inside it. [default: none, any absolute path]
    #[arg(long, env = "PEAPOD_SECCOMP_PROFILE_ROOT", global = true)]
    pub seccomp_profile_root: Option<PathBuf>,
    /// Serve Prometheus metrics on this host:port at /metrics, e.g. 127.0.0.1:9101. [default: none, no metrics endpoint]
    #[arg(long, env = "PEAPOD_METRICS_ADDRESS", global = true)]
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// What peapod does besides serving the CRI.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that this node can run pods with these settings: containerd reachable, its
    /// built-in CRI plugin off, runc present, a valid CNI network whose plugins exist, the
    /// sandbox image present or pullable, the cgroup driver kubelet uses, socket and state
    /// directory permissions. Prints one line per check; each failure says what is wrong and
    /// how to fix it. Exit status 0 when every check passes, 1 otherwise.
    Check(CheckArgs),
    /// Print peapod's configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args, Default, Clone)]
pub struct CheckArgs {
    /// kubelet's KubeletConfiguration file: its cgroupDriver (and containerRuntimeEndpoint)
    /// must match peapod's.
    #[arg(long)]
    pub kubelet_config: Option<PathBuf>,
}

#[derive(Debug, Subcommand, Clone, Copy, PartialEq, Eq)]
pub enum ConfigCommand {
    /// The default configuration file, every setting commented (deploy/peapod.toml):
    /// `peapod config default > /etc/peapod/config.toml` to start from.
    Default,
    /// The configuration peapod would run with: defaults, then the config file, then
    /// PEAPOD_* environment variables, then flags.
    Show,
}

/// The documented default configuration file, `deploy/peapod.toml`; a test holds it equal
/// to [`Config::default`] and naming every setting, so the two cannot drift apart.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../deploy/peapod.toml");

impl Config {
    /// Reads the config file (the default one only when it exists) and applies the flags over it.
    pub fn load(cli: &Cli) -> Result<Config> {
        let mut cfg = match &cli.config {
            Some(p) => Config::from_file(p)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Config::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Config::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => {$( if let Some(v) = &cli.$f { cfg.$f = v.clone(); } )*};
        }
        over!(
            listen,
            state_dir,
            containerd_socket,
            namespace,
            snapshotter,
            runtime,
            cni_conf_dir,
            netns_dir,
            sandbox_image,
            disable_hugetlb_controller,
            registry_config_dir,
            image_pull_progress_timeout_secs,
            cni_plugin_timeout_secs,
            stream_address,
            stream_port,
            log_level,
            log_format
        );
        if let Some(d) = &cli.cgroup_driver {
            cfg.cgroup_driver = d.parse()?;
        }
        if cli.registry_credentials_file.is_some() {
            cfg.registry_credentials_file = cli.registry_credentials_file.clone();
        }
        if cli.seccomp_profile_root.is_some() {
            cfg.seccomp_profile_root = cli.seccomp_profile_root.clone();
        }
        if cli.metrics_address.is_some() {
            cfg.metrics_address = cli.metrics_address;
        }
        if !cli.cni_bin_dirs.is_empty() {
            cfg.cni_bin_dirs = cli.cni_bin_dirs.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("config file {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| Error::invalid(format!("config file {}: {e}", path.display())))
    }

    /// The configuration as a TOML file (what `peapod config show` prints); settings
    /// without a value (unset options) are left out.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::internal(format!("config as TOML: {e}")))
    }

    pub fn validate(&self) -> Result<()> {
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(Error::invalid(format!(
                "log_format must be \"text\" or \"json\", not {:?}",
                self.log_format
            )));
        }
        if self.namespace.is_empty() {
            return Err(Error::invalid("namespace must not be empty"));
        }
        if let Some(p) = &self.seccomp_profile_root {
            if !p.is_absolute() {
                return Err(Error::invalid(format!(
                    "seccomp_profile_root must be an absolute path, not {}",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    pub fn cni_plugin_timeout(&self) -> Duration {
        Duration::from_secs(self.cni_plugin_timeout_secs.max(1))
    }

    pub fn pull_progress_timeout(&self) -> Duration {
        Duration::from_secs(self.image_pull_progress_timeout_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "namespace = \"filens\"\nsnapshotter = \"native\"\n").unwrap();
        let cli = Cli {
            config: Some(f),
            snapshotter: Some("overlayfs".into()),
            ..Default::default()
        };
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.namespace, "filens");
        assert_eq!(c.snapshotter, "overlayfs");
        assert_eq!(c.sandbox_image, "registry.k8s.io/pause:3.10");
    }

    #[test]
    fn the_documented_config_file_holds_the_defaults() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/peapod.toml");
        assert_eq!(Config::from_file(&f).unwrap(), Config::default());
        // What `peapod config default` prints is that file.
        assert_eq!(std::fs::read_to_string(&f).unwrap(), DEFAULT_CONFIG_TOML);
        assert_eq!(
            toml::from_str::<Config>(DEFAULT_CONFIG_TOML).unwrap(),
            Config::default()
        );
    }

    /// The names of `Config`'s fields, as serde sees them: a deserializer that only records
    /// what `deserialize_struct` is asked for.
    fn config_fields() -> &'static [&'static str] {
        struct Fields(Option<&'static [&'static str]>);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<T: std::fmt::Display>(_: T) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                self.0 = Some(fields);
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                enum identifier ignored_any
            }
        }
        let mut f = Fields(None);
        let _ = Config::deserialize(&mut f);
        f.0.expect("Config is a struct")
    }

    #[test]
    fn the_documented_config_file_names_every_setting() {
        let fields = config_fields();
        assert!(fields.contains(&"metrics_address"), "{fields:?}");
        for field in fields {
            // Set (`key = `) or, for settings without a default value, shown commented.
            let documented = DEFAULT_CONFIG_TOML.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.strip_prefix(field)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            assert!(documented, "deploy/peapod.toml does not document {field}");
        }
        // The commented examples are valid settings too.
        let uncommented: String = DEFAULT_CONFIG_TOML
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if fields.iter().any(|f| rest.starts_with(&format!("{f} ="))) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let all: Config = toml::from_str(&uncommented).unwrap();
        assert!(all.metrics_address.is_some() && all.registry_credentials_file.is_some());
    }

    #[test]
    fn the_effective_configuration_prints_as_a_file_that_reads_back() {
        let c = Config {
            namespace: "shown".into(),
            metrics_address: Some("127.0.0.1:9101".parse().unwrap()),
            cgroup_driver: Driver::Systemd,
            ..Default::default()
        };
        let text = c.to_toml().unwrap();
        assert!(
            text.contains("metrics_address = \"127.0.0.1:9101\""),
            "{text}"
        );
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
    }

    #[test]
    fn settings_come_from_flags_before_and_after_a_command() {
        let before = Cli::try_parse_from(["peapod", "--namespace", "a", "check"]).unwrap();
        let after = Cli::try_parse_from([
            "peapod",
            "check",
            "--namespace",
            "a",
            "--kubelet-config",
            "/k.yaml",
        ])
        .unwrap();
        assert_eq!(before.namespace.as_deref(), Some("a"));
        assert_eq!(after.namespace.as_deref(), Some("a"));
        assert!(matches!(
            after.command,
            Some(Command::Check(CheckArgs {
                kubelet_config: Some(_)
            }))
        ));
        let daemon =
            Cli::try_parse_from(["peapod", "--metrics-address", "127.0.0.1:9101"]).unwrap();
        assert!(daemon.command.is_none());
        assert!(Cli::try_parse_from(["peapod", "--metrics-address", "nowhere"]).is_err());
        let dirs = Cli::try_parse_from(["peapod", "--cni-bin-dir", "/a", "--cni-bin-dir", "/b"])
            .unwrap()
            .cni_bin_dirs;
        assert_eq!(dirs, [PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn hugepage_limits_are_left_out_unless_asked_for() {
        assert!(Config::default().disable_hugetlb_controller);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "disable_hugetlb_controller = false\ncgroup_driver = \"systemd\"\n",
        )
        .unwrap();
        let from_file = Config::load(&Cli {
            config: Some(f.clone()),
            ..Default::default()
        })
        .unwrap();
        assert!(!from_file.disable_hugetlb_controller);
        assert_eq!(from_file.cgroup_driver, Driver::Systemd);
        let flagged = Config::load(&Cli {
            config: Some(f),
            disable_hugetlb_controller: Some(true),
            cgroup_driver: Some("cgroupfs".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(flagged.disable_hugetlb_controller);
        assert_eq!(flagged.cgroup_driver, Driver::Cgroupfs);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "cgroup_driver = \"cgroupsfs\"\n").unwrap();
        assert!(Config::from_file(&bad).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "namespce = \"typo\"\n").unwrap();
        assert!(Config::from_file(&f).is_err());
        let cli = Cli {
            cgroup_driver: Some("bogus".into()),
            config: Some(dir.path().join("missing.toml")),
            ..Default::default()
        };
        assert!(Config::load(&cli).is_err());
    }
}
