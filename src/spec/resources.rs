//! CRI `LinuxContainerResources` → OCI `LinuxResources` (and the process's `oom_score_adj`).
//!
//! Mirrors containerd's `WithResources`: zero means "not set"; a memory limit without a swap
//! limit sets swap equal to the limit (no swap use) when the swap controller exists; `unified`
//! keys only exist on cgroup v2.

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResources, LinuxResourcesBuilder,
};

pub use crate::cgroup::CgroupHost;
use crate::cgroup::Enforceable;
use crate::cri;
use crate::error::{oci_err, Error, Result};

/// [`linux_resources`] without the limits this host's cgroups cannot enforce (see
/// [`crate::cgroup::controllers`]): a container must never fail over a limit the node cannot
/// apply. What is dropped is logged at debug level for `what` (the container).
pub fn enforceable_resources(
    res: Option<&cri::LinuxContainerResources>,
    host: CgroupHost,
    limits: &Enforceable,
    devices: Vec<LinuxDeviceCgroup>,
    what: &str,
) -> Result<LinuxResources> {
    let mut r = linux_resources(res, host, devices)?;
    let dropped = limits.retain(&mut r);
    if !dropped.is_empty() {
        tracing::debug!(%what, ?dropped, "limits this host cannot enforce were left out");
    }
    Ok(r)
}

/// Translates the CRI resources. `devices` are the device-cgroup rules (built elsewhere).
pub fn linux_resources(
    res: Option<&cri::LinuxContainerResources>,
    host: CgroupHost,
    devices: Vec<LinuxDeviceCgroup>,
) -> Result<LinuxResources> {
    let mut b = LinuxResourcesBuilder::default().devices(devices);
    let Some(r) = res else {
        return b.build().map_err(oci_err);
    };

    let mut cpu = LinuxCpuBuilder::default();
    let mut cpu_set = false;
    if r.cpu_period != 0 {
        cpu = cpu.period(non_negative(r.cpu_period, "resources.cpu_period")?);
        cpu_set = true;
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
        cpu_set = true;
    }
    if r.cpu_shares != 0 {
        cpu = cpu.shares(non_negative(r.cpu_shares, "resources.cpu_shares")?);
        cpu_set = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(validate_cpuset(&r.cpuset_cpus, "resources.cpuset_cpus")?);
        cpu_set = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(validate_cpuset(&r.cpuset_mems, "resources.cpuset_mems")?);
        cpu_set = true;
    }
    if cpu_set {
        b = b.cpu(cpu.build().map_err(oci_err)?);
    }

    let mut mem = LinuxMemoryBuilder::default();
    let mut mem_set = false;
    if r.memory_limit_in_bytes != 0 {
        mem = mem.limit(r.memory_limit_in_bytes);
        mem_set = true;
        if r.memory_swap_limit_in_bytes == 0 && host.swap {
            // Swap limit equal to the memory limit: the container may not use swap.
            mem = mem.swap(r.memory_limit_in_bytes);
        }
    }
    if r.memory_swap_limit_in_bytes != 0 && host.swap {
        mem = mem.swap(r.memory_swap_limit_in_bytes);
        mem_set = true;
    }
    if mem_set {
        b = b.memory(mem.build().map_err(oci_err)?);
    }

    if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::with_capacity(r.hugepage_limits.len());
        for h in &r.hugepage_limits {
            if h.page_size.is_empty() {
                return Err(Error::invalid("resources.hugepage_limits: empty page_size"));
            }
            let limit = i64::try_from(h.limit).map_err(|_| {
                Error::invalid(format!(
                    "resources.hugepage_limits[{}]: limit {} is too large",
                    h.page_size, h.limit
                ))
            })?;
            limits.push(
                LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(limit)
                    .build()
                    .map_err(oci_err)?,
            );
        }
        b = b.hugepage_limits(limits);
    }

    if !r.unified.is_empty() {
        if !host.v2 {
            return Err(Error::invalid(
                "resources.unified is only supported on cgroup v2 hosts; this host runs cgroup v1",
            ));
        }
        b = b.unified(r.unified.clone());
    }
    b.build().map_err(oci_err)
}

