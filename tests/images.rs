//! End-to-end ImageService tests: peapod against a real containerd and a real registry
//! (docker-registry on 127.0.0.1), plus fake registries that stall or corrupt.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::time::{Duration, Instant};

use common::{oci, Rig};
use peapod::cri::image_service_client::ImageServiceClient;
use peapod::cri::*;
use registry::{FakeRegistry, Fault, Registry};
use tonic::transport::Channel;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    c.pull_image(PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn status(c: &mut ImageServiceClient<Channel>, image: &str) -> Option<Image> {
    c.image_status(ImageStatusRequest {
        image: spec(image),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .image
}

async fn fs_used(c: &mut ImageServiceClient<Channel>) -> (u64, u64, String) {
    let r = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let u = &r.image_filesystems[0];
    (
        u.used_bytes.as_ref().unwrap().value,
        u.inodes_used.as_ref().unwrap().value,
        u.fs_id.as_ref().unwrap().mountpoint.clone(),
    )
}

/// A test image whose layer is unique to `tag` (so it shares nothing with other images).
fn unique_image(rig: &Rig, tag: &str, user: &str) -> oci::BuiltImage {
    oci::build(
        rig.dir.path(),
        &oci::ImageSpec {
            name: format!("localhost/unique/{tag}:1"),
            cmd: vec!["sh".into()],
            user: user.into(),
            files: vec![(format!("/etc/unique-{tag}"), tag.as_bytes().to_vec())],
            ..Default::default()
        },
    )
}

fn certs_d(rig: &Rig) -> std::path::PathBuf {
    rig.dir.path().join("certs.d")
}

#[tokio::test]
async fn pull_by_tag_digest_and_short_name_then_inventory() {
    if !common::require_root() {
        return;
    }
    let reg = Registry::start(None);
    let rig = Rig::start().await;
    let mut c = rig.image_client().await;
    let img = unique_image(&rig, "inv", "1000");
    // An index (with a foreign platform listed first) under a tag.
    let idx_digest = reg.push_image("peapod/app", "v1", &img, true).await;
    reg.push_image("library/busybox", "latest", &img, false)
        .await;
    // Short names resolve on docker.io, which is mirrored to the local registry.
    registry::write_hosts_toml(
        &certs_d(&rig),
        "docker.io",
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr
        ),
    );

    let by_tag = format!("{}/peapod/app:v1", reg.addr);
    let id = pull(&mut c, &by_tag, None).await.expect("pull by tag");
    assert_eq!(id, img.config_digest);

    let s = status(&mut c, &by_tag).await.expect("status by tag");
    assert_eq!(s.id, img.config_digest);
    assert_eq!(s.repo_tags, vec![by_tag.clone()]);
    assert_eq!(
        s.repo_digests,
        vec![format!("{}/peapod/app@{idx_digest}", reg.addr)]
    );
    assert_eq!(
        s.size,
        (img.config.len() + img.layer.len()) as u64,
        "size = config + layers"
    );
    assert_eq!(s.uid, Some(Int64Value { value: 1000 }));
    assert_eq!(s.username, "");

    // By digest, by id (full and short), by digest reference.
    let by_digest = format!("{}/peapod/app@{idx_digest}", reg.addr);
    assert_eq!(pull(&mut c, &by_digest, None).await.unwrap(), id);
    assert_eq!(status(&mut c, &by_digest).await.unwrap().id, id);
    assert_eq!(status(&mut c, &id).await.unwrap().id, id);
    assert_eq!(status(&mut c, &id[..19]).await.unwrap().id, id);
    assert_eq!(status(&mut c, &id[7..]).await.unwrap().id, id);

    // Short name.
    assert_eq!(pull(&mut c, "busybox", None).await.unwrap(), id);
    let s = status(&mut c, "docker.io/library/busybox:latest")
        .await
        .unwrap();
    assert!(s
        .repo_tags
        .contains(&"docker.io/library/busybox:latest".to_string()));
    assert!(s.repo_tags.contains(&by_tag));

    // Records as ctr sees them, and the unpacked snapshot.
    let names = rig.ctr_list(&["images", "ls", "-q"]);
    assert!(names.contains(&by_tag), "{names:?}");
    assert!(names.contains(&by_digest), "{names:?}");
    let labels = String::from_utf8_lossy(&rig.ctr(&["content", "ls"]).stdout).to_string();
    assert!(
        labels.contains("containerd.io/gc.ref.content.l.0"),
        "{labels}"
    );
    assert!(
        labels.contains("containerd.io/gc.ref.snapshot.overlayfs"),
        "{labels}"
    );
    assert!(labels.contains("containerd.io/uncompressed"), "{labels}");
    assert!(
        labels.contains("containerd.io/gc.ref.content.m.1"),
        "{labels}"
    );
    assert!(
        rig.ctr_list(&["leases", "ls", "-q"]).is_empty(),
        "pull lease left"
    );

    // Absent images: empty status, not an error.
    assert!(status(&mut c, "nothing/here:1").await.is_none());
    assert!(status(&mut c, &format!("sha256:{}", "0".repeat(64)))
        .await
        .is_none());

    // ListImages, all and filtered; the ctr-imported rig images are there too.
    let all = c
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(all.iter().any(|i| i.id == id));
    assert!(all
        .iter()
        .any(|i| i.repo_tags.contains(&common::BUSYBOX.to_string())));
    let pause = all
        .iter()
        .find(|i| i.repo_tags.contains(&common::PAUSE.to_string()))
        .expect("imported pause image listed");
    assert!(pause.pinned, "sandbox image is pinned");
    let one = c
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&by_tag),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, id);

    // Verbose status carries the config.
    let v = c
        .image_status(ImageStatusRequest {
            image: spec(&by_tag),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.info["info"].contains("imageSpec"));

    // A user name instead of a uid.
    let named = unique_image(&rig, "named", "nobody");
    reg.push_image("peapod/named", "1", &named, false).await;
    let n = format!("{}/peapod/named:1", reg.addr);
    pull(&mut c, &n, None).await.unwrap();
    let s = status(&mut c, &n).await.unwrap();
    assert_eq!((s.uid, s.username.as_str()), (None, "nobody"));
}

#[tokio::test]
async fn bad_input_and_unreachable_registries() {
    if !common::require_root() {
        return;
    }
    let reg = Registry::start(None);
    let rig = Rig::start().await;
    let mut c = rig.image_client().await;
    let img = unique_image(&rig, "bad", "");
    reg.push_image("peapod/app", "v1", &img, false).await;

    let e = pull(&mut c, "Not A Ref", None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = pull(&mut c, "", None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    let missing_tag = format!("{}/peapod/app:nope", reg.addr);
    let e = pull(&mut c, &missing_tag, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains(&missing_tag), "{}", e.message());
    let missing_repo = format!("{}/peapod/none:v1", reg.addr);
    let e = pull(&mut c, &missing_repo, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = pull(&mut c, &format!("127.0.0.1:{port}/x/y:1"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        e.message()
    );

    // A layer that does not match its digest: the pull fails and stores nothing.
    let fake = FakeRegistry::start(Fault::CorruptLayer, &img).await;
    let e = pull(&mut c, &format!("{}/x/corrupt:1", fake.addr), None)
        .await
        .unwrap_err();
    assert!(e.message().contains("digest"), "{e:?}");
    assert_nothing_left(&rig, &img);
    assert!(rig
        .ctr_list(&["images", "ls", "-q"])
        .iter()
        .all(|n| !n.contains("corrupt")));
}

/// Neither the config nor the layer of `img`, nor a lease, nor an ingest is in containerd.
fn assert_nothing_left(rig: &Rig, img: &oci::BuiltImage) {
    let content = rig.ctr_list(&["content", "ls", "-q"]);
    assert!(
        !content.contains(&img.config_digest),
        "config left: {content:?}"
    );
    assert!(
        !content.contains(&img.layer_digest),
        "layer left: {content:?}"
    );
    assert!(
        rig.ctr_list(&["leases", "ls", "-q"]).is_empty(),
        "lease left"
    );
    let active = String::from_utf8_lossy(&rig.ctr(&["content", "active"]).stdout).to_string();
    assert!(!active.contains("peapod-pull"), "ingest left: {active}");
}

#[tokio::test]
async fn mirror_from_hosts_toml_serves_an_unreachable_name() {
    if !common::require_root() {
        return;
    }
    let reg = Registry::start(None);
    let rig = Rig::start().await;
    let mut c = rig.image_client().await;
    let img = unique_image(&rig, "mirror", "");
    reg.push_image("pause", "3.10", &img, true).await;
    // registry.k8s.io is unreachable here; its hosts.toml names the local registry as a
    // plain-HTTP mirror, exactly as an operator would write it for containerd.
    registry::write_hosts_toml(
        &certs_d(&rig),
        "registry.k8s.io",
        &format!(
            "server = \"https://registry.k8s.io\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr
        ),
    );
    let id = pull(&mut c, "registry.k8s.io/pause:3.10", None)
        .await
        .expect("pull through the mirror");
    assert_eq!(id, img.config_digest);
    let s = status(&mut c, "registry.k8s.io/pause:3.10").await.unwrap();
    assert_eq!(s.repo_tags, vec!["registry.k8s.io/pause:3.10".to_string()]);
    assert!(
        reg.blob_gets(&img.layer_digest) >= 1,
        "the mirror served the layer"
    );
}

#[tokio::test]
async fn credentials_from_request_and_file() {
    if !common::require_root() {
        return;
    }
    let reg = Registry::start(Some(("alice", "s3cret")));
    let creds = tempfile::NamedTempFile::new().unwrap();
    let mut rig = Rig::containerd_only();
    rig.extra_peapod_args = vec![
        "--registry-credentials-file".into(),
        creds.path().display().to_string(),
    ];
    rig.import_test_images();
    rig.start_peapod().await;
    let mut c = rig.image_client().await;
    let img = unique_image(&rig, "auth", "");
    reg.push_image("private/app", "v1", &img, false).await;
    let name = format!("{}/private/app:v1", reg.addr);
    std::fs::write(creds.path(), "{\"auths\": {}}").unwrap();

    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ),
        "{e:?}"
    );
    assert!(e.message().contains("credentials"), "{}", e.message());
    assert!(e.message().contains(&reg.addr), "{}", e.message());

    let wrong = AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let e = pull(&mut c, &name, Some(wrong)).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ),
        "{e:?}"
    );
    assert!(status(&mut c, &name).await.is_none());

    let right = AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c, &name, Some(right)).await.unwrap(),
        img.config_digest
    );
    // base64 "alice:s3cret" in `auth`.
    let b64 = AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        server_address: reg.addr.clone(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c, &name, Some(b64)).await.unwrap(),
        img.config_digest
    );

    // No AuthConfig: the credentials file is used.
    std::fs::write(
        creds.path(),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"YWxpY2U6czNjcmV0\"}}}}}}",
            reg.addr
        ),
    )
    .unwrap();
    assert_eq!(pull(&mut c, &name, None).await.unwrap(), img.config_digest);
}

