//! Reading a cgroup's CPU, memory and process counters from cgroupfs, on cgroup v1 (one
//! hierarchy per controller) and v2 (the unified hierarchy).
//!
//! Stats are read from the files rather than from containerd's `Tasks.Metrics`: that answer is
//! an `Any` holding `io.containerd.cgroups.v1.Metrics` or `...v2.Metrics`, types the
//! containerd-client crate does not generate, and the pod-level cgroup has no task at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where cgroupfs is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup located on this host: the unified directory on v2, one directory per controller
/// on v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    V1 {
        cpuacct: PathBuf,
        memory: PathBuf,
        pids: PathBuf,
    },
    V2(PathBuf),
}

/// One reading of a cgroup's counters. Fields the kernel did not offer are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Cumulative CPU time of all tasks, in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    pub memory: Option<Memory>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    /// usage − inactive file pages: what the kernel cannot reclaim easily, and what kubelet
    /// evicts on.
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// None when unlimited.
    pub limit: Option<u64>,
}

impl Sample {
    /// Adds `other`'s counters (for a pod without a pod-level cgroup of its own).
    pub fn add(&mut self, other: &Sample) {
        fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                (a, b) => a.or(b),
            }
        }
        self.cpu_usage_ns = sum(self.cpu_usage_ns, other.cpu_usage_ns);
        self.pids = sum(self.pids, other.pids);
        self.memory = match (self.memory, other.memory) {
            (Some(a), Some(b)) => Some(Memory {
                usage: a.usage.saturating_add(b.usage),
                working_set: a.working_set.saturating_add(b.working_set),
                rss: a.rss.saturating_add(b.rss),
                page_faults: a.page_faults.saturating_add(b.page_faults),
                major_page_faults: a.major_page_faults.saturating_add(b.major_page_faults),
                limit: None,
            }),
            (a, b) => a.or(b),
        };
    }
}

/// True when the unified hierarchy is mounted at `root` (a hybrid host counts as v1: its
/// controllers live in the v1 hierarchies).
pub fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

impl Cgroup {
    /// The cgroup at `rel` (a path relative to each hierarchy's root, like `/kubepods/pod1/abc`).
    pub fn at(root: &Path, v2: bool, rel: &str) -> Cgroup {
        let rel = rel.trim_start_matches('/');
        if v2 {
            Cgroup::V2(root.join(rel))
        } else {
            Cgroup::V1 {
                cpuacct: root.join("cpuacct").join(rel),
                memory: root.join("memory").join(rel),
                pids: root.join("pids").join(rel),
            }
        }
    }

