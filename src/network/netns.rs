//! Network namespaces pinned by bind mounts, the way `ip netns add` does it, so a pod's
//! namespace outlives every process in it (the pause container may be restarted or not
//! started yet while CNI already configured the namespace).

use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};

pub const DEFAULT_DIR: &str = "/var/run/netns";

/// Creates a new network namespace and pins it at `dir/name`; returns that path.
/// `name` already pinned is `AlreadyExists`. Blocks briefly (a thread spawn and a few mounts).
pub fn create(dir: &Path, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::internal(format!("create netns dir {}: {e}", dir.display())))?;
    make_shared_mount(dir)?;

    let path = dir.join(name);
    // The empty file is the bind-mount target; create_new makes a name clash an error
    // instead of silently stacking a second namespace on a live one.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => Error::AlreadyExists(format!(
                "network namespace {} already exists",
                path.display()
            )),
            _ => Error::internal(format!("create {}: {e}", path.display())),
        })?;

    let target = path.clone();
    // unshare(CLONE_NEWNET) changes the namespace of the calling thread only. Doing it on a
    // throwaway thread keeps every other thread (tokio workers included) in the host
    // namespace; the thread then exits and the bind mount alone keeps the namespace alive.
    let pinned = std::thread::Builder::new()
        .name("peapod-netns".into())
        .spawn(move || -> std::result::Result<(), String> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
            // /proc/self would name the thread-group leader's namespace, not this thread's.
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind-mount the new namespace on {}: {e}", target.display()))
        })
        .map_err(|e| Error::internal(format!("spawn netns thread: {e}")))?
        .join()
        .unwrap_or_else(|_| Err("netns thread panicked".to_string()));

    if let Err(msg) = pinned {
        let _ = std::fs::remove_file(&path);
        return Err(Error::internal(format!(
            "create network namespace {}: {msg}",
            path.display()
        )));
    }
    Ok(path)
}

/// Unpins and deletes a namespace created by [`create`]. A path that is gone, or that is
/// not mounted any more, is fine: teardown may be retried after a partial failure.
pub fn remove(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: exists but is not a mount point (already unmounted).
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "unmount network namespace {}: {e}",
                path.display()
            )))
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!(
            "remove network namespace {}: {e}",
            path.display()
        ))),
    }
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(Error::invalid(format!(
            "network namespace name {name:?} must be a non-empty plain file name"
        )));
    }
    Ok(())
}

/// Makes `dir` a shared mount point, as iproute2 does for /var/run/netns: the pins made
/// inside it then propagate into mount namespaces cloned later (containerd's shims,
/// runc), so they can open the path, and unmounting here unpins it there too.
fn make_shared_mount(dir: &Path) -> Result<()> {
    let shared = || {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => return Ok(()),
        // EINVAL: not a mount point yet; bind it onto itself, then retry.
        Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "make {} a shared mount: {e}",
                dir.display()
            )))
        }
    }
    mount(
        Some(dir),
        dir,
        Some("none"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::internal(format!("bind-mount {} on itself: {e}", dir.display())))?;
    shared().map_err(|e| Error::internal(format!("make {} a shared mount: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_or_empty_are_rejected() {
        let d = Path::new("/nonexistent-peapod-test");
        for bad in ["", "a/b", "..", "."] {
            let e = create(d, bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn removing_a_missing_namespace_is_ok() {
        let d = tempfile::tempdir().unwrap();
        remove(&d.path().join("never-created")).unwrap();
    }

    #[test]
    fn removing_an_unmounted_file_deletes_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: umount2 needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plain");
        std::fs::write(&p, "").unwrap();
        remove(&p).unwrap();
        assert!(!p.exists());
    }
}
