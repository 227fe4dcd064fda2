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

use common::cri::{config, pod, status, Client, Pod};

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

async fn start(rt: &mut Client, id: &str) {
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("StartContainer");
}

async fn wait_state(rt: &mut Client, id: &str, state: ContainerState) -> ContainerStatus {
    let t = Instant::now();
    loop {
        let st = status(rt, id).await;
        if st.state == state as i32 {
            return st;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{id}: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn still_serving(rt: &mut Client) {
    rt.version(VersionRequest::default())
        .await
        .expect("peapod still answers");
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

