//! The real kubelet (v1.28.7 from `../shared/bin`) in standalone mode over the rig's peapod:
//! a KubeletConfiguration file, static pod manifests in a directory, no API server. Pods
//! are read back from kubelet's read-only `/pods` endpoint.
//!
//! Everything machine-global kubelet touches is made unique per run and undone on drop:
//! ports (free ones), the root dir (a temporary directory), the cgroup root (kubelet's
//! `kubepods` tree goes under `/peapod-kubelet-<pid>-<n>` in every hierarchy), the pods'
//! namespace (so their `/var/log/pods` and `/var/log/containers` entries are ours alone),
//! and the kernel tunables kubelet rewrites at start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::bins::{free_port, loud};
use super::{unmount_under, Rig, PAUSE};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Tunables kubelet's `setupKernelTunables` writes when `protectKernelDefaults` is false.
const TUNABLES: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Paths outside the root dir that kubelet v1.28 creates whatever its flags: the device
/// manager's socket directory is hard-coded. Removed at the end only if no kubelet test
/// found them (deepest first; the log directories only when empty).
const GLOBAL_DIRS: &[&str] = &[
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
];

const CGROUP_FS: &str = "/sys/fs/cgroup";

pub struct Kubelet {
    pub dir: tempfile::TempDir,
    pub root_dir: PathBuf,
    pub manifest_dir: PathBuf,
    pub log_path: PathBuf,
    /// `--hostname-override`; kubelet appends `-<node>` to every static pod's name.
    pub node: String,
    /// The namespace every manifest of this run uses.
    pub namespace: String,
    /// `cgroupRoot`, e.g. `/peapod-kubelet-123-0`.
    pub cgroup_root: String,
    pub port: u16,
    pub read_only_port: u16,
    child: Option<Child>,
    /// This run's entry among the kubelet tests running on the machine.
    session: Option<PathBuf>,
    http: reqwest::Client,
}

impl Kubelet {
    /// Starts kubelet on the rig's peapod and waits until it serves `/pods` (it validates
    /// the CRI connection before that). On failure the error holds the end of its log.
    pub async fn start(rig: &Rig, binary: &Path) -> Result<Kubelet, String> {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("peapod-kubelet-")
            .tempdir_in("/var/tmp")
            .map_err(|e| format!("tempdir: {e}"))?;
        let d = dir.path().to_path_buf();
        let mut k = Kubelet {
            root_dir: d.join("root"),
            manifest_dir: d.join("manifests"),
            log_path: d.join("kubelet.log"),
            node: format!("ppnode-{pid}-{seq}"),
            namespace: format!("ppk-{pid}-{seq}"),
            cgroup_root: format!("/peapod-kubelet-{pid}-{seq}"),
            port: free_port(),
            read_only_port: free_port(),
            child: None,
            session: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?,
            dir,
        };
        for p in [&k.root_dir, &k.manifest_dir] {
            std::fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        }
        k.make_cgroup_root()?;
        k.session = Some(session::join(&k.node)?);
        let config = k.config(rig);
        let config_path = d.join("kubelet-config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap())
            .map_err(|e| format!("write kubelet config: {e}"))?;
        let log = std::fs::File::create(&k.log_path).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .arg("--root-dir")
            .arg(&k.root_dir)
            .arg("--cert-dir")
            .arg(d.join("pki"))
            .arg("--hostname-override")
            .arg(&k.node)
            // Only pins the image against kubelet's image GC; peapod picks the sandbox image.
            .arg("--pod-infra-container-image")
            .arg(PAUSE)
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        k.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(st))) = k.child.as_mut().map(|c| c.try_wait()) {
                k.child = None;
                return Err(format!(
                    "kubelet exited ({st}) at start:\n{}",
                    k.log_tail(40)
                ));
            }
            if k.pods().await.is_ok() {
                return Ok(k);
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "kubelet did not serve /pods within 60s:\n{}",
                    k.log_tail(40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn config(&self, rig: &Rig) -> Value {
        let endpoint = format!("unix://{}", rig.peapod_socket.display());
        json!({
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "staticPodPath": self.manifest_dir,
            "fileCheckFrequency": "1s",
            "containerRuntimeEndpoint": endpoint,
            "imageServiceEndpoint": endpoint,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": true,
            "cgroupRoot": self.cgroup_root,
            "failSwapOn": false,
            "makeIPTablesUtilChains": false,
            "protectKernelDefaults": false,
            // "0%" switches a signal off (kubelet ignores 0% thresholds; a partial map would
            // leave the others at their defaults). The disks of shared test machines fill and
            // empty as other jobs run, and under disk pressure kubelet deletes "unused"
            // images, the test images among them, then refuses every pod (ErrImageNeverPull).
            "evictionHard": {
                "memory.available": "0%",
                "nodefs.available": "0%",
                "nodefs.inodesFree": "0%",
                "imagefs.available": "0%",
                "imagefs.inodesFree": "0%",
            },
            // The test images must survive: never garbage-collect images.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "address": "127.0.0.1",
            "port": self.port,
            "readOnlyPort": self.read_only_port,
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": true},
                "webhook": {"enabled": false},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "volumePluginDir": self.root_dir.join("volume-plugins"),
            "resolvConf": "/etc/resolv.conf",
            "logging": {"format": "text"},
        })
    }

    /// cgroupsPerQOS wants its root to exist; one per run so two kubelets never share
    /// `kubepods`. cpuset needs cpus/mems set before a child can hold tasks.
    fn make_cgroup_root(&self) -> Result<(), String> {
        for h in hierarchies() {
            let p = h.join(self.cgroup_root.trim_start_matches('/'));
            std::fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
            if h.ends_with("cpuset") {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(h.join(f)).unwrap_or_default();
                    let _ = std::fs::write(p.join(f), v.trim());
                }
            }
        }
        Ok(())
    }

    /// Writes a static pod manifest (atomically: kubelet ignores dot files) and returns when.
    pub fn write_pod(&self, pod: &Value) -> SystemTime {
        let name = pod["metadata"]["name"].as_str().expect("metadata.name");
        let tmp = self.manifest_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
        let now = SystemTime::now();
        std::fs::rename(&tmp, self.manifest_dir.join(format!("{name}.json"))).unwrap();
        now
    }

    pub fn remove_pod(&self, name: &str) {
        let _ = std::fs::remove_file(self.manifest_dir.join(format!("{name}.json")));
    }

    /// The name kubelet gives the static pod `name`.
    pub fn pod_name(&self, name: &str) -> String {
        format!("{name}-{}", self.node)
    }

    /// The `/pods` list: kubelet's pods with the status it last computed.
    pub async fn pods(&self) -> Result<Vec<Value>, String> {
        let url = format!("http://127.0.0.1:{}/pods", self.read_only_port);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("GET {url}: {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| format!("GET {url}: {e}"))?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// The static pod `name` as kubelet reports it, if it does.
    pub async fn pod(&self, name: &str) -> Option<Value> {
        let full = self.pod_name(name);
        self.pods()
            .await
            .ok()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
    }

    /// GET `path` on kubelet's main (HTTPS) port, where `/exec`, `/attach` and
    /// `/portforward` live, as an anonymous client: (status, body). The serving certificate
    /// is the self-signed one kubelet made in its cert dir.
    pub async fn main_port_get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let c = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let r = c
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.unwrap_or_default()))
    }

