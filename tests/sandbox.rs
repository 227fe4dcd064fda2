//! Pod sandboxes end to end: real containerd, runc and CNI bridge.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Rig;
use peapod::cri::runtime_service_client::RuntimeServiceClient;
use peapod::cri::*;
use tonic::transport::Channel;

async fn run(rt: &mut RuntimeServiceClient<Channel>, config: PodSandboxConfig) -> String {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> PodSandboxStatusResponse {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    })
    .await
    .expect("PodSandboxStatus")
    .into_inner()
}

fn info(s: &PodSandboxStatusResponse) -> serde_json::Value {
    serde_json::from_str(s.info.get("info").expect("verbose info")).unwrap()
}

/// Everything peapod, containerd and CNI hold for pods, to prove nothing leaks.
fn leftovers(rig: &Rig) -> Vec<String> {
    let mut out = Vec::new();
    for c in rig.ctr_list(&["containers", "ls", "-q"]) {
        out.push(format!("container {c}"));
    }
    for s in rig.ctr_list(&["snapshots", "ls"]).into_iter().skip(1) {
        // Committed image layers stay; only active snapshots belong to pods.
        if s.contains("Active") {
            out.push(format!("snapshot {s}"));
        }
    }
    for l in rig.ctr_list(&["leases", "ls", "-q"]) {
        if l.starts_with("peapod-") {
            out.push(format!("lease {l}"));
        }
    }
    for e in std::fs::read_dir(&rig.netns_dir).unwrap().flatten() {
        out.push(format!("netns {}", e.path().display()));
    }
    if let Ok(rd) = std::fs::read_dir(rig.state_dir.join("sandboxes")) {
        for e in rd.flatten() {
            out.push(format!("sandbox dir {}", e.path().display()));
        }
    }
    if let Ok(rd) = std::fs::read_dir(rig.cni_data_dir.join("peapod-test")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&rig.subnet_prefix) {
                out.push(format!("CNI IP reservation {n}"));
            }
        }
    }
    out
}

#[tokio::test]
async fn sandbox_gets_netns_ip_hostname_and_dns() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let a = run(&mut rt, rig.pod_config("alpha")).await;
    let b = run(&mut rt, rig.pod_config("beta")).await;
    assert_eq!(a.len(), 64);

    let sa = status(&mut rt, &a).await;
    let sb = status(&mut rt, &b).await;
    let st = sa.status.clone().unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "alpha");
    assert_eq!(st.labels.get("app").map(String::as_str), Some("alpha"));
    assert_eq!(
        st.annotations.get("peapod.test/anno").map(String::as_str),
        Some("yes")
    );
    assert!(st.created_at > 0);
    let ip_a = st.network.unwrap().ip;
    let ip_b = sb.status.clone().unwrap().network.unwrap().ip;
    assert!(
        ip_a.starts_with(&format!("{}.", rig.subnet_prefix)),
        "{ip_a} not in the test subnet"
    );
    assert_ne!(ip_a, ip_b, "two sandboxes share an IP");

    // The pinned netns holds eth0 with exactly that IP.
    let netns = info(&sa)["sandboxMetadata"]["Metadata"]["NetNSPath"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        netns.starts_with(rig.netns_dir.to_str().unwrap()),
        "{netns}"
    );
    let out = rig.in_netns(&netns, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    let addr = String::from_utf8_lossy(&out.stdout);
    assert!(
        addr.contains(&format!("inet {ip_a}/24")),
        "eth0 in {netns}: {addr}"
    );
    let lo = rig.in_netns(&netns, &["ip", "-o", "link", "show", "lo"]);
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains("LOOPBACK,UP"),
        "lo is down in the pod"
    );
    // The pause process lives in that netns.
    let pid = info(&sa)["pid"].as_u64().unwrap();
    let pod_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["readlink", "/proc/self/ns/net"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pod_net.to_str().unwrap()
    );
    // One sandbox reaches the other across the bridge.
    let out = rig.in_netns(&netns, &["busybox", "ping", "-c", "1", "-W", "2", &ip_b]);
    assert!(
        out.status.success(),
        "ping {ip_b}: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Hostname of the pod's UTS namespace, and the pod's resolv.conf.
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alpha");
    let dir = info(&sa)["stateDir"].as_str().unwrap().to_string();
    let resolv = std::fs::read_to_string(format!("{dir}/resolv.conf")).unwrap();
    assert_eq!(
        resolv,
        "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/hostname")).unwrap(),
        "alpha\n"
    );

    // The pause container carries the annotation that groups a pod into one shim.
    let out = rig.ctr(&["containers", "info", &a]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("io.kubernetes.cri.sandbox-id"), "{s}");
}