#[tokio::test]
async fn credentials_go_only_to_the_host_they_were_given_for() {
    if !common::require_root() {
        return;
    }
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let reg = Registry::start(Some(("alice", "s3cret-registry")));
    // Two mirrors that demand credentials: the first has none configured, the second has
    // its own in the credentials file. Neither may see the registry's.
    let bare = registry::RecordingMirror::start().await;
    let own = registry::RecordingMirror::start().await;
    let creds = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        creds.path(),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{}\"}}}}}}",
            own.addr,
            b64("mirroruser:s3cret-mirror")
        ),
    )
    .unwrap();
    let mut rig = Rig::containerd_only();
    rig.extra_peapod_args = vec![
        "--registry-credentials-file".into(),
        creds.path().display().to_string(),
    ];
    rig.import_test_images();
    rig.start_peapod().await;
    registry::write_hosts_toml(
        &certs_d(&rig),
        &reg.addr,
        &format!(
            "server = \"http://{}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr, bare.addr, own.addr
        ),
    );
    let mut c = rig.image_client().await;
    let img = unique_image(&rig, "mirrorcreds", "");
    reg.push_image("private/app", "v1", &img, false).await;
    let name = format!("{}/private/app:v1", reg.addr);
    let auth = AuthConfig {
        username: "alice".into(),
        password: "s3cret-registry".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c, &name, Some(auth)).await.unwrap(),
        img.config_digest
    );
    assert!(
        !bare.requests().is_empty(),
        "the first mirror was not tried"
    );
    assert!(
        !own.requests().is_empty(),
        "the second mirror was not tried"
    );
    assert_eq!(
        bare.authorizations(),
        Vec::<String>::new(),
        "a mirror without credentials of its own was sent some"
    );
    let mirror_own = format!("Basic {}", b64("mirroruser:s3cret-mirror"));
    let sent = own.authorizations();
    assert!(
        !sent.is_empty(),
        "the mirror's own credentials were not used"
    );
    assert!(sent.iter().all(|a| a == &mirror_own), "{sent:?}");

    // An AuthConfig naming the mirror goes to that mirror only; the registry then has none.
    let for_bare = AuthConfig {
        username: "bareuser".into(),
        password: "s3cret-bare".into(),
        server_address: format!("http://{}", bare.addr),
        ..Default::default()
    };
    let name2 = format!("{}/private/app:v2", reg.addr);
    reg.push_image("private/app", "v2", &img, false).await;
    let e = pull(&mut c, &name2, Some(for_bare)).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ),
        "{e:?}"
    );
    let bare_auth = format!("Basic {}", b64("bareuser:s3cret-bare"));
    assert!(bare.authorizations().contains(&bare_auth));
    assert!(own.authorizations().iter().all(|a| a == &mirror_own));

    // The log carries none of the secrets, plain or encoded.
    let log = rig.peapod_log();
    for secret in [
        "s3cret-registry".to_string(),
        "s3cret-mirror".to_string(),
        "s3cret-bare".to_string(),
        b64("alice:s3cret-registry"),
        b64("mirroruser:s3cret-mirror"),
        b64("bareuser:s3cret-bare"),
    ] {
        assert!(!log.contains(&secret), "peapod's log shows a credential");
    }
}

