//! peapod against containerd's built-in CRI plugin, side by side in one run, reported as
//! ratios (peapod / containerd-cri; below 1 means peapod is faster or smaller).
//!
//! Two containerds, each in its own temporary root with its own CNI bridge: #1 with its
//! CRI plugin disabled and peapod (the binary in $PEAPOD_BIN) on top, #2 with its CRI
//! plugin enabled and serving the CRI on containerd's own socket. Both get the same images
//! and pull from one local registry. Each phase runs against one runtime, then the other:
//!
//!   * images: ImageStatus and ListImages with `--images` images present, PullImage of
//!     `--pulls` images (each with a layer of its own) from the local registry, RemoveImage;
//!   * lifecycle, per pod of `--pods`: every RPC of a pod's life timed on its own
//!     (RunPodSandbox, PodSandboxStatus, CreateContainer, StartContainer, ContainerStatus,
//!     StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox);
//!   * `--running` pods running: List*/Status latency, memory, and a kubelet-like relist
//!     load (ListPodSandbox + ListContainers + ListContainerStats every second, both runtimes
//!     at once) with the CPU time each side spends on it;
//!   * `--large` pods present (`--running` of them running, the rest stopped: a running pod
//!     costs a shim of ~10 MiB on either side): List*/Status latency and memory;
//!   * streaming: exec round trip (Exec RPC + SPDY upgrade + `true` run to its exit status)
//!     and port-forward transfer (PortForward RPC + SPDY upgrade + a 64 MiB HTTP download
//!     from busybox httpd in a pod), both through peapod's own SPDY client, so no Go client
//!     start-up is in the figures;
//!   * churn (peapod only): `--cycles` pod create/start/stop/remove cycles, with peapod's RSS,
//!     open descriptors, tokio tasks, mounts and state files before and after.
//!
//! Latency is the wall time a gRPC client on the unix socket sees. For peapod, the server
//! time of the List and Status calls is also read from its own per-RPC trace (`latency_us`
//! of the `CRI call` line, logged at debug by `peapod::server` only).
//!
//! `sudo bash scripts/bench.sh` runs the full figures (several minutes); `--quick` runs
//! small numbers to check the benchmark itself.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/registry.rs"]
mod registry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{oci, Rig, BUSYBOX, PAUSE};
use futures::StreamExt;
use peapod::cri::image_service_client::ImageServiceClient;
use peapod::cri::runtime_service_client::RuntimeServiceClient;
use peapod::cri::*;
use serde_json::json;
use tonic::transport::Channel;

const MEMORY_METHOD: &str = "memory: VmRSS from /proc/<pid>/status, sampled 5 times 200 ms apart. \
peapod: peapod's own RSS (containerd #1 under it is not counted). containerd-cri: RSS of \
containerd #2 (CRI plugin enabled) minus RSS of containerd #1 (CRI plugin disabled) at the same \
moment, both holding the same pods, so the difference is what the built-in CRI plugin costs \
inside containerd. Shims are excluded on both sides.";

const CPU_METHOD: &str = "relist CPU: utime+stime from /proc/<pid>/stat over the relist load, \
scaled to one minute. peapod: peapod's own CPU plus containerd #1's (what serving the load costs \
peapod's side in all); containerd-cri: containerd #2's. The row `peapod process only` leaves \
containerd #1 out.";

