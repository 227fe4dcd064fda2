//! What a pod may ask of its sandbox: the pod-level security context and sysctls, checked
//! before anything is made (the pause container's spec itself is [`crate::spec::sandbox`]).

use crate::cri;
use crate::error::{Error, Result};
use crate::spec::sandbox::namespace_options;

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
