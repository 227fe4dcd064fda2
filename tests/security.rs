//! Security contexts, namespaces and resources end to end: each test reads what the kernel
//! enforces inside a real container (runc under containerd), not what peapod wrote in the
//! spec. The containers print their findings and exit; the tests read the CRI log file, so
//! they need only the container lifecycle (UpdateContainerResources aside).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{oci, Rig, PAUSE};
use peapod::cri::*;

use common::cri::{config, pod, pod_with, status, Client, Pod};

/// An edit of a container security context.
type Edit = Box<dyn Fn(&mut LinuxContainerSecurityContext)>;

fn pod_sc(c: &mut PodSandboxConfig) -> &mut LinuxSandboxSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

fn pod_ns(c: &mut PodSandboxConfig) -> &mut NamespaceOption {
    pod_sc(c)
        .namespace_options
        .get_or_insert_with(Default::default)
}

/// A container config with a security context edited by `f`.
fn with_sc(
    mut c: ContainerConfig,
    f: impl FnOnce(&mut LinuxContainerSecurityContext),
) -> ContainerConfig {
    f(c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default));
    c
}

/// A container config with container-level namespace options, as kubelet sends them.
fn with_ns(c: ContainerConfig, f: impl FnOnce(&mut NamespaceOption)) -> ContainerConfig {
    with_sc(c, |s| {
        f(s.namespace_options.get_or_insert_with(Default::default))
    })
}

fn caps(add: &[&str], drop: &[&str]) -> Option<Capability> {
    Some(Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        add_ambient_capabilities: vec![],
    })
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

async fn start(rig: &Rig, rt: &mut Client, id: &str) {
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", rig.peapod_log()));
}