#[derive(Parser)]
#[command(about = "Benchmark peapod against containerd's built-in CRI plugin")]
struct Args {
    /// Pods whose every lifecycle RPC is timed.
    #[arg(short = 'n', long, default_value_t = 50)]
    pods: usize,
    /// Images present for ImageStatus/ListImages.
    #[arg(long, default_value_t = 50)]
    images: usize,
    /// Images pulled (and removed) from the local registry.
    #[arg(long, default_value_t = 20)]
    pulls: usize,
    /// Pods running for the relist load and the first List/Status and memory figures.
    #[arg(long, default_value_t = 100)]
    running: usize,
    /// Pods present for the second List/Status and memory figures (the ones beyond
    /// `--running` are stopped).
    #[arg(long, default_value_t = 1000)]
    large: usize,
    /// Seconds of relist load.
    #[arg(long, default_value_t = 60)]
    relist_secs: u64,
    /// Pod create/start/stop/remove cycles for the churn figures (peapod only).
    #[arg(long, default_value_t = 1000)]
    cycles: usize,
    /// Calls per List/Status/Image metric.
    #[arg(long, default_value_t = 200)]
    list_calls: usize,
    /// Small numbers everywhere, to check the benchmark itself in a minute or two.
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Args {
    fn apply_quick(&mut self) {
        if self.quick {
            self.pods = 5;
            self.images = 10;
            self.pulls = 3;
            self.running = 10;
            self.large = 30;
            self.relist_secs = 5;
            self.cycles = 20;
            self.list_calls = 30;
        }
    }
}

/// Samples of one metric, in milliseconds, MiB or CPU seconds.
#[derive(Default, Clone, Debug)]
struct Samples(Vec<f64>);

impl Samples {
    fn push_dur(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        // Nearest rank.
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    }
    fn p50(&self) -> f64 {
        self.pct(50.0)
    }
    fn p90(&self) -> f64 {
        self.pct(90.0)
    }
}

/// One row of the table: the same metric on both sides, and peapod's server time where
/// its trace has it.
struct Row {
    metric: String,
    unit: &'static str,
    peapod: Samples,
    cri: Samples,
    server: Option<Samples>,
}

impl Row {
    fn json(&self) -> serde_json::Value {
        let side = |s: &Samples| json!({"p50": s.p50(), "p90": s.p90(), "samples": s.0.len()});
        let mut v = json!({
            "metric": self.metric,
            "unit": self.unit,
            "peapod": side(&self.peapod),
            "containerd_cri": side(&self.cri),
            "ratio_p50": self.peapod.p50() / self.cri.p50(),
            "ratio_p90": self.peapod.p90() / self.cri.p90(),
        });
        if let Some(s) = &self.server {
            v["peapod_server"] = side(s);
        }
        v
    }
}

/// Results of one side, by metric.
#[derive(Default)]
struct Results(BTreeMap<String, Samples>);

impl Results {
    fn add(&mut self, metric: &str, d: Duration) {
        self.0.entry(metric.to_string()).or_default().push_dur(d);
    }
    fn put(&mut self, metric: &str, v: f64) {
        self.0.entry(metric.to_string()).or_default().0.push(v);
    }
    fn get(&self, metric: &str) -> Samples {
        self.0.get(metric).cloned().unwrap_or_default()
    }
}

type Rt = RuntimeServiceClient<Channel>;
type Img = ImageServiceClient<Channel>;
type Res<T> = Result<T, tonic::Status>;

/// One runtime under test.
struct Side<'a> {
    label: &'static str,
    rt: Rt,
    img: Img,
    rig: &'a Rig,
    r: Results,
    /// Pods present, with their container: (sandbox id, container id).
    pods: Vec<(String, String)>,
    /// Pods made so far, for unique names.
    made: usize,
}

fn status_err(what: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(what.to_string())
}

fn container_config(name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        // Exits on SIGTERM at once, as a well-behaved workload does, so StopContainer
        // measures the stop path rather than a grace period.
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; sleep 3600 & wait".into(),
        ],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

fn rss_kib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of /proc/<pid>/status.
fn status_kib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), counted from field 3.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn count_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Mount points below `dir` (netns pins, sandbox shm, container rootfs).
fn count_mounts(dir: &Path) -> usize {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .count()
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// peapod's per-RPC trace: the `latency_us` of each `CRI call` line logged since the last
/// `take`.
struct ServerLog {
    path: PathBuf,
    offset: u64,
}

impl ServerLog {
    fn new(rig: &Rig) -> ServerLog {
        let path = rig.dir.path().join("peapod.log");
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        ServerLog { path, offset }
    }

    fn skip(&mut self) {
        self.offset = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
    }

    /// Server times (ms) of the `rpc` calls since the last take or skip.
    fn take(&mut self, rpc: &str) -> Samples {
        use std::io::{Read, Seek};
        let mut out = Samples::default();
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return out;
        };
        let mut text = String::new();
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err()
            || f.read_to_string(&mut text).is_err()
        {
            return out;
        }
        self.offset += text.len() as u64;
        let want = format!("rpc={rpc} ");
        for l in text
            .lines()
            .filter(|l| l.contains("CRI call") && l.contains(&want))
        {
            if let Some(us) = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("latency_us="))
                .and_then(|v| v.parse::<f64>().ok())
            {
                out.0.push(us / 1000.0);
            }
        }
        out
    }
}

/// The containerd #2 config: CRI plugin enabled, on its rig's own CNI network, pulling
/// from the local registry through a hosts.toml directory.
/// `restrict_oom_score_adj` keeps the sandbox's oom_score_adj (-998) from going below
/// containerd's own, which needs CAP_SYS_RESOURCE; without it the CRI plugin cannot start
/// a pod where that capability is missing (e.g. inside a Docker container, as kind does).
fn cri_plugin_config(rig: &Rig) -> String {
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
        pause = PAUSE,
        conf = rig.cni_conf_dir.display(),
        certs = rig.dir.path().join("certs.d").display(),
    )
}

