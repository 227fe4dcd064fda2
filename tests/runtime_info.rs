//! Version, Status, RuntimeConfig and the daemon's socket handling, against a real containerd.

mod common;

use std::time::Duration;

use common::Rig;
use peapod::cri::*;

fn condition(s: &StatusResponse, t: &str) -> RuntimeCondition {
    s.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == t)
        .cloned()
        .unwrap_or_else(|| panic!("no {t} condition in {s:?}"))
}

#[tokio::test]
async fn version_status_and_runtime_config() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let v = rt
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "peapod");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty());
    // Every RPC is traced at debug level with its sequence number, method and latency, in
    // plain text (no terminal colour codes in a log file).
    let traced = common::eventually(Duration::from_secs(5), || {
        let log = rig.peapod_log();
        async move {
            log.lines()
                .any(|l| {
                    l.contains("rpc{seq=")
                        && l.contains("method=Version")
                        && l.contains("CRI call")
                        && l.contains("latency_us=")
                })
                .then_some(())
        }
    })
    .await;
    assert!(
        traced.is_some(),
        "no trace of Version in:\n{}",
        rig.peapod_log()
    );
    assert!(
        !rig.peapod_log().contains('\u{1b}'),
        "ANSI escapes in the log file"
    );

    let s = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&s, "RuntimeReady").status, "{s:?}");
    assert!(condition(&s, "NetworkReady").status, "{s:?}");
    assert_eq!(
        s.info.get("cniNetwork").map(String::as_str),
        Some("peapod-test")
    );

    let c = rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        c.linux.unwrap().cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );

    rt.update_runtime_config(UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: "10.244.0.0/16".into(),
            }),
        }),
    })
    .await
    .unwrap();
    let bad = rt
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: "not-a-cidr".into(),
                }),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

/// Status info (what `crictl info` and `peapodctl info` print) names the containerd peapod is
/// connected to and what peapod detected about it. .ci/run runs this on every containerd
/// version, so the detection is checked on each.
#[tokio::test]
async fn status_info_names_the_connected_containerd() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let (bin_version, major) = common::containerd_bin_version();
    let mut rt = rig.runtime_client().await;
    let s = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let version = s.info.get("containerdVersion").expect("containerdVersion");
    assert_eq!(
        version.trim_start_matches('v'),
        bin_version.trim_start_matches('v'),
        "Status names another containerd than the one the rig runs"
    );
    let caps: serde_json::Value =
        serde_json::from_str(s.info.get("containerd").expect("containerd info")).unwrap();
    assert_eq!(caps["version"], version.as_str());
    let release = caps["release"].as_str().expect("release parsed");
    assert!(
        bin_version.trim_start_matches('v').starts_with(release),
        "{release} vs {bin_version}"
    );
    // 2.x splits its CRI into three plugins; the rig disables all of them.
    let cri = caps["criPlugins"].as_array().unwrap();
    assert_eq!(cri.len(), if major >= 2 { 3 } else { 1 }, "{caps}");
    assert_eq!(caps["criPluginsLoaded"], serde_json::json!([]), "{caps}");
    if major < 2 && release.starts_with("1.6.") {
        assert_eq!(caps["deprecations"], serde_json::json!({}), "{caps}");
    }

    // peapodctl info shows the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_peapodctl"))
        .arg("--endpoint")
        .arg(&rig.peapod_socket)
        .arg("info")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("\"containerdVersion\": \"{version}\"")),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_str(&text).expect("peapodctl info is JSON");
    assert_eq!(doc["info"]["containerd"]["version"], version.as_str());
}

#[tokio::test]
async fn network_not_ready_without_cni_config() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    for e in std::fs::read_dir(&rig.cni_conf_dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let mut rt = rig.runtime_client().await;
    let s = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let net = condition(&s, "NetworkReady");
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains("no CNI network config"),
        "{}",
        net.message
    );
    assert!(condition(&s, "RuntimeReady").status);
}

