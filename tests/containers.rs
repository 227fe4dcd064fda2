//! Workload containers end to end: create/start/stop/remove, exits, logs, OOM, stop
//! signals, sharing inside a pod, and peapod restarts, on real containerd + runc.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{oci, Rig, BUSYBOX};
use peapod::cri::*;

use common::cri::{config, pod, status, Client, Pod};

fn with_volume(mut c: ContainerConfig, host: &Path, at: &str) -> ContainerConfig {
    c.mounts.push(Mount {
        container_path: at.into(),
        host_path: host.display().to_string(),
        ..Default::default()
    });
    c
}

async fn try_create(
    rt: &mut Client,
    pod: &Pod,
    c: ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(c),
        sandbox_config: Some(pod.config.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

async fn create(rt: &mut Client, pod: &Pod, c: ContainerConfig) -> String {
    try_create(rt, pod, c).await.expect("CreateContainer")
}

async fn start(rt: &mut Client, id: &str) {
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("StartContainer");
}

async fn run(rt: &mut Client, pod: &Pod, c: ContainerConfig) -> String {
    let id = create(rt, pod, c).await;
    start(rt, &id).await;
    id
}

async fn stop(rt: &mut Client, id: &str, timeout: i64) {
    rt.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout,
    })
    .await
    .expect("StopContainer");
}

/// Waits for the container to reach `state`; panics with its status otherwise.
async fn wait_state(
    rt: &mut Client,
    id: &str,
    state: ContainerState,
    secs: u64,
) -> ContainerStatus {
    let start = Instant::now();
    loop {
        let st = status(rt, id).await;
        if st.state == state as i32 {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "container {id} did not reach {state:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_exited(rt: &mut Client, id: &str) -> ContainerStatus {
    wait_state(rt, id, ContainerState::ContainerExited, 30).await
}

/// The log's records without their timestamps: `stdout F text`.
fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.split_once(' ')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default()
        })
        .collect()
}

fn volume(rig: &Rig, name: &str) -> PathBuf {
    let p = rig.dir.path().join("volumes").join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

const FOREVER: &str = "while :; do sleep 0.1; done";

#[tokio::test]
async fn lifecycle_times_and_exit_codes() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "life").await;

    let ok = create(&mut rt, &p, config("ok", "sleep 1; exit 0")).await;
    assert_eq!(ok.len(), 64);
    let st = status(&mut rt, &ok).await;
    assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    assert!(st.created_at > 0);
    assert_eq!(st.started_at, 0);
    assert_eq!(st.metadata.as_ref().unwrap().name, "ok");
    assert_eq!(st.image.as_ref().unwrap().image, BUSYBOX);
    assert!(st.image_ref.contains("sha256:"), "{}", st.image_ref);
    assert_eq!(st.log_path, p.log_dir.join("ok.log").display().to_string());

    start(&mut rt, &ok).await;
    let st = wait_state(&mut rt, &ok, ContainerState::ContainerRunning, 10).await;
    assert!(st.started_at >= st.created_at);
    let st = wait_exited(&mut rt, &ok).await;
    assert_eq!(st.exit_code, 0);
    assert_eq!(st.reason, "Completed");
    assert!(st.finished_at > st.started_at);
    let ran = Duration::from_nanos((st.finished_at - st.started_at) as u64);
    assert!(
        ran >= Duration::from_millis(900) && ran < Duration::from_secs(10),
        "{ran:?}"
    );

    let bad = run(&mut rt, &p, config("bad", "exit 3")).await;
    let st = wait_exited(&mut rt, &bad).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    // The logs reached EOF by themselves: no exit waited for the drain limit.
    assert!(
        !rig.peapod_log().contains("stdout still open"),
        "{}",
        rig.peapod_log()
    );
    // containerd no longer holds the exited tasks (the shim's resources are freed).
    common::eventually(Duration::from_secs(5), || async {
        rig.ctr_list(&["tasks", "ls", "-q"])
            .len()
            .eq(&1)
            .then_some(())
    })
    .await
    .expect("only the pause task remains");

    // List with filters, from the index.
    let all = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(all.len(), 2);
    let by_label = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: [("container".to_string(), "bad".to_string())].into(),
                pod_sandbox_id: p.id[..8].to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, bad);

    // Remove is idempotent and frees the name.
    for _ in 0..2 {
        rt.remove_container(RemoveContainerRequest {
            container_id: ok.clone(),
        })
        .await
        .expect("RemoveContainer");
    }
    let e = rt
        .container_status(ContainerStatusRequest {
            container_id: ok.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    create(&mut rt, &p, config("ok", "true")).await;
}

#[tokio::test]
async fn containers_of_a_pod_share_localhost_and_volumes() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "share").await;
    let www = volume(&rig, "www");

    let writer = run(
        &mut rt,
        &p,
        with_volume(
            config("writer", "echo hello-from-pod > /www/index.html"),
            &www,
            "/www",
        ),
    )
    .await;
    assert_eq!(wait_exited(&mut rt, &writer).await.exit_code, 0);
    run(
        &mut rt,
        &p,
        with_volume(config("server", "httpd -f -p 8080 -h /www"), &www, "/www"),
    )
    .await;
    let client = run(
        &mut rt,
        &p,
        with_volume(
            config(
                "client",
                "for i in $(seq 50); do wget -qO /www/got http://127.0.0.1:8080/ && cat /www/got && exit 0; sleep 0.2; done; exit 1",
            ),
            &www,
            "/www",
        ),
    )
    .await;
    let st = wait_exited(&mut rt, &client).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(
        log_lines(&p.log_dir.join("client.log")),
        vec!["stdout F hello-from-pod"]
    );
    // The client's write through the shared volume is visible on the host.
    assert_eq!(
        std::fs::read_to_string(www.join("got")).unwrap(),
        "hello-from-pod\n"
    );
}