    /// Whether kubelet is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `/var/log/pods` directory of the static pod `name` (namespace_name_uid).
    pub fn pod_log_dir(&self, pod: &Value) -> PathBuf {
        Path::new("/var/log/pods").join(format!(
            "{}_{}_{}",
            pod["metadata"]["namespace"].as_str().unwrap_or(""),
            pod["metadata"]["name"].as_str().unwrap_or(""),
            pod["metadata"]["uid"].as_str().unwrap_or("")
        ))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
        // Whatever the test left running in kubelet's cgroups dies now, so the tree can go.
        let mut leftovers = Vec::new();
        for attempt in 0..50 {
            leftovers = remove_cgroup_tree(&self.cgroup_root);
            if leftovers.is_empty() {
                break;
            }
            if attempt == 0 {
                kill_cgroup_tasks(&self.cgroup_root);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !leftovers.is_empty() {
            loud(&format!(
                "kubelet teardown: cgroups left behind: {leftovers:?}"
            ));
        }
        unmount_under(self.dir.path());
        remove_log_entries(&self.namespace);
        if let Some(entry) = self.session.take() {
            session::leave(&entry);
        }
    }
}

/// What kubelet changes machine-wide (kernel tunables, a few directories) is undone by the
/// last kubelet test to finish, whichever test binary or worktree it runs from: each run
/// registers in a shared directory, under a lock, and the first one records the values and
/// directories as they were before any kubelet touched them. A run that died is recognised
/// by its pid being gone.
mod session {
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};

    use serde_json::{json, Value};

    use super::{loud, GLOBAL_DIRS, TUNABLES};

    const DIR: &str = "/var/tmp/peapod-kubelet-session";

    struct Lock(std::fs::File);

    impl Lock {
        fn take() -> Result<Lock, String> {
            std::fs::create_dir_all(DIR).map_err(|e| format!("mkdir {DIR}: {e}"))?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(Path::new(DIR).join("lock"))
                .map_err(|e| format!("{DIR}/lock: {e}"))?;
            // SAFETY: flock on a descriptor we own; released when the file closes.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(format!(
                    "flock {DIR}/lock: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(Lock(f))
        }
    }

    fn state_path() -> PathBuf {
        Path::new(DIR).join("state.json")
    }

    fn live_entries() -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(DIR) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                let pid = name.strip_prefix("run-").and_then(|r| r.split('-').next());
                pid.is_some_and(|pid| Path::new("/proc").join(pid).exists())
            })
            .collect()
    }

    /// Registers run `name`; returns its entry.
    pub fn join(name: &str) -> Result<PathBuf, String> {
        let _lock = Lock::take()?;
        // No live run: whatever state a crashed one left is stale.
        if live_entries().is_empty() || !state_path().exists() {
            let tunables: Vec<Value> = TUNABLES
                .iter()
                .filter_map(|t| {
                    let p = Path::new("/proc/sys").join(t);
                    let v = std::fs::read_to_string(&p).ok()?;
                    Some(json!([p, v.trim()]))
                })
                .collect();
            let absent: Vec<&str> = GLOBAL_DIRS
                .iter()
                .copied()
                .filter(|d| !Path::new(d).exists())
                .collect();
            let state = json!({"tunables": tunables, "absent_dirs": absent});
            std::fs::write(state_path(), state.to_string())
                .map_err(|e| format!("write {}: {e}", state_path().display()))?;
        }
        let entry = Path::new(DIR).join(format!("run-{}-{name}", std::process::id()));
        std::fs::write(&entry, b"").map_err(|e| format!("write {}: {e}", entry.display()))?;
        Ok(entry)
    }

    /// Unregisters; the last live run restores the machine.
    pub fn leave(entry: &Path) {
        let _lock = match Lock::take() {
            Ok(l) => l,
            Err(e) => return loud(&format!("kubelet teardown: {e}")),
        };
        let _ = std::fs::remove_file(entry);
        if live_entries().iter().any(|e| e != entry) {
            return;
        }
        let state: Value = std::fs::read(state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for t in state["tunables"].as_array().into_iter().flatten() {
            let (Some(p), Some(v)) = (t[0].as_str(), t[1].as_str()) else {
                continue;
            };
            if std::fs::read_to_string(p).is_ok_and(|now| now.trim() != v) {
                if let Err(e) = std::fs::write(p, v) {
                    loud(&format!("kubelet teardown: restore {p}: {e}"));
                }
            }
        }
        for d in state["absent_dirs"].as_array().into_iter().flatten() {
            let Some(d) = d.as_str() else { continue };
            if d.ends_with("device-plugins") {
                let _ = std::fs::remove_dir_all(d);
            } else {
                let _ = std::fs::remove_dir(d);
            }
        }
        let _ = std::fs::remove_file(state_path());
        // Stale entries of runs that died go too; the lock file and the directory stay,
        // as another run may be waiting on the lock.
        if let Ok(rd) = std::fs::read_dir(DIR) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("run-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// The cgroup v1 hierarchies (or the v2 root) to manage a tree in.
fn hierarchies() -> Vec<PathBuf> {
    if Path::new(CGROUP_FS).join("cgroup.controllers").exists() {
        return vec![PathBuf::from(CGROUP_FS)];
    }
    let Ok(rd) = std::fs::read_dir(CGROUP_FS) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        // Includes `unified`, the v2 hierarchy beside the v1 ones: runc's cgroup manager
        // mirrors kubelet's tree there too.
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect();
    v.sort();
    v
}

/// Every directory of the tree `root` in every hierarchy, deepest first.
fn cgroup_dirs(root: &str) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(p.to_path_buf());
    }
    let mut out = Vec::new();
    for h in hierarchies() {
        let p = h.join(root.trim_start_matches('/'));
        if p.is_dir() {
            walk(&p, &mut out);
        }
    }
    out
}

fn kill_cgroup_tasks(root: &str) {
    for d in cgroup_dirs(root) {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes the tree; returns the directories that could not be removed.
fn remove_cgroup_tree(root: &str) -> Vec<PathBuf> {
    cgroup_dirs(root)
        .into_iter()
        .filter(|d| std::fs::remove_dir(d).is_err())
        .collect()
}

/// kubelet writes `/var/log/pods/<ns>_<pod>_<uid>` and `/var/log/containers/<pod>_<ns>_<c>-<id>.log`.
fn remove_log_entries(namespace: &str) {
    if let Ok(rd) = std::fs::read_dir("/var/log/pods") {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{namespace}_"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/var/log/containers") {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .contains(&format!("_{namespace}_"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
