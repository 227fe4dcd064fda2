//! Hostile input end to end (issue 12): log paths that try to leave the pod's log directory,
//! images whose /etc/passwd is a FIFO, a device, a link to the host's kernel memory or huge,
//! and stop timeouts near i64::MAX. Each answer is prompt and clear, nothing escapes, and
//! peapod keeps serving.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::oci::{self, Special};
use common::Rig;
use peapod::cri::*;

use common::cri::{config, pod, runtime_condition, start, status, try_create, wait_state, Client};

async fn still_serving(rt: &mut Client) {
    rt.version(VersionRequest::default())
        .await
        .expect("peapod still answers");
}

#[tokio::test]
async fn log_paths_cannot_leave_the_log_directory() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "logesc").await;
    let outside = rig.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.join("pwned.log");

    // An absolute log_path and one with `..` are refused, naming the field.
    for bad in [
        target.display().to_string(),
        "../../outside/pwned.log".to_string(),
        "a/../../x.log".to_string(),
    ] {
        let mut c = config("esc", "echo hi");
        c.log_path = bad.clone();
        let e = try_create(&mut rt, &p, c).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("log_path"), "{bad}: {e:?}");
    }

    // A relative log_directory is refused at RunPodSandbox.
    let mut cfg = rig.pod_config("logrel");
    cfg.log_directory = "relative/logs".into();
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("log_directory"), "{e:?}");

    // Symlinks planted in the log directory: a directory link and a file link, both pointing
    // out of it. The container starts (or fails to, clearly) and nothing lands outside.
    std::fs::create_dir_all(&p.log_dir).unwrap();
    std::os::unix::fs::symlink(&outside, p.log_dir.join("linkdir")).unwrap();
    std::os::unix::fs::symlink(&target, p.log_dir.join("linkfile.log")).unwrap();
    for (name, log) in [("viadir", "linkdir/pwned.log"), ("viafile", "linkfile.log")] {
        let mut c = config(name, "echo escaped; sleep 1");
        c.log_path = log.into();
        let id = try_create(&mut rt, &p, c).await.expect("CreateContainer");
        let started = rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await;
        if let Err(e) = &started {
            assert!(e.message().contains(log), "{log}: {e:?}");
        }
        wait_state(&mut rt, &id, ContainerState::ContainerExited, 30).await;
    }
    assert!(
        !target.exists(),
        "a log record was written outside the log directory: {}",
        std::fs::read_to_string(&target).unwrap_or_default()
    );

    // A plain relative path in a subdirectory (kubelet's `<name>/<restart>.log`) works.
    let mut c = config("plain", "echo fine");
    c.log_path = "plain/0.log".into();
    let id = try_create(&mut rt, &p, c).await.expect("CreateContainer");
    start(&mut rt, &id).await;
    wait_state(&mut rt, &id, ContainerState::ContainerExited, 30).await;
    let log = p.log_dir.join("plain/0.log");
    let t = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("fine")
    {
        assert!(t.elapsed() < Duration::from_secs(10), "no log at {log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    still_serving(&mut rt).await;
}

#[tokio::test]
async fn hostile_user_databases_fail_create_promptly_and_leave_nothing() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let cases: Vec<(&str, Special, &str)> = vec![
        ("fifo", Special::Fifo, "FIFO"),
        // /dev/zero's numbers: read whole, it would never end.
        ("zero", Special::CharDevice(1, 5), "character device"),
        ("huge", Special::Sized(5 << 20), "more than"),
    ];
    for (tag, special, _) in &cases {
        let img = oci::build(
            rig.dir.path(),
            &oci::ImageSpec {
                name: format!("localhost/peapod-test/passwd-{tag}:1"),
                cmd: vec!["sh".into()],
                special: vec![("etc/passwd".into(), special.clone())],
                ..Default::default()
            },
        );
        rig.import(&img.layout_tar);
    }
    // A link to the host's kernel memory: resolved inside the image, where it is absent, so
    // the image has no users (a numeric user still works; a name does not).
    let img = oci::build(
        rig.dir.path(),
        &oci::ImageSpec {
            name: "localhost/peapod-test/passwd-kcore:1".into(),
            cmd: vec!["sh".into()],
            special: vec![("etc/passwd".into(), Special::Symlink("/proc/kcore".into()))],
            ..Default::default()
        },
    );
    rig.import(&img.layout_tar);

    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "hostile").await;
    let before = rig.ctr_list(&["containers", "ls", "-q"]);
    let with_image = |name: &str, image: &str| {
        let mut c = config(name, "id -u");
        c.image = Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        });
        c
    };
    for (tag, _, why) in &cases {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            try_create(
                &mut rt,
                &p,
                with_image(tag, &format!("localhost/peapod-test/passwd-{tag}:1")),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("CreateContainer hung on an image whose passwd is {tag}"));
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{tag}: {e:?}");
        assert!(
            e.message().contains("/etc/passwd") && e.message().contains(why),
            "{tag}: {e:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{tag}: {:?}",
            t.elapsed()
        );
    }
    let mut c = with_image("kcore", "localhost/peapod-test/passwd-kcore:1");
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1234 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = try_create(&mut rt, &p, c)
        .await
        .expect("kcore link: numeric user");
    assert_eq!(
        status(&mut rt, &id).await.state,
        ContainerState::ContainerCreated as i32
    );
    let mut c = with_image("kcore-name", "localhost/peapod-test/passwd-kcore:1");
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_username: "alice".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = try_create(&mut rt, &p, c).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Nothing half-made: no containers but the good one, no rootfs view left mounted, the
    // names free again.
    let mut after = rig.ctr_list(&["containers", "ls", "-q"]);
    after.retain(|c| c != &id);
    assert_eq!(before, after);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let views = rig.state_dir.join("rootfs-views");
    assert!(
        !mounts.contains(&views.display().to_string()),
        "a rootfs view is still mounted"
    );
    let ok = try_create(&mut rt, &p, config("fifo", "true")).await;
    assert!(
        ok.is_ok(),
        "the name of a failed create stays reserved: {ok:?}"
    );
    still_serving(&mut rt).await;
    assert!(!Path::new(&views).join(&id).exists());
}