#[tokio::test]
async fn init_containers_run_in_order() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "init").await;
    let work = volume(&rig, "work");
    let first = run(
        &mut rt,
        &p,
        with_volume(config("init-1", "echo one > /work/a"), &work, "/work"),
    )
    .await;
    assert_eq!(wait_exited(&mut rt, &first).await.exit_code, 0);
    let second = run(
        &mut rt,
        &p,
        with_volume(
            config("init-2", "cat /work/a > /work/b && echo two >> /work/b"),
            &work,
            "/work",
        ),
    )
    .await;
    assert_eq!(wait_exited(&mut rt, &second).await.exit_code, 0);
    let main = run(
        &mut rt,
        &p,
        with_volume(config("main", "cat /work/b"), &work, "/work"),
    )
    .await;
    assert_eq!(wait_exited(&mut rt, &main).await.exit_code, 0);
    assert_eq!(
        log_lines(&p.log_dir.join("main.log")),
        vec!["stdout F one", "stdout F two"]
    );
}

#[tokio::test]
async fn stop_waits_for_term_then_kills() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "stop").await;
    let data = volume(&rig, "stop");

    // Traps TERM: exits by it, well before the timeout.
    let polite = run(
        &mut rt,
        &p,
        config("polite", &format!("trap 'exit 7' TERM; {FOREVER}")),
    )
    .await;
    // Ignores TERM: killed once the timeout passes.
    let stubborn = run(
        &mut rt,
        &p,
        config("stubborn", &format!("trap '' TERM; {FOREVER}")),
    )
    .await;
    // Timeout 0: SIGKILL at once, TERM never sent.
    let rushed = run(
        &mut rt,
        &p,
        with_volume(
            config(
                "rushed",
                &format!("trap 'echo term > /data/rushed' TERM; {FOREVER}"),
            ),
            &data,
            "/data",
        ),
    )
    .await;
    for id in [&polite, &stubborn, &rushed] {
        wait_state(&mut rt, id, ContainerState::ContainerRunning, 10).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // traps installed

    let t = Instant::now();
    stop(&mut rt, &polite, 30).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let st = status(&mut rt, &polite).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 7);

    let t = Instant::now();
    stop(&mut rt, &stubborn, 2).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let st = status(&mut rt, &stubborn).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137);

    let t = Instant::now();
    stop(&mut rt, &rushed, 0).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let st = status(&mut rt, &rushed).await;
    assert_eq!(st.exit_code, 137);
    assert!(
        !data.join("rushed").exists(),
        "TERM was sent with timeout 0"
    );

    // Stopping an exited or unknown container is fine.
    stop(&mut rt, &polite, 10).await;
    stop(&mut rt, &"ab".repeat(32), 10).await;
}

