//! Everything a rig's peapod can leave behind, taken as a snapshot so a test can compare the
//! state before and after (leak checks): containerd containers, tasks, snapshots and leases;
//! pinned network namespaces; mounts under the rig; CNI IP reservations; veths on the rig's
//! bridge; files (state, FIFOs) under peapod's state directory; the rig's pod cgroups. And
//! the peapod process's own open file descriptors and threads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::Rig;

/// One snapshot: for each kind, the names of what exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub items: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Inventory {
    /// What `self` has that `before` had not, per kind; empty when nothing leaked.
    pub fn added_since(&self, before: &Inventory) -> BTreeMap<&'static str, Vec<String>> {
        let mut out = BTreeMap::new();
        for (kind, now) in &self.items {
            let was = before.items.get(kind).cloned().unwrap_or_default();
            let added: Vec<String> = now.difference(&was).cloned().collect();
            if !added.is_empty() {
                out.insert(*kind, added);
            }
        }
        out
    }

    pub fn count(&self, kind: &str) -> usize {
        self.items.get(kind).map_or(0, |s| s.len())
    }

    /// One line per kind with its count, for test reports.
    pub fn summary(&self) -> String {
        self.items
            .iter()
            .map(|(k, v)| format!("{k}={}", v.len()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Rig {
    /// Snapshot of everything this rig's peapod and containerd hold.
    pub fn inventory(&self) -> Inventory {
        let mut items = BTreeMap::new();
        let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<String>>();
        items.insert(
            "containers",
            set(self.ctr_list(&["containers", "ls", "-q"])),
        );
        items.insert("tasks", set(self.ctr_list(&["tasks", "ls", "-q"])));
        items.insert("leases", set(self.ctr_list(&["leases", "ls", "-q"])));
        // `snapshots ls` prints KEY PARENT KIND; the header is skipped.
        let snaps = self
            .ctr_list(&["snapshots", "ls"])
            .into_iter()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        items.insert("snapshots", set(snaps));
        items.insert("netns", set(files_under(&self.netns_dir)));
        // The netns directory is bind-mounted on itself once (as `ip netns` does): not a leak.
        let netns_dir = self.netns_dir.display().to_string();
        let mounts = mounts_under(self.dir.path())
            .into_iter()
            .filter(|m| *m != netns_dir)
            .collect();
        items.insert("mounts", set(mounts));
        // host-local IPAM keeps one file per reserved IP, beside its lock and last-used
        // bookkeeping; only the IPs count.
        let ips = files_under(&self.cni_data_dir)
            .into_iter()
            .filter(|f| {
                Path::new(f)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            })
            .collect();
        items.insert("cni_ips", set(ips));
        items.insert("state_files", set(files_under(&self.state_dir)));
        items.insert("veths", set(bridge_ports(&self.bridge)));
        items.insert("cgroups", set(cgroups_under(&self.cgroup_parent)));
        Inventory { items }
    }

    /// Asserts that nothing was added since `before` (waiting up to `secs` for asynchronous
    /// teardown, e.g. containerd's garbage collection of snapshots).
    pub async fn assert_no_leaks(&self, before: &Inventory, secs: u64, what: &str) {
        let start = std::time::Instant::now();
        loop {
            let added = self.inventory().added_since(before);
            if added.is_empty() {
                return;
            }
            if start.elapsed() > std::time::Duration::from_secs(secs) {
                // What peapod logged about each leaked object, to see how it came about.
                let log = self.peapod_log();
                let mut about = String::new();
                for item in added.values().flatten() {
                    let key = Path::new(item)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or(item)
                        .trim_start_matches("peapod-");
                    let lines: Vec<&str> = log.lines().filter(|l| l.contains(key)).collect();
                    about.push_str(&format!(
                        "--- peapod log about {item} ---\n{}\n",
                        tail(&lines.join("\n"), 15)
                    ));
                }
                panic!(
                    "{what}: left behind {added:#?}\n{about}--- peapod log tail ---\n{}",
                    tail(&log, 60)
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Open file descriptors and threads of the running peapod.
    pub fn peapod_resources(&self) -> Option<(usize, usize)> {
        let pid = self.peapod_pid()?;
        let count = |p: String| std::fs::read_dir(p).map(|d| d.count()).ok();
        Some((
            count(format!("/proc/{pid}/fd"))?,
            count(format!("/proc/{pid}/task"))?,
        ))
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every non-directory path below `dir`, relative to it (FIFOs and sockets included).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string()),
                Err(_) => {}
            }
        }
    }
    out
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn bridge_ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// cgroup directories below the rig's cgroup parent, in every v1 hierarchy (or v2).
fn cgroups_under(parent: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    let mut roots: Vec<std::path::PathBuf> = rd.flatten().map(|e| e.path()).collect();
    roots.push("/sys/fs/cgroup".into());
    for root in roots {
        let base = root.join(parent.trim_start_matches('/'));
        // The cgroups peapod's containers get are named by their 64-hex id; the directories
        // above them (a pod's own cgroup) are kubelet's to make and remove.
        let mut stack = vec![(base, 0)];
        while let Some((d, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if has_id(&name) {
                    out.push(e.path().display().to_string());
                } else if depth < 4 {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    out
}

fn has_id(name: &str) -> bool {
    let mut run = 0;
    for b in name.bytes() {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 64 {
            return true;
        }
    }
    false
}
