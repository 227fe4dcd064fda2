//! Mounts: the runtime's default filesystems, the sandbox's files (hosts, hostname,
//! resolv.conf, /dev/shm) and the request's bind mounts.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::input::SandboxInfo;
use crate::cri;
use crate::cri::MountPropagation;
use crate::error::{oci_err, Error, Result};

/// Mounts and the rootfs propagation they need.
#[derive(Debug, Clone)]
pub struct Mounts {
    pub mounts: Vec<Mount>,
    /// `rshared`/`rslave` when a mount asks for propagation that needs it.
    pub rootfs_propagation: Option<String>,
}

fn m(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ.to_string())
        .source(PathBuf::from(src))
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(oci_err)
}

/// containerd's default mounts for a CRI container (no /run). `/sys` and `/sys/fs/cgroup`
/// are read-only unless privileged.
pub fn default_mounts(privileged: bool) -> Result<Vec<Mount>> {
    let ro = if privileged { "rw" } else { "ro" };
    Ok(vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        m("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro])?,
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro],
        )?,
    ])
}

/// The pause container's mounts: the defaults without the cgroup filesystem, which the pause
/// process has no use for. A privileged pod's /sys is mounted read-write here too, and it
/// matters most here: sysfs keeps one superblock per network namespace, and the first mount's
/// read-only flag (the pause's, which owns the pod's network namespace) sticks to it, so a
/// read-only mount here would make every privileged container's /sys read-only too.
pub fn sandbox_mounts(privileged: bool) -> Result<Vec<Mount>> {
    let mut mounts = default_mounts(privileged)?;
    mounts.retain(|m| m.destination() != Path::new("/sys/fs/cgroup"));
    Ok(mounts)
}

/// A bind mount to add, before translation.
struct Bind {
    container_path: String,
    host_path: PathBuf,
    readonly: bool,
    recursive_readonly: bool,
    propagation: MountPropagation,
}

