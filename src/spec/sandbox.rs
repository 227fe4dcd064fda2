//! The OCI runtime spec of a pod's pause (infra) container: it owns the pod's namespaces.
//!
//! Built with the same oci-spec types and the same defaults as a workload container's
//! ([`super::container`]): default mounts ([`mounts::default_mounts`]), capabilities, masked
//! and read-only paths ([`security`]), so the two never drift apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    LinuxDeviceCgroupBuilder, LinuxNamespace, LinuxNamespaceType, LinuxResources, Spec,
};

use super::{base, mounts, security};
use crate::cri;
use crate::error::{oci_err, Error, Result};
use crate::keys::annotation as ann;

/// containerd's CRI plugin gives the pause process -998 so the OOM killer spares it.
const SANDBOX_OOM_SCORE_ADJ: i32 = -998;

/// Everything [`sandbox_spec`] needs.
pub struct SandboxSpecInput<'a> {
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

/// The pod's namespace modes as the config gives them (all POD when unset).
pub fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn ns(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    LinuxNamespace::default()
        .set_typ(typ)
        .set_path(path)
        .clone()
}

/// Builds the pause container's spec: the image's entrypoint and cmd, the pod-level user,
/// new mount/PID/IPC/UTS namespaces (unless the pod shares the host's), the pinned network
/// namespace, the pod's sysctls, and the annotations the runc shim groups a pod by.
pub fn sandbox_spec(input: &SandboxSpecInput<'_>) -> Result<Spec> {
    let cfg = input.image.config().clone().unwrap_or_default();
    let mut args: Vec<String> = cfg.entrypoint().clone().unwrap_or_default();
    args.extend(cfg.cmd().clone().unwrap_or_default());
    if args.is_empty() {
        return Err(Error::invalid(
            "sandbox image has neither entrypoint nor cmd to run as the pause process",
        ));
    }
    let env: Vec<String> = cfg
        .env()
        .clone()
        .unwrap_or_else(|| vec![format!("PATH={}", super::container::DEFAULT_PATH)]);
    let cwd = cfg
        .working_dir()
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let nsopts = namespace_options(input.config);
    let host_net = nsopts.network == cri::NamespaceMode::Node as i32;
    let host_pid = nsopts.pid == cri::NamespaceMode::Node as i32;
    let host_ipc = nsopts.ipc == cri::NamespaceMode::Node as i32;

    let sc = input
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    // Validated by the sandbox module: ids fit in 32 bits.
    let id = |v: i64| u32::try_from(v).unwrap_or(0);
    let uid = sc
        .and_then(|s| s.run_as_user.as_ref())
        .map_or(0, |u| id(u.value));
    let gid = sc
        .and_then(|s| s.run_as_group.as_ref())
        .map_or(0, |g| id(g.value));
    let groups: Vec<u32> = sc
        .map(|s| s.supplemental_groups.iter().map(|g| id(*g)).collect())
        .unwrap_or_default();
    let privileged = sc.is_some_and(|s| s.privileged);

    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, None)];
    if !host_pid {
        namespaces.push(ns(LinuxNamespaceType::Pid, None));
    }
    if !host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, None));
    }
    // A host-network pod keeps the host's hostname too, as UTS follows the network mode.
    if !host_net {
        namespaces.push(ns(LinuxNamespaceType::Uts, None));
    }
    if let Some(p) = input.netns {
        namespaces.push(ns(LinuxNamespaceType::Network, Some(p.to_path_buf())));
    }

    let sysctl: HashMap<String, String> = input
        .config
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();

    let meta = input.config.metadata.clone().unwrap_or_default();
    let mut annotations: HashMap<String, String> = input.config.annotations.clone();
    for (k, v) in [
        (ann::CONTAINER_TYPE, ann::CONTAINER_TYPE_SANDBOX.to_string()),
        (ann::SANDBOX_ID, input.id.to_string()),
        (ann::SANDBOX_NAME, meta.name),
        (ann::SANDBOX_NAMESPACE, meta.namespace),
        (ann::SANDBOX_UID, meta.uid),
        (ann::SANDBOX_LOG_DIR, input.config.log_directory.clone()),
    ] {
        annotations.insert(k.to_string(), v);
    }

    // The pause process gets the default capabilities whatever the pod asks for, as in
    // containerd: it only sleeps.
    let caps = security::capabilities(None, false, &security::HostSecurity::default())?;
    let mut process = base::process();
    process
        .set_user(base::user(uid, gid, groups))
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_capabilities(Some(caps))
        .set_no_new_privileges(Some(true))
        .set_oom_score_adj(Some(SANDBOX_OOM_SCORE_ADJ.max(input.min_oom_score_adj)));

    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm".to_string())
        .build()
        .map_err(oci_err)?;
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(vec![deny_all]));

    let mut linux = base::linux();
    linux
        .set_sysctl(Some(sysctl))
        .set_resources(Some(resources))
        .set_cgroups_path(Some(PathBuf::from(&input.cgroups_path)))
        .set_namespaces(Some(namespaces))
        .set_masked_paths((!privileged).then(|| security::masked_paths(None, false)))
        .set_readonly_paths((!privileged).then(|| security::readonly_paths(None, false)));

    let hostname = if host_net { "" } else { input.hostname };
    let spec = base::spec(
        true,
        mounts::sandbox_mounts(privileged)?,
        process,
        Some(hostname.to_string()),
        annotations,
        linux,
    );
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Driver;
    use serde_json::{json, Value};

    fn image(entry: &[&str]) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": entry},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap()
    }

    /// The spec as runc reads it.
    fn pause_spec(input: &SandboxSpecInput<'_>) -> Result<Value> {
        Ok(serde_json::to_value(sandbox_spec(input)?).unwrap())
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
        let input = |config| SandboxSpecInput {
            id: "abc",
            config,
            image: &img,
            hostname: "h",
            netns: Some(Path::new("/var/run/netns/x")),
            cgroups_path: Driver::Cgroupfs.sandbox_cgroups_path("/kubepods/pod1", "abc"),
            min_oom_score_adj: -500,
        };
        let s = pause_spec(&input(&cfg)).unwrap();
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
        let s = pause_spec(&input(&privileged)).unwrap();
        assert!(sys(&s).as_array().unwrap().contains(&json!("rw")));
        assert!(s["linux"]["maskedPaths"].is_null());
    }
}
