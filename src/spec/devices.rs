//! Devices: the request's `devices` and, for privileged containers, every device of the host.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor};
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};

use crate::cri;
use crate::error::{oci_err, Error, Result};

/// A device node and the cgroup rule that lets the container use it.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub device: LinuxDevice,
    pub rule: LinuxDeviceCgroup,
}

/// The request's devices. A host path is resolved through symlinks; a directory contributes
/// every device below it (mapped under the container path). Permissions are a subset of `rwm`
/// (empty means `rwm`).
pub fn request_devices(devices: &[cri::Device]) -> Result<Vec<DeviceEntry>> {
    let mut out = Vec::new();
    for d in devices {
        let perms = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        if !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(Error::invalid(format!(
                "devices[{}].permissions: {:?} is not a subset of \"rwm\"",
                d.host_path, d.permissions
            )));
        }
        if !Path::new(&d.host_path).is_absolute() {
            return Err(Error::invalid(format!(
                "devices.host_path: {:?} is not an absolute path",
                d.host_path
            )));
        }
        let container_path = if d.container_path.is_empty() {
            d.host_path.clone()
        } else {
            d.container_path.clone()
        };
        if !Path::new(&container_path).is_absolute() {
            return Err(Error::invalid(format!(
                "devices.container_path: {container_path:?} is not an absolute path"
            )));
        }
        let host = std::fs::canonicalize(&d.host_path)
            .map_err(|e| Error::invalid(format!("devices.host_path {}: {e}", d.host_path)))?;
        let meta = std::fs::metadata(&host)
            .map_err(|e| Error::invalid(format!("devices.host_path {}: {e}", d.host_path)))?;
        if meta.is_dir() {
            for (p, dev) in walk_devices(&host, &[])? {
                let rel = p.strip_prefix(&host).unwrap_or(&p);
                out.push(entry(&Path::new(&container_path).join(rel), &dev, &perms)?);
            }
        } else {
            let dev = device_of(&meta).ok_or_else(|| {
                Error::invalid(format!(
                    "devices.host_path {}: not a character or block device",
                    d.host_path
                ))
            })?;
            out.push(entry(Path::new(&container_path), &dev, &perms)?);
        }
    }
    Ok(out)
}

/// Every character and block device under `dev_dir` (normally `/dev`), as runc's
/// `HostDevices` lists them: skipping `pts`, `shm`, `fd`, `mqueue` and `/dev/console`.
pub fn host_devices(dev_dir: &Path) -> Result<Vec<LinuxDevice>> {
    let skip = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
    let mut out = Vec::new();
    for (p, dev) in walk_devices(dev_dir, &skip)? {
        if p == dev_dir.join("console") {
            continue;
        }
        // Keep the host's path layout: /dev/x on the host is /dev/x in the container.
        let in_container = Path::new("/dev").join(p.strip_prefix(dev_dir).unwrap_or(&p));
        out.push(build_device(&in_container, &dev)?);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
struct Dev {
    typ: LinuxDeviceType,
    major: i64,
    minor: i64,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn device_of(meta: &std::fs::Metadata) -> Option<Dev> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(Dev {
        typ,
        major: major(rdev) as i64,
        minor: minor(rdev) as i64,
        mode: meta.permissions().mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

fn walk_devices(dir: &Path, skip: &[&str]) -> Result<Vec<(PathBuf, Dev)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if d == dir => {
                return Err(Error::internal(format!("read {}: {e}", d.display())))
            }
            Err(_) => continue,
        };
        for ent in rd.flatten() {
            let p = ent.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                let name = ent.file_name();
                if !skip.iter().any(|s| name == *s) {
                    stack.push(p);
                }
            } else if let Some(dev) = device_of(&meta) {
                out.push((p, dev));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn build_device(container_path: &Path, d: &Dev) -> Result<LinuxDevice> {
    LinuxDeviceBuilder::default()
        .path(container_path.to_path_buf())
        .typ(d.typ)
        .major(d.major)
        .minor(d.minor)
        .file_mode(d.mode)
        .uid(d.uid)
        .gid(d.gid)
        .build()
        .map_err(oci_err)
}

fn entry(container_path: &Path, d: &Dev, perms: &str) -> Result<DeviceEntry> {
    Ok(DeviceEntry {
        device: build_device(container_path, d)?,
        rule: LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(d.typ)
            .major(d.major)
            .minor(d.minor)
            .access(perms.to_string())
            .build()
            .map_err(oci_err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(host: &str, ctr: &str, perms: &str) -> cri::Device {
        cri::Device {
            host_path: host.into(),
            container_path: ctr.into(),
            permissions: perms.into(),
        }
    }

    #[test]
    fn single_device() {
        let e = request_devices(&[dev("/dev/null", "/dev/mynull", "rw")]).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].device.path(), Path::new("/dev/mynull"));
        assert_eq!(e[0].device.typ(), LinuxDeviceType::C);
        assert_eq!((e[0].device.major(), e[0].device.minor()), (1, 3));
        assert_eq!(e[0].rule.access().as_deref(), Some("rw"));
        assert_eq!(e[0].rule.major(), Some(1));
    }

    #[test]
    fn empty_container_path_and_perms_default() {
        let e = request_devices(&[dev("/dev/zero", "", "")]).unwrap();
        assert_eq!(e[0].device.path(), Path::new("/dev/zero"));
        assert_eq!(e[0].rule.access().as_deref(), Some("rwm"));
    }

    #[test]
    fn invalid_devices() {
        for d in [
            dev("/dev/null", "/dev/null", "rwx"),
            dev("relative", "/dev/x", "rw"),
            dev("/nonexistent-device", "/dev/x", "rw"),
            dev("/etc/hostname", "/dev/x", "rw"),
            dev("/dev/null", "rel", "rw"),
        ] {
            assert!(
                matches!(
                    request_devices(std::slice::from_ref(&d)),
                    Err(Error::InvalidArgument(_))
                ),
                "{d:?}"
            );
        }
    }

    #[test]
    fn host_devices_lists_char_devices() {
        let d = host_devices(Path::new("/dev")).unwrap();
        assert!(d.iter().any(|x| x.path() == Path::new("/dev/null")));
        assert!(!d.iter().any(|x| x.path().starts_with("/dev/pts")));
        assert!(!d.iter().any(|x| x.path() == Path::new("/dev/console")));
    }
}
