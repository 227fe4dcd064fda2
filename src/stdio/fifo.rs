//! Stdio FIFOs for a containerd task or exec process.
//!
//! containerd's `Tasks.Create` / `Tasks.Exec` take `stdin`, `stdout` and `stderr` as paths; the
//! runc shim opens them (stdout/stderr for writing, stdin for reading) and copies the process's
//! pipes into them. peapod creates the FIFOs, keeps the read ends, and turns what comes out into
//! CRI log lines (`super::log`) or an in-memory capture (`capture`, for ExecSync).
//!
//! How the read ends are opened, and why:
//!
//! * `O_RDONLY | O_NONBLOCK` (tokio's `pipe::OpenOptions::open_receiver`). The open returns at
//!   once even though the shim has not opened its write end yet, so nothing blocks a runtime
//!   thread, and the shim's own blocking `O_WRONLY` open (it waits for a reader) succeeds as soon
//!   as we hold ours.
//! * Not `O_RDWR`. containerd's fifo package opens read ends `O_RDWR`-style so they never block
//!   and never see EOF, and then has to learn from elsewhere when the output is complete. We
//!   want the opposite: EOF is exactly the signal that the shim closed the FIFO after the process
//!   (and everything that inherited its stdout) went away, i.e. that all output has been read.
//! * The "EOF before the writer ever connected" trap: a read-only FIFO with no writer returns 0
//!   from `read(2)`. We never issue that read: tokio only reads after epoll reports the fd ready,
//!   and Linux does not report `EPOLLHUP` on a FIFO reader until a writer has connected at least
//!   once since the reader opened (`pipe_poll` compares the writer counter). So reads simply wait
//!   for the shim. `tests::no_eof_before_the_writer_connects` pins this down.
//! * Re-attaching after a peapod restart (`reopen_existing`): the FIFOs are still there and the
//!   shim still holds its write ends (it also holds a read end of its own, so its writes do not
//!   fail while no peapod reader exists; they block once the 64 KiB pipe buffer is full). A new
//!   read-only open attaches to the same pipe and reading resumes where the kernel buffer is.
//!   If the process already exited and the shim closed the FIFO before we re-opened, no writer
//!   will ever connect and the reader waits forever: callers re-attach only to running tasks and
//!   use `LogHandle::force_close` once they learn the task exited.
//!
//! stdin is opened read-write (`O_RDWR | O_NONBLOCK`): a write-only non-blocking open of a FIFO
//! with no reader fails with `ENXIO`, and the shim opens its read end of stdin only when it
//! starts the process.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Mode of the FIFOs: only root (peapod and the shim) may read or write a container's stdio.
const FIFO_MODE: u32 = 0o600;

/// The stdio FIFOs of one task or exec process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIo {
    stdin: Option<PathBuf>,
    stdout: PathBuf,
    /// `None` with a TTY: the terminal merges stderr into stdout, the shim opens no stderr.
    stderr: Option<PathBuf>,
    tty: bool,
}

/// The three strings containerd's `CreateTaskRequest` / `ExecProcessRequest` take; an absent
/// stream is the empty string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

impl ContainerIo {
    /// Creates `<fifo_dir>/<id>-stdout`, `-stderr` (not with `tty`) and `-stdin` (with `stdin`),
    /// mode 0600, creating `fifo_dir` if needed. A stale FIFO of the same name (left by an
    /// earlier failed start) is replaced.
    pub fn create(fifo_dir: &Path, id: &str, stdin: bool, tty: bool) -> Result<ContainerIo> {
        let io = ContainerIo::paths(fifo_dir, id, stdin, tty)?;
        fs::create_dir_all(fifo_dir)
            .map_err(|e| Error::internal(format!("create fifo dir {}: {e}", fifo_dir.display())))?;
        let mut made: Vec<&Path> = Vec::new();
        for path in io.all_paths() {
            if let Err(e) = make_fifo(path) {
                for p in made {
                    let _ = fs::remove_file(p);
                }
                return Err(e);
            }
            made.push(path);
        }
        Ok(io)
    }