    /// The cgroup of process `pid`, from `/proc/<pid>/cgroup`.
    pub fn of_pid(root: &Path, v2: bool, pid: u32) -> Result<Cgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| Error::not_found(format!("cgroup of process {pid}: {e}")))?;
        Cgroup::from_proc_cgroup(root, v2, &text)
            .ok_or_else(|| Error::not_found(format!("process {pid} has no cgroup we can read")))
    }

    /// Parses `/proc/<pid>/cgroup` (`hierarchy-id:controllers:path` lines).
    pub fn from_proc_cgroup(root: &Path, v2: bool, text: &str) -> Option<Cgroup> {
        let mut by_ctrl: HashMap<&str, &str> = HashMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ctrls.is_empty() {
                by_ctrl.insert("", path);
            }
            for c in ctrls.split(',') {
                by_ctrl.insert(c, path);
            }
        }
        if v2 {
            let p = by_ctrl.get("")?;
            return Some(Cgroup::V2(root.join(p.trim_start_matches('/'))));
        }
        let memory = by_ctrl.get("memory")?;
        let cpuacct = by_ctrl.get("cpuacct").unwrap_or(memory);
        let pids = by_ctrl.get("pids").unwrap_or(memory);
        Some(Cgroup::V1 {
            cpuacct: root.join("cpuacct").join(cpuacct.trim_start_matches('/')),
            memory: root.join("memory").join(memory.trim_start_matches('/')),
            pids: root.join("pids").join(pids.trim_start_matches('/')),
        })
    }

    /// Whether the cgroup exists (its memory directory on v1).
    pub fn exists(&self) -> bool {
        match self {
            Cgroup::V1 { memory, .. } => memory.is_dir(),
            Cgroup::V2(p) => p.is_dir(),
        }
    }

    /// Reads the counters. A cgroup that vanished (the container exited) is NotFound.
    pub fn sample(&self) -> Result<Sample> {
        if !self.exists() {
            return Err(Error::not_found(format!("cgroup {self:?} does not exist")));
        }
        Ok(match self {
            Cgroup::V1 {
                cpuacct,
                memory,
                pids,
            } => Sample {
                cpu_usage_ns: read_u64(&cpuacct.join("cpuacct.usage")),
                memory: read(&memory.join("memory.stat")).and_then(|stat| {
                    memory_v1(
                        read_u64(&memory.join("memory.usage_in_bytes"))?,
                        read_u64(&memory.join("memory.limit_in_bytes")),
                        &stat,
                    )
                }),
                pids: read_u64(&pids.join("pids.current")),
            },
            Cgroup::V2(dir) => Sample {
                cpu_usage_ns: read(&dir.join("cpu.stat")).and_then(|s| cpu_v2(&s)),
                memory: read(&dir.join("memory.stat")).and_then(|stat| {
                    memory_v2(
                        read_u64(&dir.join("memory.current"))?,
                        read(&dir.join("memory.max")).as_deref(),
                        &stat,
                    )
                }),
                pids: read_u64(&dir.join("pids.current")),
            },
        })
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_u64(p: &Path) -> Option<u64> {
    read(p).and_then(|s| s.trim().parse().ok())
}

/// `key value` lines of memory.stat / cpu.stat.
pub fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// cgroup v2 `cpu.stat`: `usage_usec` in microseconds.
pub fn cpu_v2(cpu_stat: &str) -> Option<u64> {
    flat_keyed(cpu_stat)
        .get("usage_usec")
        .map(|us| us.saturating_mul(1000))
}

/// cgroup v1: `memory.usage_in_bytes` and the hierarchical (`total_*`) counters of
/// `memory.stat`, which include the cgroup's descendants as `usage_in_bytes` does.
pub fn memory_v1(usage: u64, limit: Option<u64>, memory_stat: &str) -> Option<Memory> {
    let stat = flat_keyed(memory_stat);
    let get = |k: &str| {
        stat.get(format!("total_{k}").as_str())
            .or_else(|| stat.get(k))
            .copied()
    };
    Some(Memory {
        usage,
        working_set: usage.saturating_sub(get("inactive_file").unwrap_or(0)),
        rss: get("rss").unwrap_or(0),
        page_faults: get("pgfault").unwrap_or(0),
        major_page_faults: get("pgmajfault").unwrap_or(0),
        // v1 says "unlimited" with a huge page-rounded number near i64::MAX.
        limit: limit.filter(|l| *l < (1u64 << 62)),
    })
}

/// cgroup v2: `memory.current`, `memory.max` (`max` = unlimited) and `memory.stat`.
pub fn memory_v2(current: u64, max: Option<&str>, memory_stat: &str) -> Option<Memory> {
    let stat = flat_keyed(memory_stat);
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    Some(Memory {
        usage: current,
        working_set: current.saturating_sub(get("inactive_file")),
        rss: get("anon"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit: max.and_then(|m| m.trim().parse().ok()),
    })
}

/// The cgroup directory (relative to a hierarchy root) that a runc `cgroupsPath` names.
///
/// cgroupfs form: the path itself. systemd form `slice:prefix:name`: the slice expanded into
/// its parents (`a-b-c.slice` lives in `a.slice/a-b.slice/a-b-c.slice`) and the unit
/// `<prefix>-<name>.scope` in it. Returns None for an empty path (runc then places the
/// container relative to its own cgroup, which only `/proc/<pid>/cgroup` can tell).
pub fn cgroups_path_dir(cgroups_path: &str) -> Option<String> {
    if cgroups_path.is_empty() {
        return None;
    }
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if parts.len() == 3 && !cgroups_path.starts_with('/') {
        let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
        let unit = if name.ends_with(".slice") {
            // runc: a name that is itself a slice is placed as that slice.
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        return Some(format!("{}/{unit}", expand_slice(slice)));
    }
    Some(cgroups_path.to_string())
}

/// A systemd slice's path: `kubepods-burstable-pod1.slice` →
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`; `-.slice` is the
/// root. A name that is already a path (kubelet's cgroupfs-style parent) is kept.
pub fn expand_slice(slice: &str) -> String {
    if slice.contains('/') || !slice.ends_with(".slice") {
        return slice.to_string();
    }
    let base = slice.trim_end_matches(".slice");
    if base == "-" || base.is_empty() {
        return "/".to_string();
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for comp in base.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(comp);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    path
}

/// Rx/tx counters of one interface in `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes packets errs drop fifo
/// frame compressed multicast tx_bytes packets errs ...`.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            if f.len() < 11 {
                return None;
            }
            Some(NetDev {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MEMORY_STAT: &str = "cache 1000\nrss 4096\ninactive_file 100\npgfault 7\n\
pgmajfault 1\ntotal_cache 20480\ntotal_rss 8192\ntotal_inactive_file 12288\n\
total_active_file 4096\ntotal_pgfault 1234\ntotal_pgmajfault 5\n";

    const V2_MEMORY_STAT: &str = "anon 8192\nfile 40960\nkernel_stack 16384\n\
active_file 4096\ninactive_file 32768\npgfault 999\npgmajfault 3\n";

    #[test]
    fn v1_working_set_uses_hierarchical_inactive_file() {
        let m = memory_v1(65536, Some(9223372036854771712), V1_MEMORY_STAT).unwrap();
        assert_eq!(m.usage, 65536);
        assert_eq!(m.working_set, 65536 - 12288);
        assert_eq!(m.rss, 8192);
        assert_eq!(m.page_faults, 1234);
        assert_eq!(m.major_page_faults, 5);
        assert_eq!(m.limit, None, "v1's huge 'unlimited' value is no limit");
        let limited = memory_v1(65536, Some(64 << 20), V1_MEMORY_STAT).unwrap();
        assert_eq!(limited.limit, Some(64 << 20));
    }

    #[test]
    fn working_set_never_underflows() {
        let m = memory_v1(100, None, V1_MEMORY_STAT).unwrap();
        assert_eq!(m.working_set, 0);
    }

    #[test]
    fn v2_memory_and_cpu() {
        let m = memory_v2(100_000, Some("max\n"), V2_MEMORY_STAT).unwrap();
        assert_eq!(m.working_set, 100_000 - 32768);
        assert_eq!(m.rss, 8192);
        assert_eq!(m.page_faults, 999);
        assert_eq!(m.major_page_faults, 3);
        assert_eq!(m.limit, None);
        let m = memory_v2(1, Some("1048576\n"), V2_MEMORY_STAT).unwrap();
        assert_eq!(m.limit, Some(1048576));
        let cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n";
        assert_eq!(cpu_v2(cpu), Some(1_500_000));
        assert_eq!(cpu_v2("nr_periods 0\n"), None);
    }

    #[test]
    fn proc_cgroup_v1_and_v2() {
        let root = Path::new("/sys/fs/cgroup");
        let v1 = "12:pids:/kubepods/pod1/abc\n5:cpu,cpuacct:/kubepods/pod1/abc\n\
4:memory:/kubepods/pod1/abc\n1:name=systemd:/kubepods/pod1/abc\n0::/\n";
        assert_eq!(
            Cgroup::from_proc_cgroup(root, false, v1),
            Some(Cgroup::V1 {
                cpuacct: "/sys/fs/cgroup/cpuacct/kubepods/pod1/abc".into(),
                memory: "/sys/fs/cgroup/memory/kubepods/pod1/abc".into(),
                pids: "/sys/fs/cgroup/pids/kubepods/pod1/abc".into(),
            })
        );
        let v2 = "0::/kubepods.slice/cri-peapod-abc.scope\n";
        assert_eq!(
            Cgroup::from_proc_cgroup(root, true, v2),
            Some(Cgroup::V2(
                "/sys/fs/cgroup/kubepods.slice/cri-peapod-abc.scope".into()
            ))
        );
        assert_eq!(
            Cgroup::from_proc_cgroup(root, true, v1.replace("0::/\n", "").as_str()),
            None
        );
    }

    #[test]
    fn cgroups_path_forms() {
        assert_eq!(cgroups_path_dir(""), None);
        assert_eq!(
            cgroups_path_dir("/kubepods/burstable/pod1/abc").as_deref(),
            Some("/kubepods/burstable/pod1/abc")
        );
        assert_eq!(
            cgroups_path_dir("kubepods-burstable-pod1.slice:cri-peapod:abc").as_deref(),
            Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-peapod-abc.scope")
        );
        assert_eq!(
            cgroups_path_dir("system.slice:cri-peapod:abc").as_deref(),
            Some("/system.slice/cri-peapod-abc.scope")
        );
        assert_eq!(expand_slice("-.slice"), "/");
        assert_eq!(expand_slice("/kubepods/pod1"), "/kubepods/pod1");
    }

    #[test]
    fn cgroup_at_both_layouts() {
        let root = Path::new("/r");
        assert_eq!(Cgroup::at(root, true, "/a/b"), Cgroup::V2("/r/a/b".into()));
        let Cgroup::V1 {
            memory, cpuacct, ..
        } = Cgroup::at(root, false, "/a/b")
        else {
            panic!("v1 expected")
        };
        assert_eq!(memory, Path::new("/r/memory/a/b"));
        assert_eq!(cpuacct, Path::new("/r/cpuacct/a/b"));
    }

    #[test]
    fn sample_reads_v1_and_v2_files() {
        let d = tempfile::tempdir().unwrap();
        let v2 = d.path().join("v2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 42\n").unwrap();
        std::fs::write(v2.join("memory.current"), "100000\n").unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        std::fs::write(v2.join("memory.stat"), V2_MEMORY_STAT).unwrap();
        std::fs::write(v2.join("pids.current"), "3\n").unwrap();
        let s = Cgroup::V2(v2).sample().unwrap();
        assert_eq!(s.cpu_usage_ns, Some(42_000));
        assert_eq!(s.memory.unwrap().working_set, 100_000 - 32768);
        assert_eq!(s.pids, Some(3));

        let v1 = Cgroup::at(d.path(), false, "/pod/c");
        let Cgroup::V1 {
            cpuacct, memory, ..
        } = &v1
        else {
            panic!("v1 expected")
        };
        std::fs::create_dir_all(cpuacct).unwrap();
        std::fs::create_dir_all(memory).unwrap();
        std::fs::write(cpuacct.join("cpuacct.usage"), "123456789\n").unwrap();
        std::fs::write(memory.join("memory.usage_in_bytes"), "65536\n").unwrap();
        std::fs::write(
            memory.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(memory.join("memory.stat"), V1_MEMORY_STAT).unwrap();
        let s = v1.sample().unwrap();
        assert_eq!(s.cpu_usage_ns, Some(123456789));
        assert_eq!(s.memory.unwrap().working_set, 65536 - 12288);
        assert_eq!(s.pids, None);

        assert!(Cgroup::V2(d.path().join("gone"))
            .sample()
            .unwrap_err()
            .is_not_found());
    }

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0\n  \
eth0:    5230      40    1    0    0     0          0         0     1092      12    2    0    0     0       0          0\n";
        let devs = parse_net_dev(text);
        assert_eq!(devs.len(), 2);
        assert_eq!(
            devs[1],
            NetDev {
                name: "eth0".into(),
                rx_bytes: 5230,
                rx_errors: 1,
                tx_bytes: 1092,
                tx_errors: 2
            }
        );
    }

    #[test]
    fn add_sums_counters() {
        let mut a = Sample {
            cpu_usage_ns: Some(10),
            memory: None,
            pids: Some(1),
        };
        a.add(&Sample {
            cpu_usage_ns: Some(5),
            memory: Some(Memory {
                usage: 3,
                working_set: 2,
                ..Default::default()
            }),
            pids: None,
        });
        assert_eq!(a.cpu_usage_ns, Some(15));
        assert_eq!(a.pids, Some(1));
        assert_eq!(a.memory.unwrap().working_set, 2);
    }
}
