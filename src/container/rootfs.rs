//! Reading the image's `/etc/passwd` and `/etc/group` from a container's prepared snapshot,
//! so user and group names in the image config or the security context resolve as they will
//! inside the container.
//!
//! The snapshot's mounts (what `Snapshots.Prepare` returned) are mounted on a temporary
//! directory, read, and unmounted again, as containerd's CRI plugin does with the container's
//! own snapshot. Reading the layer directories without mounting would get symlinks across
//! layers and whiteouts wrong.

use std::path::Path;

use containerd_client::types::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::spec::UserDb;

/// Mounts `mounts` on `<tmp_root>/<id>`, reads the user database, and unmounts. Blocking.
pub fn read_user_db(mounts: &[Mount], tmp_root: &Path, id: &str) -> Result<UserDb> {
    if mounts.is_empty() {
        return Err(Error::internal(format!(
            "snapshot of container {id} has no mounts"
        )));
    }
    let dir = tmp_root.join(id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("create {}: {e}", dir.display())))?;
    let mut mounted = 0;
    let mut result = Ok(());
    for m in mounts {
        match mount_one(m, &dir) {
            Ok(()) => mounted += 1,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let db = result.and_then(|()| UserDb::from_rootfs(&dir));
    for _ in 0..mounted {
        if let Err(e) = umount2(&dir, MntFlags::MNT_DETACH) {
            tracing::warn!(dir = %dir.display(), error = %e, "unmount rootfs view");
        }
    }
    let _ = std::fs::remove_dir(&dir);
    db
}

/// Unmounts and removes whatever a crashed peapod left under `tmp_root`.
pub fn clean_views(tmp_root: &Path) {
    let Ok(rd) = std::fs::read_dir(tmp_root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        // Stacked mounts come off one per call; EINVAL means nothing is mounted any more.
        for _ in 0..8 {
            if umount2(&p, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        if let Err(err) = std::fs::remove_dir(&p) {
            tracing::warn!(dir = %p.display(), error = %err, "remove leftover rootfs view");
        }
    }
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let (mut flags, data) = parse_options(&m.options);
    let bind = m.r#type == "bind" || flags.contains(MsFlags::MS_BIND);
    if bind {
        flags |= MsFlags::MS_BIND;
    }
    if bind {
        // A bind mount ignores MS_RDONLY on the first call; read-only is not needed for a
        // look at two files, so no remount follows.
        flags.remove(MsFlags::MS_RDONLY);
    }
    // Only two text files are read from the view: nothing in it needs devices, set-id bits
    // or execution.
    flags |= MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let fstype = (!bind).then_some(m.r#type.as_str());
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(m.source.as_str()), target, fstype, flags, data).map_err(|e| {
        Error::internal(format!(
            "mount {} ({}) on {}: {e}",
            m.source,
            m.r#type,
            target.display()
        ))
    })
}

/// Splits mount(8)-style options into flags and the filesystem's data string.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Where image rootfs views are mounted while CreateContainer reads the image's users.
pub fn views_dir(rt: &Runtime) -> std::path::PathBuf {
    rt.config.state_dir.join("rootfs-views")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&[
            "index=off".into(),
            "workdir=/w".into(),
            "upperdir=/u".into(),
            "lowerdir=/a:/b".into(),
        ]);
        assert!(f.is_empty());
        assert_eq!(d, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
        let (f, d) = parse_options(&["rbind".into(), "ro".into()]);
        assert!(f.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert!(d.is_empty());
    }
}
