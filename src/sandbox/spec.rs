//! The OCI runtime spec of a pod's pause (infra) container: it owns the pod's namespaces.

use std::path::Path;

use oci_spec::image::ImageConfiguration;
use serde_json::{json, Value};

use crate::cri;
use crate::error::{Error, Result};
use crate::keys::annotation as ann;

/// containerd's CRI plugin gives the pause process -998 so the OOM killer spares it.
const SANDBOX_OOM_SCORE_ADJ: i32 = -998;

pub struct PauseSpecInput<'a> {
    pub id: &'a str,
    pub config: &'a cri::PodSandboxConfig,
    pub image: &'a ImageConfiguration,
    pub hostname: &'a str,
    /// The pinned network namespace, None for a host-network pod.
    pub netns: Option<&'a Path>,
    pub cgroups_path: String,
    /// peapod's own oom_score_adj: runc cannot set a lower one without CAP_SYS_RESOURCE.
    pub min_oom_score_adj: i32,
}

pub fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

pub fn pause_spec(input: &PauseSpecInput<'_>) -> Result<Value> {
    let cfg = input.image.config().clone().unwrap_or_default();
    let mut args: Vec<String> = cfg.entrypoint().clone().unwrap_or_default();
    args.extend(cfg.cmd().clone().unwrap_or_default());
    if args.is_empty() {
        return Err(Error::invalid(
            "sandbox image has neither entrypoint nor cmd to run as the pause process",
        ));
    }
    let env: Vec<String> = cfg.env().clone().unwrap_or_else(|| {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]
    });
    let cwd = cfg
        .working_dir()
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let ns = namespace_options(input.config);
    let host_net = ns.network == cri::NamespaceMode::Node as i32;
    let host_pid = ns.pid == cri::NamespaceMode::Node as i32;
    let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;

    let sc = input
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let uid = sc
        .and_then(|s| s.run_as_user.as_ref())
        .map(|u| u.value)
        .unwrap_or(0);
    let gid = sc
        .and_then(|s| s.run_as_group.as_ref())
        .map(|g| g.value)
        .unwrap_or(0);
    let groups: Vec<i64> = sc
        .map(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    let privileged = sc.map(|s| s.privileged).unwrap_or(false);

    let mut namespaces = vec![json!({"type": "mount"})];
    if !host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    if !host_ipc {
        namespaces.push(json!({"type": "ipc"}));
    }
    // A host-network pod keeps the host's hostname too, as UTS follows the network mode.
    if !host_net {
        namespaces.push(json!({"type": "uts"}));
    }
    if let Some(p) = input.netns {
        namespaces.push(json!({"type": "network", "path": p}));
    }

    let mut sysctl = serde_json::Map::new();
    if let Some(l) = input.config.linux.as_ref() {
        for (k, v) in &l.sysctls {
            sysctl.insert(k.clone(), json!(v));
        }
    }

    let mut annotations = serde_json::Map::new();
    let meta = input.config.metadata.clone().unwrap_or_default();
    for (k, v) in &input.config.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    annotations.insert(
        ann::CONTAINER_TYPE.into(),
        json!(ann::CONTAINER_TYPE_SANDBOX),
    );
    annotations.insert(ann::SANDBOX_ID.into(), json!(input.id));
    annotations.insert(ann::SANDBOX_NAME.into(), json!(meta.name));
    annotations.insert(ann::SANDBOX_NAMESPACE.into(), json!(meta.namespace));
    annotations.insert(ann::SANDBOX_UID.into(), json!(meta.uid));
    annotations.insert(
        ann::SANDBOX_LOG_DIR.into(),
        json!(input.config.log_directory),
    );

    let caps = json!(crate::spec::security::DEFAULT_CAPABILITIES);
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": input.cgroups_path,
        "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        "sysctl": sysctl,
    });
    if !privileged {
        linux["maskedPaths"] = json!(crate::spec::security::DEFAULT_MASKED_PATHS);
        linux["readonlyPaths"] = json!(crate::spec::security::DEFAULT_READONLY_PATHS);
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true,
            "oomScoreAdj": SANDBOX_OOM_SCORE_ADJ.max(input.min_oom_score_adj),
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": if host_net { String::new() } else { input.hostname.to_string() },
        "mounts": default_mounts(privileged),
        "annotations": annotations,
        "linux": linux,
    });
    Ok(spec)
}

