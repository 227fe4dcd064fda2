//! Operations on running containers end to end: ExecSync (output, exit codes, env/cwd,
//! timeouts that spare the container), GetContainerEvents, container and pod stats, and
//! UpdateContainerResources, on real containerd + runc.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Rig;
use futures::StreamExt;
use peapod::cri::*;

use common::cri::{config, pod, status, Client, Pod};

async fn create(rt: &mut Client, pod: &Pod, c: ContainerConfig) -> String {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(c),
        sandbox_config: Some(pod.config.clone()),
    })
    .await
    .expect("CreateContainer")
    .into_inner()
    .container_id
}

async fn run(rt: &mut Client, pod: &Pod, c: ContainerConfig) -> String {
    let id = create(rt, pod, c).await;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

async fn exec(
    rt: &mut Client,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    rt.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

async fn sh(rt: &mut Client, id: &str, script: &str) -> ExecSyncResponse {
    exec(rt, id, &["sh", "-c", script], 10)
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_returns_output_exit_code_and_runs_like_the_container() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "exec").await;
    let mut c = config("app", "exec sleep 1000");
    c.envs = vec![KeyValue {
        key: "GREETING".into(),
        value: "hello from env".into(),
    }];
    c.working_dir = "/tmp".into();
    let id = run(&mut rt, &pod, c).await;

    let r = sh(&mut rt, &id, "echo hi; echo oops >&2; exit 3").await;
    assert_eq!(text(&r.stdout), "hi\n");
    assert_eq!(text(&r.stderr), "oops\n");
    assert_eq!(r.exit_code, 3);

    let r = sh(&mut rt, &id, "echo \"$GREETING\"; pwd").await;
    assert_eq!(text(&r.stdout), "hello from env\n/tmp\n");
    assert_eq!(r.exit_code, 0);

    // No timeout (0) and a prefix id work too.
    let r = exec(&mut rt, &id[..12], &["echo", "short"], 0)
        .await
        .unwrap();
    assert_eq!(text(&r.stdout), "short\n");

    // Output larger than a pipe buffer arrives whole.
    let r = sh(&mut rt, &id, "head -c 300000 /dev/zero | tr '\\0' x").await;
    assert_eq!(r.stdout.len(), 300000);

    let e = exec(&mut rt, "0123456789abcdef", &["true"], 5)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let e = exec(&mut rt, &id, &[], 5).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    let done = run(&mut rt, &pod, config("done", "true")).await;
    let start = Instant::now();
    while status(&mut rt, &done).await.state != ContainerState::ContainerExited as i32 {
        assert!(start.elapsed() < Duration::from_secs(30), "did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = exec(&mut rt, &done, &["true"], 5).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");

    // Every exec's FIFOs are gone.
    let left: Vec<PathBuf> = std::fs::read_dir(rig.state_dir.join("exec"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "exec fifos left: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_timeout_kills_only_the_exec() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "exectimeout").await;
    let id = run(&mut rt, &pod, config("app", "exec sleep 1000")).await;

    let start = Instant::now();
    let e = exec(&mut rt, &id, &["sleep", "30"], 2).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    assert!(e.message().contains("timed out after 2s"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "timeout took {:?}",
        start.elapsed()
    );

    assert_eq!(
        status(&mut rt, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    let r = sh(&mut rt, &id, "echo still here").await;
    assert_eq!(text(&r.stdout), "still here\n");
    // The timed-out command was killed, not left running in the container.
    let r = sh(&mut rt, &id, "ps -o args").await;
    let procs = text(&r.stdout);
    assert!(procs.contains("sleep 1000"), "{procs}");
    assert!(!procs.contains("sleep 30"), "{procs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn container_events_arrive_in_order() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let mut events = rig
        .runtime_client()
        .await
        .get_container_events(GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let pod = pod(&rig, &mut rt, "events").await;
    let id = run(&mut rt, &pod, config("app", "exec sleep 1000")).await;
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer");
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("RemoveContainer");

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.last() != Some(&(ContainerEventType::ContainerDeletedEvent as i32)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| panic!("events so far for {id}: {seen:?}"))
            .expect("stream ended")
            .expect("event");
        if ev.container_id == id {
            seen.push(ev.container_event_type);
        }
    }
    assert_eq!(
        seen,
        vec![
            ContainerEventType::ContainerCreatedEvent as i32,
            ContainerEventType::ContainerStartedEvent as i32,
            ContainerEventType::ContainerStoppedEvent as i32,
            ContainerEventType::ContainerDeletedEvent as i32,
        ]
    );
}

fn cpu_total(s: &ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value)
}

fn layer_bytes(s: &ContainerStats) -> u64 {
    s.writable_layer
        .as_ref()
        .and_then(|w| w.used_bytes.as_ref())
        .map_or(0, |v| v.value)
}

async fn container_stats(rt: &mut Client, id: &str) -> ContainerStats {
    rt.container_stats(ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .expect("ContainerStats")
    .into_inner()
    .stats
    .expect("stats")
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_report_cpu_memory_and_writable_layer() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "stats").await;
    let busy = run(&mut rt, &pod, config("busy", "while :; do :; done")).await;
    let idle = run(&mut rt, &pod, config("idle", "exec sleep 1000")).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = container_stats(&mut rt, &busy).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = container_stats(&mut rt, &busy).await;
    assert_eq!(second.attributes.as_ref().unwrap().id, busy);
    assert!(cpu_total(&first) > 0, "{first:?}");
    assert!(cpu_total(&second) > cpu_total(&first));
    let nano_cores = |s: &ContainerStats| {
        s.cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores.as_ref())
            .map_or(0, |v| v.value)
    };
    let cores = nano_cores(&second);
    container_stats(&mut rt, &idle).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_cores = nano_cores(&container_stats(&mut rt, &idle).await);
    // The busy loop's rate stands far above the sleeper's. How much of a core it gets
    // depends on what else the machine runs, so no absolute share is asserted beyond a
    // floor a loaded 2-core machine still gives it.
    assert!(
        cores > 50_000_000 && cores > 10 * idle_cores,
        "usage_nano_cores busy {cores}, idle {idle_cores}"
    );
    let ws = second
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    assert!(ws > 0, "{second:?}");
    assert!(second
        .writable_layer
        .as_ref()
        .and_then(|w| w.fs_id.as_ref())
        .is_some_and(|f| !f.mountpoint.is_empty()));

    let before = layer_bytes(&container_stats(&mut rt, &idle).await);
    let r = sh(
        &mut rt,
        &idle,
        "dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null; sync",
    )
    .await;
    assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
    let after = layer_bytes(&container_stats(&mut rt, &idle).await);
    assert!(
        after >= before + (8 << 20),
        "writable layer {before} -> {after}"
    );

    let list = rt
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    let mut ids: Vec<String> = list
        .iter()
        .map(|s| s.attributes.as_ref().unwrap().id.clone())
        .collect();
    ids.sort();
    let mut want = vec![busy.clone(), idle.clone()];
    want.sort();
    assert_eq!(ids, want);
    let by_label = rt
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                label_selector: [("container".to_string(), "busy".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].attributes.as_ref().unwrap().id, busy);

    let ps = rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod.id);
    let linux = ps.linux.unwrap();
    assert!(linux
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .is_some_and(|v| v.value >= cpu_total(&second)));
    assert!(linux
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .is_some_and(|v| v.value > 0));
    assert_eq!(linux.containers.len(), 2);
    let eth0 = linux
        .network
        .and_then(|n| n.default_interface)
        .expect("eth0 stats");
    assert_eq!(eth0.name, "eth0");

    let all = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: pod.id[..10].to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);
}

/// The container's cgroup files on the host (cgroupfs driver, the rig's cgroup parent).
fn cgroup_limits(rig: &Rig, id: &str) -> (String, String) {
    let parent = rig.cgroup_parent.trim_start_matches('/');
    let root = std::path::Path::new("/sys/fs/cgroup");
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    };
    if root.join("cgroup.controllers").exists() {
        let d = root.join(parent).join(id);
        (read(d.join("memory.max")), read(d.join("cpu.max")))
    } else {
        (
            read(
                root.join("memory")
                    .join(parent)
                    .join(id)
                    .join("memory.limit_in_bytes"),
            ),
            read(
                root.join("cpu")
                    .join(parent)
                    .join(id)
                    .join("cpu.cfs_quota_us"),
            ),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn update_container_resources_changes_the_cgroup() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "update").await;
    let mut c = config("app", "exec sleep 1000");
    c.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            cpu_period: 100000,
            cpu_quota: 50000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run(&mut rt, &pod, c).await;
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let (mem, cpu) = cgroup_limits(&rig, &id);
    assert_eq!(mem, (128u64 << 20).to_string());
    assert_eq!(cpu, if v2 { "50000 100000" } else { "50000" });

    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_period: 100000,
            cpu_quota: 20000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    let (mem, cpu) = cgroup_limits(&rig, &id);
    assert_eq!(mem, (64u64 << 20).to_string());
    assert_eq!(cpu, if v2 { "20000 100000" } else { "20000" });

    // The container sees the same limit from inside (cgroup v1 mounts its own memory cgroup).
    if !v2 {
        let r = sh(
            &mut rt,
            &id,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        )
        .await;
        assert_eq!(text(&r.stdout).trim(), (64u64 << 20).to_string());
    }

    let e = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpu_quota: -5,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: "0123456789abcdef".into(),
            linux: Some(LinuxContainerResources::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert_eq!(
        status(&mut rt, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
}