#[tokio::test]
async fn references_with_path_tricks_are_refused() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    // A hosts.toml the tricks would reach: one level above the hosts directory.
    std::fs::create_dir_all(certs_d(&rig)).unwrap();
    std::fs::write(
        rig.dir.path().join("hosts.toml"),
        "server = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let mut c = rig.image_client().await;
    for bad in [
        "../x/y:1",
        "../../etc/x:1",
        "..:5000/x:1",
        "reg.io/../x:1",
        "./x/y:1",
    ] {
        let e = pull(&mut c, bad, None).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
    }
}

#[tokio::test]
async fn concurrent_pulls_download_each_blob_once() {
    if !common::require_root() {
        return;
    }
    let reg = Registry::start(None);
    let rig = Rig::start().await;
    let img = unique_image(&rig, "conc", "");
    reg.push_image("peapod/conc", "v1", &img, false).await;
    let name = format!("{}/peapod/conc:v1", reg.addr);
    let mut joins = Vec::new();
    for _ in 0..10 {
        let mut c = rig.image_client().await;
        let name = name.clone();
        joins.push(tokio::spawn(async move { pull(&mut c, &name, None).await }));
    }
    for j in joins {
        assert_eq!(j.await.unwrap().unwrap(), img.config_digest);
    }
    assert_eq!(reg.blob_gets(&img.layer_digest), 1, "{}", reg.log_text());
    assert_eq!(reg.blob_gets(&img.config_digest), 1);
}