async fn wait_exited(rt: &mut Client, id: &str) -> ContainerStatus {
    let start = Instant::now();
    loop {
        let st = status(rt, id).await;
        if st.state == ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "container {id} did not exit: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of a CRI log file: the content of each record, partial records joined.
fn log_text(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for l in raw.lines() {
        let mut parts = l.splitn(4, ' ');
        let (_ts, _stream, tag) = (parts.next(), parts.next(), parts.next());
        let content = parts.next().unwrap_or("");
        out.push_str(content);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

fn log_path(pod: &Pod, c: &ContainerConfig) -> PathBuf {
    Path::new(&pod.config.log_directory).join(&c.log_path)
}

/// Creates and starts the container, waits for it to exit, and returns its exit code and
/// output (stdout and stderr interleaved, as in the log).
async fn run(rig: &Rig, rt: &mut Client, pod: &Pod, c: ContainerConfig) -> (i32, String) {
    let path = log_path(pod, &c);
    let name = c.metadata.as_ref().unwrap().name.clone();
    let id = try_create(rt, pod, c)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", rig.peapod_log()));
    start(rig, rt, &id).await;
    let st = wait_exited(rt, &id).await;
    // The log writer may flush just after the exit is recorded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (st.exit_code, log_text(&path))
}

/// Runs `script` and returns its output, asserting exit code 0.
async fn output(rig: &Rig, rt: &mut Client, pod: &Pod, c: ContainerConfig) -> String {
    let name = c.metadata.as_ref().unwrap().name.clone();
    let (code, out) = run(rig, rt, pod, c).await;
    assert_eq!(code, 0, "container {name} failed:\n{out}");
    out
}

/// The value of `Key:` in a /proc/<pid>/status text.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
        .trim()
        .to_string()
}

/// The capability mask of the named bits, as /proc/self/status prints it.
fn mask(bits: &[u32]) -> String {
    format!("{:016x}", bits.iter().fold(0u64, |m, b| m | (1 << b)))
}

// Kernel capability numbers (linux/capability.h).
const CHOWN: u32 = 0;
const DAC_OVERRIDE: u32 = 1;
const FOWNER: u32 = 3;
const FSETID: u32 = 4;
const KILL: u32 = 5;
const SETGID: u32 = 6;
const SETUID: u32 = 7;
const SETPCAP: u32 = 8;
const NET_BIND_SERVICE: u32 = 10;
const NET_ADMIN: u32 = 12;
const NET_RAW: u32 = 13;
const SYS_CHROOT: u32 = 18;
const SYS_ADMIN: u32 = 21;
const MKNOD: u32 = 27;
const AUDIT_WRITE: u32 = 29;
const SETFCAP: u32 = 31;

const DEFAULT_CAPS: &[u32] = &[
    CHOWN,
    DAC_OVERRIDE,
    FOWNER,
    FSETID,
    KILL,
    SETGID,
    SETUID,
    SETPCAP,
    NET_BIND_SERVICE,
    NET_RAW,
    SYS_CHROOT,
    MKNOD,
    AUDIT_WRITE,
    SETFCAP,
];

/// The bounding set of this (root) test process, which peapod inherits: what ALL and
/// privileged grant.
fn host_bounding() -> String {
    status_field(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "CapBnd",
    )
}

const CAPS: &str =
    "grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status";

#[tokio::test]
async fn capabilities_and_no_new_privs() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "caps").await;

    let out = output(&rig, &mut rt, &p, config("default", CAPS)).await;
    assert_eq!(status_field(&out, "CapEff"), mask(DEFAULT_CAPS), "{out}");
    assert_eq!(status_field(&out, "CapPrm"), mask(DEFAULT_CAPS), "{out}");
    assert_eq!(status_field(&out, "CapBnd"), mask(DEFAULT_CAPS), "{out}");
    assert_eq!(status_field(&out, "CapInh"), mask(&[]), "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs"), "0", "{out}");

    // Names with and without CAP_, any case.
    let c = with_sc(config("adddrop", CAPS), |s| {
        s.capabilities = caps(&["SYS_ADMIN", "cap_net_admin"], &["CAP_KILL", "chown"]);
    });
    let out = output(&rig, &mut rt, &p, c).await;
    let mut want: Vec<u32> = DEFAULT_CAPS
        .iter()
        .copied()
        .filter(|c| *c != KILL && *c != CHOWN)
        .collect();
    want.extend([SYS_ADMIN, NET_ADMIN]);
    assert_eq!(status_field(&out, "CapEff"), mask(&want), "{out}");
    assert_eq!(status_field(&out, "CapBnd"), mask(&want), "{out}");

    let c = with_sc(config("dropall", CAPS), |s| {
        s.capabilities = caps(&[], &["ALL"]);
    });
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(status_field(&out, "CapEff"), mask(&[]), "{out}");
    assert_eq!(status_field(&out, "CapBnd"), mask(&[]), "{out}");

    let c = with_sc(config("dropall-add", CAPS), |s| {
        s.capabilities = caps(&["NET_BIND_SERVICE"], &["all"]);
    });
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(
        status_field(&out, "CapEff"),
        mask(&[NET_BIND_SERVICE]),
        "{out}"
    );

    let c = with_sc(config("addall", CAPS), |s| {
        s.capabilities = caps(&["ALL"], &["CAP_SYS_ADMIN"]);
    });
    let out = output(&rig, &mut rt, &p, c).await;
    let host = u64::from_str_radix(&host_bounding(), 16).unwrap();
    assert_eq!(
        status_field(&out, "CapEff"),
        format!("{:016x}", host & !(1u64 << SYS_ADMIN)),
        "{out}"
    );

    let c = with_sc(config("nnp", CAPS), |s| s.no_new_privs = true);
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(status_field(&out, "NoNewPrivs"), "1", "{out}");

    // A non-root user keeps no effective capabilities (nothing ambient).
    let c = with_sc(config("nonroot", CAPS), |s| {
        s.run_as_user = Some(Int64Value { value: 1000 })
    });
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(status_field(&out, "CapEff"), mask(&[]), "{out}");
    assert_eq!(status_field(&out, "CapBnd"), mask(DEFAULT_CAPS), "{out}");
}

/// Mount points of the container's mount namespace ("<point> <options>").
const MOUNTS: &str = "awk '{print $2\" \"$4}' /proc/self/mounts";

fn mount_opts<'a>(out: &'a str, point: &str) -> Option<&'a str> {
    out.lines().find_map(|l| {
        let (p, o) = l.split_once(' ')?;
        (p == point).then_some(o)
    })
}

