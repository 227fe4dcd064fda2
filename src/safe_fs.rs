//! Files under a directory that someone else fills: an image's rootfs (`/etc/passwd`,
//! `/etc/group`), a pod's log directory, a pod-named seccomp profile.
//!
//! Paths are resolved with `pathrs` (openat2 `RESOLVE_IN_ROOT` where the kernel has it, a
//! checked emulation where it does not), so a symlink or `..` in an image resolves inside
//! that image and never on the host. Reads take regular files only, opened non-blocking
//! after their type is checked on an `O_PATH` handle (a FIFO cannot hang the reader, a device
//! node is never opened), and read at most a bound: an image or a pod author must not be able
//! to stall or exhaust peapod with a crafted file.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path};

use pathrs::flags::OpenFlags;
use pathrs::Root;

use crate::error::{Error, Result};

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Not a regular file (FIFO, device, socket, directory): `what` says which.
    NotRegular(&'static str),
    /// Larger than the bound.
    TooLarge { size: u64, max: u64 },
    /// Anything else the kernel or pathrs refused (loops, safety violations, I/O).
    Io(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotRegular(what) => write!(f, "is a {what}, not a regular file"),
            ReadError::TooLarge { size, max } => {
                write!(f, "is {size} bytes, more than the {max} peapod reads")
            }
            ReadError::Io(e) => f.write_str(e),
        }
    }
}

/// Reads `rel` inside `root` (symlinks and `..` resolved as if `root` were `/`), at most
/// `max` bytes of a regular file. `Ok(None)` when the file (or a directory on its way) does
/// not exist.
pub fn read_in_root(root: &Path, rel: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let root = Root::open(root).map_err(|e| ReadError::Io(format!("open root: {e}")))?;
    let handle = match root.resolve(rel) {
        Ok(h) => h,
        Err(e) if is_enoent(&e) => return Ok(None),
        Err(e) => return Err(ReadError::Io(e.to_string())),
    };
    // The type is judged on the O_PATH handle: opening a FIFO or a device node for reading
    // can block or have side effects, so neither is ever opened.
    let meta = std::fs::File::from(std::os::fd::OwnedFd::from(
        handle
            .try_clone()
            .map_err(|e| ReadError::Io(e.to_string()))?,
    ))
    .metadata()
    .map_err(|e| ReadError::Io(format!("stat: {e}")))?;
    check_regular(&meta, max)?;
    let file = handle
        .reopen(OpenFlags::O_RDONLY | OpenFlags::O_NONBLOCK | OpenFlags::O_CLOEXEC)
        .map_err(|e| ReadError::Io(e.to_string()))?;
    read_bounded(file, max).map(Some)
}

/// Reads a file the host names (e.g. a Localhost seccomp profile from a pod spec) with the
/// same rules as [`read_in_root`]: regular files only, bounded, never blocking.
pub fn read_host_file(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    match read_in_root(Path::new("/"), path, max)? {
        Some(b) => Ok(b),
        None => Err(ReadError::Io("no such file or directory".into())),
    }
}

fn check_regular(meta: &std::fs::Metadata, max: u64) -> Result<(), ReadError> {
    let t = meta.file_type();
    if !t.is_file() {
        return Err(ReadError::NotRegular(if t.is_fifo() {
            "FIFO"
        } else if t.is_char_device() {
            "character device"
        } else if t.is_block_device() {
            "block device"
        } else if t.is_socket() {
            "socket"
        } else if t.is_dir() {
            "directory"
        } else {
            "special file"
        }));
    }
    if meta.size() > max {
        return Err(ReadError::TooLarge {
            size: meta.size(),
            max,
        });
    }
    Ok(())
}

/// At most `max` bytes; a file that grew past `max` since it was checked is refused too.
fn read_bounded(file: std::fs::File, max: u64) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::Io(format!("read: {e}")))?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge {
            size: buf.len() as u64,
            max,
        });
    }
    Ok(buf)
}

fn is_enoent(e: &pathrs::error::Error) -> bool {
    matches!(
        e.kind(),
        pathrs::error::ErrorKind::OsError(Some(libc::ENOENT))
            | pathrs::error::ErrorKind::OsError(Some(libc::ENOTDIR))
    )
}