#[tokio::test]
async fn concurrent_stops_signal_once_and_image_stop_signal_is_used() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let usr1 = oci::build(
        rig.dir.path(),
        &oci::ImageSpec {
            name: "localhost/peapod-test/usr1:1".into(),
            cmd: vec!["sh".into()],
            stop_signal: "SIGUSR1".into(),
            ..Default::default()
        },
    );
    rig.import(&usr1.layout_tar);
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "signals").await;
    let data = volume(&rig, "signals");

    let counted = run(
        &mut rt,
        &p,
        with_volume(
            config(
                "counted",
                &format!("trap 'echo got >> /data/count' TERM; {FOREVER}"),
            ),
            &data,
            "/data",
        ),
    )
    .await;
    let mut c = config(
        "usr1",
        &format!("trap 'echo usr1 > /data/marker; exit 0' USR1; trap 'exit 9' TERM; {FOREVER}"),
    );
    c.image = Some(ImageSpec {
        image: "localhost/peapod-test/usr1:1".into(),
        ..Default::default()
    });
    let usr1 = run(&mut rt, &p, with_volume(c, &data, "/data")).await;
    // The pod's stop signal (CRI stop_signal, kubelet 1.33+) wins over the image's.
    let mut c = config(
        "usr2",
        &format!(
            "trap 'echo usr2 > /data/marker2; exit 0' USR2; trap 'exit 8' USR1 TERM; {FOREVER}"
        ),
    );
    c.image = Some(ImageSpec {
        image: "localhost/peapod-test/usr1:1".into(),
        ..Default::default()
    });
    c.stop_signal = Signal::Sigusr2 as i32;
    let usr2 = run(&mut rt, &p, with_volume(c, &data, "/data")).await;
    for id in [&counted, &usr1, &usr2] {
        wait_state(&mut rt, id, ContainerState::ContainerRunning, 10).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stops = (0..4).map(|_| {
        let mut rt = rt.clone();
        let id = counted.clone();
        tokio::spawn(async move {
            rt.stop_container(StopContainerRequest {
                container_id: id,
                timeout: 2,
            })
            .await
        })
    });
    for r in futures::future::join_all(stops).await {
        r.unwrap().expect("concurrent StopContainer");
    }
    let st = status(&mut rt, &counted).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137);
    assert_eq!(
        std::fs::read_to_string(data.join("count")).unwrap(),
        "got\n",
        "the stop signal was not sent exactly once"
    );

    assert_eq!(
        status(&mut rt, &counted).await.stop_signal,
        Signal::Sigterm as i32
    );
    assert_eq!(
        status(&mut rt, &usr1).await.stop_signal,
        Signal::Sigusr1 as i32
    );
    assert_eq!(
        status(&mut rt, &usr2).await.stop_signal,
        Signal::Sigusr2 as i32
    );
    stop(&mut rt, &usr2, 20).await;
    let st = status(&mut rt, &usr2).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(
        std::fs::read_to_string(data.join("marker2")).unwrap(),
        "usr2\n"
    );

    stop(&mut rt, &usr1, 20).await;
    let st = status(&mut rt, &usr1).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(
        std::fs::read_to_string(data.join("marker")).unwrap(),
        "usr1\n"
    );
}

#[tokio::test]
async fn memory_limit_gives_oomkilled() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "oom").await;
    let mut c = config(
        "hog",
        "x=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived",
    );
    c.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run(&mut rt, &p, c).await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137);
}