/// The `oom_score_adj` to give the container: the request's, raised to peapod's own (a process
/// without CAP_SYS_RESOURCE may not lower it, and runc would fail the create), within the
/// kernel's range [-1000, 1000].
pub fn oom_score_adj(res: Option<&cri::LinuxContainerResources>, own: i32) -> i32 {
    let requested = res.map_or(0, |r| r.oom_score_adj);
    let clamped = requested.clamp(-1000, 1000) as i32;
    clamped.max(own)
}

/// peapod's own `oom_score_adj`, 0 when unreadable.
pub fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// containerd's default device-cgroup rules: deny everything, then allow `mknod` of any
/// device and the standard character devices a process expects.
pub fn default_device_rules() -> Result<Vec<LinuxDeviceCgroup>> {
    let rule = |allow: bool,
                typ: LinuxDeviceType,
                major: Option<i64>,
                minor: Option<i64>,
                access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access.to_string());
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().map_err(oci_err)
    };
    use LinuxDeviceType::{A, B, C};
    Ok(vec![
        rule(false, A, None, None, "rwm")?,
        rule(true, C, None, None, "m")?,
        rule(true, B, None, None, "m")?,
        rule(true, C, Some(1), Some(3), "rwm")?, // /dev/null
        rule(true, C, Some(1), Some(8), "rwm")?, // /dev/random
        rule(true, C, Some(1), Some(7), "rwm")?, // /dev/full
        rule(true, C, Some(5), Some(0), "rwm")?, // /dev/tty
        rule(true, C, Some(1), Some(5), "rwm")?, // /dev/zero
        rule(true, C, Some(1), Some(9), "rwm")?, // /dev/urandom
        rule(true, C, Some(5), Some(1), "rwm")?, // /dev/console
        rule(true, C, Some(136), None, "rwm")?,  // /dev/pts/*
        rule(true, C, Some(5), Some(2), "rwm")?, // /dev/ptmx
        rule(true, C, Some(10), Some(200), "rwm")?, // /dev/net/tun
    ])
}

/// The single rule of a privileged container: every device, every access.
pub fn allow_all_devices() -> Result<Vec<LinuxDeviceCgroup>> {
    Ok(vec![LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::A)
        .access("rwm".to_string())
        .build()
        .map_err(oci_err)?])
}

fn non_negative(v: i64, field: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::invalid(format!("{field}: {v} must not be negative")))
}