#[tokio::test]
async fn runtime_not_ready_while_containerd_is_down_then_recovers() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(rig.pod_config("survivor")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    rig.stop_containerd();
    let s = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let r = condition(&s, "RuntimeReady");
    assert!(!r.status, "RuntimeReady while containerd is down: {s:?}");
    assert_eq!(r.reason, "ContainerdUnreachable");
    // Listing is served from peapod's own index and keeps working...
    rt.list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox while containerd is down");
    // ... while an RPC that needs containerd says Unavailable (kubelet retries), and leaves
    // nothing behind.
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(rig.pod_config("while-down")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(
        std::fs::read_dir(&rig.netns_dir).unwrap().count(),
        1,
        "only the surviving pod's netns"
    );
    rig.restart_containerd();
    let ready = common::eventually(Duration::from_secs(20), || {
        let mut rt = rt.clone();
        async move {
            let s = rt.status(StatusRequest::default()).await.ok()?.into_inner();
            condition(&s, "RuntimeReady").status.then_some(())
        }
    })
    .await;
    assert!(ready.is_some(), "peapod did not see containerd come back");
    // The pod kept running through containerd's restart, and is still managed.
    let st = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn warns_when_containerd_builtin_cri_plugin_is_enabled() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::containerd_only_with(true);
    rig.import_test_images();
    rig.start_peapod().await;
    let mut rt = rig.runtime_client().await;
    rt.version(VersionRequest::default()).await.unwrap();
    let warned = common::eventually(Duration::from_secs(10), || {
        let log = rig.peapod_log();
        async move { log.contains("built-in CRI plugin is enabled").then_some(()) }
    })
    .await;
    assert!(warned.is_some(), "no warning in:\n{}", rig.peapod_log());
    // The advice names every CRI plugin of this version (three on 2.x).
    let (_, major) = common::containerd_bin_version();
    let line = if major >= 2 {
        r#"disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]"#
    } else {
        r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
    };
    assert!(
        rig.peapod_log().contains(line),
        "{line} not in:\n{}",
        rig.peapod_log()
    );
    let s = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let caps: serde_json::Value = serde_json::from_str(&s.info["containerd"]).unwrap();
    assert_eq!(
        caps["criPluginsLoaded"].as_array().unwrap().len(),
        if major >= 2 { 3 } else { 1 },
        "{caps}"
    );

    // With the plugin disabled (the normal rig), no such warning.
    let quiet = Rig::start().await;
    let mut rt = quiet.runtime_client().await;
    rt.version(VersionRequest::default()).await.unwrap();
    assert!(!quiet
        .peapod_log()
        .contains("built-in CRI plugin is enabled"));
}

#[tokio::test]
async fn second_peapod_on_a_live_socket_refuses_and_stale_socket_is_replaced() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::start().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_peapod"))
        .args(rig.peapod_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    // The first one still serves.
    let mut rt = rig.runtime_client().await;
    rt.version(VersionRequest::default()).await.unwrap();

    // SIGKILL leaves the socket file behind; a new peapod replaces it.
    rig.kill_peapod();
    assert!(rig.peapod_socket.exists());
    // An ExecSync cut off by the crash left its FIFOs; the restart sweeps them.
    let exec_dir = rig.state_dir.join("exec");
    std::fs::create_dir_all(&exec_dir).unwrap();
    std::fs::write(exec_dir.join("deadbeef-stdout"), b"").unwrap();
    rig.start_peapod().await;
    // The socket accepts as soon as it is bound; answers come once recovery (which sweeps
    // the FIFOs) is done.
    let mut rt = rig.runtime_client().await;
    rt.version(VersionRequest::default()).await.unwrap();
    assert!(
        !exec_dir.join("deadbeef-stdout").exists(),
        "stale exec FIFO kept"
    );

    // SIGTERM: clean exit, socket removed.
    let st = rig.stop_peapod().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!rig.peapod_socket.exists());
}

#[tokio::test]
async fn rpcs_not_built_yet_say_unimplemented_with_their_name() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let e = rt
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert!(
        e.message().contains("CheckpointContainer"),
        "{}",
        e.message()
    );
}
