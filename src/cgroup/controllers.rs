//! What this host's cgroups can enforce: the layout the resources are shaped for (v1 or v2,
//! swap accounting), and which optional controllers exist, so that a limit the host cannot
//! enforce is dropped rather than failing the container at `runc create`.
//!
//! kubelet puts a hugepage limit (0) for every page size of the node into every container,
//! whether or not the node has a hugetlb controller; runc refuses a limit whose controller
//! is missing. containerd's CRI drops hugepage limits unless `disable_hugetlb_controller` is
//! false; peapod does the same, and applies the same rule to every optional controller.
//! Detected once at start-up: controllers do not come and go under a running node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::location::{is_v2, ROOT};

/// Host facts the translation of CRI resources depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupHost {
    /// The unified hierarchy (cgroup v2) is mounted at /sys/fs/cgroup.
    pub v2: bool,
    /// Swap can be limited (v1: `memory.memsw.*` exists, i.e. swapaccount=1; v2: `memory.swap.max`).
    pub swap: bool,
}

impl CgroupHost {
    /// Reads this host's cgroup layout.
    pub fn detect() -> Self {
        let root = Path::new(ROOT);
        let v2 = is_v2(root);
        let swap = if v2 {
            // `memory.swap.max` exists in non-root cgroups when swap accounting is on; look in
            // peapod's own cgroup, then in any top-level child.
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("0::")
                            .map(|p| p.trim_start_matches('/').to_string())
                    })
                });
            own.is_some_and(|p| root.join(p).join("memory.swap.max").exists())
                || std::fs::read_dir(root)
                    .map(|rd| {
                        rd.flatten()
                            .any(|e| e.path().join("memory.swap.max").exists())
                    })
                    .unwrap_or(false)
        } else {
            root.join("memory/memory.memsw.limit_in_bytes").exists()
        };
        CgroupHost { v2, swap }
    }
}

/// The optional controllers (and controller features) limits may use on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforceable {
    /// The hugetlb controller exists.
    pub hugetlb: bool,
    /// Hugepage limits are applied: the controller exists and `disable_hugetlb_controller`
    /// is false.
    pub hugepage_limits: bool,
    pub rdma: bool,
    pub pids: bool,
    /// blkio (v1) or io (v2).
    pub blkio: bool,
    /// Block I/O weights: v1 needs `blkio.weight` or `blkio.bfq.weight` (the CFQ or BFQ
    /// scheduler); v2 the io controller.
    pub blkio_weight: bool,
    /// Real-time CPU bandwidth: v1 `cpu.rt_runtime_us` (CONFIG_RT_GROUP_SCHED); runc has no
    /// v2 equivalent.
    pub cpu_rt: bool,
    pub net_cls: bool,
    pub net_prio: bool,
    /// cgroup v2: the controllers `unified` keys may name (`memory.high` → `memory`). None on
    /// v1, where `unified` is refused before this is consulted.
    pub unified: Option<BTreeSet<String>>,
}

impl Default for Enforceable {
    fn default() -> Self {
        Self::all()
    }
}

impl Enforceable {
    /// Nothing is dropped.
    pub fn all() -> Self {
        Enforceable {
            hugetlb: true,
            hugepage_limits: true,
            rdma: true,
            pids: true,
            blkio: true,
            blkio_weight: true,
            cpu_rt: true,
            net_cls: true,
            net_prio: true,
            unified: None,
        }
    }

