//! CNI network configuration loading (the CNI spec's conflist, and single-plugin .conf files)
//! and plugin execution (ADD/DEL over a list).
//!
//! Hand-written: the Rust CNI crates are for the other side of the protocol (`cni-plugin`,
//! `rscni-plugin` write plugins; `rscni-runtime` is only planned), and `rust-cni`, the one
//! runtime-side port of libcni, is an untested early release whose plugin calls block the
//! thread. The runtime side is small: JSON on stdin, `CNI_*` variables, one process per plugin.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetConfList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's configuration as given in the file.
    pub plugins: Vec<Value>,
    pub source: PathBuf,
}

impl NetConfList {
    /// The list as a conflist document, e.g. to cache the exact configuration an ADD used.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": self.plugins,
        })
    }

    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(|t| t.as_str()).map(String::from))
            .collect()
    }

    /// Every plugin binary must be found in one of `bin_dirs`.
    pub fn check_plugins(&self, bin_dirs: &[PathBuf]) -> Result<()> {
        for t in self.plugin_types() {
            find_plugin(bin_dirs, &t)?;
        }
        Ok(())
    }
}

pub fn find_plugin(bin_dirs: &[PathBuf], plugin: &str) -> Result<PathBuf> {
    if plugin.contains('/') || plugin.is_empty() {
        return Err(Error::invalid(format!(
            "CNI plugin type {plugin:?} is not a plain name"
        )));
    }
    bin_dirs
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "CNI plugin {plugin:?} not found in {}",
                bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Loads the first valid configuration in `dir`, in lexical file-name order, as libcni does.
pub fn load_default(dir: &Path) -> Result<NetConfList> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::FailedPrecondition(format!("CNI config dir {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut last_err = None;
    for f in &files {
        match load_file(f) {
            Ok(l) => return Ok(l),
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "skipping invalid CNI config");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        Error::FailedPrecondition(format!("no CNI network config found in {}", dir.display()))
    }))
}

pub fn load_file(path: &Path) -> Result<NetConfList> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::FailedPrecondition(format!("{}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::FailedPrecondition(format!("{}: invalid JSON: {e}", path.display())))?;
    from_value(&v, path)
}

/// Parses a conflist (or single-plugin conf) already decoded as JSON; `path` names it in errors.
pub fn from_value(v: &Value, path: &Path) -> Result<NetConfList> {
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::FailedPrecondition(format!("{}: no network name", path.display())))?
        .to_string();
    let cni_version = v
        .get("cniVersion")
        .and_then(|n| n.as_str())
        .unwrap_or("0.4.0")
        .to_string();
    let plugins = match v.get("plugins") {
        Some(Value::Array(p)) => p.clone(),
        Some(_) => {
            return Err(Error::FailedPrecondition(format!(
                "{}: \"plugins\" is not a list",
                path.display()
            )))
        }
        // A single-plugin .conf is a list of one.
        None if v.get("type").is_some() => vec![v.clone()],
        None => {
            return Err(Error::FailedPrecondition(format!(
                "{}: neither \"plugins\" nor \"type\"",
                path.display()
            )))
        }
    };
    if plugins.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "{}: no plugins",
            path.display()
        )));
    }
    for p in &plugins {
        if p.get("type").and_then(|t| t.as_str()).is_none() {
            return Err(Error::FailedPrecondition(format!(
                "{}: a plugin has no \"type\"",
                path.display()
            )));
        }
    }
    Ok(NetConfList {
        name,
        cni_version,
        plugins,
        source: path.to_path_buf(),
    })
}

// ---------------------------------------------------------------------------------------
// Plugin execution, per the CNI spec's "Execution protocol" and "Network configuration
// lists" sections (https://github.com/containernetworking/cni/blob/main/SPEC.md).

/// How long one plugin run may take. A plugin that hangs (a stuck IPAM daemon, a lock held by
/// a dead process) must not hold a sandbox operation, and kubelet's sync loop, forever.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything about one attachment that is not in the network configuration.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    /// May be empty on DEL when the namespace is already gone; the spec allows that.
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS pairs, in order.
    pub args: Vec<(String, String)>,
    /// Capability name → value, put in `runtimeConfig` only for plugins that declare the
    /// capability (e.g. "portMappings", "dns").
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// Runs plugins found in `bin_dirs`, each bounded by `timeout`.
#[derive(Debug, Clone)]
pub struct Exec {
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

impl Exec {
    pub fn new(bin_dirs: Vec<PathBuf>) -> Self {
        Exec {
            bin_dirs,
            timeout: PLUGIN_TIMEOUT,
        }
    }