#[tokio::test]
async fn host_network_sandbox_shares_the_host_netns() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let mut cfg = rig.pod_config("hostnet");
    cfg.hostname = String::new();
    cfg.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(NamespaceOption {
            network: NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run(&mut rt, cfg).await;
    let s = status(&mut rt, &id).await;
    let st = s.status.clone().unwrap();
    assert_eq!(
        st.network.unwrap().ip,
        "",
        "host network pods get no CNI IP"
    );
    assert_eq!(
        st.linux
            .unwrap()
            .namespaces
            .unwrap()
            .options
            .unwrap()
            .network,
        NamespaceMode::Node as i32
    );
    let pid = info(&s)["pid"].as_u64().unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap()
    );
    assert!(
        std::fs::read_dir(&rig.netns_dir).unwrap().next().is_none(),
        "no netns for host network"
    );
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    assert!(leftovers(&rig).is_empty(), "{:?}", leftovers(&rig));
}

#[tokio::test]
async fn duplicate_name_is_already_exists_and_leaves_nothing() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let id = run(&mut rt, rig.pod_config("dup")).await;
    let before = leftovers(&rig);
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(rig.pod_config("dup")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(
        e.message().contains("dup_default_uid-dup_0"),
        "{}",
        e.message()
    );
    assert_eq!(leftovers(&rig), before);
    let list = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(list.len(), 1);

    // Once removed, the name is free again.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    run(&mut rt, rig.pod_config("dup")).await;
}

#[tokio::test]
async fn stop_and_remove_release_everything_and_are_idempotent() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let mut cfg = rig.pod_config("gone");
    cfg.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18080 + (std::process::id() % 1000) as i32,
        host_ip: String::new(),
    }];
    let id = run(&mut rt, cfg).await;
    assert!(!leftovers(&rig).is_empty());

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let st = status(&mut rt, &id).await.status.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxNotready as i32);
    // Stop releases the network at once; the netns is gone.
    assert!(std::fs::read_dir(&rig.netns_dir).unwrap().next().is_none());
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();

    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(leftovers(&rig).is_empty(), "{:?}", leftovers(&rig));
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Remove without a prior Stop does both.
    let id = run(&mut rt, rig.pod_config("direct")).await;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    assert!(leftovers(&rig).is_empty(), "{:?}", leftovers(&rig));
}