#[tokio::test]
async fn privileged_and_masked_paths() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;

    // Unprivileged: masked and read-only paths, read-only /sys, no host devices.
    let p = pod(&rig, &mut rt, "unpriv").await;
    let script = format!(
        "{CAPS}; {MOUNTS}; echo TIMERS=$(wc -c < /proc/timer_list); ls /dev; \
         touch /sys/x 2>&1; echo x > /proc/sys/kernel/domainname 2>&1; true"
    );
    let out = output(&rig, &mut rt, &p, config("plain", &script)).await;
    // (/proc/kcore, first of the defaults, is absent on kernels without CONFIG_PROC_KCORE.)
    assert!(
        out.contains("TIMERS=0"),
        "/proc/timer_list is not masked:\n{out}"
    );
    assert!(
        mount_opts(&out, "/proc/timer_list").is_some(),
        "/proc/timer_list not masked:\n{out}"
    );
    assert!(
        mount_opts(&out, "/proc/sys").is_some_and(|o| o.starts_with("ro")),
        "/proc/sys not read-only:\n{out}"
    );
    assert!(
        mount_opts(&out, "/sys").is_some_and(|o| o.starts_with("ro")),
        "/sys not read-only:\n{out}"
    );
    assert!(
        out.contains("can't create /proc/sys/kernel/domainname: Read-only file system"),
        "{out}"
    );

    // The request's lists replace the defaults.
    let c = with_sc(
        config(
            "custom",
            &format!("{MOUNTS}; echo GROUP=$(wc -c < /etc/group); touch /tmp/x 2>&1; true"),
        ),
        |s| {
            s.masked_paths = vec!["/etc/group".into()];
            s.readonly_paths = vec!["/tmp".into()];
        },
    );
    let out = output(&rig, &mut rt, &p, c).await;
    assert!(out.contains("GROUP=0"), "/etc/group not masked:\n{out}");
    assert!(
        out.contains("touch: /tmp/x: Read-only file system"),
        "/tmp not read-only:\n{out}"
    );
    assert!(
        mount_opts(&out, "/proc/timer_list").is_none(),
        "defaults kept:\n{out}"
    );

    // Privileged: all capabilities, host devices, nothing masked, /sys writable.
    let pp = pod_with(&rig, &mut rt, "priv", |c| pod_sc(c).privileged = true).await;
    let host_dev = ["kmsg", "mem", "loop0", "vda", "sda", "nvme0n1"]
        .into_iter()
        .find(|d| Path::new("/dev").join(d).exists())
        .expect("some host device");
    let c = with_sc(config("privileged", &script), |s| {
        s.privileged = true;
        // Ignored for a privileged container, as in containerd.
        s.capabilities = caps(&[], &["ALL"]);
    });
    let out = output(&rig, &mut rt, &pp, c).await;
    assert_eq!(status_field(&out, "CapEff"), host_bounding(), "{out}");
    assert_eq!(status_field(&out, "CapBnd"), host_bounding(), "{out}");
    assert!(
        mount_opts(&out, "/proc/timer_list").is_none(),
        "masked in privileged:\n{out}"
    );
    assert!(
        mount_opts(&out, "/proc/sys").is_none(),
        "read-only /proc/sys in privileged:\n{out}"
    );
    assert!(
        mount_opts(&out, "/sys").is_some_and(|o| o.starts_with("rw")),
        "/sys not writable:\n{out}"
    );
    assert!(
        out.lines().any(|l| l == host_dev),
        "host device /dev/{host_dev} missing:\n{out}"
    );
    assert!(!out.contains("TIMERS=0"), "/proc/timer_list masked:\n{out}");
}