    /// ADD through every plugin in order, each one getting the previous one's result, and
    /// returns the last result. If a plugin fails, the whole list is deleted again before the
    /// error is returned, so plugins that already succeeded do not leak (IPs, veths, rules).
    pub async fn add_list(&self, list: &NetConfList, rt: &RuntimeConf) -> Result<Value> {
        let start = std::time::Instant::now();
        let r = self.add_each(list, rt).await;
        crate::metrics::cni_operation("ADD", r.is_ok(), start.elapsed());
        r
    }

    async fn add_each(&self, list: &NetConfList, rt: &RuntimeConf) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = plugin_config(list, plugin, prev.as_ref(), rt);
            match self.run(&conf, "ADD", rt).await {
                // A plugin with nothing to report passes the previous result on.
                Ok(Some(result)) => prev = Some(result),
                Ok(None) => {}
                Err(err) => {
                    return match self.del_list(list, rt, prev.as_ref()).await {
                        Ok(()) => Err(err),
                        Err(cleanup) => Err(with_cleanup_failure(err, &cleanup)),
                    }
                }
            }
        }
        prev.ok_or_else(|| {
            Error::internal(format!(
                "CNI network {:?}: no plugin returned a result",
                list.name
            ))
        })
    }

    /// DEL through every plugin in reverse order, each given `prev` (the cached ADD result).
    /// DEL is idempotent by the spec, so a failing plugin does not stop the others: the IPAM
    /// release further down the list still happens. The first failure is returned.
    pub async fn del_list(
        &self,
        list: &NetConfList,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<()> {
        let start = std::time::Instant::now();
        let r = self.del_each(list, rt, prev).await;
        crate::metrics::cni_operation("DEL", r.is_ok(), start.elapsed());
        r
    }

    async fn del_each(
        &self,
        list: &NetConfList,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<()> {
        // Before 0.4.0 DEL carried no prevResult, and older plugins reject one.
        let prev = prev.filter(|_| version_at_least(&list.cni_version, (0, 4)));
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            let conf = plugin_config(list, plugin, prev, rt);
            if let Err(e) = self.run(&conf, "DEL", rt).await {
                tracing::warn!(network = %list.name, container = %rt.container_id, error = %e, "CNI DEL failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Runs one plugin with the complete configuration `conf`; returns its parsed stdout,
    /// `None` when it printed nothing.
    pub async fn run(
        &self,
        conf: &Value,
        command: &str,
        rt: &RuntimeConf,
    ) -> Result<Option<Value>> {
        let plugin = conf.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let bin = find_plugin(&self.bin_dirs, plugin)?;
        let stdin = serde_json::to_vec(conf)
            .map_err(|e| Error::internal(format!("encode CNI config for {plugin}: {e}")))?;
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map_err(|e| Error::invalid(format!("CNI plugin dirs: {e}")))?;
        let what = format!("CNI plugin {plugin} {command} for {}", rt.container_id);

        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", rt.cni_args())
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // On timeout the future is dropped; this is what then stops the plugin.
            .kill_on_drop(true)
            // Its own process group, so a timeout also stops what a plugin script started.
            .process_group(0);
        let mut child = spawn(&mut cmd).map_err(|e| Error::internal(format!("{what}: {e}")))?;
        let pgid = child.id();
        let mut child_stdin = child.stdin.take();
        let run = async move {
            // Write while reading, so a plugin that prints before reading all of stdin
            // cannot deadlock against us.
            let write = async {
                if let Some(mut w) = child_stdin.take() {
                    // A plugin may exit without reading stdin; its exit status tells.
                    let _ = w.write_all(&stdin).await;
                }
            };
            let (_, out) = tokio::join!(write, child.wait_with_output());
            out
        };
        let out = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| {
                if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: signalling a process group has no memory-safety preconditions.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
                Error::DeadlineExceeded(format!(
                    "{what}: timed out after {:?} (cni_plugin_timeout_secs)",
                    self.timeout
                ))
            })?
            .map_err(|e| Error::internal(format!("{what}: {e}")))?;

        if !out.status.success() {
            return Err(Error::internal(format!(
                "{what} failed: {}",
                plugin_error(&out.stdout, &out.stderr, out.status)
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::internal(format!("{what}: invalid result {text:?}: {e}")))
    }
}

/// Spawns, retrying briefly on ETXTBSY: a plugin binary just written (installed while we run,
/// or by a test) can be transiently "busy" while another thread's fork still holds it open.
fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The spec's error object is `{"code", "msg", "details"}` on stdout; plugins that die
/// before printing it leave only stderr.
fn plugin_error(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        if let Some(msg) = v.get("msg").and_then(|m| m.as_str()) {
            let mut s = msg.to_string();
            if let Some(d) = v
                .get("details")
                .and_then(|d| d.as_str())
                .filter(|d| !d.is_empty())
            {
                s.push_str(": ");
                s.push_str(d);
            }
            if let Some(c) = v.get("code").and_then(|c| c.as_u64()) {
                s.push_str(&format!(" (code {c})"));
            }
            return s;
        }
    }
    let text = [stdout, stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

fn with_cleanup_failure(err: Error, cleanup: &Error) -> Error {
    let msg = format!("{err} (and deleting the partial attachment failed too: {cleanup})");
    match err {
        Error::DeadlineExceeded(_) => Error::DeadlineExceeded(msg),
        Error::FailedPrecondition(_) => Error::FailedPrecondition(msg),
        Error::InvalidArgument(_) => Error::InvalidArgument(msg),
        _ => Error::Internal(msg),
    }
}

/// One plugin's stdin: its own configuration plus the list's `name` and `cniVersion`, the
/// previous result, and the runtime capability arguments it declared it understands.
pub fn plugin_config(
    list: &NetConfList,
    plugin: &Value,
    prev: Option<&Value>,
    rt: &RuntimeConf,
) -> Value {
    let mut conf = match plugin {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    let runtime: Map<String, Value> = rt
        .capability_args
        .iter()
        .filter(|(cap, _)| {
            plugin
                .get("capabilities")
                .and_then(|c| c.get(cap.as_str()))
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    } else {
        // A runtimeConfig written in the file is not ours to pass on; libcni drops it too.
        conf.remove("runtimeConfig");
    }
    Value::Object(conf)
}

/// A CNI result in the shape containerd's PodSandboxStatus verbose info gives it
/// (`cniResult`: go-cni's `Result` as Go marshals it): `Interfaces` by name, each with its
/// `IPConfigs` (`IP` without prefix length, `Gateway`), `Mac` and `Sandbox`; then `DNS` (one
/// entry per network) and `Routes`. IPs a result does not tie to an interface belong to the
/// default one, `ifname`, which is always present as in go-cni.
pub fn go_cni_result(result: &Value, ifname: &str) -> Value {
    let mut interfaces = Map::new();
    interfaces.insert(ifname.to_string(), go_cni_interface("", ""));
    let listed: Vec<&Value> = result
        .get("interfaces")
        .and_then(|i| i.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let name_of = |i: &Value| {
        i.get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string()
    };
    for i in &listed {
        let str_of = |k: &str| i.get(k).and_then(|v| v.as_str()).unwrap_or("");
        interfaces.insert(
            name_of(i),
            go_cni_interface(str_of("mac"), str_of("sandbox")),
        );
    }
    let mut add_ip = |name: String, address: &str, gateway: Option<&str>| {
        let ip = address.split('/').next().unwrap_or(address);
        let entry = interfaces
            .entry(name)
            .or_insert_with(|| go_cni_interface("", ""));
        let configs = &mut entry["IPConfigs"];
        if !configs.is_array() {
            *configs = Value::Array(Vec::new());
        }
        if let Some(a) = configs.as_array_mut() {
            a.push(serde_json::json!({"IP": ip, "Gateway": gateway}));
        }
    };
    if let Some(ips) = result.get("ips").and_then(|i| i.as_array()) {
        for ip in ips {
            let Some(address) = ip.get("address").and_then(|a| a.as_str()) else {
                continue;
            };
            let name = ip
                .get("interface")
                .and_then(|i| i.as_u64())
                .and_then(|i| listed.get(i as usize))
                .map(|i| name_of(i))
                .unwrap_or_else(|| ifname.to_string());
            add_ip(name, address, ip.get("gateway").and_then(|g| g.as_str()));
        }
    } else {
        for key in ["ip4", "ip6"] {
            if let Some(v) = result.get(key) {
                if let Some(address) = v.get("ip").and_then(|a| a.as_str()) {
                    add_ip(
                        ifname.to_string(),
                        address,
                        v.get("gateway").and_then(|g| g.as_str()),
                    );
                }
            }
        }
    }
    let routes: Vec<Value> = result
        .get("routes")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    serde_json::json!({
        "Interfaces": interfaces,
        "DNS": [result.get("dns").cloned().unwrap_or_else(|| serde_json::json!({}))],
        "Routes": if routes.is_empty() { Value::Null } else { Value::Array(routes) },
    })
}

fn go_cni_interface(mac: &str, sandbox: &str) -> Value {
    serde_json::json!({"IPConfigs": null, "Mac": mac, "Sandbox": sandbox})
}

/// The IPs (without prefix length) a result assigns to `ifname` inside the container, IPv4
/// first. Reads the 0.3.x–1.x format (`ips[].address`, with `interface` indexing
/// `interfaces[]`) and the 0.1/0.2 one (`ip4.ip`, `ip6.ip`).
pub fn result_ips(result: &Value, ifname: &str) -> Vec<String> {
    let mut addrs: Vec<&str> = Vec::new();
    if let Some(ips) = result.get("ips").and_then(|i| i.as_array()) {
        let interfaces = result.get("interfaces").and_then(|i| i.as_array());
        for ip in ips {
            // An IP tied to a host-side interface (a bridge's gateway) is not the pod's.
            let ours = match (ip.get("interface").and_then(|i| i.as_u64()), interfaces) {
                (Some(idx), Some(ifs)) => ifs
                    .get(idx as usize)
                    .map(|i| {
                        let in_sandbox = i
                            .get("sandbox")
                            .and_then(|s| s.as_str())
                            .is_some_and(|s| !s.is_empty());
                        let name = i.get("name").and_then(|n| n.as_str()).unwrap_or("");
                        in_sandbox && (name == ifname || name.is_empty())
                    })
                    .unwrap_or(true),
                _ => true,
            };
            if ours {
                if let Some(a) = ip.get("address").and_then(|a| a.as_str()) {
                    addrs.push(a);
                }
            }
        }
    } else {
        for key in ["ip4", "ip6"] {
            if let Some(a) = result
                .get(key)
                .and_then(|v| v.get("ip"))
                .and_then(|a| a.as_str())
            {
                addrs.push(a);
            }
        }
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addrs {
        let bare = a.split_once('/').map_or(a, |(ip, _)| ip);
        match bare.parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => tracing::warn!(address = a, "CNI result has an unparsable IP address"),
        }
    }
    out.sort_by_key(|ip| ip.is_ipv6());
    out.into_iter().map(|ip| ip.to_string()).collect()
}

/// True when `version` ("major.minor.patch") is at least `min` (major, minor).
fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_first_valid_conflist_in_order() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("05-bad.conflist"), "{not json").unwrap();
        std::fs::write(
            d.path().join("10-good.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n1","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-other.conf"),
            r#"{"cniVersion":"0.4.0","name":"n2","type":"bridge"}"#,
        )
        .unwrap();
        let l = load_default(d.path()).unwrap();
        assert_eq!(l.name, "n1");
        assert_eq!(l.plugin_types(), vec!["bridge", "portmap"]);
    }

    #[test]
    fn empty_dir_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_default(d.path()).is_err());
        assert!(load_default(&d.path().join("missing")).is_err());
    }

    #[test]
    fn missing_plugin_binary_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.conf");
        std::fs::write(&f, r#"{"name":"n","type":"nosuchplugin"}"#).unwrap();
        let l = load_file(&f).unwrap();
        let e = l.check_plugins(&[d.path().to_path_buf()]).unwrap_err();
        assert!(e.to_string().contains("nosuchplugin"));
    }

    fn list(version: &str, plugins: Value) -> NetConfList {
        from_value(
            &serde_json::json!({"cniVersion": version, "name": "testnet", "plugins": plugins}),
            Path::new("test"),
        )
        .unwrap()
    }

    fn rt_with_ports() -> RuntimeConf {
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]),
        );
        RuntimeConf {
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAME".into(), "p".into()),
            ],
            capability_args: caps,
        }
    }

    #[test]
    fn plugin_config_injects_name_version_prev_and_only_declared_capabilities() {
        let l = list(
            "1.0.0",
            serde_json::json!([
                {"type": "bridge", "runtimeConfig": {"stale": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "other", "capabilities": {"portMappings": false}}
            ]),
        );
        let rt = rt_with_ports();
        let prev = serde_json::json!({"ips": []});
        let c0 = plugin_config(&l, &l.plugins[0], None, &rt);
        assert_eq!(c0["name"], "testnet");
        assert_eq!(c0["cniVersion"], "1.0.0");
        assert!(c0.get("prevResult").is_none());
        assert!(c0.get("runtimeConfig").is_none());
        let c1 = plugin_config(&l, &l.plugins[1], Some(&prev), &rt);
        assert_eq!(c1["prevResult"], prev);
        assert_eq!(c1["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(c1["runtimeConfig"]["portMappings"][0]["protocol"], "tcp");
        let c2 = plugin_config(&l, &l.plugins[2], None, &rt);
        assert!(c2.get("runtimeConfig").is_none());
    }

    #[test]
    fn cni_args_are_semicolon_joined_pairs() {
        assert_eq!(rt_with_ports().cni_args(), "IgnoreUnknown=1;K8S_POD_NAME=p");
    }

    #[test]
    fn result_ips_reads_1_0_format_and_skips_host_side_addresses() {
        let r = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "vethabc", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/var/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.22.0.1/24", "interface": 0},
                {"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 2}
            ]
        });
        assert_eq!(result_ips(&r, "eth0"), vec!["10.22.0.5", "fd00::5"]);
    }

    #[test]
    fn result_ips_reads_0_3_and_0_2_formats() {
        let r03 = serde_json::json!({"cniVersion": "0.3.1",
            "ips": [{"version": "4", "address": "10.1.0.7/16"}]});
        assert_eq!(result_ips(&r03, "eth0"), vec!["10.1.0.7"]);
        let r02 = serde_json::json!({"cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.8/16"}, "ip6": {"ip": "fd00::8/64"}});
        assert_eq!(result_ips(&r02, "eth0"), vec!["10.1.0.8", "fd00::8"]);
        assert!(result_ips(&serde_json::json!({"ips": [{"address": "junk"}]}), "eth0").is_empty());
    }

    #[test]
    fn version_comparison() {
        assert!(version_at_least("1.0.0", (0, 4)));
        assert!(version_at_least("0.4.0", (0, 4)));
        assert!(!version_at_least("0.3.1", (0, 4)));
        assert!(!version_at_least("junk", (0, 4)));
    }

    /// A fake plugin: logs "COMMAND type" and its stdin to files in its dir, then runs `body`.
    fn fake_plugin(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        let script = format!(
            "#!/bin/sh\nd=$(dirname \"$0\")\nin=$(cat)\necho \"$CNI_COMMAND {name}\" >> \"$d/log\"\n\
             printf '%s\\n' \"$in\" > \"$d/stdin-$CNI_COMMAND-{name}\"\n\
             env | grep '^CNI_' | sort > \"$d/env-$CNI_COMMAND-{name}\"\n{body}\n"
        );
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    const OK_RESULT: &str = r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.2/24"}]}'"#;

    #[tokio::test]
    async fn add_chains_prev_result_and_del_runs_in_reverse() {
        let d = tempfile::tempdir().unwrap();
        fake_plugin(d.path(), "first", OK_RESULT);
        // Prints nothing: the first plugin's result must be passed through.
        fake_plugin(d.path(), "second", "true");
        let l = list(
            "1.0.0",
            serde_json::json!([{"type": "first"}, {"type": "second"}]),
        );
        let exec = Exec::new(vec![d.path().to_path_buf()]);
        let rt = rt_with_ports();
        let r = exec.add_list(&l, &rt).await.unwrap();
        assert_eq!(result_ips(&r, "eth0"), vec!["10.9.0.2"]);
        let stdin2: Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join("stdin-ADD-second")).unwrap(),
        )
        .unwrap();
        assert_eq!(stdin2["prevResult"]["ips"][0]["address"], "10.9.0.2/24");
        assert_eq!(stdin2["name"], "testnet");
        let env = std::fs::read_to_string(d.path().join("env-ADD-first")).unwrap();
        assert!(env.contains("CNI_CONTAINERID=c1"));
        assert!(env.contains("CNI_IFNAME=eth0"));
        assert!(env.contains("CNI_NETNS=/var/run/netns/x"));
        assert!(env.contains("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=p"));
        assert!(env.contains(&format!("CNI_PATH={}", d.path().display())));

        exec.del_list(&l, &rt, Some(&r)).await.unwrap();
        assert_eq!(
            log(d.path()),
            vec!["ADD first", "ADD second", "DEL second", "DEL first"]
        );
        let del1: Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join("stdin-DEL-first")).unwrap(),
        )
        .unwrap();
        assert_eq!(del1["prevResult"], r);
    }

    #[tokio::test]
    async fn failed_add_deletes_the_whole_list_and_reports_the_plugin_message() {
        let d = tempfile::tempdir().unwrap();
        fake_plugin(d.path(), "good", OK_RESULT);
        fake_plugin(
            d.path(),
            "bad",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no luck","details":"table full"}'; exit 1"#,
        );
        fake_plugin(d.path(), "never", OK_RESULT);
        let l = list(
            "1.0.0",
            serde_json::json!([{"type": "good"}, {"type": "bad"}, {"type": "never"}]),
        );
        let exec = Exec::new(vec![d.path().to_path_buf()]);
        let e = exec
            .add_list(&l, &rt_with_ports())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no luck: table full"), "{e}");
        assert!(e.contains("bad"), "{e}");
        assert_eq!(
            log(d.path()),
            vec!["ADD good", "ADD bad", "DEL never", "DEL bad", "DEL good"]
        );
    }

    #[tokio::test]
    async fn a_hung_plugin_times_out() {
        let d = tempfile::tempdir().unwrap();
        fake_plugin(d.path(), "hang", "exec sleep 30");
        let l = list("1.0.0", serde_json::json!([{"type": "hang"}]));
        let mut exec = Exec::new(vec![d.path().to_path_buf()]);
        exec.timeout = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let e = exec
            .run(&l.plugins[0], "ADD", &rt_with_ports())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::DeadlineExceeded(_)), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn del_before_0_4_gets_no_prev_result_and_stderr_is_reported() {
        let d = tempfile::tempdir().unwrap();
        fake_plugin(d.path(), "old", "echo oops >&2; exit 3");
        let l = list("0.3.1", serde_json::json!([{"type": "old"}]));
        let exec = Exec::new(vec![d.path().to_path_buf()]);
        let prev = serde_json::json!({"ips": []});
        let e = exec
            .del_list(&l, &rt_with_ports(), Some(&prev))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("oops"), "{e}");
        let stdin: Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("stdin-DEL-old")).unwrap())
                .unwrap();
        assert!(stdin.get("prevResult").is_none());
    }

    #[test]
    fn a_result_in_go_cni_shape_ties_each_ip_to_its_interface() {
        let r = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "vethx", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/var/run/netns/p"}
            ],
            "ips": [
                {"address": "10.88.0.7/16", "gateway": "10.88.0.1", "interface": 2},
                {"address": "fd00::7/64", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let g = go_cni_result(&r, "eth0");
        let eth0 = &g["Interfaces"]["eth0"];
        assert_eq!(eth0["Sandbox"], "/var/run/netns/p");
        assert_eq!(eth0["Mac"], "cc:cc:cc:cc:cc:cc");
        assert_eq!(eth0["IPConfigs"][0]["IP"], "10.88.0.7");
        assert_eq!(eth0["IPConfigs"][0]["Gateway"], "10.88.0.1");
        assert_eq!(eth0["IPConfigs"][1]["IP"], "fd00::7");
        assert_eq!(eth0["IPConfigs"][1]["Gateway"], Value::Null);
        assert_eq!(g["Interfaces"]["cni0"]["IPConfigs"], Value::Null);
        assert_eq!(g["Routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(g["DNS"][0]["nameservers"][0], "10.96.0.10");
        // 0.2.0 results: everything on the default interface.
        let old = serde_json::json!({"ip4": {"ip": "10.1.2.3/24", "gateway": "10.1.2.1"}});
        let g = go_cni_result(&old, "eth0");
        assert_eq!(g["Interfaces"]["eth0"]["IPConfigs"][0]["IP"], "10.1.2.3");
    }
}
