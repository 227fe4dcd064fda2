//! What this host's cgroups can enforce: the layout the resources are shaped for (v1 or v2,
//! swap accounting).

use std::path::Path;

use super::{is_v2, ROOT};

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