    /// Re-attaches to FIFOs created earlier (by this or a previous peapod process) for a task
    /// that is still running. Fails with `NotFound` if a FIFO is missing or is not a FIFO.
    pub fn reopen_existing(
        fifo_dir: &Path,
        id: &str,
        stdin: bool,
        tty: bool,
    ) -> Result<ContainerIo> {
        let io = ContainerIo::paths(fifo_dir, id, stdin, tty)?;
        for path in io.all_paths() {
            match fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_fifo() => {}
                Ok(_) => {
                    return Err(Error::not_found(format!(
                        "{} exists but is not a fifo",
                        path.display()
                    )))
                }
                Err(e) => {
                    return Err(Error::not_found(format!("fifo {}: {e}", path.display())));
                }
            }
        }
        Ok(io)
    }

    fn paths(fifo_dir: &Path, id: &str, stdin: bool, tty: bool) -> Result<ContainerIo> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Err(Error::invalid(format!("invalid stdio fifo id {id:?}")));
        }
        let path = |stream: &str| fifo_dir.join(format!("{id}-{stream}"));
        Ok(ContainerIo {
            stdin: stdin.then(|| path("stdin")),
            stdout: path("stdout"),
            stderr: (!tty).then(|| path("stderr")),
            tty,
        })
    }

    fn all_paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.stdin
            .iter()
            .chain(std::iter::once(&self.stdout))
            .chain(self.stderr.iter())
    }

    pub fn stdin_path(&self) -> Option<&Path> {
        self.stdin.as_deref()
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// `None` with a TTY.
    pub fn stderr_path(&self) -> Option<&Path> {
        self.stderr.as_deref()
    }

    pub fn tty(&self) -> bool {
        self.tty
    }

    /// The paths as containerd's task and exec requests want them.
    pub fn stdio_paths(&self) -> StdioPaths {
        let s = |p: Option<&Path>| {
            p.map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        StdioPaths {
            stdin: s(self.stdin_path()),
            stdout: s(Some(self.stdout_path())),
            stderr: s(self.stderr_path()),
        }
    }

    /// Opens the read end of stdout (never blocks; see the module docs). Needs a tokio runtime.
    pub fn open_stdout(&self) -> Result<pipe::Receiver> {
        open_receiver(&self.stdout)
    }

    /// Opens the read end of stderr; `None` with a TTY.
    pub fn open_stderr(&self) -> Result<Option<pipe::Receiver>> {
        self.stderr.as_deref().map(open_receiver).transpose()
    }

    /// Opens the write end of stdin (read-write, see the module docs); `None` without stdin.
    /// Dropping the sender closes the container's stdin once the shim is its only other user.
    pub fn open_stdin(&self) -> Result<Option<pipe::Sender>> {
        self.stdin
            .as_deref()
            .map(|p| {
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(|e| Error::internal(format!("open stdin fifo {}: {e}", p.display())))
            })
            .transpose()
    }

    /// Deletes the FIFOs; missing ones are fine, so this is idempotent. Open ends keep working.
    pub fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for path in self.all_paths() {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert_with(|| {
                        Error::internal(format!("remove fifo {}: {e}", path.display()))
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn make_fifo(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "remove stale fifo {}: {e}",
                path.display()
            )))
        }
    }
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(FIFO_MODE))
        .map_err(|e| Error::internal(format!("mkfifo {}: {e}", path.display())))?;
    // mkfifo applies the umask; make the mode exact whatever the umask is.
    fs::set_permissions(path, fs::Permissions::from_mode(FIFO_MODE))
        .map_err(|e| Error::internal(format!("chmod fifo {}: {e}", path.display())))
}

fn open_receiver(path: &Path) -> Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| Error::internal(format!("open fifo {} for reading: {e}", path.display())))
}

/// Output of an exec process read into memory by [`capture`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True if either stream produced more than the limit (the excess was read and discarded).
    pub truncated: bool,
}

/// An in-progress capture of an exec process's stdout and stderr; see [`capture`].
/// Dropping it stops reading (e.g. after an ExecSync timeout).
#[derive(Debug)]
pub struct Capture {
    stdout: Option<JoinHandle<(Vec<u8>, bool)>>,
    stderr: Option<JoinHandle<(Vec<u8>, bool)>>,
}

/// Starts reading `io`'s stdout and stderr into memory, at most `limit` bytes each; output past
/// the limit is still read (so the process never blocks on a full pipe) and discarded.
///
/// The read ends are open when this returns, so call it before starting the exec process (the
/// shim's open of the write ends waits for a reader); then await [`Capture::wait`], which
/// resolves when both streams reach EOF. Needs a tokio runtime.
pub fn capture(io: &ContainerIo, limit: usize) -> Result<Capture> {
    let stdout = io.open_stdout()?;
    let stderr = io.open_stderr()?;
    Ok(Capture {
        stdout: Some(tokio::spawn(read_capped(stdout, limit))),
        stderr: stderr.map(|rx| tokio::spawn(read_capped(rx, limit))),
    })
}

impl Capture {
    /// Resolves at EOF on both streams. A read error ends that stream early; what was read is
    /// kept.
    pub async fn wait(mut self) -> Captured {
        let mut out = Captured::default();
        if let Some(h) = self.stdout.take() {
            let (bytes, truncated) = h.await.unwrap_or_default();
            out.stdout = bytes;
            out.truncated |= truncated;
        }
        if let Some(h) = self.stderr.take() {
            let (bytes, truncated) = h.await.unwrap_or_default();
            out.stderr = bytes;
            out.truncated |= truncated;
        }
        out
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        for h in self.stdout.iter().chain(self.stderr.iter()) {
            h.abort();
        }
    }
}

