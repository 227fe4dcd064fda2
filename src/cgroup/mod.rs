//! cgroups, in one place: the driver, the `cgroupsPath` every pause and workload container is
//! given, where a container's cgroup really is on this host, which optional controllers the
//! host has ([`controllers`]), and reading a cgroup's counters ([`counters`]).
//!
//! The spec builders write the paths made here; everything that later needs a container's
//! cgroup (OOM detection, stats) locates it from the `cgroupsPath` in the container's own
//! spec, or from its process when the spec leaves the placement to runc, and never
//! recomputes it from the pod.

pub mod controllers;
pub mod counters;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cri;
use crate::error::{Error, Result};

pub use controllers::{CgroupHost, Enforceable};
pub use counters::{Memory, Sample};

/// Where cgroupfs is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The unit prefix of a systemd-driven container: `<slice>:cri-peapod:<id>` becomes the unit
/// `cri-peapod-<id>.scope` (containerd's CRI uses `cri-containerd`).
const SYSTEMD_PREFIX: &str = "cri-peapod";

/// How cgroups are named and created: by path (cgroupfs), or as systemd slices and scopes.
/// It must match kubelet's, which names the pod cgroups (`cgroup_parent`) in the same form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Cgroupfs,
    Systemd,
}

impl FromStr for Driver {
    type Err = Error;
    fn from_str(s: &str) -> Result<Driver> {
        match s {
            "cgroupfs" => Ok(Driver::Cgroupfs),
            "systemd" => Ok(Driver::Systemd),
            other => Err(Error::invalid(format!(
                "cgroup_driver must be \"cgroupfs\" or \"systemd\", not {other:?}"
            ))),
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        })
    }
}

impl From<Driver> for cri::CgroupDriver {
    fn from(d: Driver) -> Self {
        match d {
            Driver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
            Driver::Systemd => cri::CgroupDriver::Systemd,
        }
    }
}

impl Driver {
    /// The pause container's `cgroupsPath`: under the pod's parent, or, for a pod without
    /// one, `/peapod/<id>` (cgroupfs) or a scope in `system.slice` (systemd).
    pub fn sandbox_cgroups_path(self, parent: &str, id: &str) -> String {
        match self.container_cgroups_path(parent, id) {
            Some(p) => p,
            None => match self {
                Driver::Cgroupfs => format!("/peapod/{id}"),
                Driver::Systemd => format!("system.slice:{SYSTEMD_PREFIX}:{id}"),
            },
        }
    }

    /// A workload container's `cgroupsPath`: `<parent>/<id>` (cgroupfs) or
    /// `<slice>:cri-peapod:<id>` with the parent's last element as the slice (systemd), as
    /// containerd's CRI does. No parent: none, and runc places the container below its own
    /// cgroup (which only the container's process can then tell, see [`Cgroup::of_pid`]).
    pub fn container_cgroups_path(self, parent: &str, id: &str) -> Option<String> {
        if parent.is_empty() {
            return None;
        }
        Some(match self {
            Driver::Systemd => format!("{}:{SYSTEMD_PREFIX}:{id}", systemd_slice(parent)),
            Driver::Cgroupfs => format!("{}/{id}", parent.trim_end_matches('/')),
        })
    }

    /// The runtime options a pod's containers are created with in containerd, which the
    /// runc shim reads when it creates the task: with the systemd driver runc must be told
    /// (`SystemdCgroup = true`), else it takes `slice:prefix:name` as a plain directory name
    /// and places the container outside the pod's slice. Containerd's CRI sets the same
    /// option from its `SystemdCgroup` runtime setting.
    /// Other runtimes (`runtime` not a runc shim) get none: the options type is runc's.
    pub fn runc_options(self, runtime: &str) -> Option<prost_types::Any> {
        use prost::Message;
        if !runtime.starts_with("io.containerd.runc.") {
            return None;
        }
        match self {
            Driver::Cgroupfs => None,
            Driver::Systemd => Some(prost_types::Any {
                type_url: RUNC_OPTIONS_TYPE_URL.to_string(),
                value: RuncOptions {
                    systemd_cgroup: true,
                }
                .encode_to_vec(),
            }),
        }
    }