#[tokio::test]
async fn a_stop_timeout_near_i64_max_saturates() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "bigstop").await;
    let id = try_create(
        &mut rt,
        &p,
        config("polite", "trap 'exit 7' TERM; while :; do sleep 0.1; done"),
    )
    .await
    .unwrap();
    start(&mut rt, &id).await;
    wait_state(&mut rt, &id, ContainerState::ContainerRunning, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // trap installed
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        rt.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: i64::MAX,
        }),
    )
    .await
    .expect("StopContainer with timeout i64::MAX did not return");
    r.expect("StopContainer with timeout i64::MAX");
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 7, "{st:?}");
    // And a second container with a huge timeout that ignores TERM is still stoppable by a
    // later short stop (the kubelet's force path), with peapod serving throughout.
    let stubborn = try_create(
        &mut rt,
        &p,
        config("stubborn", "trap '' TERM; while :; do sleep 0.1; done"),
    )
    .await
    .unwrap();
    start(&mut rt, &stubborn).await;
    wait_state(&mut rt, &stubborn, ContainerState::ContainerRunning, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut rt2 = rig.runtime_client().await;
    let sid = stubborn.clone();
    let long = tokio::spawn(async move {
        rt2.stop_container(StopContainerRequest {
            container_id: sid,
            timeout: i64::MAX - 1,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_serving(&mut rt).await;
    rt.stop_container(StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer 0");
    let r = tokio::time::timeout(Duration::from_secs(30), long)
        .await
        .expect("the long stop returns once the container is gone")
        .unwrap();
    r.expect("long StopContainer");
    assert_eq!(status(&mut rt, &stubborn).await.exit_code, 137);
    still_serving(&mut rt).await;
}

#[tokio::test]
async fn a_failed_state_write_does_not_wedge_the_container() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "rostate").await;
    let id = try_create(&mut rt, &p, config("leaving", "sleep 2; exit 3"))
        .await
        .unwrap();
    start(&mut rt, &id).await;
    wait_state(&mut rt, &id, ContainerState::ContainerRunning, 30).await;

    // The containers' state directory turns read-only (as a full disk would refuse writes)
    // before the container exits.
    let dir = rig.state_dir.join("containers");
    let d = dir.display().to_string();
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount {args:?}: {out:?}");
    };
    sh(&["--bind", &d, &d]);
    sh(&["-o", "remount,ro,bind", &d]);
    // The exit is reported, with its code, although it cannot be written.
    let st = wait_state(&mut rt, &id, ContainerState::ContainerExited, 30).await;
    assert_eq!(st.exit_code, 3, "{st:?}");
    let s = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let c = runtime_condition(&s, "StatePersisted").expect("a condition names the problem");
    assert!(!c.status && c.reason == "StateWriteFailed", "{c:?}");
    assert!(c.message.contains(&id), "{c:?}");
    assert!(
        runtime_condition(&s, "RuntimeReady").is_some_and(|c| c.status),
        "the node stays ready"
    );
    // Stop answers at once instead of waiting for an exit that already happened.
    let t = Instant::now();
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .expect("StopContainer");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Writable again: the retry persists the exit, the condition clears, the exited task is
    // deleted, and the container is removed normally.
    assert!(std::process::Command::new("umount")
        .arg(&d)
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    loop {
        let s = rt
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
        let tasks = rig.ctr_list(&["tasks", "ls", "-q"]);
        if runtime_condition(&s, "StatePersisted").is_none() && !tasks.contains(&id) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the exit was never persisted: {s:?} {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let saved = std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap();
    assert!(saved.contains("\"exit_code\": 3"), "{saved}");
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("RemoveContainer");
    still_serving(&mut rt).await;
}

#[tokio::test]
async fn the_systemd_cgroup_driver_reaches_runc() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start_with(vec!["--cgroup-driver".into(), "systemd".into()]).await;
    let mut rt = rig.runtime_client().await;
    let before = rig.inventory();
    let mut cfg = rig.pod_config("sdpod");
    // A pod without a parent slice: its pause container's scope goes to system.slice.
    cfg.linux.as_mut().unwrap().cgroup_parent.clear();
    let r = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .await;
    let systemd_pid1 = Path::new("/run/systemd/system").exists();
    if systemd_pid1 {
        // runc made a systemd scope for the pause container.
        let id = r
            .expect("RunPodSandbox under systemd")
            .into_inner()
            .pod_sandbox_id;
        let scope = format!("cri-peapod-{id}.scope");
        let found = std::fs::read_to_string("/proc/self/mountinfo").is_ok()
            && walkdir_contains(Path::new("/sys/fs/cgroup"), &scope, 4);
        assert!(found, "no systemd scope {scope}");
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    } else {
        // Without systemd, runc told to use it cannot place the pod: a clear failure rather
        // than a cgroupfs directory literally named "system.slice:cri-peapod:<id>".
        let e = r.expect_err("runc was not told to use systemd");
        assert!(
            e.message().to_ascii_lowercase().contains("systemd")
                || e.message().to_ascii_lowercase().contains("dbus"),
            "{e:?}"
        );
        let stray = std::fs::read_dir("/sys/fs/cgroup/memory")
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("system.slice:cri-peapod")
                })
            })
            .unwrap_or(false);
        assert!(
            !stray,
            "a cgroupfs directory named like a systemd path was made"
        );
    }
    rig.assert_no_leaks(&before, 15, "systemd driver").await;
}

fn walkdir_contains(dir: &Path, name: &str, depth: usize) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy() == name {
            return true;
        }
        if depth > 0
            && e.file_type().is_ok_and(|t| t.is_dir())
            && walkdir_contains(&e.path(), name, depth - 1)
        {
            return true;
        }
    }
    false
}