#[tokio::test]
async fn failed_run_undoes_every_step() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    // A conflist whose second plugin fails after the bridge has handed out an IP.
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "peapod-test",
        "plugins": [
            {"type": "bridge", "bridge": rig.bridge, "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{}.0/24", rig.subnet_prefix)}]],
                      "dataDir": rig.cni_data_dir}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_sysctl": "1"}}
        ]
    });
    std::fs::write(
        rig.cni_conf_dir.join("10-peapod-test.conflist"),
        conf.to_string(),
    )
    .unwrap();
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(rig.pod_config("broken")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("tuning") || e.message().contains("no_such_sysctl"),
        "{e:?}"
    );
    assert!(leftovers(&rig).is_empty(), "{:?}", leftovers(&rig));

    // A missing sandbox image fails early with NotFound naming it; nothing is left.
    let mut rig2 = Rig::containerd_only();
    rig2.start_peapod().await;
    let mut rt2 = rig2.runtime_client().await;
    let e = rt2
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(rig2.pod_config("noimage")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains(common::PAUSE), "{}", e.message());
    assert!(leftovers(&rig2).is_empty(), "{:?}", leftovers(&rig2));
    // The name was released by the failure.
    let e = rt2
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(rig2.pod_config("noimage")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_the_field() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    type Mutate = Box<dyn Fn(&mut PodSandboxConfig)>;
    let cases: Vec<(&str, Mutate)> = vec![
        (
            "metadata.name",
            Box::new(|c| c.metadata.as_mut().unwrap().name.clear()),
        ),
        (
            "metadata.namespace",
            Box::new(|c| c.metadata.as_mut().unwrap().namespace.clear()),
        ),
        (
            "metadata.uid",
            Box::new(|c| c.metadata.as_mut().unwrap().uid.clear()),
        ),
        ("hostname", Box::new(|c| c.hostname = "bad_host!".into())),
        (
            "log_directory",
            Box::new(|c| c.log_directory = "relative/dir".into()),
        ),
        (
            "container_port",
            Box::new(|c| {
                c.port_mappings = vec![PortMapping {
                    container_port: 0,
                    ..Default::default()
                }]
            }),
        ),
        (
            "host_port",
            Box::new(|c| {
                c.port_mappings = vec![PortMapping {
                    container_port: 80,
                    host_port: 70000,
                    ..Default::default()
                }]
            }),
        ),
        (
            "protocol",
            Box::new(|c| {
                c.port_mappings = vec![PortMapping {
                    container_port: 80,
                    protocol: 9,
                    ..Default::default()
                }]
            }),
        ),
        (
            "sysctls",
            Box::new(|c| {
                c.linux.as_mut().unwrap().sysctls =
                    HashMap::from([("vm.swappiness".to_string(), "1".to_string())]);
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut cfg = rig.pod_config("bad");
        mutate(&mut cfg);
        let e = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: "abcdef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: "../../etc".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(leftovers(&rig).is_empty(), "{:?}", leftovers(&rig));
}

#[tokio::test]
async fn list_filters_by_id_prefix_state_and_labels() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let a = run(&mut rt, rig.pod_config("fa")).await;
    let b = run(&mut rt, rig.pod_config("fb")).await;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: b.clone(),
    })
    .await
    .unwrap();
    let list = |f: PodSandboxFilter| {
        let mut rt = rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_pod_sandbox(ListPodSandboxRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|s| s.id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        list(PodSandboxFilter {
            id: a[..8].to_string(),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady as i32
            }),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxNotready as i32
            }),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            label_selector: HashMap::from([("app".to_string(), "fb".to_string())]),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    // Status accepts a unique id prefix, as crictl users type.
    let s = status(&mut rt, &a[..12]).await;
    assert_eq!(s.status.unwrap().id, a);
}

#[tokio::test]
async fn pause_exit_makes_the_sandbox_notready() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let id = run(&mut rt, rig.pod_config("dies")).await;
    let pid = info(&status(&mut rt, &id).await)["pid"].as_u64().unwrap();
    // SAFETY: plain kill of the pause process the test itself started through peapod.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let notready = common::eventually(Duration::from_secs(10), || {
        let mut rt = rt.clone();
        let id = id.clone();
        async move {
            let s = rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: false,
                })
                .await
                .ok()?
                .into_inner();
            (s.status?.state == PodSandboxState::SandboxNotready as i32).then_some(())
        }
    })
    .await;
    assert!(
        notready.is_some(),
        "sandbox still READY after its pause process died"
    );
}

#[tokio::test]
async fn sigkill_and_restart_of_peapod_loses_nothing() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let a = run(&mut rt, rig.pod_config("keep-a")).await;
    let b = run(&mut rt, rig.pod_config("keep-b")).await;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: b.clone(),
    })
    .await
    .unwrap();
    let before_list = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    let before_a = status(&mut rt, &a).await.status.unwrap();
    let before_b = status(&mut rt, &b).await.status.unwrap();
    let pid = info(&status(&mut rt, &a).await)["pid"].as_u64().unwrap();

    rig.kill_peapod();
    rig.start_peapod().await;
    let mut rt = rig.runtime_client().await;
    // The first RPC after the restart already sees the whole recovered index.
    let after_list = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox right after restart")
        .into_inner()
        .items;
    assert_eq!(after_list, before_list);
    assert_eq!(status(&mut rt, &a).await.status.unwrap(), before_a);
    assert_eq!(status(&mut rt, &b).await.status.unwrap(), before_b);
    // The pod's pause process was not disturbed.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // The name stays reserved across the restart.
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(rig.pod_config("keep-a")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    // Stop and remove still work on recovered sandboxes.
    for id in [a, b] {
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
    assert!(leftovers(&rig).is_empty(), "{:?}", leftovers(&rig));
}