#[tokio::test]
async fn stop_and_remove_of_an_id_that_names_nothing_are_not_errors() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "idem").await;
    let live = run(&mut rt, &p, config("live", FOREVER)).await;
    let unknown = "0".repeat(64);
    let nothing = [
        // cri-tools' idempotence specs pass a UUID.
        "7f1f1e2d-3c4b-4a5e-9f8a-0b1c2d3e4f50".to_string(),
        unknown.clone(),
        "../../etc".to_string(),
        "garbage id!".to_string(),
        // Too long to be an id, though it starts with a live one.
        format!("{live}0"),
        format!("{}0", p.id),
    ];
    for id in &nothing {
        rt.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer {id:?}: {e}"));
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {id:?}: {e}"));
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox {id:?}: {e}"));
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox {id:?}: {e}"));
    }
    // Nothing that exists was touched.
    assert_eq!(
        status(&mut rt, &live).await.state,
        ContainerState::ContainerRunning as i32
    );
    let sb = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: p.id.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(sb.state, PodSandboxState::SandboxReady as i32);

    // The other RPCs still say NotFound for an id that could name a container but does not,
    // and InvalidArgument for one that cannot be an id at all.
    let e = rt
        .container_status(ContainerStatusRequest {
            container_id: unknown.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = rt
        .start_container(StartContainerRequest {
            container_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: unknown,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = rt
        .container_status(ContainerStatusRequest {
            container_id: nothing[0].clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // An empty id is a malformed request, even for Stop.
    let e = rt
        .stop_container(StopContainerRequest {
            container_id: String::new(),
            timeout: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    stop(&mut rt, &live, 0).await;
}

/// A container that allocates far beyond `limit` bytes of memory.
fn memory_hog(name: &str, limit: i64, script: &str) -> ContainerConfig {
    let mut c = config(name, script);
    c.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: limit,
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

const HOG: &str = "x=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived";

/// A pod without `cgroup_parent`: runc places its containers below the shim's own cgroup,
/// which no path computed from the pod can name.
async fn pod_without_cgroup_parent(rig: &Rig, rt: &mut Client, name: &str) -> Pod {
    common::cri::pod_with(rig, rt, name, |c| {
        c.linux.as_mut().unwrap().cgroup_parent.clear();
    })
    .await
}

#[tokio::test]
async fn memory_limit_gives_oomkilled_without_a_cgroup_parent() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod_without_cgroup_parent(&rig, &mut rt, "oom-noparent").await;
    let id = run(&mut rt, &p, memory_hog("hog", 32 << 20, HOG)).await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}\n{}", rig.peapod_log());
    assert_eq!(st.exit_code, 137);
    // A container that stays within its limit is not reported OOM-killed.
    let fine = run(&mut rt, &p, memory_hog("fine", 32 << 20, "exit 3")).await;
    let st = wait_exited(&mut rt, &fine).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"), "{st:?}");
    remove_pod(&mut rt, &p.id).await;
}

#[tokio::test]
async fn an_oom_kill_while_peapod_is_down_is_reported_after_its_restart() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod_without_cgroup_parent(&rig, &mut rt, "oom-down").await;
    let id = run(
        &mut rt,
        &p,
        memory_hog("late-hog", 32 << 20, &format!("sleep 2; {HOG}")),
    )
    .await;
    wait_state(&mut rt, &id, ContainerState::ContainerRunning, 10).await;
    rig.kill_peapod();
    // The kill happens while no peapod listens for containerd's OOM event: only what was
    // recorded at start (where the container's cgroup is) can tell.
    tokio::time::sleep(Duration::from_secs(6)).await;
    rig.start_peapod().await;
    let mut rt = rig.runtime_client().await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}\n{}", rig.peapod_log());
    assert_eq!(st.exit_code, 137);
    remove_pod(&mut rt, &p.id).await;
}

async fn remove_pod(rt: &mut Client, id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("RemovePodSandbox");
}

/// The hugepage limits kubelet gives every container: 0 for each page size the node has, in
/// kubelet's notation (`hugepages-2048kB` → `2MB`).
fn kubelet_hugepage_limits() -> Vec<HugepageLimit> {
    let mut sizes: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    let kb: u64 = n
                        .strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()?;
                    Some(match kb {
                        kb if kb % (1 << 20) == 0 => format!("{}GB", kb >> 20),
                        kb if kb % (1 << 10) == 0 => format!("{}MB", kb >> 10),
                        kb => format!("{kb}KB"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if sizes.is_empty() {
        sizes = vec!["2MB".into(), "1GB".into()];
    }
    sizes.sort();
    sizes
        .into_iter()
        .map(|page_size| HugepageLimit {
            page_size,
            limit: 0,
        })
        .collect()
}

/// Creates, starts and waits for a container carrying kubelet's hugepage limits; returns
/// its id once it ran to completion.
async fn run_with_kubelet_hugepage_limits(
    rig: &Rig,
    rt: &mut Client,
    p: &Pod,
    name: &str,
) -> String {
    let mut c = config(name, "echo ran");
    c.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 2,
            hugepage_limits: kubelet_hugepage_limits(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(rt, p, c).await;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", rig.peapod_log()));
    let st = wait_exited(rt, &id).await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );
    assert_eq!(
        log_lines(&p.log_dir.join(format!("{name}.log"))),
        vec!["stdout F ran"]
    );
    id
}

#[tokio::test]
async fn kubelets_hugepage_limits_do_not_stop_a_container() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "huge").await;
    run_with_kubelet_hugepage_limits(&rig, &mut rt, &p, "huge").await;

    // The same limits in an update of a running container.
    let running = run(&mut rt, &p, config("huge-running", FOREVER)).await;
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: running.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            hugepage_limits: kubelet_hugepage_limits(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", rig.peapod_log()));
    let st = status(&mut rt, &running).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    assert_eq!(
        st.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        96 << 20
    );
    stop(&mut rt, &running, 0).await;
}

/// With hugepage limits asked for, they apply where a hugetlb controller exists and are
/// left out where none does (these test hosts): the container runs either way.
#[tokio::test]
async fn hugepage_limits_asked_for_never_stop_a_container() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start_with(vec!["--disable-hugetlb-controller".into(), "false".into()]).await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "huge-on").await;
    run_with_kubelet_hugepage_limits(&rig, &mut rt, &p, "huge-on").await;
}

#[tokio::test]
async fn logs_are_exact_and_follow_reopen() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "logs").await;
    let once = run(
        &mut rt,
        &p,
        config("once", "echo hello; echo oops >&2; printf partial"),
    )
    .await;
    wait_exited(&mut rt, &once).await;
    let mut lines = log_lines(&p.log_dir.join("once.log"));
    lines.sort();
    assert_eq!(
        lines,
        vec!["stderr F oops", "stdout F hello", "stdout P partial"]
    );
    let raw = std::fs::read_to_string(p.log_dir.join("once.log")).unwrap();
    let re = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) [PF] ")
        .unwrap();
    for l in raw.lines() {
        assert!(re.is_match(l), "{l:?}");
    }

    // A TTY merges stderr into stdout and ends lines with \r\n.
    let mut c = config("tty", "echo out; echo err >&2");
    c.tty = true;
    let tty = run(&mut rt, &p, c).await;
    wait_exited(&mut rt, &tty).await;
    // (`lines()` drops the \r before \n; the raw file keeps it.)
    assert_eq!(
        log_lines(&p.log_dir.join("tty.log")),
        vec!["stdout F out", "stdout F err"]
    );
    let raw = std::fs::read_to_string(p.log_dir.join("tty.log")).unwrap();
    assert!(raw.contains(" stdout F out\r\n"), "{raw:?}");

    let ticker = run(
        &mut rt,
        &p,
        config(
            "ticker",
            "i=0; while :; do echo line$i; i=$((i+1)); sleep 0.1; done",
        ),
    )
    .await;
    let log = p.log_dir.join("ticker.log");
    let num = |l: &String| -> u32 {
        l.strip_prefix("stdout F line")
            .unwrap_or_else(|| panic!("{l:?}"))
            .parse()
            .unwrap()
    };
    common::eventually(Duration::from_secs(10), || async {
        (log_lines(&log).len() >= 3).then_some(())
    })
    .await
    .expect("ticker logs");
    let rotated = p.log_dir.join("ticker.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: ticker.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    common::eventually(Duration::from_secs(10), || async {
        (log_lines(&log).len() >= 3).then_some(())
    })
    .await
    .expect("logs in the new file");
    let old: Vec<u32> = log_lines(&rotated).iter().map(num).collect();
    let new: Vec<u32> = log_lines(&log).iter().map(num).collect();
    assert!(
        old.last().unwrap() < new.first().unwrap(),
        "{old:?} then {new:?}"
    );
    stop(&mut rt, &ticker, 0).await;
    let e = rt
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}