#[tokio::test]
async fn users_and_groups() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "users").await;

    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "root",
            Box::new(|_| {}),
            "uid=0(root) gid=0(root) groups=0(root)",
        ),
        (
            "uid",
            Box::new(|s| s.run_as_user = Some(Int64Value { value: 1000 })),
            "uid=1000(alice) gid=1000(alice) groups=10(wheel),50(staff),1000(alice)",
        ),
        (
            "uid-gid",
            Box::new(|s| {
                s.run_as_user = Some(Int64Value { value: 1001 });
                s.run_as_group = Some(Int64Value { value: 10 });
            }),
            "uid=1001(bob) gid=10(wheel) groups=10(wheel),50(staff)",
        ),
        (
            "username",
            Box::new(|s| s.run_as_username = "bob".into()),
            "uid=1001(bob) gid=1001(bob) groups=50(staff),1001(bob)",
        ),
        (
            "unknown-uid",
            Box::new(|s| s.run_as_user = Some(Int64Value { value: 4242 })),
            "uid=4242 gid=0(root) groups=0(root)",
        ),
        (
            "supplemental-merge",
            Box::new(|s| {
                s.run_as_user = Some(Int64Value { value: 1001 });
                s.supplemental_groups = vec![2000, 1];
            }),
            "uid=1001(bob) gid=1001(bob) groups=1(daemon),50(staff),1001(bob),2000",
        ),
        (
            "supplemental-strict",
            Box::new(|s| {
                s.run_as_user = Some(Int64Value { value: 1001 });
                s.supplemental_groups = vec![2000];
                s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
            }),
            "uid=1001(bob) gid=1001(bob) groups=1001(bob),2000",
        ),
    ];
    for (name, f, want) in cases {
        let c = with_sc(config(name, "id"), |s| f(s));
        let out = output(&rig, &mut rt, &p, c).await;
        assert_eq!(out.trim(), want, "container {name}");
    }
    // ContainerStatus.user reports the identity the kernel gave the process.
    let listed = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: [("container".to_string(), "supplemental-merge".to_string())]
                    .into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    let user = rt
        .container_status(ContainerStatusRequest {
            container_id: listed[0].id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .user
        .and_then(|u| u.linux)
        .expect("ContainerStatus.user");
    assert_eq!((user.uid, user.gid), (1001, 1001));
    for g in [1, 50, 2000] {
        assert!(user.supplemental_groups.contains(&g), "{user:?}");
    }

    // The image's USER in each form, and run_as_user over it.
    let forms = [
        (
            "alice",
            "uid=1000(alice) gid=1000(alice) groups=10(wheel),50(staff),1000(alice)",
        ),
        (
            "1001",
            "uid=1001(bob) gid=1001(bob) groups=50(staff),1001(bob)",
        ),
        (
            "bob:wheel",
            "uid=1001(bob) gid=10(wheel) groups=10(wheel),50(staff)",
        ),
        (
            "1000:50",
            "uid=1000(alice) gid=50(staff) groups=10(wheel),50(staff)",
        ),
        (
            "65534",
            "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)",
        ),
    ];
    for (i, (user, want)) in forms.iter().enumerate() {
        let name = format!("localhost/peapod-test/user{i}:1");
        let img = oci::build(
            rig.dir.path(),
            &oci::ImageSpec {
                name: name.clone(),
                cmd: vec!["id".into()],
                user: user.to_string(),
                ..Default::default()
            },
        );
        rig.import(&img.layout_tar);
        let mut c = config(&format!("image-user-{i}"), "id");
        c.image = Some(ImageSpec {
            image: name.clone(),
            ..Default::default()
        });
        let out = output(&rig, &mut rt, &p, c.clone()).await;
        assert_eq!(out.trim(), *want, "image USER {user:?}");
        if i == 0 {
            c.metadata.as_mut().unwrap().name = "image-user-overridden".into();
            c.log_path = "image-user-overridden.log".into();
            let c = with_sc(c, |s| s.run_as_user = Some(Int64Value { value: 1001 }));
            let out = output(&rig, &mut rt, &p, c).await;
            assert_eq!(
                out.trim(),
                "uid=1001(bob) gid=1001(bob) groups=50(staff),1001(bob)",
                "run_as_user over image USER alice"
            );
        }
    }
}

#[tokio::test]
async fn readonly_rootfs_and_mounts() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "ro").await;

    let out = output(
        &rig,
        &mut rt,
        &p,
        config("rw-root", "touch /x && echo WROTE"),
    )
    .await;
    assert!(out.contains("WROTE"), "{out}");
    let c = with_sc(
        config("ro-root", "touch /x 2>&1; echo hi > /tmp/y 2>&1; true"),
        |s| s.readonly_rootfs = true,
    );
    let out = output(&rig, &mut rt, &p, c).await;
    assert!(
        out.contains("touch: /x: Read-only file system"),
        "rootfs writable:\n{out}"
    );

    // A volume with a tmpfs mounted inside it.
    let vol = rig.dir.path().join("vol");
    let sub = vol.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    let mount = |ro: bool, rro: bool| Mount {
        container_path: "/data".into(),
        host_path: vol.display().to_string(),
        readonly: ro,
        recursive_read_only: rro,
        ..Default::default()
    };
    let script =
        "touch /data/x 2>&1 && echo TOP-WROTE; touch /data/sub/x 2>&1 && echo SUB-WROTE; true";

    let mut c = config("rw-mount", script);
    c.mounts = vec![mount(false, false)];
    let out = output(&rig, &mut rt, &p, c).await;
    assert!(
        out.contains("TOP-WROTE") && out.contains("SUB-WROTE"),
        "{out}"
    );

    let mut c = config("ro-mount", script);
    c.mounts = vec![mount(true, false)];
    let out = output(&rig, &mut rt, &p, c).await;
    assert!(
        out.contains("touch: /data/x: Read-only file system"),
        "read-only mount writable:\n{out}"
    );
    // Plain read-only is not recursive: the submount stays writable.
    assert!(out.contains("SUB-WROTE"), "{out}");

    let mut c = config("rro-mount", script);
    c.mounts = vec![mount(true, true)];
    let out = output(&rig, &mut rt, &p, c).await;
    assert!(
        out.contains("touch: /data/x: Read-only file system"),
        "recursive read-only mount writable:\n{out}"
    );
    assert!(
        out.contains("touch: /data/sub/x: Read-only file system"),
        "submount of a recursive read-only mount writable:\n{out}"
    );
}

