//! peapod against containerd's built-in CRI plugin, side by side in one run, reported as
//! ratios (peapod / containerd-cri; below 1 means peapod is faster or smaller).
//!
//! Two containerds, each in its own temporary root with its own CNI bridge: #1 with its
//! CRI plugin disabled and peapod (the binary in $PEAPOD_BIN) on top, #2 with its CRI
//! plugin enabled and serving the CRI on containerd's own socket. Both get the same
//! busybox and pause images. The same workload runs against each, one after the other:
//!
//!   * pod ready: RunPodSandbox latency, per pod;
//!   * container start: CreateContainer + StartContainer (busybox `sleep 3600`), per pod;
//!   * ListPodSandbox / ListContainers latency with the N pods present (100 calls each);
//!   * memory with the N pods running (see `MEMORY_METHOD`);
//!   * pod teardown: StopPodSandbox + RemovePodSandbox, per pod;
//!   * exec round trip: Exec RPC + SPDY upgrade + `true` run to its exit status, per exec;
//!   * port-forward transfer: PortForward RPC + SPDY upgrade + a 64 MiB HTTP download from
//!     busybox httpd in a pod, per transfer (both through peapod's own SPDY client, so no Go
//!     client start-up is in the figures).
//!
//! Run it with `sudo bash scripts/bench.sh [-n N] [--out FILE]`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Rig, BUSYBOX, PAUSE};
use peapod::cri::runtime_service_client::RuntimeServiceClient;
use peapod::cri::*;
use serde_json::json;
use tonic::transport::Channel;

const MEMORY_METHOD: &str = "memory: VmRSS from /proc/<pid>/status, sampled 5 times 200 ms apart \
with the N pods running. peapod: peapod's own RSS (containerd #1 under it is not counted). \
containerd-cri: RSS of containerd #2 (CRI plugin enabled) minus RSS of containerd #1 \
(CRI plugin disabled) at the same moment, both holding the same N pods, so the difference \
is what the built-in CRI plugin costs inside containerd. Shims are excluded on both sides.";

#[derive(Parser)]
#[command(about = "Benchmark peapod against containerd's built-in CRI plugin")]
struct Args {
    /// Pods (each with one container) per runtime.
    #[arg(short = 'n', long, default_value_t = 20)]
    pods: usize,
    /// List calls per list metric.
    #[arg(long, default_value_t = 100)]
    list_calls: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Samples of one metric, in milliseconds or MiB.
#[derive(Default, Clone)]
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
    fn median(&self) -> f64 {
        self.pct(50.0)
    }
    fn p90(&self) -> f64 {
        self.pct(90.0)
    }
}

#[derive(Default)]
struct Results {
    pod_ready: Samples,
    container_start: Samples,
    list_pods: Samples,
    list_containers: Samples,
    memory: Samples,
    pod_teardown: Samples,
    exec_round_trip: Samples,
    port_forward: Samples,
}

/// Execs per runtime for the exec round trip.
const EXECS: usize = 30;
/// Transfers per runtime, and the size of each, for port-forward throughput.
const TRANSFERS: usize = 5;
const TRANSFER_BYTES: usize = 64 << 20;
const WEB_PORT: u16 = 8080;

fn rss_kib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
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
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Runs the N pods; returns their ids (pushed as they are made, so the caller can clean
/// up after a failure too).
async fn run_pods(
    rt: &mut RuntimeServiceClient<Channel>,
    rig: &Rig,
    label: &str,
    n: usize,
    r: &mut Results,
    ids: &mut Vec<String>,
) -> Result<(), tonic::Status> {
    for i in 0..n {
        let name = format!("bench-{label}-{i}");
        let config = rig.pod_config(&name);
        let t0 = Instant::now();
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        r.pod_ready.push_dur(t0.elapsed());
        ids.push(pod.clone());
        let t1 = Instant::now();
        let ctr = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("sleep")),
                sandbox_config: Some(config),
            })
            .await?
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: ctr.clone(),
        })
        .await?;
        r.container_start.push_dur(t1.elapsed());
    }
    Ok(())
}

