//! What an operator runs besides the CRI: the Prometheus endpoint scraped after a pod
//! lifecycle, `peapod check` on a working rig and on each way it can be broken, and
//! `peapod config default|show`.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::cri::{config, pod, try_run, Client};
use common::metrics::{assert_answered_once, cri, http_get, sample, scrape};
use common::{bins, oci, Rig};
use peapod::cri::*;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_pod_lifecycle() {
    if !common::require_root() {
        return;
    }
    let port = bins::free_port();
    let rig = Rig::start_with(vec![
        "--metrics-address".into(),
        format!("127.0.0.1:{port}"),
    ])
    .await;
    let mut rt: Client = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "metrics").await;
    let id = try_run(&mut rt, &p, config("web", "sleep 3600"))
        .await
        .expect("CreateContainer + StartContainer");
    // One failing call, to be counted under its code.
    let missing = rt
        .container_status(ContainerStatusRequest {
            container_id: "f".repeat(64),
            verbose: false,
        })
        .await
        .expect_err("status of an unknown container");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // An exec through the streaming server: one session, over when the command ends.
    let url = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "streamed".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let (conn, _) = peapod::streaming::client::connect(&url, &["v4.channel.k8s.io"])
        .await
        .expect("SPDY upgrade");
    let out = peapod::streaming::client::run_command(&conn, None, true)
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"streamed\n");
    let sessions = common::eventually(Duration::from_secs(10), || async {
        let text = scrape(port);
        let done = sample(&text, r#"peapod_streaming_sessions_total{kind="exec"}"#) == Some(1.0)
            && sample(&text, r#"peapod_streaming_sessions_active{kind="exec"}"#) == Some(0.0);
        done.then_some(())
    })
    .await;
    assert!(
        sessions.is_some(),
        "exec session not counted:\n{}",
        scrape(port)
    );

    // While it runs: the pod and its container by state.
    let text = scrape(port);
    assert_eq!(
        sample(&text, r#"peapod_pod_sandboxes{state="ready"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"peapod_containers{state="running"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"peapod_containers{state="exited"}"#),
        Some(0.0)
    );

    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("RemoveContainer");
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("RemovePodSandbox");

    let text = scrape(port);
    for method in [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ] {
        assert_answered_once(&text, method);
    }
    assert_eq!(
        sample(&text, &cri("ContainerStatus", "NotFound")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"peapod_pod_sandboxes{state="ready"}"#),
        Some(0.0)
    );
    // What peapod asked of containerd and CNI on the way.
    let tasks_create = sample(
        &text,
        r#"peapod_containerd_requests_total{grpc_service="containerd.services.tasks.v1.Tasks",grpc_method="Create",grpc_code="OK"}"#,
    );
    assert_eq!(tasks_create, Some(2.0), "pause + web task creates:\n{text}");
    assert_eq!(
        sample(
            &text,
            r#"peapod_cni_operation_duration_seconds_count{operation="ADD"}"#
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            r#"peapod_cni_operation_duration_seconds_count{operation="DEL"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|v| v > 1e6));
    assert!(sample(&text, "process_open_fds").is_some_and(|v| v > 3.0));
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(http_get(port, "/").unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn there_is_no_metrics_endpoint_unless_configured() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let pid = rig.peapod_pid().expect("peapod runs");
    // Every TCP port peapod listens on (the streaming server may have one): none serves metrics.
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state (0A = LISTEN), field 9 the inode.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    for port in ports {
        if let Ok((_, body)) = http_get(port, "/metrics") {
            assert!(
                !body.contains("peapod_cri_requests"),
                "port {port} serves metrics without --metrics-address"
            );
        }
    }
    assert!(!rig.peapod_log().contains("serving Prometheus metrics"));
}

/// `peapod <rig's settings, with `set` replacing some> check <extra>`.
fn check_with(rig: &Rig, set: &[(&str, &str)], extra: &[&str]) -> (i32, String) {
    let mut args = rig.peapod_args();
    for (flag, value) in set {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("the rig passes no {flag}"));
        args[i + 1] = value.to_string();
    }
    let o: Output = Command::new(common::peapod_bin())
        .args(args)
        .arg("check")
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("run peapod check");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.code().unwrap_or(-1), out)
}

fn check(rig: &Rig, extra: &[&str]) -> (i32, String) {
    check_with(rig, &[], extra)
}

/// The one FAIL line about `check` in a report.
fn failure<'a>(report: &'a str, check: &str) -> &'a str {
    let fails: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    fails
        .iter()
        .find(|l| l.starts_with(&format!("FAIL  {check}:")))
        .copied()
        .unwrap_or_else(|| panic!("no FAIL line for {check} in:\n{report}"))
}

fn kubelet_config(dir: &Path, name: &str, driver: &str, socket: &Path) -> String {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             cgroupDriver: {driver}\ncontainerRuntimeEndpoint: unix://{}\n",
            socket.display()
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_on_the_rig_and_names_each_cause_of_failure() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::start().await;
    let dir = rig.dir.path().to_path_buf();
    let good = kubelet_config(&dir, "kubelet.yaml", "cgroupfs", &rig.peapod_socket);

    let (code, report) = check(&rig, &["--kubelet-config", &good]);
    assert_eq!(code, 0, "check failed on a working rig:\n{report}");
    for line in [
        "ok    containerd:",
        "ok    containerd CRI plugin:",
        "ok    sandbox image:",
        "ok    runc:",
        "ok    CNI:",
        "ok    cgroup driver:",
        "ok    kubelet endpoint:",
        "ok    CRI socket: peapod is serving",
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(line)),
            "no {line:?} in\n{report}"
        );
    }

    // A cgroup driver kubelet does not use.
    let systemd = kubelet_config(&dir, "kubelet-systemd.yaml", "systemd", &rig.peapod_socket);
    let (code, report) = check(&rig, &["--kubelet-config", &systemd]);
    assert_eq!(code, 1, "{report}");
    let line = failure(&report, "cgroup driver");
    assert!(
        line.contains("kubelet's cgroupDriver is systemd") && line.contains("Fix:"),
        "{line}"
    );
    assert_eq!(report.lines().filter(|l| l.starts_with("FAIL")).count(), 1);

    // An empty CNI config directory.
    let empty = dir.join("empty-cni");
    std::fs::create_dir(&empty).unwrap();
    let (code, report) = check_with(&rig, &[("--cni-conf-dir", empty.to_str().unwrap())], &[]);
    assert_eq!(code, 1, "{report}");
    let line = failure(&report, "CNI");
    assert!(
        line.contains("no CNI network config found") && line.contains(empty.to_str().unwrap()),
        "{line}"
    );

    // A plugin binary missing: the rig's conflist names bridge, host-local and portmap.
    let bins = dir.join("cni-bin");
    std::fs::create_dir(&bins).unwrap();
    for p in ["bridge", "host-local", "loopback"] {
        std::fs::copy(Path::new("/usr/lib/cni").join(p), bins.join(p)).unwrap();
    }
    let (code, report) = check_with(&rig, &[("--cni-bin-dir", bins.to_str().unwrap())], &[]);
    assert_eq!(code, 1, "{report}");
    let line = failure(&report, "CNI");
    assert!(
        line.contains("\"portmap\" not found") && line.contains("--cni-bin-dir"),
        "{line}"
    );

    // containerd down: named, with the socket it tried; what needs it is skipped.
    rig.stop_containerd();
    let (code, report) = check(&rig, &[]);
    assert_eq!(code, 1, "{report}");
    let line = failure(&report, "containerd");
    assert!(
        line.contains(&rig.containerd_socket.display().to_string())
            && line.contains("start containerd"),
        "{line}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("skip  sandbox image:")),
        "{report}"
    );
}