/// A hosts.toml that sends pulls of `addr` to it over plain HTTP (containerd's CRI plugin
/// needs it; peapod takes loopback registries as HTTP by itself).
fn write_registry_hosts(rig: &Rig, addr: &str) {
    registry::write_hosts_toml(
        &rig.dir.path().join("certs.d"),
        addr,
        &format!(
            "server = \"http://{addr}\"\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    );
}

impl Side<'_> {
    /// Runs a pod with one started container; returns (sandbox, container).
    async fn run_pod(&mut self, timed: bool) -> Res<(String, String)> {
        let name = format!("bench-{}-{}", self.label, self.made);
        self.made += 1;
        let config = self.rig.pod_config(&name);
        let t = Instant::now();
        let pod = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        if timed {
            self.r.add("RunPodSandbox", t.elapsed());
        }
        self.pods.push((pod.clone(), String::new()));
        if timed {
            let t = Instant::now();
            self.rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await?;
            self.r.add("PodSandboxStatus", t.elapsed());
        }
        let t = Instant::now();
        let ctr = self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("work")),
                sandbox_config: Some(config),
            })
            .await?
            .into_inner()
            .container_id;
        if timed {
            self.r.add("CreateContainer", t.elapsed());
        }
        if let Some(last) = self.pods.last_mut() {
            last.1 = ctr.clone();
        }
        let t = Instant::now();
        self.rt
            .start_container(StartContainerRequest {
                container_id: ctr.clone(),
            })
            .await?;
        if timed {
            self.r.add("StartContainer", t.elapsed());
            let t = Instant::now();
            self.rt
                .container_status(ContainerStatusRequest {
                    container_id: ctr.clone(),
                    verbose: false,
                })
                .await?;
            self.r.add("ContainerStatus", t.elapsed());
        }
        Ok((pod, ctr))
    }

    /// Tears one pod down RPC by RPC, timing each.
    async fn teardown_timed(&mut self, pod: &str, ctr: &str) -> Res<()> {
        let t = Instant::now();
        self.rt
            .stop_container(StopContainerRequest {
                container_id: ctr.to_string(),
                timeout: 10,
            })
            .await?;
        self.r.add("StopContainer", t.elapsed());
        let t = Instant::now();
        self.rt
            .remove_container(RemoveContainerRequest {
                container_id: ctr.to_string(),
            })
            .await?;
        self.r.add("RemoveContainer", t.elapsed());
        let t = Instant::now();
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await?;
        self.r.add("StopPodSandbox", t.elapsed());
        let t = Instant::now();
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await?;
        self.r.add("RemovePodSandbox", t.elapsed());
        Ok(())
    }

    /// Every lifecycle RPC of `n` pods, one pod after the other.
    async fn lifecycle(&mut self, n: usize) -> Res<()> {
        let mut made = Vec::new();
        for _ in 0..n {
            made.push(self.run_pod(true).await?);
        }
        for (pod, ctr) in &made {
            self.teardown_timed(pod, ctr).await?;
            self.pods.retain(|(p, _)| p != pod);
        }
        Ok(())
    }

    /// Grows to `total` pods, 4 at a time; pods beyond `running` are stopped once made.
    async fn grow(&mut self, total: usize, running: usize) -> Res<()> {
        let base = self.made;
        let need = total.saturating_sub(self.pods.len());
        let label = self.label;
        let rig = self.rig;
        let first = self.pods.len();
        let made: Vec<Res<(String, String)>> = futures::stream::iter(0..need)
            .map(|i| {
                let mut rt = self.rt.clone();
                let stop = first + i >= running;
                async move {
                    let name = format!("bench-{label}-{}", base + i);
                    let config = rig.pod_config(&name);
                    let pod = rt
                        .run_pod_sandbox(RunPodSandboxRequest {
                            config: Some(config.clone()),
                            runtime_handler: String::new(),
                        })
                        .await?
                        .into_inner()
                        .pod_sandbox_id;
                    let ctr = rt
                        .create_container(CreateContainerRequest {
                            pod_sandbox_id: pod.clone(),
                            config: Some(container_config("work")),
                            sandbox_config: Some(config),
                        })
                        .await?
                        .into_inner()
                        .container_id;
                    rt.start_container(StartContainerRequest {
                        container_id: ctr.clone(),
                    })
                    .await?;
                    if stop {
                        rt.stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: pod.clone(),
                        })
                        .await?;
                    }
                    Ok((pod, ctr))
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        self.made += need;
        for m in made {
            self.pods.push(m?);
        }
        Ok(())
    }

    /// ListPodSandbox, ListContainers, PodSandboxStatus and ContainerStatus latency with the
    /// pods present, each `calls` times (the Status calls on pods and containers in turn).
    async fn lists(
        &mut self,
        at: &str,
        calls: usize,
        server: Option<&mut ServerLog>,
    ) -> Res<Vec<(String, Samples)>> {
        let n = self.pods.len();
        let mut log = server;
        if let Some(l) = log.as_deref_mut() {
            l.skip();
        }
        let mut server_rows = Vec::new();
        let key = |rpc: &str| format!("{rpc}, {at}");
        for _ in 0..calls {
            let t = Instant::now();
            let items = self
                .rt
                .list_pod_sandbox(ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items;
            self.r.add(&key("ListPodSandbox"), t.elapsed());
            if items.len() != n {
                return Err(status_err(format!(
                    "{}: ListPodSandbox returned {} pods, expected {n}",
                    self.label,
                    items.len()
                )));
            }
        }
        if let Some(l) = log.as_deref_mut() {
            server_rows.push((key("ListPodSandbox"), l.take("ListPodSandbox")));
        }
        for _ in 0..calls {
            let t = Instant::now();
            let items = self
                .rt
                .list_containers(ListContainersRequest::default())
                .await?
                .into_inner()
                .containers;
            self.r.add(&key("ListContainers"), t.elapsed());
            if items.len() != n {
                return Err(status_err(format!(
                    "{}: ListContainers returned {} containers, expected {n}",
                    self.label,
                    items.len()
                )));
            }
        }
        if let Some(l) = log.as_deref_mut() {
            server_rows.push((key("ListContainers"), l.take("ListContainers")));
        }
        for i in 0..calls {
            let (pod, _) = &self.pods[i * 7919 % n];
            let t = Instant::now();
            self.rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await?;
            self.r.add(&key("PodSandboxStatus"), t.elapsed());
        }
        if let Some(l) = log.as_deref_mut() {
            server_rows.push((key("PodSandboxStatus"), l.take("PodSandboxStatus")));
        }
        for i in 0..calls {
            let (_, ctr) = &self.pods[i * 7919 % n];
            let t = Instant::now();
            self.rt
                .container_status(ContainerStatusRequest {
                    container_id: ctr.clone(),
                    verbose: false,
                })
                .await?;
            self.r.add(&key("ContainerStatus"), t.elapsed());
        }
        if let Some(l) = log {
            server_rows.push((key("ContainerStatus"), l.take("ContainerStatus")));
        }
        Ok(server_rows)
    }

    /// ImageStatus (round robin over `names`) and ListImages, `calls` times each.
    async fn image_reads(
        &mut self,
        names: &[String],
        calls: usize,
        at: &str,
        server: Option<&mut ServerLog>,
    ) -> Res<Vec<(String, Samples)>> {
        let mut log = server;
        if let Some(l) = log.as_deref_mut() {
            l.skip();
        }
        let mut rows = Vec::new();
        for i in 0..calls {
            let t = Instant::now();
            let s = self
                .img
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: names[i % names.len()].clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await?
                .into_inner();
            self.r.add(&format!("ImageStatus, {at}"), t.elapsed());
            if s.image.is_none() {
                return Err(status_err(format!(
                    "{}: ImageStatus does not find {}",
                    self.label,
                    names[i % names.len()]
                )));
            }
        }
        if let Some(l) = log.as_deref_mut() {
            rows.push((format!("ImageStatus, {at}"), l.take("ImageStatus")));
        }
        for _ in 0..calls {
            let t = Instant::now();
            let n = self
                .img
                .list_images(ListImagesRequest::default())
                .await?
                .into_inner()
                .images
                .len();
            self.r.add(&format!("ListImages, {at}"), t.elapsed());
            if n < names.len() {
                return Err(status_err(format!(
                    "{}: ListImages shows {n} images, expected at least {}",
                    self.label,
                    names.len()
                )));
            }
        }
        if let Some(l) = log {
            rows.push((format!("ListImages, {at}"), l.take("ListImages")));
        }
        Ok(rows)
    }

    /// PullImage of each reference, then RemoveImage of each.
    async fn pulls(&mut self, refs: &[String]) -> Res<()> {
        for r in refs {
            let t = Instant::now();
            self.img
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: r.clone(),
                        ..Default::default()
                    }),
                    auth: None,
                    sandbox_config: None,
                })
                .await?;
            self.r.add("PullImage (local registry)", t.elapsed());
        }
        for r in refs {
            let t = Instant::now();
            self.img
                .remove_image(RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: r.clone(),
                        ..Default::default()
                    }),
                })
                .await?;
            self.r.add("RemoveImage", t.elapsed());
        }
        Ok(())
    }

    /// Removes every pod, 4 at a time (best effort).
    async fn remove_all(&mut self) {
        let rt = self.rt.clone();
        let ids: Vec<String> = match rt
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
        {
            Ok(r) => r.into_inner().items.into_iter().map(|p| p.id).collect(),
            Err(_) => self.pods.iter().map(|(p, _)| p.clone()).collect(),
        };
        futures::stream::iter(ids)
            .for_each_concurrent(4, |id| {
                let mut rt = rt.clone();
                async move {
                    let _ = common::cri::stop_and_remove_pod(&mut rt, &id).await;
                }
            })
            .await;
        self.pods.clear();
    }
}