/// containerd-shim-runc-v2 processes serving this rig's containerd.
fn shims(rig: &Rig) -> usize {
    let needle = rig.containerd_socket.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("containerd-shim-runc-v2") && cmd.contains(&needle)
        })
        .count()
}

#[tokio::test]
async fn a_pods_containers_share_one_shim() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let a = pod(&rig, &mut rt, "shim-a").await;
    let b = pod(&rig, &mut rt, "shim-b").await;
    for p in [&a, &b] {
        for n in ["one", "two"] {
            let id = run(&mut rt, p, config(n, FOREVER)).await;
            wait_state(&mut rt, &id, ContainerState::ContainerRunning, 10).await;
        }
    }
    assert_eq!(shims(&rig), 2);
}

#[tokio::test]
async fn exit_while_peapod_is_down_keeps_the_real_code() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "down").await;
    let id = run(&mut rt, &p, config("short", "sleep 2; exit 5")).await;
    wait_state(&mut rt, &id, ContainerState::ContainerRunning, 10).await;
    rig.kill_peapod();
    tokio::time::sleep(Duration::from_secs(4)).await;
    rig.start_peapod().await;
    let mut rt = rig.runtime_client().await;
    let st = wait_exited(&mut rt, &id).await;
    assert_eq!(st.exit_code, 5);
    assert_eq!(st.reason, "Error");
    assert!(st.finished_at > st.started_at);
}