    /// This host's controllers; hugepage limits only if `disable_hugetlb_controller` is false.
    pub fn detect(disable_hugetlb_controller: bool) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let e = Self::detect_at(Path::new(ROOT), &mountinfo, disable_hugetlb_controller);
        tracing::debug!(controllers = ?e, "cgroup controllers detected");
        e
    }

    /// cgroup v2: the root's `cgroup.controllers`. v1: the hierarchies mounted (a controller
    /// the kernel has but no hierarchy mounts, as `/proc/cgroups` can show, is unusable).
    pub fn detect_at(root: &Path, mountinfo: &str, disable_hugetlb_controller: bool) -> Self {
        if is_v2(root) {
            let ctrls: BTreeSet<String> = std::fs::read_to_string(root.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let has = |c: &str| ctrls.contains(c);
            return Enforceable {
                hugetlb: has("hugetlb"),
                hugepage_limits: has("hugetlb") && !disable_hugetlb_controller,
                rdma: has("rdma"),
                pids: has("pids"),
                blkio: has("io"),
                blkio_weight: has("io"),
                cpu_rt: false,
                // v2 has no net_cls/net_prio; runc ignores them there.
                net_cls: true,
                net_prio: true,
                unified: Some(ctrls),
            };
        }
        let mounts = v1_mounts(mountinfo);
        let file_in = |ctrl: &str, files: &[&str]| {
            mounts
                .get(ctrl)
                .is_some_and(|dir| files.iter().any(|f| dir.join(f).exists()))
        };
        let has = |c: &str| mounts.contains_key(c);
        Enforceable {
            hugetlb: has("hugetlb"),
            hugepage_limits: has("hugetlb") && !disable_hugetlb_controller,
            rdma: has("rdma"),
            pids: has("pids"),
            blkio: has("blkio"),
            blkio_weight: file_in("blkio", &["blkio.weight", "blkio.bfq.weight"]),
            cpu_rt: file_in("cpu", &["cpu.rt_runtime_us"]),
            net_cls: has("net_cls"),
            net_prio: has("net_prio"),
            unified: None,
        }
    }

    /// Removes from `r` every limit this host cannot enforce and returns what was removed,
    /// with why (for the debug log).
    pub fn retain(&self, r: &mut LinuxResources) -> Vec<String> {
        let mut dropped = Vec::new();
        if !self.hugepage_limits && r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
            let why = if self.hugetlb {
                "disable_hugetlb_controller is set"
            } else {
                "no hugetlb controller"
            };
            let sizes: Vec<String> = r
                .hugepage_limits()
                .iter()
                .flatten()
                .map(|h| h.page_size().clone())
                .collect();
            dropped.push(format!("hugepage limits {sizes:?} ({why})"));
            r.set_hugepage_limits(None);
        }
        if !self.rdma && r.rdma().is_some() {
            dropped.push("rdma limits (no rdma controller)".into());
            r.set_rdma(None);
        }
        if !self.pids && r.pids().is_some() {
            dropped.push("pids limit (no pids controller)".into());
            r.set_pids(None);
        }
        if !self.blkio && r.block_io().is_some() {
            dropped.push("block I/O limits (no blkio/io controller)".into());
            r.set_block_io(None);
        }
        if let (false, Some(b)) = (self.blkio_weight, r.block_io_mut().as_mut()) {
            if b.weight().is_some() || b.leaf_weight().is_some() || b.weight_device().is_some() {
                dropped.push("block I/O weights (no weight-capable I/O scheduler)".into());
                b.set_weight(None)
                    .set_leaf_weight(None)
                    .set_weight_device(None);
            }
        }
        if let (false, Some(c)) = (self.cpu_rt, r.cpu_mut().as_mut()) {
            if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
                dropped.push("real-time CPU limits (no cpu.rt_runtime_us)".into());
                c.set_realtime_runtime(None).set_realtime_period(None);
            }
        }
        if let Some(n) = r.network_mut().as_mut() {
            if !self.net_cls && n.class_id().is_some() {
                dropped.push("network class id (no net_cls controller)".into());
                n.set_class_id(None);
            }
            if !self.net_prio && n.priorities().is_some() {
                dropped.push("network priorities (no net_prio controller)".into());
                n.set_priorities(None);
            }
        }
        if let (Some(ctrls), Some(unified)) = (&self.unified, r.unified_mut().as_mut()) {
            let before: BTreeSet<String> = unified.keys().cloned().collect();
            unified.retain(|k, _| {
                let ctrl = k.split('.').next().unwrap_or_default();
                ctrl == "cgroup" || ctrls.contains(ctrl)
            });
            for k in before.iter().filter(|k| !unified.contains_key(*k)) {
                dropped.push(format!("unified {k} (controller not available)"));
            }
        }
        dropped
    }
}