/// Whether this kernel and runc can make recursive read-only mounts.
fn rro_supported() -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = rel.trim().split(['.', '-']);
    let major: u32 = it.next().unwrap().parse().unwrap();
    let minor: u32 = it.next().unwrap().parse().unwrap();
    let runc = std::process::Command::new("runc")
        .arg("features")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"rro\""))
        .unwrap_or(false);
    (major, minor) >= (5, 12) && runc
}

#[tokio::test]
async fn status_reports_recursive_read_only_support() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let st = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let h = &st.runtime_handlers[0];
    assert_eq!(
        h.features.as_ref().unwrap().recursive_read_only_mounts,
        rro_supported(),
        "{st:?}"
    );
    assert!(
        st.features.as_ref().unwrap().supplemental_groups_policy,
        "{st:?}"
    );
}

fn host_file(p: &str) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn cmdline(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches('\0')
        .replace('\0', " ")
}

const PID1: &str = "echo CMD=$(tr '\\000' ' ' < /proc/1/cmdline)";

fn cmd_of(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.strip_prefix("CMD="))
        .unwrap_or_else(|| panic!("no CMD= in:\n{out}"))
}

#[tokio::test]
async fn pid_namespaces() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;

    // CONTAINER (the default): the container is its own PID 1.
    let p = pod_with(&rig, &mut rt, "pidc", |c| {
        pod_ns(c).pid = NamespaceMode::Container as i32
    })
    .await;
    let c = with_ns(config("own", PID1), |n| {
        n.pid = NamespaceMode::Container as i32
    });
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(cmd_of(&out), format!("sh -c {PID1}"));

    // POD: the pause process is PID 1.
    let pp = pod_with(&rig, &mut rt, "pidp", |c| {
        pod_ns(c).pid = NamespaceMode::Pod as i32
    })
    .await;
    let c = with_ns(config("shared", PID1), |n| {
        n.pid = NamespaceMode::Pod as i32
    });
    let out = output(&rig, &mut rt, &pp, c).await;
    assert_eq!(
        cmd_of(&out),
        "/bin/sh -c trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
        "pause ({PAUSE}) is not PID 1"
    );

    // NODE: the host's init is PID 1.
    let pn = pod_with(&rig, &mut rt, "pidn", |c| {
        pod_ns(c).pid = NamespaceMode::Node as i32
    })
    .await;
    let c = with_ns(config("host", PID1), |n| n.pid = NamespaceMode::Node as i32);
    let out = output(&rig, &mut rt, &pn, c).await;
    assert_eq!(
        cmd_of(&out),
        cmdline(&std::fs::read("/proc/1/cmdline").unwrap()).trim()
    );

    // TARGET: the target container's PID 1.
    let target_cfg = with_ns(
        config("target", "echo up; while :; do sleep 1; done"),
        |n| n.pid = NamespaceMode::Container as i32,
    );
    let target = try_create(&mut rt, &p, target_cfg).await.unwrap();
    start(&rig, &mut rt, &target).await;
    let mut c = config("joiner", PID1);
    let sc = c
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default);
    sc.namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        target_id: target.clone(),
        ..Default::default()
    });
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(cmd_of(&out), "sh -c echo up; while :; do sleep 1; done");
}

const NS: &str = "echo NET=$(readlink /proc/self/ns/net) IPC=$(readlink /proc/self/ns/ipc) \
                  UTS=$(readlink /proc/self/ns/uts) HOST=$(hostname); ip -o -4 addr";

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