#[tokio::test]
async fn restart_loses_no_container() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "keep").await;
    let created = create(&mut rt, &p, config("created", "echo late")).await;
    let running = run(
        &mut rt,
        &p,
        config(
            "running",
            "i=0; while :; do echo tick$i; i=$((i+1)); sleep 0.2; done",
        ),
    )
    .await;
    let exited = run(&mut rt, &p, config("exited", "exit 0")).await;
    wait_exited(&mut rt, &exited).await;
    wait_state(&mut rt, &running, ContainerState::ContainerRunning, 10).await;

    rig.kill_peapod();
    rig.start_peapod().await;
    let mut rt = rig.runtime_client().await;
    assert_eq!(
        status(&mut rt, &created).await.state,
        ContainerState::ContainerCreated as i32
    );
    assert_eq!(
        status(&mut rt, &running).await.state,
        ContainerState::ContainerRunning as i32
    );
    let st = status(&mut rt, &exited).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.reason, "Completed");
    // Names survived too.
    let e = try_create(&mut rt, &p, config("running", "true"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);

    // The running one still logs (the writer re-attached) and is watched for its exit.
    let log = p.log_dir.join("running.log");
    let before = log_lines(&log).len();
    common::eventually(Duration::from_secs(10), || async {
        (log_lines(&log).len() > before + 3).then_some(())
    })
    .await
    .expect("log continues after the restart");
    stop(&mut rt, &running, 0).await;
    assert_eq!(status(&mut rt, &running).await.exit_code, 137);

    start(&mut rt, &created).await;
    assert_eq!(wait_exited(&mut rt, &created).await.exit_code, 0);
    assert_eq!(
        log_lines(&p.log_dir.join("created.log")),
        vec!["stdout F late"]
    );
}

