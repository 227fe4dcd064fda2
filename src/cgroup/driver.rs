//! The cgroup driver and the `cgroupsPath` names it gives pause and workload containers,
//! in both of runc's forms (a path, or systemd's `slice:prefix:name`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cri;
use crate::error::{Error, Result};
use crate::keys::type_url;

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
                type_url: type_url::RUNC_OPTIONS.to_string(),
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

/// The one field of the runc shim options (`containerd.runc.v1.Options`, from containerd's
/// `api/types/runc/options/oci.proto`, which the containerd-client crate does not compile)
/// peapod sets; the tag is the proto's, and unset fields keep the shim's defaults.
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
}