/// A cpuset list such as `0-3,8,10-11`.
fn validate_cpuset(s: &str, field: &str) -> Result<String> {
    let ok = s.split(',').all(|part| {
        let mut it = part.splitn(2, '-');
        let a = it.next().map(|x| x.trim().parse::<u32>());
        match (a, it.next()) {
            (Some(Ok(_)), None) => true,
            (Some(Ok(lo)), Some(hi)) => hi.trim().parse::<u32>().is_ok_and(|hi| hi >= lo),
            _ => false,
        }
    });
    if ok {
        Ok(s.to_string())
    } else {
        Err(Error::invalid(format!(
            "{field}: {s:?} is not a cpu/node list"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: CgroupHost = CgroupHost {
        v2: false,
        swap: true,
    };
    const V2: CgroupHost = CgroupHost {
        v2: true,
        swap: true,
    };

    fn res() -> cri::LinuxContainerResources {
        cri::LinuxContainerResources::default()
    }

    #[test]
    fn none_gives_only_device_rules() {
        let r = linux_resources(None, V1, default_device_rules().unwrap()).unwrap();
        assert!(r.cpu().is_none() && r.memory().is_none());
        let d = r.devices().as_ref().unwrap();
        assert!(!d[0].allow() && d[0].typ() == Some(LinuxDeviceType::A));
        assert_eq!(d.len(), 13);
    }

    #[test]
    fn zero_fields_are_unset() {
        let r = linux_resources(Some(&res()), V1, vec![]).unwrap();
        assert!(r.cpu().is_none() && r.memory().is_none() && r.hugepage_limits().is_none());
    }

    #[test]
    fn cpu_fields() {
        let mut c = res();
        c.cpu_period = 100_000;
        c.cpu_quota = 50_000;
        c.cpu_shares = 512;
        c.cpuset_cpus = "0-1,3".into();
        c.cpuset_mems = "0".into();
        let r = linux_resources(Some(&c), V1, vec![]).unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1,3"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
    }

    #[test]
    fn negative_shares_and_bad_cpuset_are_invalid() {
        let mut c = res();
        c.cpu_shares = -2;
        assert!(matches!(
            linux_resources(Some(&c), V1, vec![]),
            Err(Error::InvalidArgument(m)) if m.contains("cpu_shares")
        ));
        let mut c = res();
        c.cpuset_cpus = "3-1".into();
        assert!(matches!(
            linux_resources(Some(&c), V1, vec![]),
            Err(Error::InvalidArgument(m)) if m.contains("cpuset_cpus")
        ));
    }

    #[test]
    fn memory_limit_disables_swap_by_default() {
        let mut c = res();
        c.memory_limit_in_bytes = 64 << 20;
        let r = linux_resources(Some(&c), V1, vec![]).unwrap();
        let m = r.memory().as_ref().unwrap();
        assert_eq!(m.limit(), Some(64 << 20));
        assert_eq!(m.swap(), Some(64 << 20));
        let r = linux_resources(
            Some(&c),
            CgroupHost {
                v2: false,
                swap: false,
            },
            vec![],
        )
        .unwrap();
        assert_eq!(r.memory().as_ref().unwrap().swap(), None);
    }

    #[test]
    fn explicit_swap_limit() {
        let mut c = res();
        c.memory_limit_in_bytes = 64 << 20;
        c.memory_swap_limit_in_bytes = 128 << 20;
        let r = linux_resources(Some(&c), V2, vec![]).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().swap(), Some(128 << 20));
    }

    #[test]
    fn hugepages() {
        let mut c = res();
        c.hugepage_limits = vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }];
        let r = linux_resources(Some(&c), V1, vec![]).unwrap();
        let h = &r.hugepage_limits().as_ref().unwrap()[0];
        assert_eq!(h.page_size(), "2MB");
        assert_eq!(h.limit(), 4 << 20);
    }

    #[test]
    fn unified_only_on_v2() {
        let mut c = res();
        c.unified.insert("memory.high".into(), "1000000".into());
        let r = linux_resources(Some(&c), V2, vec![]).unwrap();
        assert_eq!(
            r.unified()
                .as_ref()
                .unwrap()
                .get("memory.high")
                .map(String::as_str),
            Some("1000000")
        );
        assert!(matches!(
            linux_resources(Some(&c), V1, vec![]),
            Err(Error::InvalidArgument(m)) if m.contains("unified")
        ));
    }

    #[test]
    fn oom_score_adj_is_clamped_to_own() {
        let mut c = res();
        c.oom_score_adj = -998;
        assert_eq!(oom_score_adj(Some(&c), -500), -500);
        assert_eq!(oom_score_adj(Some(&c), -999), -998);
        c.oom_score_adj = 5000;
        assert_eq!(oom_score_adj(Some(&c), 0), 1000);
        assert_eq!(oom_score_adj(None, 0), 0);
        assert_eq!(oom_score_adj(None, 300), 300);
    }

    #[test]
    fn allow_all_is_one_rule() {
        let d = allow_all_devices().unwrap();
        assert_eq!(d.len(), 1);
        assert!(d[0].allow());
        assert_eq!(d[0].access().as_deref(), Some("rwm"));
    }
}
