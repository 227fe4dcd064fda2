//! Pod networking: network namespaces pinned under /var/run/netns and CNI plugins run
//! against them.

pub mod cni;
pub mod netns;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{read_json, write_json_atomic};

/// The interface CNI creates in every pod, as kubelet and the other runtimes expect.
pub const POD_IFNAME: &str = "eth0";

pub struct Network {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// Where pod network namespaces are pinned.
    pub netns_dir: PathBuf,
    /// One file per attached sandbox: the configuration and result of its ADD.
    pub state_dir: PathBuf,
    /// Upper bound of each plugin run.
    pub plugin_timeout: Duration,
    pod_cidr: Mutex<String>,
}

/// What CNI needs to attach a sandbox, and to detach it again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetworkRequest {
    pub sandbox_id: String,
    /// The pinned namespace; may be empty on teardown if it is gone already.
    pub netns_path: PathBuf,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub port_mappings: Vec<PortMapping>,
    /// Passed to plugins declaring the "dns" capability.
    pub dns: Option<DnsConfig>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp" (any case).
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodNetwork {
    /// Pod IPs, IPv4 first.
    pub ips: Vec<String>,
    pub interface: String,
}

/// What a successful ADD used, so DEL runs the same plugins with the same arguments even
/// after the config directory changed.
#[derive(Debug, Serialize, Deserialize)]
struct CachedAttachment {
    network: Value,
    result: Value,
    capability_args: Map<String, Value>,
}

impl Network {
    pub fn new(config: &Config) -> Self {
        Network {
            conf_dir: config.cni_conf_dir.clone(),
            bin_dirs: config.cni_bin_dirs.clone(),
            netns_dir: config.netns_dir.clone(),
            state_dir: config.state_dir.join("cni"),
            plugin_timeout: config.cni_plugin_timeout(),
            pod_cidr: Mutex::new(String::new()),
        }
    }

    /// Ok(network name) when a CNI configuration loads and its plugins exist; otherwise why not.
    pub fn status(&self) -> std::result::Result<String, String> {
        let list = cni::load_default(&self.conf_dir).map_err(|e| e.to_string())?;
        list.check_plugins(&self.bin_dirs)
            .map_err(|e| e.to_string())?;
        Ok(list.name)
    }

    /// Creates a network namespace pinned at `netns_dir/name`.
    pub fn create_netns(&self, name: &str) -> Result<PathBuf> {
        netns::create(&self.netns_dir, name)
    }

    /// Attaches the sandbox's namespace to the default CNI network. On error nothing stays
    /// attached: plugins that had succeeded are deleted again.
    pub async fn setup(&self, req: &PodNetworkRequest) -> Result<PodNetwork> {
        let cache = self.cache_path(&req.sandbox_id)?;
        if req.netns_path.as_os_str().is_empty() {
            return Err(Error::invalid(format!(
                "sandbox {}: no network namespace to attach",
                req.sandbox_id
            )));
        }
        let list = cni::load_default(&self.conf_dir)?;
        list.check_plugins(&self.bin_dirs)?;
        let rt = runtime_conf(req);
        let exec = self.exec();
        self.loopback_up(&exec, &rt).await?;
        let result = exec.add_list(&list, &rt).await?;

        let cached = CachedAttachment {
            network: list.to_value(),
            result: result.clone(),
            capability_args: rt.capability_args.clone(),
        };
        // Without the cache a later DEL might use another config; better to fail now.
        if let Err(e) = write_json_atomic(&cache, &cached) {
            if let Err(cleanup) = exec.del_list(&list, &rt, Some(&result)).await {
                tracing::warn!(sandbox = %req.sandbox_id, error = %cleanup, "CNI DEL after failed cache write");
            }
            return Err(e);
        }
        let ips = cni::result_ips(&result, POD_IFNAME);
        tracing::info!(sandbox = %req.sandbox_id, network = %list.name, ips = ?ips, "pod network attached");
        Ok(PodNetwork {
            ips,
            interface: POD_IFNAME.to_string(),
        })
    }

    /// A new namespace's `lo` is down; pods expect 127.0.0.1 to work (containers of a pod
    /// talk over localhost), so the loopback plugin brings it up as containerd's CRI does.
    async fn loopback_up(&self, exec: &cni::Exec, rt: &cni::RuntimeConf) -> Result<()> {
        if cni::find_plugin(&self.bin_dirs, "loopback").is_err() {
            tracing::warn!(
                sandbox = %rt.container_id,
                "CNI loopback plugin not found; the pod's lo stays down and localhost will not work"
            );
            return Ok(());
        }
        let conf =
            serde_json::json!({"cniVersion": "0.3.1", "name": "cni-loopback", "type": "loopback"});
        let lo = cni::RuntimeConf {
            ifname: "lo".to_string(),
            capability_args: Map::new(),
            ..rt.clone()
        };
        exec.run(&conf, "ADD", &lo).await.map(|_| ())
    }