#[tokio::test]
async fn remove_image_removes_all_tags_and_gc_frees_the_space() {
    if !common::require_root() {
        return;
    }
    let reg = Registry::start(None);
    let rig = Rig::start().await;
    let mut c = rig.image_client().await;
    let (before, before_inodes, mountpoint) = fs_used(&mut c).await;
    assert!(mountpoint.contains("overlayfs"), "{mountpoint}");
    let img = unique_image(&rig, "rm", "");
    reg.push_image("peapod/rm", "a", &img, false).await;
    reg.push_image("peapod/rm", "b", &img, false).await;
    let a = format!("{}/peapod/rm:a", reg.addr);
    let b = format!("{}/peapod/rm:b", reg.addr);
    pull(&mut c, &a, None).await.unwrap();
    pull(&mut c, &b, None).await.unwrap();
    let s = status(&mut c, &a).await.unwrap();
    assert_eq!(s.repo_tags, vec![a.clone(), b.clone()]);
    let (after_pull, _, _) = fs_used(&mut c).await;
    assert!(
        after_pull > before,
        "pull adds snapshot usage ({before} -> {after_pull})"
    );

    c.remove_image(RemoveImageRequest { image: spec(&a) })
        .await
        .unwrap();
    assert!(status(&mut c, &a).await.is_none());
    assert!(status(&mut c, &b).await.is_none(), "every tag goes");
    assert!(status(&mut c, &img.config_digest).await.is_none());
    // Idempotent, by tag and by id.
    c.remove_image(RemoveImageRequest { image: spec(&a) })
        .await
        .unwrap();
    c.remove_image(RemoveImageRequest {
        image: spec(&img.config_digest),
    })
    .await
    .unwrap();
    // The last delete was synchronous: containerd's GC already ran.
    assert_eq!(fs_used(&mut c).await.0, before);
    assert_eq!(fs_used(&mut c).await.1, before_inodes);
    assert_nothing_left(&rig, &img);
}