/// Execs per runtime for the exec round trip.
const EXECS: usize = 30;
/// Transfers per runtime, and the size of each, for port-forward throughput.
const TRANSFERS: usize = 5;
const TRANSFER_BYTES: usize = 64 << 20;
const WEB_PORT: u16 = 8080;
const EXEC_ROW: &str = "exec round trip (Exec + `true`)";

fn port_forward_row() -> String {
    format!("port-forward {} MiB transfer", TRANSFER_BYTES >> 20)
}

/// A pod with busybox httpd serving a file of TRANSFER_BYTES; returns (pod, container).
async fn stream_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    rig: &Rig,
    label: &str,
) -> Result<(String, String), tonic::Status> {
    let config = rig.pod_config(&format!("bench-{label}-stream"));
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let mut c = container_config("web");
    c.command = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "mkdir -p /www && head -c {TRANSFER_BYTES} /dev/zero > /www/f && exec httpd -f -p {WEB_PORT} -h /www"
        ),
    ];
    let ctr = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(c),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await?;
    let start = Instant::now();
    loop {
        let r = rt
            .exec_sync(ExecSyncRequest {
                container_id: ctr.clone(),
                cmd: vec!["netstat".into(), "-ltn".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        if String::from_utf8_lossy(&r.stdout).contains(&format!(":{WEB_PORT} ")) {
            return Ok((pod, ctr));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(tonic::Status::internal(
                "httpd did not come up in the bench pod",
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn io_status(what: &str) -> impl FnOnce(std::io::Error) -> tonic::Status + '_ {
    move |e| tonic::Status::internal(format!("{what}: {e}"))
}

/// Exec round trips and port-forward transfers against one runtime's streaming server.
async fn streaming(
    rt: &mut RuntimeServiceClient<Channel>,
    rig: &Rig,
    label: &str,
    r: &mut Results,
) -> Result<(), tonic::Status> {
    use peapod::streaming::client;
    let (pod, ctr) = stream_pod(rt, rig, label).await?;
    for _ in 0..EXECS {
        let t = Instant::now();
        let url = rt
            .exec(ExecRequest {
                container_id: ctr.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .url;
        let (conn, _) = client::connect(&url, &["v4.channel.k8s.io"])
            .await
            .map_err(io_status("exec upgrade"))?;
        let res = client::run_command(&conn, None, false)
            .await
            .map_err(io_status("exec"))?;
        r.add(EXEC_ROW, t.elapsed());
        if res.exit_code() != Some(0) {
            return Err(tonic::Status::internal(format!(
                "exec true: status {}",
                String::from_utf8_lossy(&res.status)
            )));
        }
    }
    for _ in 0..TRANSFERS {
        let t = Instant::now();
        let url = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![i32::from(WEB_PORT)],
            })
            .await?
            .into_inner()
            .url;
        let (conn, _) = client::connect(&url, &["portforward.k8s.io"])
            .await
            .map_err(io_status("port-forward upgrade"))?;
        let (_err, mut data) = client::forward(&conn, WEB_PORT, 0)
            .await
            .map_err(io_status("port-forward streams"))?;
        data.writer
            .write(bytes::Bytes::from_static(b"GET /f HTTP/1.0\r\n\r\n"))
            .await
            .map_err(io_status("port-forward request"))?;
        let mut got = 0usize;
        while let Some(b) = data.reader.recv().await {
            got += b.len();
        }
        data.writer.close().await;
        conn.close().await;
        r.add(&port_forward_row(), t.elapsed());
        if got < TRANSFER_BYTES {
            return Err(tonic::Status::internal(format!(
                "port-forward moved {got} bytes, expected over {TRANSFER_BYTES}"
            )));
        }
    }
    common::cri::stop_and_remove_pod(rt, &pod).await
}

/// The kubelet-like relist load on one runtime: every second, ListPodSandbox +
/// ListContainers + ListContainerStats, for `secs` seconds.
async fn relist(mut rt: Rt, secs: u64) -> Res<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for _ in 0..secs {
        tick.tick().await;
        rt.list_pod_sandbox(ListPodSandboxRequest::default())
            .await?;
        rt.list_containers(ListContainersRequest::default()).await?;
        rt.list_container_stats(ListContainerStatsRequest::default())
            .await?;
    }
    Ok(())
}

/// Memory of both sides at the same moments, as `metric`.
async fn sample_memory(pp: &mut Side<'_>, cri: &mut Side<'_>, metric: &str) {
    let (pp_pid, c1_pid, c2_pid) = (
        pp.rig.peapod_pid().unwrap_or(0),
        pp.rig.containerd_pid().unwrap_or(0),
        cri.rig.containerd_pid().unwrap_or(0),
    );
    for _ in 0..5 {
        pp.r.put(metric, rss_kib(pp_pid) / 1024.0);
        cri.r
            .put(metric, (rss_kib(c2_pid) - rss_kib(c1_pid)) / 1024.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "bench: {metric}: peapod RSS {:.1} MiB (anonymous {:.1}, file-backed {:.1}), {} threads",
        rss_kib(pp_pid) / 1024.0,
        status_kib(pp_pid, "RssAnon:") / 1024.0,
        status_kib(pp_pid, "RssFile:") / 1024.0,
        status_kib(pp_pid, "Threads:"),
    );
}

/// What the churn phase watches in peapod.
#[derive(Debug, Clone)]
struct Footprint {
    rss_mib: f64,
    fds: usize,
    tokio_tasks: i64,
    mounts: usize,
    state_files: usize,
}

async fn footprint(side: &mut Side<'_>) -> Footprint {
    let pid = side.rig.peapod_pid().unwrap_or(0);
    let tokio_tasks = match side.rt.status(StatusRequest { verbose: true }).await {
        Ok(r) => r
            .into_inner()
            .info
            .get("tokioAliveTasks")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1),
        Err(_) => -1,
    };
    Footprint {
        rss_mib: rss_kib(pid) / 1024.0,
        fds: count_fds(pid),
        tokio_tasks,
        mounts: count_mounts(side.rig.dir.path()),
        state_files: count_files(&side.rig.state_dir),
    }
}

/// `cycles` pod create/start/stop/remove cycles; peapod's footprint before and after.
async fn churn(side: &mut Side<'_>, cycles: usize) -> Res<(Footprint, Footprint)> {
    let cycle = |side: &mut Side<'_>| {
        let rt = side.rt.clone();
        let name = format!("bench-{}-churn-{}", side.label, side.made);
        side.made += 1;
        let config = side.rig.pod_config(&name);
        async move {
            let mut rt = rt;
            let pod = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id;
            let ctr = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config("work")),
                    sandbox_config: Some(config),
                })
                .await?
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest {
                container_id: ctr.clone(),
            })
            .await?;
            rt.stop_container(StopContainerRequest {
                container_id: ctr.clone(),
                timeout: 10,
            })
            .await?;
            rt.remove_container(RemoveContainerRequest { container_id: ctr })
                .await?;
            common::cri::stop_and_remove_pod(&mut rt, &pod).await
        }
    };
    // Warm up, so what is allocated once (buffers, pools, the first cgroup reads) is in
    // the "before" figure.
    for _ in 0..10.min(cycles) {
        cycle(side).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = footprint(side).await;
    for i in 0..cycles {
        cycle(side).await?;
        if (i + 1) % 100 == 0 {
            eprintln!("bench: {}: {} cycles", side.label, i + 1);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = footprint(side).await;
    Ok((before, after))
}

/// `count` images named `localhost/bench/img-<i>:1`, sharing one layer (so importing them is
/// quick) with a config of their own.
fn shared_layer_images(dir: &Path, count: usize) -> Vec<oci::BuiltImage> {
    (0..count)
        .map(|i| {
            oci::build(
                dir,
                &oci::ImageSpec {
                    name: format!("localhost/bench/img-{i}:1"),
                    cmd: vec!["sh".into()],
                    env: vec![format!("BENCH_IMAGE={i}")],
                    ..Default::default()
                },
            )
        })
        .collect()
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<44} {:>4} {:>19} {:>19} {:>11} {:>15}",
        "metric", "unit", "peapod p50/p90", "ctrd-cri p50/p90", "ratio", "server p50/p90"
    );
    for r in rows {
        let server = r
            .server
            .as_ref()
            .filter(|s| !s.0.is_empty())
            .map(|s| format!("{:.3}/{:.3}", s.p50(), s.p90()))
            .unwrap_or_default();
        println!(
            "{:<44} {:>4} {:>9.2}/{:<9.2} {:>9.2}/{:<9.2} {:>5.2}/{:<5.2} {:>15}",
            r.metric,
            r.unit,
            r.peapod.p50(),
            r.peapod.p90(),
            r.cri.p50(),
            r.cri.p90(),
            r.peapod.p50() / r.cri.p50(),
            r.peapod.p90() / r.cri.p90(),
            server,
        );
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(f64::NAN);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
        "load_average_at_start": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "containerd": cmd("containerd", &["--version"]),
        "runc": cmd("runc", &["--version"]).lines().next().unwrap_or_default().to_string(),
        "peapod_commit": cmd("git", &["rev-parse", "--short", "HEAD"]),
    })
}