async fn read_capped(mut rx: pipe::Receiver, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading exec output failed");
                break;
            }
        }
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_makes_fifos_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(&dir.path().join("fifo"), "abc", true, false).unwrap();
        for p in [
            io.stdin_path().unwrap(),
            io.stdout_path(),
            io.stderr_path().unwrap(),
        ] {
            assert!(fs::metadata(p).unwrap().file_type().is_fifo(), "{p:?}");
            assert_eq!(mode(p), 0o600);
        }
        assert_eq!(io.stdout_path(), dir.path().join("fifo/abc-stdout"));
        let paths = io.stdio_paths();
        assert!(paths.stdin.ends_with("abc-stdin"));
        assert!(paths.stderr.ends_with("abc-stderr"));
    }

    #[test]
    fn tty_has_no_stderr_and_no_stdin_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "t", false, true).unwrap();
        assert!(io.stderr_path().is_none());
        assert!(io.stdin_path().is_none());
        assert!(!dir.path().join("t-stderr").exists());
        let paths = io.stdio_paths();
        assert_eq!(paths.stderr, "");
        assert_eq!(paths.stdin, "");
        assert!(!paths.stdout.is_empty());
    }

    #[test]
    fn create_replaces_stale_files_and_rejects_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x-stdout"), b"stale").unwrap();
        let io = ContainerIo::create(dir.path(), "x", false, false).unwrap();
        assert!(fs::metadata(io.stdout_path())
            .unwrap()
            .file_type()
            .is_fifo());
        for bad in ["", "a/b", ".."] {
            assert!(matches!(
                ContainerIo::create(dir.path(), bad, false, false),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn remove_is_idempotent_and_reopen_needs_the_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "r", true, false).unwrap();
        let again = ContainerIo::reopen_existing(dir.path(), "r", true, false).unwrap();
        assert_eq!(io, again);
        io.remove().unwrap();
        io.remove().unwrap();
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
        assert!(ContainerIo::reopen_existing(dir.path(), "r", true, false)
            .unwrap_err()
            .is_not_found());
        fs::write(dir.path().join("f-stdout"), b"").unwrap();
        assert!(ContainerIo::reopen_existing(dir.path(), "f", false, true)
            .unwrap_err()
            .is_not_found());
    }

    /// Opens a FIFO's write end the way the shim does (blocking `O_WRONLY`; we already hold the
    /// read end, so it returns at once).
    fn shim_writer(p: &Path) -> fs::File {
        fs::OpenOptions::new().write(true).open(p).unwrap()
    }

    #[tokio::test]
    async fn no_eof_before_the_writer_connects() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "e", false, true).unwrap();
        let mut rx = io.open_stdout().unwrap();
        let mut buf = [0u8; 16];
        // No writer yet: the read must wait, not return EOF.
        let early = tokio::time::timeout(Duration::from_millis(200), rx.read(&mut buf)).await;
        assert!(early.is_err(), "read returned {early:?} before any writer");
        let mut w = shim_writer(io.stdout_path());
        w.write_all(b"hi").unwrap();
        drop(w);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
    }

    #[tokio::test]
    async fn capture_caps_each_stream_and_drains_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "exec1", false, false).unwrap();
        let cap = capture(&io, 10).unwrap();
        let (out, err) = (
            io.stdout_path().to_owned(),
            io.stderr_path().unwrap().to_owned(),
        );
        // 256 KiB is far more than a pipe holds: the writer only finishes if we keep draining.
        let writer = tokio::task::spawn_blocking(move || {
            let mut o = shim_writer(&out);
            let mut e = shim_writer(&err);
            o.write_all(&vec![b'x'; 256 * 1024]).unwrap();
            e.write_all(b"oops\n").unwrap();
        });
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), cap.wait())
            .await
            .unwrap();
        assert_eq!(got.stdout, vec![b'x'; 10]);
        assert_eq!(got.stderr, b"oops\n");
        assert!(got.truncated);
    }

    #[tokio::test]
    async fn stdin_opens_before_the_shim_reads() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "in", true, false).unwrap();
        let mut tx = io.open_stdin().unwrap().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"input")
            .await
            .unwrap();
        let mut r = fs::File::open(io.stdin_path().unwrap()).unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut r, &mut buf).unwrap();
        assert_eq!(&buf, b"input");
        assert!(ContainerIo::create(dir.path(), "noin", false, false)
            .unwrap()
            .open_stdin()
            .unwrap()
            .is_none());
    }
}