    /// Detaches the sandbox from its network. Idempotent. When DEL cannot possibly run (no
    /// configuration anywhere, a plugin binary gone), it warns and returns Ok: a pod that can
    /// never be torn down must not block its removal forever. A plugin that fails is an
    /// error, so the caller retries.
    pub async fn teardown(&self, req: &PodNetworkRequest) -> Result<()> {
        let cache = self.cache_path(&req.sandbox_id)?;
        let cached: Option<CachedAttachment> = read_json(&cache).unwrap_or_else(|e| {
            tracing::warn!(sandbox = %req.sandbox_id, error = %e, "unreadable CNI cache; using the config dir");
            None
        });
        let (list, prev, capability_args) = match cached {
            Some(c) => match cni::from_value(&c.network, &cache) {
                Ok(list) => (list, Some(c.result), c.capability_args),
                Err(e) => {
                    tracing::warn!(sandbox = %req.sandbox_id, error = %e, "invalid cached CNI config; using the config dir");
                    match self.current_list(req) {
                        Some(l) => (l, None, Map::new()),
                        None => return remove_cache(&cache),
                    }
                }
            },
            // Never attached, or peapod stopped between ADD and writing the cache: DEL is
            // harmless in the first case and frees the IP in the second.
            None => match self.current_list(req) {
                Some(l) => (l, None, runtime_conf(req).capability_args),
                None => return Ok(()),
            },
        };
        if let Err(e) = list.check_plugins(&self.bin_dirs) {
            tracing::warn!(sandbox = %req.sandbox_id, network = %list.name, error = %e,
                "cannot run CNI DEL; the pod's network resources may leak");
            return remove_cache(&cache);
        }
        let mut rt = runtime_conf(req);
        rt.capability_args = capability_args;
        self.exec().del_list(&list, &rt, prev.as_ref()).await?;
        remove_cache(&cache)?;
        tracing::info!(sandbox = %req.sandbox_id, network = %list.name, "pod network detached");
        Ok(())
    }

    /// The result of the sandbox's CNI ADD, in the shape containerd reports it
    /// ([`cni::go_cni_result`]); None when the sandbox is not attached.
    pub fn attachment(&self, sandbox_id: &str) -> Option<Value> {
        let cached: CachedAttachment = read_json(&self.cache_path(sandbox_id).ok()?).ok()??;
        Some(cni::go_cni_result(&cached.result, POD_IFNAME))
    }

    fn current_list(&self, req: &PodNetworkRequest) -> Option<cni::NetConfList> {
        match cni::load_default(&self.conf_dir) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(sandbox = %req.sandbox_id, error = %e,
                    "no CNI config to tear the pod network down with; skipping CNI DEL");
                None
            }
        }
    }

    fn exec(&self) -> cni::Exec {
        cni::Exec {
            bin_dirs: self.bin_dirs.clone(),
            timeout: self.plugin_timeout,
        }
    }

    fn cache_path(&self, sandbox_id: &str) -> Result<PathBuf> {
        if sandbox_id.is_empty() || sandbox_id.contains('/') || sandbox_id.starts_with('.') {
            return Err(Error::invalid(format!(
                "sandbox id {sandbox_id:?} is not a plain name"
            )));
        }
        Ok(self.state_dir.join(format!("{sandbox_id}.json")))
    }

    /// kubelet hands over the node's pod CIDR; peapod's CNI configs are static files,
    /// so it is validated and remembered for Status, not written anywhere.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        if !cidr.is_empty() {
            let (addr, len) = cidr
                .split_once('/')
                .ok_or_else(|| Error::invalid(format!("pod CIDR {cidr:?} is not a CIDR")))?;
            let ok_addr = addr.parse::<std::net::IpAddr>().is_ok();
            let ok_len = len.parse::<u8>().map(|l| l <= 128).unwrap_or(false);
            if !ok_addr || !ok_len {
                return Err(Error::invalid(format!("pod CIDR {cidr:?} is not a CIDR")));
            }
        }
        *self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) = cidr.to_string();
        Ok(())
    }

    pub fn pod_cidr(&self) -> String {
        self.pod_cidr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn remove_cache(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("remove {}: {e}", path.display()))),
    }
}

/// The CNI_ARGS kubelet's other runtimes pass; plugins such as Calico and Cilium key on them.
pub fn cni_args(req: &PodNetworkRequest) -> Vec<(String, String)> {
    vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("K8S_POD_NAMESPACE".into(), req.pod_namespace.clone()),
        ("K8S_POD_NAME".into(), req.pod_name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), req.sandbox_id.clone()),
        ("K8S_POD_UID".into(), req.pod_uid.clone()),
    ]
}