async fn list_latency(
    rt: &mut RuntimeServiceClient<Channel>,
    calls: usize,
    n: usize,
    r: &mut Results,
) -> Result<(), tonic::Status> {
    for _ in 0..calls {
        let t = Instant::now();
        let pods = rt
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        r.list_pods.push_dur(t.elapsed());
        if pods.len() != n {
            return Err(tonic::Status::internal(format!(
                "ListPodSandbox returned {} pods, expected {n}",
                pods.len()
            )));
        }
        let t = Instant::now();
        let ctrs = rt
            .list_containers(ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
        r.list_containers.push_dur(t.elapsed());
        let running = ctrs
            .iter()
            .filter(|c| c.state == ContainerState::ContainerRunning as i32)
            .count();
        if running != n {
            return Err(tonic::Status::internal(format!(
                "ListContainers shows {running} running containers, expected {n}"
            )));
        }
    }
    Ok(())
}

async fn remove_pods(
    rt: &mut RuntimeServiceClient<Channel>,
    ids: &[String],
    r: Option<&mut Results>,
) -> Result<(), tonic::Status> {
    let mut samples = Samples::default();
    for id in ids {
        let t = Instant::now();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        samples.push_dur(t.elapsed());
    }
    if let Some(r) = r {
        r.pod_teardown = samples;
    }
    Ok(())
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
        r.exec_round_trip.push_dur(t.elapsed());
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
        r.port_forward.push_dur(t.elapsed());
        if got < TRANSFER_BYTES {
            return Err(tonic::Status::internal(format!(
                "port-forward moved {got} bytes, expected over {TRANSFER_BYTES}"
            )));
        }
    }
    remove_pods(rt, std::slice::from_ref(&pod), None).await
}

/// Best effort: remove whatever pods are left after a failure.
async fn cleanup(rt: &mut RuntimeServiceClient<Channel>) {
    if let Ok(resp) = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await {
        let ids: Vec<String> = resp.into_inner().items.into_iter().map(|p| p.id).collect();
        for id in ids {
            let _ = remove_pods(rt, std::slice::from_ref(&id), None).await;
        }
    }
}

/// The containerd #2 config: CRI plugin enabled, on its rig's own CNI network.
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
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
        pause = PAUSE,
        conf = rig.cni_conf_dir.display(),
    )
}