fn host_ns(kind: &str) -> String {
    // This (root) test process runs in the host's namespaces, as peapod does.
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test]
async fn network_and_ipc_namespaces() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;

    let p = pod(&rig, &mut rt, "nspod").await;
    let a = output(&rig, &mut rt, &p, config("a", NS)).await;
    let b = output(&rig, &mut rt, &p, config("b", NS)).await;
    assert_ne!(field(&a, "NET"), host_ns("net"), "{a}");
    assert_ne!(field(&a, "IPC"), host_ns("ipc"), "{a}");
    assert_ne!(field(&a, "UTS"), host_ns("uts"), "{a}");
    // The pod's containers share the pod's namespaces.
    for k in ["NET", "IPC", "UTS"] {
        assert_eq!(field(&a, k), field(&b, k), "{k}: {a}\n{b}");
    }
    assert_eq!(field(&a, "HOST"), "nspod");
    assert!(
        a.contains(&format!("inet {}.", rig.subnet_prefix)),
        "no pod IP:\n{a}"
    );

    let pn = pod_with(&rig, &mut rt, "nsnode", |c| {
        let ns = pod_ns(c);
        ns.network = NamespaceMode::Node as i32;
        ns.ipc = NamespaceMode::Node as i32;
    })
    .await;
    let c = with_ns(config("h", NS), |n| {
        n.network = NamespaceMode::Node as i32;
        n.ipc = NamespaceMode::Node as i32;
    });
    let h = output(&rig, &mut rt, &pn, c).await;
    assert_eq!(field(&h, "NET"), host_ns("net"), "{h}");
    assert_eq!(field(&h, "IPC"), host_ns("ipc"), "{h}");
    assert_eq!(field(&h, "UTS"), host_ns("uts"), "{h}");
    assert_eq!(
        field(&h, "HOST"),
        host_file("/proc/sys/kernel/hostname").trim()
    );
    // The host's interfaces, the test bridge among them.
    assert!(
        h.contains(&format!(": {} ", rig.bridge)),
        "host interfaces not visible:\n{h}"
    );
    assert!(!a.contains(&rig.bridge), "host interfaces in the pod:\n{a}");
}

#[tokio::test]
async fn pod_sysctls() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod_with(&rig, &mut rt, "sysctl", |c| {
        let l = c.linux.get_or_insert_with(Default::default);
        l.sysctls = [
            ("net.ipv4.ip_unprivileged_port_start", "81"),
            ("kernel.shmmni", "2048"),
            ("net.ipv4.conf.all.forwarding", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    })
    .await;
    let out = output(
        &rig,
        &mut rt,
        &p,
        config(
            "read",
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmni \
             /proc/sys/net/ipv4/conf/all/forwarding",
        ),
    )
    .await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["81", "2048", "1"]
    );
    // The host is untouched.
    assert_ne!(
        host_file("/proc/sys/net/ipv4/ip_unprivileged_port_start").trim(),
        "81"
    );
}

/// A seccomp profile root of the test's own and a Localhost profile in it that makes mkdir fail.
fn seccomp_root(rig: &Rig) -> (PathBuf, PathBuf) {
    let root = rig.dir.path().join("seccomp");
    std::fs::create_dir_all(&root).unwrap();
    let profile = root.join("no-mkdir.json");
    std::fs::write(
        &profile,
        serde_json::to_vec(&serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
        }))
        .unwrap(),
    )
    .unwrap();
    (root, profile)
}

fn seccomp_profile(t: security_profile::ProfileType, localhost: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost.into(),
    })
}

async fn rig_with_seccomp_root() -> (Rig, PathBuf, PathBuf) {
    let mut rig = Rig::containerd_only();
    let (root, profile) = seccomp_root(&rig);
    rig.extra_peapod_args = vec!["--seccomp-profile-root".into(), root.display().to_string()];
    rig.import_test_images();
    rig.start_peapod().await;
    (rig, root, profile)
}