#[tokio::test]
async fn stalled_registries_fail_after_the_progress_timeout() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start_with(vec![
        "--image-pull-progress-timeout-secs".into(),
        "3".into(),
    ])
    .await;
    let mut c = rig.image_client().await;
    let img = unique_image(&rig, "stall", "");
    for fault in [Fault::Silent, Fault::StallLayer] {
        let fake = FakeRegistry::start(fault, &img).await;
        let name = format!("{}/x/stall:1", fake.addr);
        let t = Instant::now();
        let e = pull(&mut c, &name, None).await.unwrap_err();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(20),
            "{fault:?}: took {took:?}"
        );
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{fault:?}: {e:?}");
        assert!(e.message().contains("no progress"), "{}", e.message());
        assert_nothing_left(&rig, &img);
        assert!(status(&mut c, &name).await.is_none());
    }
    // The aborted pull can be retried once the registry works.
    let reg = Registry::start(None);
    reg.push_image("x/stall", "1", &img, false).await;
    let name = format!("{}/x/stall:1", reg.addr);
    assert_eq!(pull(&mut c, &name, None).await.unwrap(), img.config_digest);
}

#[tokio::test]
async fn absent_sandbox_image_is_pulled_by_run_pod_sandbox() {
    if !common::require_root() {
        return;
    }
    let reg = Registry::start(None);
    let mut rig = Rig::containerd_only();
    let pause = oci::build(
        rig.dir.path(),
        &oci::ImageSpec {
            name: "peapod-test/pause:auto".into(),
            entrypoint: vec!["/bin/sleep".into(), "3600".into()],
            ..Default::default()
        },
    );
    reg.push_image("peapod/pause", "auto", &pause, false).await;
    let sandbox_image = format!("{}/peapod/pause:auto", reg.addr);
    rig.extra_peapod_args = vec!["--sandbox-image".into(), sandbox_image.clone()];
    rig.start_peapod().await;
    let mut images = rig.image_client().await;
    assert!(status(&mut images, &sandbox_image).await.is_none());
    let mut rt = rig.runtime_client().await;
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(rig.pod_config("autopull")),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox pulls the absent sandbox image")
        .into_inner()
        .pod_sandbox_id;
    let s = status(&mut images, &sandbox_image)
        .await
        .expect("sandbox image pulled");
    assert_eq!(s.id, pause.config_digest);
    assert!(
        s.pinned,
        "the sandbox image is pinned against kubelet's image GC"
    );
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

#[tokio::test]
async fn client_certificates_and_tls_settings_from_hosts_toml() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = registry::TestPki::generate(pki_dir.path());
    let reg = Registry::start_with(None, Some(&pki));
    // The operator's layout: the files beside hosts.toml, named relative to it.
    let host_dir = certs_d(&rig).join(&reg.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    for f in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(pki.path(f), host_dir.join(f)).unwrap();
    }
    let mut c = rig.image_client().await;
    let mut images = Vec::new();
    for tag in ["tls-a", "tls-b"] {
        let img = unique_image(&rig, tag, "");
        reg.push_image("peapod/tls", tag, &img, false).await;
        images.push(img);
    }
    let server = format!("server = \"https://{}\"\n", reg.addr);
    let hosts = |extra: &str| {
        registry::write_hosts_toml(&certs_d(&rig), &reg.addr, &format!("{server}{extra}"));
    };
    let name = |tag: &str| format!("{}/peapod/tls:{tag}", reg.addr);

    // No client certificate: the registry ends the handshake; the error says so.
    hosts("ca = \"ca.pem\"\n");
    let e = pull(&mut c, &name("tls-a"), None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&reg.addr), "{}", e.message());
    assert!(
        e.message().contains("client certificate"),
        "{}",
        e.message()
    );
    assert_nothing_left(&rig, &images[0]);

    // CA and client certificate, as containerd reads them.
    hosts("ca = \"ca.pem\"\nclient = [[\"client.pem\", \"client.key\"]]\n");
    assert_eq!(
        pull(&mut c, &name("tls-a"), None).await.expect("mTLS pull"),
        images[0].config_digest
    );
    assert!(reg.blob_gets(&images[0].layer_digest) >= 1);

    // Neither the CA nor skip_verify: the server certificate cannot be verified.
    hosts("client = [[\"client.pem\", \"client.key\"]]\n");
    let e = pull(&mut c, &name("tls-b"), None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&reg.addr), "{}", e.message());
    assert!(
        e.message().contains("certificate verification"),
        "{}",
        e.message()
    );
    assert_nothing_left(&rig, &images[1]);

    // skip_verify instead of the CA; the client certificate is still presented.
    hosts("skip_verify = true\nclient = [[\"client.pem\", \"client.key\"]]\n");
    assert_eq!(
        pull(&mut c, &name("tls-b"), None)
            .await
            .expect("skip_verify pull"),
        images[1].config_digest
    );
    assert!(reg.blob_gets(&images[1].layer_digest) >= 1);
}