    /// The directory (relative to a hierarchy's root) of the pod-level cgroup kubelet made
    /// and named `parent`; None for a pod without one.
    pub fn pod_dir(self, parent: &str) -> Option<String> {
        if parent.is_empty() {
            return None;
        }
        Some(match self {
            Driver::Systemd => expand_slice(systemd_slice(parent)),
            Driver::Cgroupfs => parent.to_string(),
        })
    }
}

/// The type of containerd's runc shim options (`containerd.runc.v1.Options`, from
/// containerd's `api/types/runc/options/oci.proto`, which the containerd-client crate does
/// not compile); its form differs by containerd version, see `containerd_caps`.
pub use crate::containerd_caps::RUNC_OPTIONS_TYPE_URL;

/// The one field of the runc shim options peapod sets; the tag is the proto's, and unset
/// fields keep the shim's defaults.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuncOptions {
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
}

/// The slice a systemd parent names: its last path element (kubelet passes the slice's
/// name, `kubepods-burstable-pod1.slice`, but a full path names the same slice).
fn systemd_slice(parent: &str) -> &str {
    parent
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(parent)
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
        let slice = expand_slice(slice);
        return Some(format!("{}/{unit}", slice.trim_end_matches('/')));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_driver_tells_runc_to_use_systemd() {
        use prost::Message;
        let runc = "io.containerd.runc.v2";
        assert_eq!(Driver::Cgroupfs.runc_options(runc), None);
        assert_eq!(Driver::Systemd.runc_options("io.containerd.kata.v2"), None);
        let any = Driver::Systemd.runc_options(runc).unwrap();
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        assert!(
            RuncOptions::decode(any.value.as_slice())
                .unwrap()
                .systemd_cgroup
        );
        // Field 9, varint, true: what Go's runc Options{SystemdCgroup: true} encodes to.
        assert_eq!(any.value, vec![0x48, 0x01]);
    }

    #[test]
    fn driver_parses_from_config_words_only() {
        assert_eq!("cgroupfs".parse::<Driver>().unwrap(), Driver::Cgroupfs);
        assert_eq!("systemd".parse::<Driver>().unwrap(), Driver::Systemd);
        assert!("Systemd".parse::<Driver>().is_err());
        assert_eq!(Driver::Systemd.to_string(), "systemd");
        assert_eq!(
            cri::CgroupDriver::from(Driver::Systemd),
            cri::CgroupDriver::Systemd
        );
    }

    #[test]
    fn container_paths_by_driver_and_parent() {
        let fs = Driver::Cgroupfs;
        let sd = Driver::Systemd;
        assert_eq!(
            fs.container_cgroups_path("/kubepods/burstable/pod1/", "abc")
                .as_deref(),
            Some("/kubepods/burstable/pod1/abc")
        );
        assert_eq!(fs.container_cgroups_path("", "abc"), None);
        assert_eq!(sd.container_cgroups_path("", "abc"), None);
        for parent in [
            "kubepods-burstable-pod1.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
        ] {
            assert_eq!(
                sd.container_cgroups_path(parent, "abc").as_deref(),
                Some("kubepods-burstable-pod1.slice:cri-peapod:abc"),
                "{parent}"
            );
        }
    }

    #[test]
    fn sandbox_paths_fall_back_to_peapods_own_place() {
        assert_eq!(
            Driver::Cgroupfs.sandbox_cgroups_path("/kubepods/pod1", "abc"),
            "/kubepods/pod1/abc"
        );
        assert_eq!(
            Driver::Cgroupfs.sandbox_cgroups_path("", "abc"),
            "/peapod/abc"
        );
        assert_eq!(
            Driver::Systemd.sandbox_cgroups_path("", "abc"),
            "system.slice:cri-peapod:abc"
        );
        // The pause and the containers of one pod name the same slice.
        assert_eq!(
            Driver::Systemd.sandbox_cgroups_path("/kubepods.slice/kubepods-pod1.slice", "abc"),
            "kubepods-pod1.slice:cri-peapod:abc"
        );
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
        assert_eq!(
            cgroups_path_dir("-.slice:cri-peapod:abc").as_deref(),
            Some("/cri-peapod-abc.scope")
        );
        assert_eq!(expand_slice("-.slice"), "/");
        assert_eq!(expand_slice("/kubepods/pod1"), "/kubepods/pod1");
    }

    #[test]
    fn systemd_paths_nest_slices() {
        assert_eq!(
            cgroups_path_dir("kubepods-besteffort-pod1.slice:cri-peapod:abc").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-peapod-abc.scope"
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
