//! Pod networking against the real CNI plugins in /usr/lib/cni (bridge, host-local, portmap,
//! loopback, tuning), without containerd: namespaces are pinned in a temporary directory and
//! each test uses its own bridge and subnet. Needs root; skips otherwise.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use peapod::config::Config;
use peapod::network::{netns, Network, PodNetworkRequest, PortMapping};

const PLUGIN_DIR: &str = "/usr/lib/cni";

/// Removes everything a test created on the host, even when the test fails half way.
struct Host {
    tmp: tempfile::TempDir,
    bridge: String,
    /// Third octet of 10.<second>.<third>.0/24.
    subnet: (u8, u8),
    netns: Vec<PathBuf>,
}

impl Host {
    /// `None` (and a message) when the test cannot run here.
    fn new(test_no: u8) -> Option<Host> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (network namespaces, bridges)");
            return None;
        }
        if !Path::new(PLUGIN_DIR).join("bridge").exists() {
            eprintln!("skipped: no CNI plugins in {PLUGIN_DIR}");
            return None;
        }
        let pid = std::process::id();
        Some(Host {
            tmp: tempfile::tempdir().unwrap(),
            bridge: format!("ppnt{}{}", pid % 10000, test_no),
            subnet: (200 + test_no, (pid % 250) as u8),
            netns: Vec::new(),
        })
    }

    fn subnet(&self) -> String {
        format!("10.{}.{}.0/24", self.subnet.0, self.subnet.1)
    }

    fn ipam_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }

    fn conf_dir(&self) -> PathBuf {
        self.tmp.path().join("conf")
    }

    /// Writes the conflist: bridge (host-local IPAM), then `extra` plugins.
    fn write_conflist(&self, extra: serde_json::Value) {
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet()}]],
                "dataDir": self.ipam_dir(),
            }
        })];
        plugins.extend(extra.as_array().unwrap().iter().cloned());
        let conf =
            serde_json::json!({"cniVersion": "1.0.0", "name": "peapod-test", "plugins": plugins});
        std::fs::create_dir_all(self.conf_dir()).unwrap();
        std::fs::write(
            self.conf_dir().join("10-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
    }

    fn network(&self) -> Network {
        let config = Config {
            state_dir: self.tmp.path().join("state"),
            cni_conf_dir: self.conf_dir(),
            cni_bin_dirs: vec![PLUGIN_DIR.into()],
            netns_dir: self.tmp.path().join("netns"),
            ..Config::default()
        };
        Network::new(&config)
    }

    fn request(&mut self, net: &Network, name: &str) -> PodNetworkRequest {
        let path = net.create_netns(name).unwrap();
        self.netns.push(path.clone());
        PodNetworkRequest {
            sandbox_id: format!("{name}-sandbox"),
            netns_path: path,
            pod_name: name.into(),
            pod_namespace: "default".into(),
            pod_uid: format!("uid-{name}"),
            ..Default::default()
        }
    }

    /// IPs the host-local plugin has reserved (one file per IP in dataDir/<network>).
    fn reservations(&self) -> Vec<String> {
        let dir = self.ipam_dir().join("peapod-test");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for p in &self.netns {
            let _ = netns::remove(p);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        // netns::create made the directory a bind mount of itself; the tempdir cannot go
        // while it is mounted.
        let _ = nix::mount::umount2(
            &self.tmp.path().join("netns"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

/// IPv4 addresses (with prefix length) on eth0 inside the namespace at `path`.
fn eth0_addrs(path: &Path) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(String::from)
        })
        .collect()
}

fn nat_rules() -> String {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_subnet(ip: &str, host: &Host) -> bool {
    let ip: Ipv4Addr = ip.parse().unwrap();
    let o = ip.octets();
    o[0] == 10 && o[1] == host.subnet.0 && o[2] == host.subnet.1
}

#[tokio::test]
async fn setup_gives_each_pod_its_own_ip_on_eth0_and_teardown_releases_it() {
    let Some(mut host) = Host::new(1) else { return };
    host.write_conflist(serde_json::json!([
        {"type": "portmap", "capabilities": {"portMappings": true}},
        {"type": "loopback"}
    ]));
    let net = host.network();
    let mut a = host.request(&net, &format!("ppnt-{}-a", std::process::id()));
    a.port_mappings = vec![PortMapping {
        protocol: "TCP".into(),
        container_port: 80,
        host_port: 20000 + (std::process::id() % 10000) as i32,
        host_ip: "127.0.0.1".into(),
    }];
    let b = host.request(&net, &format!("ppnt-{}-b", std::process::id()));

    let pa = net.setup(&a).await.unwrap();
    assert_eq!(pa.interface, "eth0");
    assert_eq!(pa.ips.len(), 1, "{pa:?}");
    assert!(
        in_subnet(&pa.ips[0], &host),
        "{} not in {}",
        pa.ips[0],
        host.subnet()
    );
    assert_eq!(eth0_addrs(&a.netns_path), vec![format!("{}/24", pa.ips[0])]);

    // portmap got the mapping through runtimeConfig and installed a DNAT for it.
    let host_port = a.port_mappings[0].host_port.to_string();
    assert!(nat_rules().contains(&format!("--dport {host_port}")));

    let pb = net.setup(&b).await.unwrap();
    assert_eq!(pb.ips.len(), 1, "{pb:?}");
    assert_ne!(pa.ips, pb.ips);
    assert!(in_subnet(&pb.ips[0], &host));
    assert_eq!(eth0_addrs(&b.netns_path), vec![format!("{}/24", pb.ips[0])]);

    let mut reserved = host.reservations();
    reserved.sort();
    let mut want = vec![pa.ips[0].clone(), pb.ips[0].clone()];
    want.sort();
    assert_eq!(reserved, want);
    let cache_a = net.state_dir.join(format!("{}.json", a.sandbox_id));
    assert!(cache_a.exists());

    net.teardown(&a).await.unwrap();
    assert_eq!(host.reservations(), vec![pb.ips[0].clone()]);
    assert!(!nat_rules().contains(&format!("--dport {host_port}")));
    assert!(!cache_a.exists());
    // Idempotent: a second teardown (kubelet retries StopPodSandbox) is fine.
    net.teardown(&a).await.unwrap();

    net.teardown(&b).await.unwrap();
    assert!(host.reservations().is_empty());
    assert!(std::fs::read_dir(&net.state_dir).unwrap().next().is_none());

    for p in [&a.netns_path, &b.netns_path] {
        netns::remove(p).unwrap();
        assert!(!p.exists());
        netns::remove(p).unwrap();
    }
}

#[tokio::test]
async fn teardown_is_ok_when_the_plugins_are_gone() {
    let Some(mut host) = Host::new(2) else { return };
    host.write_conflist(serde_json::json!([{"type": "loopback"}]));
    let net = host.network();
    let req = host.request(&net, &format!("ppnt-{}-c", std::process::id()));
    let p = net.setup(&req).await.unwrap();
    assert_eq!(host.reservations(), p.ips);

    let mut broken = host.network();
    broken.bin_dirs = vec![host.tmp.path().join("no-plugins-here")];
    broken.teardown(&req).await.unwrap();

    // Never set up, and neither a cached nor a current config: still Ok.
    let mut unconfigured = host.network();
    unconfigured.conf_dir = host.tmp.path().join("no-conf-here");
    unconfigured.state_dir = host.tmp.path().join("no-state-here");
    unconfigured.teardown(&req).await.unwrap();

    // With the plugins back, DEL from the config dir frees the IP the broken teardown left.
    net.teardown(&req).await.unwrap();
    assert!(host.reservations().is_empty());
}

#[tokio::test]
async fn setup_failing_in_a_later_plugin_leaves_no_ip_reserved() {
    let Some(mut host) = Host::new(3) else { return };
    // tuning fails ADD: the sysctl it is told to set does not exist.
    host.write_conflist(serde_json::json!([
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.peapod_no_such_sysctl": "1"}}
    ]));
    let net = host.network();
    let req = host.request(&net, &format!("ppnt-{}-d", std::process::id()));
    let e = net.setup(&req).await.unwrap_err().to_string();
    assert!(e.contains("tuning"), "{e}");
    assert!(host.reservations().is_empty(), "{:?}", host.reservations());
    assert!(!net
        .state_dir
        .join(format!("{}.json", req.sandbox_id))
        .exists());
    assert!(eth0_missing(&req.netns_path));
}

fn eth0_missing(path: &Path) -> bool {
    !Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["ip", "link", "show", "dev", "eth0"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}