fn row(name: &str, unit: &str, p: &Samples, c: &Samples) -> serde_json::Value {
    json!({
        "metric": name,
        "unit": unit,
        "peapod": {"median": p.median(), "p90": p.p90(), "samples": p.0.len()},
        "containerd_cri": {"median": c.median(), "p90": c.p90(), "samples": c.0.len()},
        "ratio_median": p.median() / c.median(),
        "ratio_p90": p.p90() / c.p90(),
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !common::require_root() {
        std::process::exit(2);
    }
    let n = args.pods;
    eprintln!("bench: starting containerd #1 (CRI plugin disabled) + peapod");
    let peapod_rig = Rig::start().await;
    eprintln!("bench: starting containerd #2 (CRI plugin enabled)");
    let mut cri_rig = Rig::prepare(true);
    cri_rig.containerd_extra_config = cri_plugin_config(&cri_rig);
    cri_rig.start_containerd();
    cri_rig.import_test_images();

    let mut pp_rt = peapod_rig.runtime_client().await;
    let mut cri_rt =
        RuntimeServiceClient::new(common::unix_channel(&cri_rig.containerd_socket).await);
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

    let mut pp = Results::default();
    let mut cri = Results::default();
    let mut outcome = Ok(());
    let mut pp_ids = Vec::new();
    let mut cri_ids = Vec::new();
    for (label, rt, rig, r, ids) in [
        ("peapod", &mut pp_rt, &peapod_rig, &mut pp, &mut pp_ids),
        (
            "containerd-cri",
            &mut cri_rt,
            &cri_rig,
            &mut cri,
            &mut cri_ids,
        ),
    ] {
        eprintln!("bench: {label}: {n} pods");
        outcome = run_pods(rt, rig, label, n, r, ids).await;
        if outcome.is_err() {
            break;
        }
        eprintln!("bench: {label}: {} list calls", args.list_calls);
        outcome = list_latency(rt, args.list_calls, n, r).await;
        if outcome.is_err() {
            break;
        }
    }
    if outcome.is_ok() {
        // Both hold N running pods now: sample memory at the same moments.
        let (pp_pid, c1_pid, c2_pid) = (
            peapod_rig.peapod_pid().unwrap(),
            peapod_rig.containerd_pid().unwrap(),
            cri_rig.containerd_pid().unwrap(),
        );
        for _ in 0..5 {
            pp.memory.0.push(rss_kib(pp_pid) / 1024.0);
            cri.memory
                .0
                .push((rss_kib(c2_pid) - rss_kib(c1_pid)) / 1024.0);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // After the memory samples, so buffers of the transfers do not count in them.
        for (label, rt, rig, r) in [
            ("peapod", &mut pp_rt, &peapod_rig, &mut pp),
            ("containerd-cri", &mut cri_rt, &cri_rig, &mut cri),
        ] {
            eprintln!(
                "bench: {label}: {EXECS} exec round trips, {TRANSFERS} port-forward transfers of {} MiB",
                TRANSFER_BYTES >> 20
            );
            outcome = streaming(rt, rig, label, r).await;
            if outcome.is_err() {
                break;
            }
        }
    }
    if outcome.is_ok() {
        eprintln!("bench: removing pods");
        outcome = remove_pods(&mut pp_rt, &pp_ids, Some(&mut pp)).await;
        if outcome.is_ok() {
            outcome = remove_pods(&mut cri_rt, &cri_ids, Some(&mut cri)).await;
        }
    }
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
        cleanup(&mut pp_rt).await;
        cleanup(&mut cri_rt).await;
        drop(peapod_rig);
        drop(cri_rig);
        std::process::exit(1);
    }

    let rows = vec![
        row(
            "pod ready (RunPodSandbox)",
            "ms",
            &pp.pod_ready,
            &cri.pod_ready,
        ),
        row(
            "container start (Create+Start)",
            "ms",
            &pp.container_start,
            &cri.container_start,
        ),
        row(
            &format!("ListPodSandbox, {n} pods"),
            "ms",
            &pp.list_pods,
            &cri.list_pods,
        ),
        row(
            &format!("ListContainers, {n} containers"),
            "ms",
            &pp.list_containers,
            &cri.list_containers,
        ),
        row(
            "pod teardown (Stop+RemovePodSandbox)",
            "ms",
            &pp.pod_teardown,
            &cri.pod_teardown,
        ),
        row(
            "exec round trip (Exec + `true`)",
            "ms",
            &pp.exec_round_trip,
            &cri.exec_round_trip,
        ),
        row(
            &format!("port-forward {} MiB transfer", TRANSFER_BYTES >> 20),
            "ms",
            &pp.port_forward,
            &cri.port_forward,
        ),
        row(
            &format!("memory, {n} pods running"),
            "MiB",
            &pp.memory,
            &cri.memory,
        ),
    ];

    println!(
        "peapod vs containerd's built-in CRI plugin: {n} pods, {} list calls",
        args.list_calls
    );
    println!(
        "{:<38} {:>5} {:>17} {:>17} {:>7}",
        "metric", "unit", "peapod med/p90", "ctrd-cri med/p90", "ratio"
    );
    for r in &rows {
        let f = |side: &str, k: &str| r[side][k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<38} {:>5} {:>8.2}/{:<8.2} {:>8.2}/{:<8.2} {:>7.2}",
            r["metric"].as_str().unwrap(),
            r["unit"].as_str().unwrap(),
            f("peapod", "median"),
            f("peapod", "p90"),
            f("containerd_cri", "median"),
            f("containerd_cri", "p90"),
            r["ratio_median"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!("ratio = peapod median / containerd-cri median; < 1 means peapod is faster/smaller.");
    println!("latency: wall time of each CRI call as seen by a gRPC client on the unix socket; the two runtimes run one after the other on the same machine.");
    println!("{MEMORY_METHOD}");

    if let Some(out) = &args.out {
        let doc = json!({
            "pods": n,
            "list_calls": args.list_calls,
            "ratio": "peapod / containerd-cri; < 1 means peapod is faster/smaller",
            "memory_method": MEMORY_METHOD,
            "containerd": String::from_utf8_lossy(
                &std::process::Command::new(common::containerd_bin()).arg("--version").output().map(|o| o.stdout).unwrap_or_default()
            ).trim().to_string(),
            "metrics": rows,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap())
            .unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        println!("JSON written to {}", out.display());
    }
    drop(peapod_rig);
    drop(cri_rig);
}