#[test]
fn config_default_parses_back_into_the_defaults() {
    let o = Command::new(common::peapod_bin())
        .args(["config", "default"])
        // A broken config file does not keep the defaults from printing.
        .env("PEAPOD_CONFIG", "/nonexistent/peapod.toml")
        .output()
        .expect("peapod config default");
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8(o.stdout).unwrap();
    let parsed: peapod::config::Config = toml::from_str(&text).expect("valid TOML");
    assert_eq!(parsed, peapod::config::Config::default());
    assert!(text.contains("# metrics_address = "), "{text}");
}

#[test]
fn config_show_applies_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peapod.toml");
    std::fs::write(
        &file,
        "namespace = \"from-file\"\nsnapshotter = \"native\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    let o = Command::new(common::peapod_bin())
        .args(["--config", file.to_str().unwrap(), "config", "show"])
        .args([
            "--log-format",
            "text",
            "--metrics-address",
            "127.0.0.1:9101",
        ])
        .env("PEAPOD_NAMESPACE", "from-env")
        .env("PEAPOD_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .output()
        .expect("peapod config show");
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8(o.stdout).unwrap();
    let shown: peapod::config::Config = toml::from_str(&text).expect("valid TOML");
    assert_eq!(shown.namespace, "from-env", "{text}");
    assert_eq!(shown.snapshotter, "native");
    assert_eq!(shown.log_format, "text");
    assert_eq!(
        shown.metrics_address,
        Some("127.0.0.1:9101".parse().unwrap())
    );
    assert_eq!(shown.state_dir, Path::new("/var/lib/peapod"));
}

/// The kind node image cannot be built here (no Docker engine), so its recipe is checked on
/// paper: the Dockerfile's RUN step is run against a containerd config laid out as
/// kindest/node's, with its paths moved into a temporary directory.
#[test]
fn the_kind_node_recipe_disables_containerds_cri_and_configures_peapod() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("deploy/kind/Dockerfile")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // kindest/node's /etc/containerd/config.toml, in outline.
    std::fs::write(
        d.join("config.toml"),
        "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
         snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n",
    )
    .unwrap();
    // The RUN step: its backslash-continued lines joined, paths moved under `d`.
    let start = dockerfile.find("RUN set -eu;").expect("the RUN step");
    let mut run = String::new();
    for line in dockerfile[start + 4..].lines() {
        let (text, more) = match line.trim_end().strip_suffix('\\') {
            Some(t) => (t, true),
            None => (line, false),
        };
        run.push_str(text);
        run.push(' ');
        if !more {
            break;
        }
    }
    let peapod = common::peapod_bin();
    let script = run
        .replace(
            "/etc/containerd/config.toml",
            &d.join("config.toml").display().to_string(),
        )
        .replace(
            "/usr/local/bin/peapod config show",
            &format!(
                "PEAPOD_CONFIG={} {} config show",
                d.join("peapod/config.toml").display(),
                peapod.display()
            ),
        )
        .replace("/etc/peapod", &d.join("peapod").display().to_string())
        .replace("systemctl enable peapod.service", "true");
    let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(o.status.success(), "{script}\n{o:?}");

    let ctrd: toml::Table =
        toml::from_str(&std::fs::read_to_string(d.join("config.toml")).unwrap()).unwrap();
    assert_eq!(
        ctrd["disabled_plugins"],
        toml::Value::Array(vec!["io.containerd.grpc.v1.cri".into()]),
        "{ctrd:?}"
    );
    // What `kind load` reads from `containerd config dump` is still there.
    assert_eq!(
        ctrd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["snapshotter"].as_str(),
        Some("overlayfs")
    );
    let cfg =
        peapod::config::Config::from_file(&d.join("peapod/config.toml")).expect("peapod config");
    assert_eq!(cfg.cgroup_driver, peapod::cgroup::Driver::Systemd);
    assert_eq!(cfg.sandbox_image, "registry.k8s.io/pause:3.9");

    // Every endpoint the recipe and the deploy files name is peapod's default socket, and
    // every file the Dockerfile copies is staged by the build script.
    let socket = format!(
        "unix://{}",
        peapod::config::Config::default().listen.display()
    );
    for f in [
        "deploy/kind-config.yaml",
        "deploy/kind/crictl.yaml",
        "deploy/kubelet-config.yaml",
        "deploy/crictl.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let endpoints: Vec<&str> = text
            .split_whitespace()
            .filter(|w| w.starts_with("unix://"))
            .collect();
        assert!(!endpoints.is_empty(), "{f} names no endpoint");
        assert!(endpoints.iter().all(|e| *e == socket), "{f}: {endpoints:?}");
    }
    let build = std::fs::read_to_string(root.join("deploy/kind/build-node-image.sh")).unwrap();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let src = line.split_whitespace().nth(1).unwrap();
        assert!(
            build.contains(&format!("/{src} ")) || build.contains(&format!("/{src}\n")),
            "the build script does not stage {src}"
        );
    }
}