/// All mounts of a container, in mount order: defaults (minus those a bind mount replaces,
/// and everything under a replaced `/dev`), then bind mounts sorted so that parents come first.
pub fn container_mounts(
    config: &cri::ContainerConfig,
    sandbox: &SandboxInfo,
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<Mounts> {
    let mut binds = Vec::new();
    for (i, cm) in config.mounts.iter().enumerate() {
        binds.push(request_bind(i, cm)?);
    }

    let request_paths: Vec<PathBuf> = binds.iter().map(|b| clean(&b.container_path)).collect();
    let requested = |p: &str| request_paths.iter().any(|r| r == Path::new(p));
    let mut extra = Vec::new();
    let sandbox_files = [
        ("/etc/hostname", &sandbox.hostname_path, readonly_rootfs),
        ("/etc/hosts", &sandbox.hosts_path, readonly_rootfs),
        (
            "/etc/resolv.conf",
            &sandbox.resolv_conf_path,
            readonly_rootfs,
        ),
    ];
    for (dest, src, ro) in sandbox_files {
        if let Some(src) = src {
            if !requested(dest) {
                extra.push(plain_bind(dest, src.clone(), ro));
            }
        }
    }
    if !requested("/dev/shm") {
        let shm = if sandbox.host_ipc {
            Some(PathBuf::from("/dev/shm"))
        } else {
            sandbox.shm_path.clone()
        };
        if let Some(shm) = shm {
            extra.push(plain_bind("/dev/shm", shm, false));
        }
    }
    binds.extend(extra);

    let dev_replaced = requested("/dev");
    let mut mounts: Vec<Mount> = default_mounts(privileged)?
        .into_iter()
        .filter(|d| {
            let dest = d.destination();
            let replaced = binds.iter().any(|b| clean(&b.container_path) == *dest);
            let under_replaced_dev = dev_replaced && dest.starts_with("/dev");
            !replaced && !under_replaced_dev
        })
        .collect();

    // Parents before children: sort by depth (stable, so request order breaks ties).
    binds.sort_by_key(|b| clean(&b.container_path).components().count());

    let mut rootfs_propagation: Option<String> = None;
    for b in &binds {
        let prop = match b.propagation {
            MountPropagation::PropagationPrivate => "rprivate",
            MountPropagation::PropagationHostToContainer => {
                if rootfs_propagation.as_deref() != Some("rshared") {
                    rootfs_propagation = Some("rslave".into());
                }
                "rslave"
            }
            MountPropagation::PropagationBidirectional => {
                rootfs_propagation = Some("rshared".into());
                "rshared"
            }
        };
        let mut opts = vec!["rbind".to_string(), prop.to_string()];
        opts.push(if b.readonly { "ro" } else { "rw" }.to_string());
        if b.recursive_readonly {
            opts.push("rro".to_string());
        }
        mounts.push(
            MountBuilder::default()
                .destination(clean(&b.container_path))
                .typ("bind".to_string())
                .source(b.host_path.clone())
                .options(opts)
                .build()
                .map_err(oci_err)?,
        );
    }
    Ok(Mounts {
        mounts,
        rootfs_propagation,
    })
}

fn plain_bind(dest: &str, src: PathBuf, readonly: bool) -> Bind {
    Bind {
        container_path: dest.to_string(),
        host_path: src,
        readonly,
        recursive_readonly: false,
        propagation: MountPropagation::PropagationPrivate,
    }
}

fn request_bind(i: usize, cm: &cri::Mount) -> Result<Bind> {
    let field = |f: &str| format!("mounts[{i}].{f}");
    if cm.image.as_ref().is_some_and(|im| !im.image.is_empty()) {
        return Err(Error::invalid(format!(
            "{}: image volume mounts are not supported by peapod",
            field("image")
        )));
    }
    if !cm.uid_mappings.is_empty() || !cm.gid_mappings.is_empty() {
        return Err(Error::invalid(format!(
            "{}: id-mapped mounts need user namespaces, which peapod does not support",
            field("uidMappings")
        )));
    }
    if !Path::new(&cm.container_path).is_absolute() {
        return Err(Error::invalid(format!(
            "{}: {:?} is not an absolute path",
            field("container_path"),
            cm.container_path
        )));
    }
    if !Path::new(&cm.host_path).is_absolute() {
        return Err(Error::invalid(format!(
            "{}: {:?} is not an absolute path",
            field("host_path"),
            cm.host_path
        )));
    }
    // Symlinks in the host path are resolved now, so that the mount cannot be redirected later.
    let host_path = std::fs::canonicalize(&cm.host_path)
        .map_err(|e| Error::invalid(format!("{}: {}: {e}", field("host_path"), cm.host_path)))?;
    let propagation = MountPropagation::try_from(cm.propagation).map_err(|_| {
        Error::invalid(format!(
            "{}: unknown propagation {}",
            field("propagation"),
            cm.propagation
        ))
    })?;
    if cm.recursive_read_only {
        if !cm.readonly {
            return Err(Error::invalid(format!(
                "{}: recursive read-only needs readonly=true",
                field("recursive_read_only")
            )));
        }
        if propagation != MountPropagation::PropagationPrivate {
            return Err(Error::invalid(format!(
                "{}: recursive read-only needs private propagation",
                field("recursive_read_only")
            )));
        }
    }
    Ok(Bind {
        container_path: cm.container_path.clone(),
        host_path,
        readonly: cm.readonly,
        recursive_readonly: cm.recursive_read_only,
        propagation,
    })
}

/// Lexically normalises an absolute container path (`/a/./b/../c/` → `/a/c`).
fn clean(p: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> SandboxInfo {
        SandboxInfo {
            id: "sb".into(),
            pid: 42,
            hostname_path: Some("/run/sb/hostname".into()),
            hosts_path: Some("/run/sb/hosts".into()),
            resolv_conf_path: Some("/run/sb/resolv.conf".into()),
            shm_path: Some("/run/sb/shm".into()),
            ..Default::default()
        }
    }

    fn mount(ctr: &str, host: &str) -> cri::Mount {
        cri::Mount {
            container_path: ctr.into(),
            host_path: host.into(),
            ..Default::default()
        }
    }

    fn config(mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
        cri::ContainerConfig {
            mounts,
            ..Default::default()
        }
    }

    fn find<'a>(ms: &'a Mounts, dest: &str) -> Option<&'a Mount> {
        ms.mounts
            .iter()
            .find(|m| m.destination() == Path::new(dest))
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap()
    }

    #[test]
    fn defaults_and_sandbox_files() {
        let ms = container_mounts(&config(vec![]), &sandbox(), false, false).unwrap();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(find(&ms, d).is_some(), "{d}");
        }
        assert!(opts(find(&ms, "/sys").unwrap()).contains(&"ro".into()));
        assert!(opts(find(&ms, "/sys/fs/cgroup").unwrap()).contains(&"ro".into()));
        let shm = find(&ms, "/dev/shm").unwrap();
        assert_eq!(shm.source().as_deref(), Some(Path::new("/run/sb/shm")));
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert_eq!(
            ms.mounts
                .iter()
                .filter(|m| m.destination() == Path::new("/dev/shm"))
                .count(),
            1
        );
        let hosts = find(&ms, "/etc/hosts").unwrap();
        assert_eq!(hosts.source().as_deref(), Some(Path::new("/run/sb/hosts")));
        assert_eq!(opts(hosts), ["rbind", "rprivate", "rw"]);
        assert!(find(&ms, "/etc/hostname").is_some() && find(&ms, "/etc/resolv.conf").is_some());
        assert!(find(&ms, "/run").is_none());
        assert_eq!(ms.rootfs_propagation, None);
    }

    #[test]
    fn privileged_sysfs_is_rw() {
        let ms = container_mounts(&config(vec![]), &sandbox(), true, false).unwrap();
        assert!(opts(find(&ms, "/sys").unwrap()).contains(&"rw".into()));
        assert!(opts(find(&ms, "/sys/fs/cgroup").unwrap()).contains(&"rw".into()));
    }

    #[test]
    fn readonly_rootfs_makes_sandbox_files_ro_and_host_ipc_uses_host_shm() {
        let mut sb = sandbox();
        sb.host_ipc = true;
        let ms = container_mounts(&config(vec![]), &sb, false, true).unwrap();
        assert!(opts(find(&ms, "/etc/resolv.conf").unwrap()).contains(&"ro".into()));
        assert_eq!(
            find(&ms, "/dev/shm").unwrap().source().as_deref(),
            Some(Path::new("/dev/shm"))
        );
        assert!(opts(find(&ms, "/dev/shm").unwrap()).contains(&"rw".into()));
    }

    #[test]
    fn request_mount_replaces_sandbox_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        std::fs::write(&f, "").unwrap();
        let ms = container_mounts(
            &config(vec![mount("/etc/hosts", f.to_str().unwrap())]),
            &sandbox(),
            false,
            false,
        )
        .unwrap();
        let all: Vec<_> = ms
            .mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].source().as_deref(), Some(f.as_path()));
    }

    #[test]
    fn request_dev_mount_drops_default_dev_tree() {
        let ms = container_mounts(
            &config(vec![mount("/dev", "/dev")]),
            &sandbox(),
            false,
            false,
        )
        .unwrap();
        assert!(!ms
            .mounts
            .iter()
            .any(|m| m.typ().as_deref() == Some("devpts")));
        assert_eq!(find(&ms, "/dev").unwrap().typ().as_deref(), Some("bind"));
    }

    #[test]
    fn propagation_readonly_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut a = mount("/a", link.to_str().unwrap());
        a.readonly = true;
        a.propagation = MountPropagation::PropagationHostToContainer as i32;
        let mut b = mount("/b", real.to_str().unwrap());
        b.propagation = MountPropagation::PropagationBidirectional as i32;
        let mut c = mount("/c", real.to_str().unwrap());
        c.readonly = true;
        c.recursive_read_only = true;
        let ms = container_mounts(&config(vec![a, b, c]), &sandbox(), false, false).unwrap();
        let a = find(&ms, "/a").unwrap();
        assert_eq!(
            a.source().as_deref(),
            Some(real.canonicalize().unwrap().as_path())
        );
        assert_eq!(opts(a), ["rbind", "rslave", "ro"]);
        assert_eq!(opts(find(&ms, "/b").unwrap()), ["rbind", "rshared", "rw"]);
        assert_eq!(
            opts(find(&ms, "/c").unwrap()),
            ["rbind", "rprivate", "ro", "rro"]
        );
        assert_eq!(ms.rootfs_propagation.as_deref(), Some("rshared"));
    }

    #[test]
    fn host_to_container_sets_rslave_rootfs() {
        let mut a = mount("/a", "/tmp");
        a.propagation = MountPropagation::PropagationHostToContainer as i32;
        let ms = container_mounts(&config(vec![a]), &sandbox(), false, false).unwrap();
        assert_eq!(ms.rootfs_propagation.as_deref(), Some("rslave"));
    }

    #[test]
    fn invalid_mounts() {
        let mut rro_rw = mount("/x", "/tmp");
        rro_rw.recursive_read_only = true;
        let mut rro_shared = mount("/x", "/tmp");
        rro_shared.readonly = true;
        rro_shared.recursive_read_only = true;
        rro_shared.propagation = MountPropagation::PropagationBidirectional as i32;
        let mut image = mount("/x", "/tmp");
        image.image = Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        for (bad, what) in [
            (mount("/x", "relative/path"), "host_path"),
            (mount("/x", "/does/not/exist/at/all"), "host_path"),
            (mount("rel", "/tmp"), "container_path"),
            (rro_rw, "recursive_read_only"),
            (rro_shared, "recursive_read_only"),
            (image, "image"),
        ] {
            let e = container_mounts(&config(vec![bad]), &sandbox(), false, false).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument(m) if m.contains(what)),
                "{what}: {e}"
            );
        }
    }

    #[test]
    fn binds_sorted_parents_first() {
        let ms = container_mounts(
            &config(vec![
                mount("/a/b/c", "/tmp"),
                mount("/a", "/tmp"),
                mount("/a/b", "/tmp"),
            ]),
            &SandboxInfo::default(),
            false,
            false,
        )
        .unwrap();
        let binds: Vec<_> = ms
            .mounts
            .iter()
            .filter(|m| m.typ().as_deref() == Some("bind"))
            .map(|m| m.destination().clone())
            .collect();
        assert_eq!(binds, [PathBuf::from("/a"), "/a/b".into(), "/a/b/c".into()]);
    }
}