/// The capability arguments of the CNI conventions document: "portMappings" and "dns".
pub fn capability_args(req: &PodNetworkRequest) -> Map<String, Value> {
    let mut caps = Map::new();
    // A mapping without a host port only documents the container port; nothing to forward.
    let ports: Vec<Value> = req
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            serde_json::json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.to_ascii_lowercase(),
                "hostIP": p.host_ip,
            })
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(dns) = &req.dns {
        caps.insert(
            "dns".into(),
            serde_json::json!({
                "servers": dns.servers,
                "searches": dns.searches,
                "options": dns.options,
            }),
        );
    }
    caps
}

fn runtime_conf(req: &PodNetworkRequest) -> cni::RuntimeConf {
    cni::RuntimeConf {
        container_id: req.sandbox_id.clone(),
        netns: req.netns_path.to_string_lossy().into_owned(),
        ifname: POD_IFNAME.to_string(),
        args: cni_args(req),
        capability_args: capability_args(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PodNetworkRequest {
        PodNetworkRequest {
            sandbox_id: "sb1".into(),
            netns_path: "/var/run/netns/sb1".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "u-1".into(),
            port_mappings: vec![
                PortMapping {
                    protocol: "TCP".into(),
                    container_port: 80,
                    host_port: 8080,
                    host_ip: "127.0.0.1".into(),
                },
                PortMapping {
                    protocol: "UDP".into(),
                    container_port: 53,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            dns: None,
        }
    }

    #[test]
    fn cni_args_carry_the_pod_identity() {
        let rt = runtime_conf(&req());
        assert_eq!(
            rt.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u-1"
        );
        assert_eq!(rt.ifname, "eth0");
    }

    #[test]
    fn port_mappings_are_lowercased_and_skip_mappings_without_host_port() {
        let caps = capability_args(&req());
        assert_eq!(
            caps["portMappings"],
            serde_json::json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}])
        );
        assert!(caps.get("dns").is_none());
        let mut r = req();
        r.port_mappings.clear();
        r.dns = Some(DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        let caps = capability_args(&r);
        assert!(caps.get("portMappings").is_none());
        assert_eq!(caps["dns"]["servers"][0], "10.0.0.10");
    }

    fn network(root: &Path) -> Network {
        let config = Config {
            state_dir: root.join("state"),
            cni_conf_dir: root.join("conf"),
            cni_bin_dirs: vec![root.join("bin")],
            netns_dir: root.join("netns"),
            ..Config::default()
        };
        Network::new(&config)
    }

    fn fake_plugin(dir: &Path, name: &str, out: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!("#!/bin/sh\ncat >/dev/null\necho \"$CNI_COMMAND {name}\" >> \"$(dirname \"$0\")/log\"\n{out}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn teardown_uses_the_cached_config_even_after_the_conf_dir_changed() {
        let d = tempfile::tempdir().unwrap();
        let n = network(d.path());
        assert_eq!(n.state_dir, d.path().join("state/cni"));
        let bin = d.path().join("bin");
        fake_plugin(
            &bin,
            "a",
            r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.4.0.9/24"}]}'"#,
        );
        fake_plugin(&bin, "b", "true");
        std::fs::create_dir_all(&n.conf_dir).unwrap();
        std::fs::write(
            n.conf_dir.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"one","plugins":[{"type":"a"}]}"#,
        )
        .unwrap();
        let pn = n.setup(&req()).await.unwrap();
        assert_eq!(pn.ips, vec!["10.4.0.9"]);
        assert_eq!(pn.interface, "eth0");
        assert!(n.state_dir.join("sb1.json").exists());

        // The new config would run "b"; DEL must still run "a", the plugin ADD used.
        std::fs::write(
            n.conf_dir.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"two","plugins":[{"type":"b"}]}"#,
        )
        .unwrap();
        n.teardown(&req()).await.unwrap();
        assert!(!n.state_dir.join("sb1.json").exists());
        let log = std::fs::read_to_string(bin.join("log")).unwrap();
        assert_eq!(log, "ADD a\nDEL a\n");
    }

    #[tokio::test]
    async fn teardown_without_any_config_or_with_a_failing_plugin() {
        let d = tempfile::tempdir().unwrap();
        let n = network(d.path());
        // Never set up, no conf dir at all.
        n.teardown(&req()).await.unwrap();

        let bin = d.path().join("bin");
        fake_plugin(
            &bin,
            "broken",
            "echo '{\"code\":999,\"msg\":\"busy\"}'; exit 1",
        );
        std::fs::create_dir_all(&n.conf_dir).unwrap();
        std::fs::write(
            n.conf_dir.join("10-x.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"broken"}]}"#,
        )
        .unwrap();
        // A plugin that fails DEL is an error: the caller retries.
        let e = n.teardown(&req()).await.unwrap_err().to_string();
        assert!(e.contains("busy"), "{e}");
    }

    #[tokio::test]
    async fn bad_sandbox_ids_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let n = network(d.path());
        for id in ["", "../x", ".hidden"] {
            let r = PodNetworkRequest {
                sandbox_id: id.into(),
                ..req()
            };
            assert!(
                matches!(n.teardown(&r).await, Err(Error::InvalidArgument(_))),
                "{id:?}"
            );
        }
    }
}
