//! Reading a cgroup's CPU, memory, process and OOM-kill counters from cgroupfs, on cgroup v1
//! (one hierarchy per controller) and v2 (the unified hierarchy).
//!
//! Stats are read from the files rather than from containerd's `Tasks.Metrics`: that answer is
//! an `Any` holding `io.containerd.cgroups.v1.Metrics` or `...v2.Metrics`, types the
//! containerd-client crate does not generate, and the pod-level cgroup has no task at all.

use std::collections::HashMap;
use std::path::Path;

use super::location::Cgroup;
use crate::error::{Error, Result};

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

impl Cgroup {
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

impl Cgroup {
    /// How many processes the kernel's OOM killer has killed in this cgroup: the `oom_kill`
    /// counter of `memory.oom_control` (v1, Linux 4.13+) or `memory.events` (v2). None when
    /// neither file can be read (the cgroup is gone, or the kernel is older).
    pub fn oom_kills(&self) -> Option<u64> {
        let dir = self.memory_dir();
        ["memory.events", "memory.oom_control"]
            .iter()
            .filter_map(|f| read(&dir.join(f)))
            .find(|text| text.lines().any(|l| l.starts_with("oom_kill ")))
            .map(|text| oom_kill_count(&text))
    }
}

/// The `oom_kill` counter of `memory.oom_control` or `memory.events`; 0 without one.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|v| v.trim().parse().ok())
        .next()
        .unwrap_or(0)
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
    fn oom_kill_counter_is_read_from_v1_and_v2_files() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
            1
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn oom_kills_of_a_cgroup_on_v1_and_v2() {
        let d = tempfile::tempdir().unwrap();
        let v2 = Cgroup::V2(d.path().join("v2"));
        std::fs::create_dir_all(v2.memory_dir()).unwrap();
        assert_eq!(v2.oom_kills(), None, "no file: unknown, not zero");
        std::fs::write(
            v2.memory_dir().join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(v2.oom_kills(), Some(1));

        let v1 = Cgroup::at(d.path(), false, "/pod/c");
        std::fs::create_dir_all(v1.memory_dir()).unwrap();
        std::fs::write(
            v1.memory_dir().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        assert_eq!(v1.oom_kills(), None, "a kernel without the counter");
        std::fs::write(
            v1.memory_dir().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        assert_eq!(v1.oom_kills(), Some(0));
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