/// The pause container's mounts. A privileged pod's /sys is mounted read-write: sysfs keeps
/// one superblock per network namespace, and the first mount's read-only flag (the pause's,
/// which owns the pod's network namespace) sticks to it, so a read-only mount here would make
/// every privileged container's /sys read-only too.
fn default_mounts(privileged: bool) -> Value {
    let sys = if privileged { "rw" } else { "ro" };
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ])
}

/// peapod's own oom_score_adj; children may not go below it without CAP_SYS_RESOURCE.
pub fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Checks the pod-level security context the pause spec applies: ids are valid, the pod's
/// namespace modes exist at pod level, and sysctls are namespaced ([`validate_sysctls`]).
pub fn validate_security(config: &cri::PodSandboxConfig) -> Result<()> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    if let Some(sc) = sc {
        let id_ok = |v: i64| u32::try_from(v).is_ok();
        if let Some(u) = sc.run_as_user.as_ref().filter(|u| !id_ok(u.value)) {
            return Err(Error::invalid(format!(
                "linux.security_context.run_as_user: {} is not a valid id",
                u.value
            )));
        }
        if let Some(g) = sc.run_as_group.as_ref() {
            if sc.run_as_user.is_none() {
                return Err(Error::invalid(
                    "linux.security_context.run_as_group is set without run_as_user",
                ));
            }
            if !id_ok(g.value) {
                return Err(Error::invalid(format!(
                    "linux.security_context.run_as_group: {} is not a valid id",
                    g.value
                )));
            }
        }
        if let Some(g) = sc.supplemental_groups.iter().find(|g| !id_ok(**g)) {
            return Err(Error::invalid(format!(
                "linux.security_context.supplemental_groups: {g} is not a valid id"
            )));
        }
        let ns = namespace_options(config);
        for (field, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
            let ok = mode == cri::NamespaceMode::Pod as i32
                || mode == cri::NamespaceMode::Node as i32
                || (field == "pid" && mode == cri::NamespaceMode::Container as i32);
            if !ok {
                return Err(Error::invalid(format!(
                    "linux.security_context.namespace_options.{field}: mode {mode} is not valid \
                     for a pod (POD or NODE)"
                )));
            }
        }
    }
    validate_sysctls(config)
}