#[tokio::test]
async fn bad_requests_get_the_right_codes() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    for (name, cmd, stop) in [
        ("localhost/peapod-test/nocmd:1", vec![], ""),
        (
            "localhost/peapod-test/badsig:1",
            vec!["sh".to_string()],
            "SIGNOPE",
        ),
    ] {
        let img = oci::build(
            rig.dir.path(),
            &oci::ImageSpec {
                name: name.into(),
                cmd,
                stop_signal: stop.into(),
                ..Default::default()
            },
        );
        rig.import(&img.layout_tar);
    }
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "bad").await;
    let code = |r: Result<String, tonic::Status>| r.unwrap_err();

    let ghost = Pod {
        id: "f".repeat(64),
        ..p.clone()
    };
    let e = code(try_create(&mut rt, &ghost, config("x", "true")).await);
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    let mut c = config("x", "true");
    c.image = Some(ImageSpec {
        image: "localhost/peapod-test/absent:9".into(),
        ..Default::default()
    });
    let e = code(try_create(&mut rt, &p, c).await);
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().contains("localhost/peapod-test/absent:9"),
        "{e:?}"
    );

    let mut c = config("x", "true");
    c.metadata.as_mut().unwrap().name.clear();
    let e = code(try_create(&mut rt, &p, c).await);
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("metadata.name"), "{e:?}");

    let mut c = config("nocmd", "");
    c.command.clear();
    c.image = Some(ImageSpec {
        image: "localhost/peapod-test/nocmd:1".into(),
        ..Default::default()
    });
    let e = code(try_create(&mut rt, &p, c).await);
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    let mut c = config("badsig", "true");
    c.image = Some(ImageSpec {
        image: "localhost/peapod-test/badsig:1".into(),
        ..Default::default()
    });
    let e = code(try_create(&mut rt, &p, c).await);
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    for host in ["relative/dir", "/nonexistent/peapod/dir"] {
        let e = code(
            try_create(
                &mut rt,
                &p,
                with_volume(config("mnt", "true"), Path::new(host), "/m"),
            )
            .await,
        );
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{host}: {e:?}");
    }

    let done = run(&mut rt, &p, config("dup", "exit 0")).await;
    let e = code(try_create(&mut rt, &p, config("dup", "true")).await);
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    wait_exited(&mut rt, &done).await;
    let e = rt
        .start_container(StartContainerRequest {
            container_id: done.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("exited"), "{e:?}");

    // A command that does not exist: the start fails and leaves the container EXITED.
    let id = create(&mut rt, &p, {
        let mut c = config("noexec", "");
        c.command = vec!["/no/such/binary".into()];
        c
    })
    .await;
    assert!(rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .is_err());
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 128);
    assert_eq!(st.reason, "StartError");
    assert!(!st.message.is_empty());

    // Failed creates left nothing behind: only the containers that exist.
    let names: Vec<String> = rig.ctr_list(&["containers", "ls", "-q"]);
    assert_eq!(names.len(), 3, "{names:?}"); // the pause container, dup, noexec
}

#[tokio::test]
async fn removing_a_pod_removes_its_containers() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "gone").await;
    let running = run(
        &mut rt,
        &p,
        config("running", &format!("trap '' TERM; {FOREVER}")),
    )
    .await;
    let created = create(&mut rt, &p, config("created", "true")).await;
    wait_state(&mut rt, &running, ContainerState::ContainerRunning, 10).await;

    let t = Instant::now();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        status(&mut rt, &running).await.state,
        ContainerState::ContainerExited as i32
    );
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    let left = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    for id in [&running, &created] {
        let e = rt
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
    assert!(rig.ctr_list(&["containers", "ls", "-q"]).is_empty());
    let leases: Vec<String> = rig
        .ctr_list(&["leases", "ls", "-q"])
        .into_iter()
        .filter(|l| l.starts_with("peapod-"))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    let states = std::fs::read_dir(rig.state_dir.join("containers"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(states, 0);
}