/// Checks that `rel` is a plain relative path: not absolute, no `..`, not empty. `field`
/// names the request field for the error.
pub fn check_relative(rel: &str, field: &str) -> Result<()> {
    let p = Path::new(rel);
    if rel.is_empty() {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    if p.is_absolute() {
        return Err(Error::invalid(format!(
            "{field} {rel:?} must be relative to the pod's log directory"
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) || rel.contains('\0') {
        return Err(Error::invalid(format!(
            "{field} {rel:?} must not contain '..' or NUL"
        )));
    }
    Ok(())
}

/// Checks that `dir` is absolute and has no `..`: a directory peapod creates files in.
pub fn check_absolute_dir(dir: &str, field: &str) -> Result<()> {
    let p = Path::new(dir);
    if !p.is_absolute() {
        return Err(Error::invalid(format!(
            "{field} {dir:?} must be an absolute path"
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) || dir.contains('\0') {
        return Err(Error::invalid(format!(
            "{field} {dir:?} must not contain '..' or NUL"
        )));
    }
    Ok(())
}

/// Opens (creating it and its parent directories, mode 0755, if needed) `rel` under `root`
/// for appending, mode `mode`. Every component, the last included, resolves inside `root`:
/// a symlink pointing out of it cannot redirect the write, and a final component that is a
/// symlink, a FIFO or a device is refused rather than followed or opened blocking.
pub fn open_append_in_root(root: &Path, rel: &Path, mode: u32) -> Result<std::fs::File> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::internal(format!(
            "{what} {} under {}: {e}",
            rel.display(),
            root.display()
        ))
    };
    let r = Root::open(root).map_err(|e| fail("open log directory for", &e))?;
    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        r.mkdir_all(parent, &std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail("create the directory of", &e))?;
    }
    let file = r
        .create_file(
            rel,
            OpenFlags::O_WRONLY
                | OpenFlags::O_APPEND
                | OpenFlags::O_NOFOLLOW
                | OpenFlags::O_NONBLOCK
                | OpenFlags::O_CLOEXEC,
            &std::fs::Permissions::from_mode(mode),
        )
        .map_err(|e| fail("open", &e))?;
    let meta = file.metadata().map_err(|e| fail("stat", &e))?;
    if !meta.file_type().is_file() {
        return Err(fail("open", &"not a regular file"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_inside_the_root_only() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/real"), "image").unwrap();
        symlink(host.path().join("secret"), r.join("etc/abs")).unwrap();
        symlink("../../../../etc/real", r.join("etc/up")).unwrap();
        symlink("/etc/real", r.join("etc/inroot")).unwrap();
        let read = |p: &str| read_in_root(r, Path::new(p), 100).unwrap();
        assert_eq!(read("etc/real").unwrap(), b"image");
        // An absolute link to a host file resolves inside the root, where nothing is.
        assert_eq!(read("etc/abs"), None);
        assert_eq!(read("etc/up").unwrap(), b"image");
        assert_eq!(read("etc/inroot").unwrap(), b"image");
        assert_eq!(read("etc/missing"), None);
        assert_eq!(read("nodir/missing"), None);
    }

    #[test]
    fn fifos_devices_and_huge_files_are_refused_promptly() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        nix::unistd::mkfifo(
            &r.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::fs::write(r.join("big"), vec![b'x'; 101]).unwrap();
        std::fs::create_dir(r.join("dir")).unwrap();
        let t = std::time::Instant::now();
        assert!(matches!(
            read_in_root(r, Path::new("fifo"), 100),
            Err(ReadError::NotRegular("FIFO"))
        ));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        assert!(matches!(
            read_in_root(r, Path::new("big"), 100),
            Err(ReadError::TooLarge { size: 101, .. })
        ));
        assert!(matches!(
            read_in_root(r, Path::new("dir"), 100),
            Err(ReadError::NotRegular("directory"))
        ));
        // /dev/zero through the host root: a device is never read.
        assert!(matches!(
            read_host_file(Path::new("/dev/zero"), 100),
            Err(ReadError::NotRegular("character device"))
        ));
    }

    #[test]
    fn relative_and_absolute_checks_name_the_field() {
        assert!(check_relative("c/0.log", "log_path").is_ok());
        for bad in ["/etc/x", "../x", "a/../../x", ""] {
            let e = check_relative(bad, "log_path").unwrap_err().to_string();
            assert!(e.contains("log_path"), "{bad}: {e}");
        }
        assert!(check_absolute_dir("/var/log/pods/x", "log_directory").is_ok());
        for bad in ["rel/dir", "/var/log/../../etc"] {
            let e = check_absolute_dir(bad, "log_directory")
                .unwrap_err()
                .to_string();
            assert!(e.contains("log_directory"), "{bad}: {e}");
        }
    }

    #[test]
    fn appends_stay_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // A directory link out of the root resolves inside it instead.
        symlink(outside.path(), r.join("sub")).unwrap();
        let _ = open_append_in_root(r, Path::new("sub/a.log"), 0o640);
        assert!(!outside.path().join("a.log").exists());
        // A final symlink is refused, wherever it points.
        symlink(outside.path().join("b.log"), r.join("b.log")).unwrap();
        assert!(open_append_in_root(r, Path::new("b.log"), 0o640).is_err());
        assert!(!outside.path().join("b.log").exists());
        // A FIFO is refused without blocking.
        nix::unistd::mkfifo(
            &r.join("f.log"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(open_append_in_root(r, Path::new("f.log"), 0o640).is_err());
        // A plain file is appended to.
        open_append_in_root(r, Path::new("c/d.log"), 0o640).unwrap();
        assert!(r.join("c/d.log").is_file());
    }
}