/// Sysctls a pod may set must be namespaced, and in a namespace the pod owns.
pub fn validate_sysctls(config: &cri::PodSandboxConfig) -> Result<()> {
    let ns = namespace_options(config);
    let host_net = ns.network == cri::NamespaceMode::Node as i32;
    let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
    let Some(l) = config.linux.as_ref() else {
        return Ok(());
    };
    for k in l.sysctls.keys() {
        let ipc = k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem"
            || k.starts_with("fs.mqueue.");
        let net = k.starts_with("net.");
        let uts = k == "kernel.hostname" || k == "kernel.domainname";
        if uts && host_net {
            return Err(Error::invalid(format!(
                "linux.sysctls: {k} is a UTS sysctl and the pod uses the host's UTS namespace \
                 (host network)"
            )));
        }
        if ipc && host_ipc {
            return Err(Error::invalid(format!(
                "linux.sysctls: {k} is an IPC sysctl and the pod uses the host IPC namespace"
            )));
        }
        if net && host_net {
            return Err(Error::invalid(format!(
                "linux.sysctls: {k} is a network sysctl and the pod uses the host network"
            )));
        }
        if !(ipc || net || uts) {
            return Err(Error::invalid(format!(
                "linux.sysctls: {k} is not a namespaced sysctl"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Driver;

    fn image(entry: &[&str]) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": entry},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap()
    }

    #[test]
    fn pause_spec_joins_pinned_netns_and_clamps_oom() {
        let cfg = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                namespace: "n".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let img = image(&["/pause"]);
        let s = pause_spec(&PauseSpecInput {
            id: "abc",
            config: &cfg,
            image: &img,
            hostname: "h",
            netns: Some(Path::new("/var/run/netns/x")),
            cgroups_path: Driver::Cgroupfs.sandbox_cgroups_path("/kubepods/pod1", "abc"),
            min_oom_score_adj: -500,
        })
        .unwrap();
        assert_eq!(s["process"]["oomScoreAdj"], -500);
        let eff = s["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(eff.contains(&json!("CAP_NET_RAW")), "{eff:?}");
        assert_eq!(eff.len(), 14);
        assert!(s["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore")));
        assert_eq!(s["linux"]["cgroupsPath"], "/kubepods/pod1/abc");
        assert_eq!(s["annotations"][ann::SANDBOX_ID], "abc");
        assert_eq!(s["annotations"][ann::CONTAINER_TYPE], "sandbox");
        assert_eq!(s["hostname"], "h");
        let nss = s["linux"]["namespaces"].as_array().unwrap();
        assert!(nss
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/var/run/netns/x"));
        assert_eq!(s["linux"]["sysctl"]["net.ipv4.ip_forward"], "1");
        let sys = |s: &Value| {
            s["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/sys")
                .unwrap()["options"]
                .clone()
        };
        assert!(sys(&s).as_array().unwrap().contains(&json!("ro")));
        let mut privileged = cfg.clone();
        privileged.linux.as_mut().unwrap().security_context =
            Some(cri::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            });
        let s = pause_spec(&PauseSpecInput {
            id: "abc",
            config: &privileged,
            image: &img,
            hostname: "h",
            netns: Some(Path::new("/var/run/netns/x")),
            cgroups_path: Driver::Cgroupfs.sandbox_cgroups_path("/kubepods/pod1", "abc"),
            min_oom_score_adj: -500,
        })
        .unwrap();
        assert!(sys(&s).as_array().unwrap().contains(&json!("rw")));
        assert!(s["linux"]["maskedPaths"].is_null());
    }

    #[test]
    fn pod_security_context_is_validated() {
        let mut cfg = cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    run_as_group: Some(cri::Int64Value { value: 1000 }),
                    supplemental_groups: vec![10],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_security(&cfg).is_ok());
        let sc = |c: &mut cri::PodSandboxConfig| {
            c.linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap()
                .clone()
        };
        let mut bad = cfg.clone();
        let mut s = sc(&mut bad);
        s.run_as_user = Some(cri::Int64Value { value: -1 });
        bad.linux.as_mut().unwrap().security_context = Some(s);
        let e = validate_security(&bad).unwrap_err().to_string();
        assert!(e.contains("run_as_user"), "{e}");

        let mut s = sc(&mut cfg);
        s.run_as_user = None;
        cfg.linux.as_mut().unwrap().security_context = Some(s.clone());
        let e = validate_security(&cfg).unwrap_err().to_string();
        assert!(e.contains("run_as_group"), "{e}");

        s.run_as_group = None;
        s.namespace_options = Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Target as i32,
            ..Default::default()
        });
        cfg.linux.as_mut().unwrap().security_context = Some(s.clone());
        let e = validate_security(&cfg).unwrap_err().to_string();
        assert!(e.contains("namespace_options.pid"), "{e}");

        s.namespace_options = Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        });
        cfg.linux.as_mut().unwrap().security_context = Some(s);
        cfg.linux.as_mut().unwrap().sysctls =
            [("kernel.domainname".to_string(), "x".to_string())].into();
        let e = validate_security(&cfg).unwrap_err().to_string();
        assert!(e.contains("UTS"), "{e}");
    }

    #[test]
    fn sysctls_must_be_namespaced_for_the_mode() {
        let mut cfg = cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                sysctls: [("kernel.shmmax".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_sysctls(&cfg).is_ok());
        cfg.linux.as_mut().unwrap().sysctls =
            [("vm.swappiness".to_string(), "1".to_string())].into();
        assert!(validate_sysctls(&cfg).is_err());
        cfg.linux.as_mut().unwrap().sysctls =
            [("net.core.somaxconn".to_string(), "1".to_string())].into();
        cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = validate_sysctls(&cfg).unwrap_err();
        assert!(e.to_string().contains("host network"));
    }
}