async fn listed(c: &mut ImageServiceClient<Channel>) -> Vec<Image> {
    c.list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn listed_ids(c: &mut ImageServiceClient<Channel>) -> Vec<String> {
    listed(c).await.into_iter().map(|i| i.id).collect()
}

#[tokio::test]
async fn images_added_or_removed_with_ctr_show_without_a_restart() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut c = rig.image_client().await;
    // Loaded at start: the rig imported busybox and pause before peapod started.
    let at_start = listed(&mut c).await;
    assert!(
        at_start
            .iter()
            .any(|i| i.repo_tags.contains(&common::BUSYBOX.to_string())),
        "{at_start:?}"
    );

    // ListImages answers from the index alone, so only containerd's image event can put
    // this image there.
    let (fs_before, _, _) = fs_used(&mut c).await;
    let img = unique_image(&rig, "evented", "");
    rig.import(&img.layout_tar);
    let seen = common::eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        let id = img.config_digest.clone();
        async move { listed_ids(&mut c).await.contains(&id).then_some(()) }
    })
    .await;
    assert!(seen.is_some(), "imported image never listed");
    // The event also tells the usage cache that snapshots came.
    let (fs_after, _, _) = fs_used(&mut c).await;
    assert!(
        fs_after > fs_before,
        "ImageFsInfo {fs_before} -> {fs_after} after ctr import"
    );
    let s = status(&mut c, "localhost/unique/evented:1").await.unwrap();
    assert_eq!(s.id, img.config_digest);
    assert_eq!(s.repo_tags, vec!["localhost/unique/evented:1".to_string()]);

    // A CreateContainer-style lookup right after an import does not wait for the event.
    let img2 = unique_image(&rig, "immediate", "");
    rig.import(&img2.layout_tar);
    let s = status(&mut c, "localhost/unique/immediate:1")
        .await
        .expect("ImageStatus right after ctr import");
    assert_eq!(s.id, img2.config_digest);
    assert_eq!(
        status(&mut c, &img2.config_digest).await.unwrap().id,
        img2.config_digest,
        "by id too"
    );

    // Removed by ctr: gone from the list and from ImageStatus.
    assert!(rig.ctr_ok(&["images", "rm", "localhost/unique/evented:1"]));
    let gone = common::eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        let id = img.config_digest.clone();
        async move { (!listed_ids(&mut c).await.contains(&id)).then_some(()) }
    })
    .await;
    assert!(gone.is_some(), "image removed with ctr still listed");
    assert!(status(&mut c, "localhost/unique/evented:1").await.is_none());
    assert!(status(&mut c, &img.config_digest).await.is_none());

    // Relabelled by ctr (kubelet's pinned label): the update event reaches the index.
    assert!(rig.ctr_ok(&[
        "images",
        "label",
        "localhost/unique/immediate:1",
        "io.cri-containerd.pinned=pinned",
    ]));
    let pinned = common::eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        let id = img2.config_digest.clone();
        async move {
            listed(&mut c)
                .await
                .into_iter()
                .any(|i| i.id == id && i.pinned)
                .then_some(())
        }
    })
    .await;
    assert!(pinned.is_some(), "label change never reached ListImages");
}