async fn run<'a>(
    args: &Args,
    pp: &mut Side<'a>,
    cri: &mut Side<'a>,
    reg: &registry::Registry,
    rows: &mut Vec<Row>,
    extra: &mut serde_json::Value,
) -> Res<()> {
    let mut log = ServerLog::new(pp.rig);
    let mut server: BTreeMap<String, Samples> = BTreeMap::new();

    // Images present, and images to pull.
    eprintln!(
        "bench: building and importing {} images into both containerds",
        args.images
    );
    let built = shared_layer_images(pp.rig.dir.path(), args.images);
    for b in &built {
        pp.rig.import(&b.layout_tar);
        cri.rig.import(&b.layout_tar);
    }
    let names: Vec<String> = (0..args.images)
        .map(|i| format!("localhost/bench/img-{i}:1"))
        .collect();
    let mut pull_refs = Vec::new();
    for side in ["peapod", "cri"] {
        for i in 0..args.pulls {
            let img = oci::build(
                pp.rig.dir.path(),
                &oci::ImageSpec {
                    name: format!("localhost/bench/pull-{side}-{i}:1"),
                    cmd: vec!["sh".into()],
                    files: vec![(format!("/etc/bench-{side}-{i}"), vec![b'x'; 4096])],
                    ..Default::default()
                },
            );
            reg.push_image(&format!("bench/pull-{side}-{i}"), "1", &img, false)
                .await;
            pull_refs.push(format!("{}/bench/pull-{side}-{i}:1", reg.addr));
        }
    }
    let (pp_pulls, cri_pulls) = pull_refs.split_at(args.pulls);
    // Both have loaded what they hold before anything is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sample_memory(pp, cri, "memory, 0 pods").await;

    let at = format!("{} images", args.images);
    for side in [&mut *pp, &mut *cri] {
        eprintln!("bench: {}: image reads, pulls and removals", side.label);
        let is_pp = side.label == "peapod";
        let s = side
            .image_reads(
                &names,
                args.list_calls,
                &at,
                if is_pp { Some(&mut log) } else { None },
            )
            .await?;
        server.extend(s);
        side.pulls(if is_pp { pp_pulls } else { cri_pulls }).await?;
    }

    for side in [&mut *pp, &mut *cri] {
        eprintln!("bench: {}: lifecycle of {} pods", side.label, args.pods);
        side.lifecycle(args.pods).await?;
    }

    for side in [&mut *pp, &mut *cri] {
        eprintln!("bench: {}: {} running pods", side.label, args.running);
        side.grow(args.running, args.running).await?;
    }
    let at = format!("{} pods", args.running);
    for side in [&mut *pp, &mut *cri] {
        let is_pp = side.label == "peapod";
        let s = side
            .lists(
                &at,
                args.list_calls,
                if is_pp { Some(&mut log) } else { None },
            )
            .await?;
        server.extend(s);
    }
    sample_memory(pp, cri, &format!("memory, {} pods running", args.running)).await;

    eprintln!(
        "bench: relist load for {} s on both at once",
        args.relist_secs
    );
    let pids = (
        pp.rig.peapod_pid().unwrap_or(0),
        pp.rig.containerd_pid().unwrap_or(0),
        cri.rig.containerd_pid().unwrap_or(0),
    );
    let before = (cpu_secs(pids.0), cpu_secs(pids.1), cpu_secs(pids.2));
    let (a, b) = tokio::join!(
        relist(pp.rt.clone(), args.relist_secs),
        relist(cri.rt.clone(), args.relist_secs)
    );
    a?;
    b?;
    let per_min = 60.0 / args.relist_secs as f64;
    let d = (
        (cpu_secs(pids.0) - before.0) * per_min,
        (cpu_secs(pids.1) - before.1) * per_min,
        (cpu_secs(pids.2) - before.2) * per_min,
    );
    let relist_metric = format!("relist CPU, {} pods (s/min)", args.running);
    pp.r.put(&relist_metric, d.0 + d.1);
    cri.r.put(&relist_metric, d.2);
    pp.r.put("relist CPU, peapod process only (s/min)", d.0);
    cri.r.put("relist CPU, peapod process only (s/min)", d.2);

    if args.large > args.running {
        for side in [&mut *pp, &mut *cri] {
            eprintln!(
                "bench: {}: growing to {} pods ({} running)",
                side.label, args.large, args.running
            );
            side.grow(args.large, args.running).await?;
        }
        let at = format!("{} pods", args.large);
        for side in [&mut *pp, &mut *cri] {
            let is_pp = side.label == "peapod";
            let s = side
                .lists(
                    &at,
                    args.list_calls,
                    if is_pp { Some(&mut log) } else { None },
                )
                .await?;
            server.extend(s);
        }
        sample_memory(
            pp,
            cri,
            &format!("memory, {} pods ({} running)", args.large, args.running),
        )
        .await;
    }
    // After the memory samples, so buffers of the transfers do not count in them.
    for side in [&mut *pp, &mut *cri] {
        eprintln!(
            "bench: {}: {EXECS} exec round trips, {TRANSFERS} port-forward transfers of {} MiB",
            side.label,
            TRANSFER_BYTES >> 20
        );
        streaming(&mut side.rt, side.rig, side.label, &mut side.r).await?;
    }
    for side in [&mut *pp, &mut *cri] {
        eprintln!("bench: {}: removing {} pods", side.label, side.pods.len());
        side.remove_all().await;
    }

    eprintln!(
        "bench: peapod: {} pod create/start/stop/remove cycles",
        args.cycles
    );
    let (before, after) = churn(pp, args.cycles).await?;
    extra["churn"] = json!({
        "cycles": args.cycles,
        "before": {"rss_mib": before.rss_mib, "fds": before.fds, "tokio_tasks": before.tokio_tasks, "mounts": before.mounts, "state_files": before.state_files},
        "after": {"rss_mib": after.rss_mib, "fds": after.fds, "tokio_tasks": after.tokio_tasks, "mounts": after.mounts, "state_files": after.state_files},
    });

    // The table, in the issue's order.
    let img_at = format!("{} images", args.images);
    let mut order: Vec<(String, &'static str)> = vec![
        (format!("ListImages, {img_at}"), "ms"),
        (format!("ImageStatus, {img_at}"), "ms"),
        ("RemoveContainer".into(), "ms"),
        ("CreateContainer".into(), "ms"),
        ("RemoveImage".into(), "ms"),
        ("RunPodSandbox".into(), "ms"),
        ("StartContainer".into(), "ms"),
        ("StopPodSandbox".into(), "ms"),
        ("StopContainer".into(), "ms"),
        ("RemovePodSandbox".into(), "ms"),
        ("PullImage (local registry)".into(), "ms"),
        ("PodSandboxStatus".into(), "ms"),
        ("ContainerStatus".into(), "ms"),
    ];
    let mut counts = vec![args.running];
    if args.large > args.running {
        counts.push(args.large);
    }
    for n in counts {
        for rpc in [
            "ListPodSandbox",
            "ListContainers",
            "PodSandboxStatus",
            "ContainerStatus",
        ] {
            order.push((format!("{rpc}, {n} pods"), "ms"));
        }
    }
    order.push((EXEC_ROW.into(), "ms"));
    order.push((port_forward_row(), "ms"));
    order.push((relist_metric.clone(), "s"));
    order.push(("relist CPU, peapod process only (s/min)".into(), "s"));
    order.push(("memory, 0 pods".into(), "MiB"));
    order.push((format!("memory, {} pods running", args.running), "MiB"));
    if args.large > args.running {
        order.push((
            format!("memory, {} pods ({} running)", args.large, args.running),
            "MiB",
        ));
    }
    for (metric, unit) in order {
        rows.push(Row {
            server: server.get(&metric).cloned(),
            peapod: pp.r.get(&metric),
            cri: cri.r.get(&metric),
            metric,
            unit,
        });
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    args.apply_quick();
    if !common::require_root() {
        std::process::exit(2);
    }
    let started = Instant::now();
    let machine = machine();
    eprintln!("bench: starting containerd #1 (CRI plugin disabled) + peapod");
    // The per-RPC trace only (peapod::server at debug): the server times of List and Status.
    let peapod_rig = Rig::start_with(vec![
        "--log-level".into(),
        "info,peapod::server=debug".into(),
    ])
    .await;
    eprintln!("bench: starting containerd #2 (CRI plugin enabled)");
    let mut cri_rig = Rig::prepare(true);
    cri_rig.containerd_extra_config = cri_plugin_config(&cri_rig);
    cri_rig.start_containerd();
    cri_rig.import_test_images();
    let reg = registry::Registry::start(None);
    write_registry_hosts(&cri_rig, &reg.addr);

    let cri_channel = common::unix_channel(&cri_rig.containerd_socket).await;
    let cri_rt = RuntimeServiceClient::new(cri_channel.clone());
    // The CRI plugin answers once its CNI config is loaded.
    let ready = common::eventually(Duration::from_secs(30), || {
        let mut c = cri_rt.clone();
        async move {
            let st = c.status(StatusRequest::default()).await.ok()?.into_inner();
            let conds = st.status?.conditions;
            conds.iter().all(|c| c.status).then_some(())
        }
    })
    .await;
    if ready.is_none() {
        eprintln!("bench: containerd #2's CRI plugin is not ready (see its containerd.log)");
    }
    let mut pp = Side {
        label: "peapod",
        rt: peapod_rig.runtime_client().await,
        img: peapod_rig.image_client().await,
        rig: &peapod_rig,
        r: Results::default(),
        pods: Vec::new(),
        made: 0,
    };
    let mut cri = Side {
        label: "containerd-cri",
        rt: cri_rt,
        img: ImageServiceClient::new(cri_channel),
        rig: &cri_rig,
        r: Results::default(),
        pods: Vec::new(),
        made: 0,
    };

    let mut rows = Vec::new();
    let mut extra = json!({});
    let outcome = run(&args, &mut pp, &mut cri, &reg, &mut rows, &mut extra).await;
    if let Err(e) = outcome {
        eprintln!("bench: failed: {e}");
        for (what, rig) in [("containerd #1", &peapod_rig), ("containerd #2", &cri_rig)] {
            let log =
                std::fs::read_to_string(rig.dir.path().join("containerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- {what} log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        pp.remove_all().await;
        cri.remove_all().await;
        drop(pp);
        drop(cri);
        drop(peapod_rig);
        drop(cri_rig);
        std::process::exit(1);
    }

    println!(
        "peapod vs containerd's built-in CRI plugin ({}), {} cores, load at start {}",
        machine["containerd"].as_str().unwrap_or_default(),
        machine["cores"],
        machine["load_average_at_start"]
            .as_str()
            .unwrap_or_default(),
    );
    print_table(&rows);
    let churn = &extra["churn"];
    println!(
        "churn, peapod, {} pod cycles: RSS {:.1} -> {:.1} MiB, fds {} -> {}, tokio tasks {} -> {}, mounts {} -> {}, state files {} -> {}",
        churn["cycles"],
        churn["before"]["rss_mib"].as_f64().unwrap_or(f64::NAN),
        churn["after"]["rss_mib"].as_f64().unwrap_or(f64::NAN),
        churn["before"]["fds"],
        churn["after"]["fds"],
        churn["before"]["tokio_tasks"],
        churn["after"]["tokio_tasks"],
        churn["before"]["mounts"],
        churn["after"]["mounts"],
        churn["before"]["state_files"],
        churn["after"]["state_files"],
    );
    println!("ratio = peapod / containerd-cri (p50/p90); < 1 means peapod is faster/smaller.");
    println!("latency: wall time of each CRI call as seen by a gRPC client on the unix socket; the two runtimes run one after the other on the same machine. server: peapod's own per-RPC trace.");
    println!("{MEMORY_METHOD}");
    println!("{CPU_METHOD}");
    println!(
        "wall time of the benchmark: {:.0} s",
        started.elapsed().as_secs_f64()
    );

    if let Some(out) = &args.out {
        let doc = json!({
            "settings": {
                "pods": args.pods, "images": args.images, "pulls": args.pulls,
                "running": args.running, "large": args.large, "relist_secs": args.relist_secs,
                "cycles": args.cycles, "list_calls": args.list_calls,
            },
            "machine": machine,
            "ratio": "peapod / containerd-cri; < 1 means peapod is faster/smaller",
            "memory_method": MEMORY_METHOD,
            "cpu_method": CPU_METHOD,
            "metrics": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "churn": extra["churn"],
            "wall_secs": started.elapsed().as_secs_f64(),
        });
        std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap_or_default())
            .unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        println!("JSON written to {}", out.display());
    }
    drop(pp);
    drop(cri);
    drop(peapod_rig);
    drop(cri_rig);
}