/// Pulls from a local registry: counted by result, with the bytes received; and the sandbox
/// image check's other path, an image that is not present but pullable.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_image_pulls_and_check_resolves_a_pullable_sandbox_image() {
    if !common::require_root() {
        return;
    }
    if !Path::new("/usr/bin/docker-registry").exists() {
        bins::missing(
            "metrics_count_image_pulls",
            "no /usr/bin/docker-registry (apt-get install docker-registry)",
        );
        return;
    }
    let port = bins::free_port();
    let rig = Rig::start_with(vec![
        "--metrics-address".into(),
        format!("127.0.0.1:{port}"),
    ])
    .await;
    let reg = registry::Registry::start(None);
    let img = oci::build(
        rig.dir.path(),
        &oci::ImageSpec {
            name: "localhost/metrics/pulled:1".into(),
            cmd: vec!["sh".into()],
            ..Default::default()
        },
    );
    let digest = reg.push_image("metrics/pulled", "v1", &img, false).await;
    let mut is = rig.image_client().await;
    let pull = |r: String| PullImageRequest {
        image: Some(ImageSpec {
            image: r,
            ..Default::default()
        }),
        ..Default::default()
    };
    is.pull_image(pull(format!("{}/metrics/pulled:v1", reg.addr)))
        .await
        .expect("PullImage");
    is.pull_image(pull(format!("{}/metrics/pulled:nope", reg.addr)))
        .await
        .expect_err("pull of a missing tag");

    let text = scrape(port);
    assert_eq!(
        sample(&text, r#"peapod_image_pulls_total{result="success"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"peapod_image_pulls_total{result="failure"}"#),
        Some(1.0)
    );
    let least = (img.layer.len() + img.config.len() + img.manifest.len()) as f64;
    let bytes = sample(&text, "peapod_image_pull_bytes_total").unwrap_or(0.0);
    assert!(
        bytes >= least,
        "{bytes} bytes pulled, the image has {least}"
    );
    assert_eq!(
        sample(
            &text,
            r#"peapod_image_pull_duration_seconds_count{result="success"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"peapod_cri_requests_total{grpc_service="runtime.v1.ImageService",grpc_method="PullImage",grpc_code="OK"}"#
        ),
        Some(1.0)
    );

    // A sandbox image that is not in the namespace but can be pulled passes the check.
    let other = format!("{}/metrics/pulled:v1", reg.addr);
    let (_, report) = check_with(&rig, &[("--sandbox-image", &other)], &[]);
    let line = report
        .lines()
        .find(|l| l.contains("sandbox image:"))
        .unwrap_or("");
    // Pulled above, so present; a new tag of it is only resolvable.
    assert!(
        line.starts_with("ok    sandbox image:") && line.contains("present"),
        "{report}"
    );
    let tagged = format!("{}/metrics/pulled:v2", reg.addr);
    reg.push_image("metrics/pulled", "v2", &img, false).await;
    let (_, report) = check_with(&rig, &[("--sandbox-image", &tagged)], &[]);
    let line = report
        .lines()
        .find(|l| l.contains("sandbox image:"))
        .unwrap_or("");
    assert!(
        line.starts_with("ok    sandbox image:")
            && line.contains("pullable")
            && line.contains(&digest),
        "{report}"
    );
    let (code, report) = check_with(
        &rig,
        &[(
            "--sandbox-image",
            &format!("{}/metrics/absent:v1", reg.addr),
        )],
        &[],
    );
    assert_eq!(code, 1, "{report}");
    assert!(
        failure(&report, "sandbox image").contains("cannot be pulled"),
        "{report}"
    );
}