#[tokio::test]
async fn seccomp_profiles() {
    use security_profile::ProfileType;
    if !common::require_root() {
        return;
    }
    let (rig, _root, profile) = rig_with_seccomp_root().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "seccomp").await;
    let script =
        "grep Seccomp: /proc/self/status; hostname changed 2>&1 && echo NAME=$(hostname); \
                  mkdir /tmp/d 2>&1 && echo MKDIR-OK; true";

    // RuntimeDefault: filtered; sethostname needs CAP_SYS_ADMIN.
    let c = with_sc(config("default", script), |s| {
        s.seccomp = seccomp_profile(ProfileType::RuntimeDefault, "")
    });
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
    assert!(
        out.contains("sethostname: Operation not permitted"),
        "sethostname allowed:\n{out}"
    );
    assert!(out.contains("MKDIR-OK"), "{out}");

    // Unconfined + SYS_ADMIN: no filter, sethostname works.
    let c = with_sc(config("unconfined", script), |s| {
        s.seccomp = seccomp_profile(ProfileType::Unconfined, "");
        s.capabilities = caps(&["SYS_ADMIN"], &[]);
    });
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(status_field(&out, "Seccomp"), "0", "{out}");
    assert!(out.contains("NAME=changed"), "sethostname failed:\n{out}");

    // Localhost: the file's profile, relative to the root or absolute inside it.
    for (i, r) in ["no-mkdir.json", profile.to_str().unwrap()]
        .iter()
        .enumerate()
    {
        let c = with_sc(config(&format!("localhost{i}"), script), |s| {
            s.seccomp = seccomp_profile(ProfileType::Localhost, r)
        });
        let out = output(&rig, &mut rt, &p, c).await;
        assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
        assert!(
            out.contains("mkdir: can't create directory '/tmp/d': Operation not permitted"),
            "mkdir allowed:\n{out}"
        );
        assert!(!out.contains("MKDIR-OK"), "{out}");
    }
}

/// The container's memory limit, CPU quota/period and shares, and oom_score_adj, as the
/// kernel holds them (cgroup v1: runc binds the container's own cgroup at /sys/fs/cgroup/*).
const LIMITS: &str = "echo MEM=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) \
                      QUOTA=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) \
                      PERIOD=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us) \
                      SHARES=$(cat /sys/fs/cgroup/cpu/cpu.shares) \
                      OOM=$(cat /proc/self/oom_score_adj)";

fn resources(mem: i64, quota: i64, shares: i64, oom: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        memory_limit_in_bytes: mem,
        cpu_quota: quota,
        cpu_period: 100_000,
        cpu_shares: shares,
        oom_score_adj: oom,
        ..Default::default()
    }
}

fn cgroup_v1() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

#[tokio::test]
async fn resources_in_the_cgroup() {
    if !common::require_root() || !cgroup_v1() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "res").await;
    let own_oom: i64 = host_file("/proc/self/oom_score_adj")
        .trim()
        .parse()
        .unwrap();

    let mut c = config("limited", LIMITS);
    c.linux.get_or_insert_with(Default::default).resources =
        Some(resources(64 << 20, 50_000, 512, 500));
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(field(&out, "MEM"), (64u64 << 20).to_string(), "{out}");
    assert_eq!(field(&out, "QUOTA"), "50000", "{out}");
    assert_eq!(field(&out, "PERIOD"), "100000", "{out}");
    assert_eq!(field(&out, "SHARES"), "512", "{out}");
    assert_eq!(field(&out, "OOM"), "500", "{out}");

    // oom_score_adj below peapod's own is clamped to it.
    let mut c = config("clamped", LIMITS);
    c.linux.get_or_insert_with(Default::default).resources =
        Some(resources(0, 0, 0, own_oom - 100));
    let out = output(&rig, &mut rt, &p, c).await;
    assert_eq!(field(&out, "OOM"), own_oom.to_string(), "{out}");
    assert_eq!(field(&out, "QUOTA"), "-1", "{out}");
}

#[tokio::test]
async fn update_container_resources() {
    if !common::require_root() || !cgroup_v1() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "upd").await;
    let mut c = config("upd", &format!("while :; do {LIMITS}; sleep 0.2; done"));
    c.linux.get_or_insert_with(Default::default).resources =
        Some(resources(64 << 20, 50_000, 512, 0));
    let log = log_path(&p, &c);
    let id = try_create(&mut rt, &p, c).await.unwrap();
    start(&rig, &mut rt, &id).await;

    let last_line = |want: &str| {
        let want = want.to_string();
        let log = log.clone();
        async move {
            let text = log_text(&log);
            let last = text.lines().last().unwrap_or("").to_string();
            last.contains(&want).then_some(last)
        }
    };
    let before = common::eventually(Duration::from_secs(10), || last_line("MEM=67108864"))
        .await
        .unwrap_or_else(|| panic!("limits before:\n{}", log_text(&log)));
    assert!(
        before.contains("QUOTA=50000 PERIOD=100000 SHARES=512"),
        "{before}"
    );

    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(resources(128 << 20, 20_000, 256, 0)),
        windows: None,
        annotations: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", rig.peapod_log()));
    let after = common::eventually(Duration::from_secs(10), || last_line("MEM=134217728"))
        .await
        .unwrap_or_else(|| panic!("limits after:\n{}", log_text(&log)));
    assert!(
        after.contains("QUOTA=20000 PERIOD=100000 SHARES=256"),
        "{after}"
    );

    // The status reports the new resources.
    let st = status(&mut rt, &id).await;
    let r = st
        .resources
        .and_then(|r| r.linux)
        .expect("status resources");
    assert_eq!(r.memory_limit_in_bytes, 128 << 20);
    assert_eq!(r.cpu_quota, 20_000);

    // ... and keeps reporting them after a peapod restart.
    let mut rig = rig;
    rig.kill_peapod();
    rig.start_peapod().await;
    let mut rt = rig.runtime_client().await;
    let r = status(&mut rt, &id)
        .await
        .resources
        .and_then(|r| r.linux)
        .expect("status resources after restart");
    assert_eq!(r.memory_limit_in_bytes, 128 << 20);
    assert_eq!(r.cpu_shares, 256);
}

