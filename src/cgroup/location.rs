//! Where a container's cgroup is on this host: from the `cgroupsPath` its spec gave runc,
//! or from its process; kept in the container's status file as a [`Cgroup`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::driver::cgroups_path_dir;
use crate::error::{Error, Result};

/// Where cgroupfs is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// True when the unified hierarchy is mounted at `root` (a hybrid host counts as v1: its
/// controllers live in the v1 hierarchies).
pub fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// A cgroup located on this host: the unified directory on v2, one directory per controller
/// on v1. Kept in a container's status file, so it is found again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cgroup {
    V1 {
        cpuacct: PathBuf,
        memory: PathBuf,
        pids: PathBuf,
    },
    V2(PathBuf),
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

    /// The cgroup a `cgroupsPath` from a spec names; None for an empty one.
    pub fn from_cgroups_path(root: &Path, v2: bool, cgroups_path: &str) -> Option<Cgroup> {
        cgroups_path_dir(cgroups_path).map(|dir| Cgroup::at(root, v2, &dir))
    }

    /// Where a running container's cgroup is: the `cgroupsPath` its spec gave runc, else
    /// (runc's own placement, relative to the shim) its init process's, which must then
    /// still be alive.
    pub fn of_container(spec_cgroups_path: Option<&str>, pid: u32) -> Option<Cgroup> {
        let root = Path::new(ROOT);
        let v2 = is_v2(root);
        if let Some(cg) = spec_cgroups_path
            .and_then(|p| Cgroup::from_cgroups_path(root, v2, p))
            .filter(Cgroup::exists)
        {
            return Some(cg);
        }
        if pid == 0 {
            return None;
        }
        Cgroup::of_pid(root, v2, pid).ok()
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
        self.memory_dir().is_dir()
    }

    /// The directory holding the memory controller's files.
    pub fn memory_dir(&self) -> &Path {
        match self {
            Cgroup::V1 { memory, .. } => memory,
            Cgroup::V2(p) => p,
        }
    }
}

/// Removes the cgroup a `cgroupsPath` names, in every hierarchy, where runc left it empty.
///
/// containerd 2.x cancels a shim's task create when the client that asked goes away; runc
/// is then killed mid-create and leaves the container's cgroup directories behind, with no
/// task left to delete them (seen when peapod is killed during StartContainer). rmdir only
/// removes an empty cgroup, so one that still holds a process is never touched. Returns the
/// directories removed.
pub fn remove_leftover(root: &Path, cgroups_path: &str) -> Vec<PathBuf> {
    // systemd's form (`slice:prefix:name`): the scope is systemd's to collect.
    if !cgroups_path.starts_with('/') {
        return Vec::new();
    }
    let Some(rel) = cgroups_path_dir(cgroups_path) else {
        return Vec::new();
    };
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    let dirs: Vec<PathBuf> = if is_v2(root) {
        vec![root.join(rel)]
    } else {
        std::fs::read_dir(root)
            .map(|rd| rd.flatten().map(|e| e.path().join(rel)).collect())
            .unwrap_or_default()
    };
    dirs.into_iter()
        .filter(|d| d.is_dir() && std::fs::remove_dir(d).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::driver::Driver;

    #[test]
    fn leftover_cgroups_are_removed_only_where_empty() {
        let root = tempfile::tempdir().unwrap();
        for h in ["memory", "cpu,cpuacct", "pids"] {
            std::fs::create_dir_all(root.path().join(h).join("pod1/abc")).unwrap();
        }
        // A cgroup that still has something in it (a file stands in for a process: rmdir
        // refuses both).
        std::fs::write(root.path().join("pids/pod1/abc/busy"), "").unwrap();
        let removed = remove_leftover(root.path(), "/pod1/abc");
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!root.path().join("memory/pod1/abc").exists());
        assert!(root.path().join("pids/pod1/abc").exists());
        assert!(
            root.path().join("memory/pod1").exists(),
            "the pod's own cgroup stays"
        );
        assert!(remove_leftover(root.path(), "").is_empty());
        std::fs::create_dir_all(root.path().join("memory/k.slice/cri-peapod-x.scope")).unwrap();
        assert!(remove_leftover(root.path(), "k.slice:cri-peapod:x").is_empty());
    }

    #[test]
    fn every_written_path_is_found_again() {
        let root = Path::new("/r");
        for driver in [Driver::Cgroupfs, Driver::Systemd] {
            let parent = match driver {
                Driver::Cgroupfs => "/kubepods/besteffort/pod1",
                Driver::Systemd => "kubepods-besteffort-pod1.slice",
            };
            let path = driver.container_cgroups_path(parent, "abc").unwrap();
            let cg = Cgroup::from_cgroups_path(root, true, &path).unwrap();
            let pod = driver.pod_dir(parent).unwrap();
            let Cgroup::V2(dir) = cg else { panic!("v2") };
            assert_eq!(
                dir.parent().unwrap(),
                root.join(pod.trim_start_matches('/'))
            );
        }
        assert_eq!(Driver::Systemd.pod_dir(""), None);
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
    fn a_located_cgroup_survives_a_status_file() {
        let cg = Cgroup::at(Path::new("/r"), false, "/a/b");
        let json = serde_json::to_string(&cg).unwrap();
        assert_eq!(serde_json::from_str::<Cgroup>(&json).unwrap(), cg);
    }
}