#[tokio::test]
async fn a_restarted_peapod_rebuilds_the_image_index() {
    if !common::require_root() {
        return;
    }
    let mut rig = Rig::start().await;
    let mut c = rig.image_client().await;
    let kept = unique_image(&rig, "kept", "");
    let dropped = unique_image(&rig, "dropped", "");
    rig.import(&kept.layout_tar);
    rig.import(&dropped.layout_tar);
    assert!(status(&mut c, &kept.config_digest).await.is_some());
    assert!(status(&mut c, &dropped.config_digest).await.is_some());

    // Changed while peapod is down: no event reaches it.
    rig.stop_peapod();
    let added = unique_image(&rig, "added", "1000");
    rig.import(&added.layout_tar);
    assert!(rig.ctr_ok(&["images", "rm", "localhost/unique/dropped:1"]));
    rig.start_peapod().await;
    let mut c = rig.image_client().await;

    let ids = listed_ids(&mut c).await;
    assert!(ids.contains(&kept.config_digest), "{ids:?}");
    assert!(ids.contains(&added.config_digest), "{ids:?}");
    assert!(!ids.contains(&dropped.config_digest), "{ids:?}");
    let s = status(&mut c, "localhost/unique/added:1").await.unwrap();
    assert_eq!(s.uid, Some(Int64Value { value: 1000 }));
    assert!(status(&mut c, "localhost/unique/dropped:1").await.is_none());
}