async fn list_names(rt: &mut Client) -> Vec<String> {
    rt.list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.metadata.unwrap().name)
        .collect()
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_leaves_nothing() {
    use security_profile::ProfileType;
    if !common::require_root() {
        return;
    }
    let (rig, _root, _profile) = rig_with_seccomp_root().await;
    let mut rt = rig.runtime_client().await;
    let p = pod(&rig, &mut rt, "bad").await;
    let outside = rig.dir.path().join("outside.json");
    std::fs::write(&outside, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();

    let cases: Vec<(&str, Edit)> = vec![
        (
            "capabilities.add_capabilities",
            Box::new(|s| s.capabilities = caps(&["CAP_BOGUS"], &[])),
        ),
        (
            "capabilities.drop_capabilities",
            Box::new(|s| s.capabilities = caps(&[], &["NOT_A_CAP"])),
        ),
        (
            "run_as_group",
            Box::new(|s| s.run_as_group = Some(Int64Value { value: 10 })),
        ),
        (
            "run_as_username",
            Box::new(|s| s.run_as_username = "mallory".into()),
        ),
        (
            "seccomp",
            Box::new(move |s| {
                s.seccomp = seccomp_profile(ProfileType::Localhost, outside.to_str().unwrap())
            }),
        ),
        (
            "seccomp",
            Box::new(|s| s.seccomp = seccomp_profile(ProfileType::Localhost, "../../etc/passwd")),
        ),
        ("privileged", Box::new(|s| s.privileged = true)),
    ];
    for (field, edit) in &cases {
        let c = with_sc(config("victim", "true"), |s| edit(s));
        let e = try_create(&mut rt, &p, c).await.expect_err(field);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().contains(field),
            "{field} not named: {}",
            e.message()
        );
        assert!(
            list_names(&mut rt).await.is_empty(),
            "{field}: something created"
        );
    }
    let mut c = config("victim", "true");
    c.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: rig.dir.path().display().to_string(),
        readonly: false,
        recursive_read_only: true,
        ..Default::default()
    }];
    let e = try_create(&mut rt, &p, c)
        .await
        .expect_err("rro without ro");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("recursive_read_only"),
        "{}",
        e.message()
    );

    // Nothing was half-created: the name is free and containerd holds only the sandbox.
    assert!(list_names(&mut rt).await.is_empty());
    assert_eq!(
        rig.ctr_list(&["containers", "ls", "-q"]),
        vec![p.id.clone()]
    );
    let id = try_create(&mut rt, &p, config("victim", "true"))
        .await
        .expect("the name is free again");
    assert_eq!(list_names(&mut rt).await, vec!["victim".to_string()]);
    assert_eq!(rig.ctr_list(&["containers", "ls", "-q"]).len(), 2, "{id}");

    // A pod with a non-namespaced sysctl is refused before anything is made.
    let mut cfg = rig.pod_config("badsysctl");
    cfg.linux.get_or_insert_with(Default::default).sysctls =
        [("vm.swappiness".to_string(), "10".to_string())].into();
    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("non-namespaced sysctl");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("sysctls") && e.message().contains("vm.swappiness"),
        "{}",
        e.message()
    );
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "{pods:?}");
    cfg.linux.as_mut().unwrap().sysctls.clear();
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler: String::new(),
    })
    .await
    .expect("the pod name is free again");
}