/// cgroup v1 controllers and where their hierarchy is mounted, from `/proc/self/mountinfo`
/// (`… <mount point> <options> - cgroup <source> rw,memory`).
fn v1_mounts(mountinfo: &str) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let (Some(_source), Some(opts)) = (r.next(), r.next()) else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        for o in opts.split(',') {
            out.entry(o.to_string())
                .or_insert_with(|| PathBuf::from(mount_point));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
        LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    /// This project's test hosts: cgroup v1, a hugetlb controller compiled in but mounted
    /// nowhere, blkio without a weight-capable scheduler.
    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / {root}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / {root}/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / {root}/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / {root}/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw
";

    fn kubelet_like() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1 << 30)
                    .build()
                    .unwrap(),
            )
            .hugepage_limits(vec![
                LinuxHugepageLimitBuilder::default()
                    .page_size("2MB")
                    .limit(0)
                    .build()
                    .unwrap(),
                LinuxHugepageLimitBuilder::default()
                    .page_size("1GB")
                    .limit(0)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap()
    }

    fn v1_host(with: &[&str]) -> (tempfile::TempDir, Enforceable, Enforceable) {
        let d = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory", "blkio", "pids"] {
            std::fs::create_dir_all(d.path().join(c)).unwrap();
        }
        for f in with {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        let mi = MOUNTINFO_V1.replace("{root}", d.path().to_str().unwrap());
        let disabled = Enforceable::detect_at(d.path(), &mi, true);
        let enabled = Enforceable::detect_at(d.path(), &mi, false);
        (d, disabled, enabled)
    }

    #[test]
    fn v1_controllers_come_from_mounted_hierarchies() {
        let (_d, e, _) = v1_host(&["cpu/cpu.rt_runtime_us"]);
        assert!(!e.hugetlb && !e.hugepage_limits && !e.rdma && !e.net_cls);
        assert!(e.pids && e.blkio && e.cpu_rt);
        assert!(
            !e.blkio_weight,
            "blkio without blkio.weight cannot take weights"
        );
        let (_d, e, _) = v1_host(&["blkio/blkio.bfq.weight"]);
        assert!(e.blkio_weight && !e.cpu_rt);
    }

    #[test]
    fn hugepage_limits_need_the_controller_and_the_setting() {
        let (_d, disabled, enabled) = v1_host(&[]);
        for e in [&disabled, &enabled] {
            let mut r = kubelet_like();
            let dropped = e.retain(&mut r);
            assert!(r.hugepage_limits().is_none(), "{e:?}");
            assert!(dropped[0].contains("no hugetlb controller"), "{dropped:?}");
            assert_eq!(r.memory().unwrap().limit(), Some(1 << 30), "others stay");
        }
        let mi = MOUNTINFO_V1.replace("{root}", "/x")
            + "42 31 0:39 / /x/hugetlb rw - cgroup cgroup rw,hugetlb\n";
        let with = Enforceable::detect_at(Path::new("/nonexistent"), &mi, true);
        assert!(with.hugetlb && !with.hugepage_limits);
        let mut r = kubelet_like();
        let dropped = with.retain(&mut r);
        assert!(r.hugepage_limits().is_none());
        assert!(
            dropped[0].contains("disable_hugetlb_controller"),
            "{dropped:?}"
        );
        let allowed = Enforceable::detect_at(Path::new("/nonexistent"), &mi, false);
        let mut r = kubelet_like();
        assert!(allowed.retain(&mut r).is_empty());
        assert_eq!(r.hugepage_limits().as_ref().unwrap().len(), 2);
    }

    #[test]
    fn other_optional_limits_are_dropped_without_their_controller() {
        let none = Enforceable {
            hugetlb: false,
            hugepage_limits: false,
            rdma: false,
            pids: false,
            blkio: true,
            blkio_weight: false,
            cpu_rt: false,
            net_cls: false,
            net_prio: false,
            unified: None,
        };
        let mut r = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .realtime_runtime(1000i64)
                    .realtime_period(10000u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let dropped = none.retain(&mut r);
        assert_eq!(dropped.len(), 3, "{dropped:?}");
        assert!(r.pids().is_none());
        assert_eq!(r.block_io().as_ref().unwrap().weight(), None);
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.realtime_runtime(), None);
        assert_eq!(
            cpu.shares(),
            Some(512),
            "mandatory controllers are untouched"
        );
        let mut again = r.clone();
        assert!(Enforceable::all().retain(&mut again).is_empty());
        assert_eq!(again, r);
    }

    #[test]
    fn v2_unified_keys_of_absent_controllers_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let e = Enforceable::detect_at(d.path(), "", false);
        assert!(!e.hugetlb && !e.hugepage_limits && !e.cpu_rt && !e.rdma);
        assert!(e.pids && e.blkio && e.blkio_weight);
        let mut r = kubelet_like();
        r.set_unified(Some(
            [
                ("memory.high".to_string(), "1000000".to_string()),
                ("hugetlb.2MB.max".to_string(), "0".to_string()),
                ("cgroup.freeze".to_string(), "0".to_string()),
            ]
            .into(),
        ));
        let dropped = e.retain(&mut r);
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        let u = r.unified().as_ref().unwrap();
        assert!(u.contains_key("memory.high") && u.contains_key("cgroup.freeze"));
        assert!(!u.contains_key("hugetlb.2MB.max"));
    }

    #[test]
    fn this_host_can_always_run_kubelets_hugepage_limits() {
        // Whatever this machine has: with the default setting, nothing hugetlb is kept.
        let mut r = kubelet_like();
        Enforceable::detect(true).retain(&mut r);
        assert!(r.hugepage_limits().is_none());
    }
}
