//! The end-to-end rig: a real containerd (Debian's package) with its CRI plugin disabled,
//! in a temporary root, a CNI bridge network of the test's own, test images built from
//! busybox-static, and peapod on a temporary socket. Everything it makes (processes,
//! mounts, bridge, cgroups) is torn down on drop, even when the test failed.
#![allow(dead_code)]

pub mod bins;
pub mod cri;
pub mod inventory;
pub mod kubelet;
pub mod metrics;
pub mod oci;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use peapod::cri::image_service_client::ImageServiceClient;
use peapod::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

pub const NS: &str = "k8s.io";
pub const BUSYBOX: &str = "localhost/peapod-test/busybox:1";
pub const PAUSE: &str = "localhost/peapod-test/pause:1";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A task as `ctr tasks ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    /// RUNNING, STOPPED, CREATED, UNKNOWN, ...
    pub status: String,
}

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub containerd_socket: PathBuf,
    pub peapod_socket: PathBuf,
    pub state_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_data_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub log_dir: PathBuf,
    pub bridge: String,
    /// The test network's /24, e.g. "10.201.7".
    pub subnet_prefix: String,
    /// cgroup parent under which the tests' pods go, so teardown finds them.
    pub cgroup_parent: String,
    pub extra_peapod_args: Vec<String>,
    /// Leave containerd's own CRI plugin enabled (to test that peapod warns about it).
    pub builtin_cri: bool,
    /// Appended to containerd's config.toml (e.g. `[plugins."io.containerd.grpc.v1.cri"]`).
    pub containerd_extra_config: String,
    containerd: Option<Child>,
    peapod: Option<Child>,
}

/// False (the test skips, loudly) without root; in CI (CI=true) a missing prerequisite is a
/// failure, not a skip.
pub fn require_root() -> bool {
    if nix_uid() != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "end-to-end tests need root, and CI=true does not skip them"
        );
        eprintln!("skipping: end-to-end tests need root");
        return false;
    }
    true
}

fn nix_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

impl Rig {
    /// containerd + CNI config + test images, and peapod started on top.
    pub async fn start() -> Rig {
        Self::start_with(Vec::new()).await
    }

    pub async fn start_with(extra_peapod_args: Vec<String>) -> Rig {
        let mut rig = Self::containerd_only();
        rig.extra_peapod_args = extra_peapod_args;
        rig.import_test_images();
        rig.start_peapod().await;
        rig
    }

    /// containerd and the CNI config only; peapod is started by the test.
    pub fn containerd_only() -> Rig {
        Self::containerd_only_with(false)
    }

    pub fn containerd_only_with(builtin_cri: bool) -> Rig {
        let mut rig = Self::prepare(builtin_cri);
        rig.start_containerd();
        rig
    }

    /// Directories and the CNI config, but nothing started: the caller may set
    /// `containerd_extra_config` and then call `start_containerd`.
    pub fn prepare(builtin_cri: bool) -> Rig {
        let dir = tempfile::Builder::new()
            .prefix("peapod-e2e-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let d = dir.path().to_path_buf();
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = (std::process::id() * 7 + seq * 13) % 250;
        let bridge = format!("pp{}x{}", std::process::id() % 100000, seq);
        let subnet_prefix = format!("10.{}.{}", 200 + (seq % 50), tag + 1);
        let rig = Rig {
            containerd_socket: d.join("containerd.sock"),
            peapod_socket: d.join("peapod.sock"),
            state_dir: d.join("peapod"),
            cni_conf_dir: d.join("cni"),
            cni_data_dir: d.join("cni-data"),
            netns_dir: d.join("netns"),
            log_dir: d.join("logs"),
            cgroup_parent: format!("/peapod-e2e-{}-{}", std::process::id(), seq),
            bridge,
            subnet_prefix,
            extra_peapod_args: Vec::new(),
            builtin_cri,
            containerd_extra_config: String::new(),
            containerd: None,
            peapod: None,
            dir,
        };
        for p in [
            &rig.cni_conf_dir,
            &rig.cni_data_dir,
            &rig.log_dir,
            &rig.netns_dir,
        ] {
            std::fs::create_dir_all(p).unwrap();
        }
        rig.write_cni_config();
        rig
    }

    fn write_cni_config(&self) {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "peapod-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("{}.0/24", self.subnet_prefix)}]],
                        "dataDir": self.cni_data_dir,
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(
            self.cni_conf_dir.join("10-peapod-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
    }

    pub fn start_containerd(&mut self) {
        let d = self.dir.path();
        let cfg = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled}]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
{extra}
"#,
            root = d.join("containerd-root").display(),
            state = d.join("containerd-state").display(),
            sock = self.containerd_socket.display(),
            extra = self.containerd_extra_config,
            // 2.x splits its CRI into three plugins; 1.x ignores the ids it lacks.
            disabled = if self.builtin_cri {
                ""
            } else {
                r#""io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime""#
            },
        );
        let cfg_path = d.join("containerd.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let containerd = containerd_bin();
        let mut cmd = Command::new(&containerd);
        // containerd finds its shim on PATH: the one beside the chosen containerd first.
        if let Some(dir) = containerd.parent().filter(|d| !d.as_os_str().is_empty()) {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![dir.to_path_buf()];
            dirs.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
        }
        let child = cmd
            .arg("--config")
            .arg(&cfg_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} (apt-get install containerd, or set {CONTAINERD_ENV}): {e}",
                    containerd.display()
                )
            });
        self.containerd = Some(child);
        wait_for_socket(
            &self.containerd_socket,
            Duration::from_secs(30),
            "containerd",
        );
        // The socket appears before all services are registered.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.ctr_ok(&["version"]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "containerd did not answer; see {}",
            d.join("containerd.log").display()
        );
    }

    /// Stops containerd (SIGTERM) and starts it again on the same root.
    pub fn restart_containerd(&mut self) {
        self.stop_containerd();
        self.start_containerd();
    }

    pub fn stop_containerd(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.containerd_socket);
    }

    /// Imports the busybox and pause test images.
    pub fn import_test_images(&self) {
        let busybox = oci::build(
            self.dir.path(),
            &oci::ImageSpec {
                name: BUSYBOX.into(),
                cmd: vec!["sh".into()],
                ..Default::default()
            },
        );
        self.import(&busybox.layout_tar);
        let pause = oci::build(
            self.dir.path(),
            &oci::ImageSpec {
                name: PAUSE.into(),
                // A pause stand-in: PID 1 that sleeps and exits on TERM.
                entrypoint: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done".into(),
                ],
                ..Default::default()
            },
        );
        self.import(&pause.layout_tar);
    }

    pub fn import(&self, tar: &Path) {
        let out = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn peapod_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--listen".into(),
            self.peapod_socket.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--containerd-socket".into(),
            self.containerd_socket.display().to_string(),
            "--namespace".into(),
            NS.into(),
            "--cni-conf-dir".into(),
            self.cni_conf_dir.display().to_string(),
            "--cni-bin-dir".into(),
            "/usr/lib/cni".into(),
            "--sandbox-image".into(),
            PAUSE.into(),
            "--netns-dir".into(),
            self.netns_dir.display().to_string(),
            "--registry-config-dir".into(),
            self.dir.path().join("certs.d").display().to_string(),
            "--log-level".into(),
            "peapod=debug,info".into(),
        ];
        a.extend(self.extra_peapod_args.iter().cloned());
        a
    }

    pub async fn start_peapod(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("peapod.log"))
            .unwrap();
        let child = Command::new(peapod_bin())
            .args(self.peapod_args())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start peapod");
        self.peapod = Some(child);
        let start = Instant::now();
        loop {
            if tokio::net::UnixStream::connect(&self.peapod_socket)
                .await
                .is_ok()
            {
                return;
            }
            if let Some(c) = self.peapod.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("peapod exited ({st}) at start:\n{}", self.peapod_log());
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "peapod did not start:\n{}",
                self.peapod_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn peapod_pid(&self) -> Option<u32> {
        self.peapod.as_ref().map(|c| c.id())
    }

    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(|c| c.id())
    }

    /// SIGKILL: nothing gets a chance to clean up, as in a crash.
    pub fn kill_peapod(&mut self) {
        if let Some(mut c) = self.peapod.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the clean shutdown path.
    pub fn stop_peapod(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.peapod.take()?;
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        c.wait().ok()
    }

    pub fn peapod_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("peapod.log")).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        unix_channel(&self.peapod_socket).await
    }

    /// Waits until peapod has rebuilt its index after a start: until then the RPCs that
    /// read it answer UNAVAILABLE (as kubelet would, this retries). Returns how long it took.
    pub async fn wait_recovered(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        let mut rt = self.runtime_client().await;
        loop {
            match rt
                .list_pod_sandbox(peapod::cri::ListPodSandboxRequest { filter: None })
                .await
            {
                Ok(_) => return start.elapsed(),
                Err(s) if s.code() == tonic::Code::Unavailable => {}
                Err(s) => panic!("ListPodSandbox after a start: {s}"),
            }
            assert!(
                start.elapsed() < limit,
                "peapod still recovering after {limit:?}:\n{}",
                inventory::tail(&self.peapod_log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    pub async fn image_client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(ctr_bin())
            .arg("--address")
            .arg(&self.containerd_socket)
            .arg("--namespace")
            .arg(NS)
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// `ctr tasks ls`, by task id.
    pub fn tasks(&self) -> BTreeMap<String, Task> {
        let out = self.ctr(&["tasks", "ls"]);
        // TASK  PID  STATUS, after a header line.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let id = f.next()?.to_string();
                let pid = f.next()?.parse().ok()?;
                let status = f.next()?.to_string();
                Some((id, Task { pid, status }))
            })
            .collect()
    }

    pub fn ctr_ok(&self, args: &[&str]) -> bool {
        self.ctr(args).status.success()
    }

    /// Lines of `ctr <args> -q`.
    pub fn ctr_list(&self, args: &[&str]) -> Vec<String> {
        let out = self.ctr(args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Runs `cmd` inside the network namespace pinned at `netns`.
    pub fn in_netns(&self, netns: &str, cmd: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(cmd)
            .output()
            .expect("nsenter")
    }

    /// A pod sandbox config with the rig's cgroup parent and a unique name.
    pub fn pod_config(&self, name: &str) -> peapod::cri::PodSandboxConfig {
        use peapod::cri::*;
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.log_dir.join(name).display().to_string(),
            dns_config: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec![
                    "default.svc.cluster.local".into(),
                    "svc.cluster.local".into(),
                ],
                options: vec!["ndots:5".into()],
            }),
            labels: [("app".to_string(), name.to_string())].into(),
            annotations: [("peapod.test/anno".to_string(), "yes".to_string())].into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn teardown(&mut self) {
        self.kill_peapod();
        // Kill and delete every task so no container outlives the test.
        for t in self.ctr_list(&["tasks", "ls", "-q"]) {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", &t]);
        }
        std::thread::sleep(Duration::from_millis(200));
        for t in self.ctr_list(&["tasks", "ls", "-q"]) {
            let _ = self.ctr(&["tasks", "delete", "-f", &t]);
        }
        self.stop_containerd();
        kill_matching(&self.containerd_socket.display().to_string());
        unmount_under(self.dir.path());
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        remove_cgroups(&self.cgroup_parent);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A gRPC channel over the unix socket at `path` (peapod's, or containerd's for its CRI).
pub async fn unix_channel(path: &Path) -> Channel {
    let shown = path.display().to_string();
    let path = path.to_path_buf();
    Endpoint::try_from("http://[::]")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect to {shown}: {e}"))
}

/// Chooses the containerd the rig starts (e.g. `target/containerd/2.1.5/bin/containerd`, as
/// scripts/containerd-versions.sh prepares them); its `ctr` and shim are taken from the same
/// folder. Unset: Debian's `containerd` on PATH.
pub const CONTAINERD_ENV: &str = "PEAPOD_TEST_CONTAINERD";

pub fn containerd_bin() -> PathBuf {
    match std::env::var_os(CONTAINERD_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("containerd"),
    }
}

/// The `ctr` beside the chosen containerd, so the client speaks the daemon's own version of
/// the API, else the one on PATH.
pub fn ctr_bin() -> PathBuf {
    let containerd = containerd_bin();
    match containerd.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && dir.join("ctr").exists() => dir.join("ctr"),
        _ => PathBuf::from("ctr"),
    }
}

/// The version the chosen containerd binary reports (`1.6.20~ds1`, `v2.1.5`), and its major.
pub fn containerd_bin_version() -> (String, u32) {
    let out = Command::new(containerd_bin())
        .arg("--version")
        .output()
        .expect("containerd --version");
    // "containerd github.com/containerd/containerd[/v2] <version> <revision>"
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("containerd --version said {text:?}"))
        .to_string();
    let major = v
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("containerd version {v:?}"));
    (v, major)
}

/// The peapod binary to run: $PEAPOD_BIN (examples/bench.rs passes the release build),
/// else the one cargo built for the integration tests.
pub fn peapod_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PEAPOD_BIN") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_peapod") {
        Some(p) => PathBuf::from(p),
        None => panic!("set PEAPOD_BIN to the peapod binary"),
    }
}

fn wait_for_socket(p: &Path, limit: Duration, what: &str) {
    let start = Instant::now();
    while !p.exists() {
        assert!(
            start.elapsed() < limit,
            "{what} socket {} did not appear",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills processes (containerd shims) whose command line mentions `needle`.
fn kill_matching(needle: &str) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(needle) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Lazily unmounts every mount point below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn remove_cgroups(parent: &str) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let base = root.join(parent.trim_start_matches('/'));
        if base.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&base) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&base);
        }
    }
}

/// Polls `f` until it returns Some or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
