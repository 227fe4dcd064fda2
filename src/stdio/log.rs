//! The CRI container log writer.
//!
//! Hand-written: no crate writes kubelet's CRI log format (conmon-rs keeps its writer inside
//! its own binary), and the format is one line of code; what takes care here is the copying
//! from the FIFOs, bounded and lossless, and rotation (ReopenContainerLog).
//!
//! Format (kubelet's `pkg/kubelet/kuberuntime/logs` parser; containerd's
//! `internal/cri/io/logger.go` and conmon-rs `container_log/cri.rs` write the same):
//!
//! ```text
//! <RFC 3339 timestamp, UTC, nanoseconds> <stdout|stderr> <F|P> <content>\n
//! ```
//!
//! `F` ends a line, `P` is a piece of a longer one. A line longer than `max_line` bytes is cut
//! into `P` pieces of exactly `max_line` bytes and a last `F` piece (a line of exactly `max_line`
//! bytes is a single `F`). Output that ends without a newline is written as a final `P` piece at
//! EOF. Content is copied byte for byte: a `\r` before the `\n` (TTY output) stays in the
//! content, as containerd and CRI-O do.
//!
//! Shape: one reader task per stream turns bytes from the FIFO into whole records and hands them
//! to one file-writer task, so records of stdout and stderr never interleave inside a line. The
//! hand-off is bounded by bytes (`buffer_bytes`): a slow disk does not stall the container until
//! that much is queued, and only then do readers stop reading, which lets the pipe fill and
//! finally blocks the container's writes. That is lossless, like containerd (which blocks at
//! once) and what kubelet expects; dropping output instead would silently lose logs. Only a
//! failing write (disk full, I/O error) drops data, with a counted warning.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::fifo::ContainerIo;
use crate::error::{Error, Result};

/// containerd's default `max_container_log_line_size`.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;
/// Bytes of formatted log records that may wait for the disk before readers pause.
pub const DEFAULT_BUFFER_BYTES: usize = 1024 * 1024;
/// Mode of log files; kubelet and log collectors (group) read them.
const LOG_FILE_MODE: u32 = 0o640;
const READ_CHUNK: usize = 32 * 1024;

/// Tunables of the log writer.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Longest content of one log record; longer lines are split into `P` records.
    pub max_line: usize,
    /// Bound of the reader → file-writer buffer, in bytes.
    pub buffer_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_line: DEFAULT_MAX_LINE,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `F` (full: the record ends a line) or `P` (partial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Full,
    Partial,
}

impl Tag {
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Full => "F",
            Tag::Partial => "P",
        }
    }
}

/// Cuts a byte stream into CRI log record contents (without the newline) and their tags.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            // Zero would never make progress on a long line.
            max_line: max_line.max(1),
        }
    }

    /// Feeds `data`; calls `emit` for every record that is complete.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8], Tag)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.append(&data[..nl], &mut emit);
                    emit(&self.pending, Tag::Full);
                    self.pending.clear();
                    data = &data[nl + 1..];
                }
                None => {
                    self.append(data, &mut emit);
                    data = &[];
                }
            }
        }
    }

    /// At EOF: what is left (output without a final newline) becomes a `P` record.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], Tag)) {
        if !self.pending.is_empty() {
            emit(&self.pending, Tag::Partial);
            self.pending.clear();
        }
    }

    /// Appends a newline-free segment, emitting `P` records of `max_line` bytes while the line
    /// is longer than that. A line of exactly `max_line` bytes stays pending: its newline may
    /// still come and make it one `F` record.
    fn append(&mut self, mut seg: &[u8], emit: &mut impl FnMut(&[u8], Tag)) {
        loop {
            let room = self.max_line.saturating_sub(self.pending.len());
            if seg.len() <= room {
                self.pending.extend_from_slice(seg);
                return;
            }
            self.pending.extend_from_slice(&seg[..room]);
            emit(&self.pending, Tag::Partial);
            self.pending.clear();
            seg = &seg[room..];
        }
    }
}

/// Formats `t` as RFC 3339 in UTC with all nine fractional digits, e.g.
/// `2016-10-06T00:17:09.669794202Z` (`humantime`'s nanosecond form). Unlike Go's
/// `RFC3339Nano` (containerd) the fraction keeps trailing zeros: every timestamp has the same
/// width and sorts as text; kubelet's parser accepts both.
pub fn format_timestamp(t: SystemTime) -> String {
    // A clock before 1970 is not a real case for a container log; clamp rather than fail.
    humantime::format_rfc3339_nanos(t.max(UNIX_EPOCH)).to_string()
}

/// One CRI log record, newline included.
pub fn format_record(ts: &str, stream: Stream, tag: Tag, content: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(ts.len() + content.len() + 12);
    rec.extend_from_slice(ts.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_str().as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(tag.as_str().as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(content);
    rec.push(b'\n');
    rec
}

enum Msg {
    /// A formatted record and the buffer space it holds until written.
    Record(Vec<u8>, OwnedSemaphorePermit),
    /// A reader hit EOF (or was force-closed) and has sent everything.
    Eof,
    Reopen(oneshot::Sender<Result<()>>),
}

/// Handle on a running log writer. Dropping it leaves the writer running until EOF.
#[derive(Debug)]
pub struct LogHandle {
    tx: mpsc::UnboundedSender<Msg>,
    done: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    writer: JoinHandle<()>,
    tee: Arc<Tee>,
}

/// Live copies of the output for attached clients (CRI Attach): every chunk read from a stream
/// also goes, unformatted, to each subscriber of that stream, before the next read. Lossless like
/// the log itself: a subscriber that does not keep up slows the reader (containerd's attach
/// behaves the same); one that went away is dropped.
#[derive(Debug, Default)]
pub struct Tee {
    inner: std::sync::Mutex<TeeInner>,
}

#[derive(Debug, Default)]
struct TeeInner {
    subscribers: Vec<(Stream, mpsc::Sender<bytes::Bytes>)>,
    /// Streams that reached EOF (or have no reader, like stderr with a TTY).
    ended: Vec<Stream>,
}

/// Chunks queued for one attached client before the container's output waits for it.
const TEE_QUEUE: usize = 64;

impl Tee {
    fn lock(&self) -> std::sync::MutexGuard<'_, TeeInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Output of `stream` from now on; the channel closes when the stream ends (at once if it
    /// already has).
    pub fn subscribe(&self, stream: Stream) -> mpsc::Receiver<bytes::Bytes> {
        let (tx, rx) = mpsc::channel(TEE_QUEUE);
        let mut g = self.lock();
        if !g.ended.contains(&stream) {
            g.subscribers.push((stream, tx));
        }
        rx
    }

    async fn send(&self, stream: Stream, data: &[u8]) {
        let subs: Vec<mpsc::Sender<bytes::Bytes>> = {
            let g = self.lock();
            if g.subscribers.is_empty() {
                return;
            }
            g.subscribers
                .iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, tx)| tx.clone())
                .collect()
        };
        let chunk = bytes::Bytes::copy_from_slice(data);
        let mut gone = false;
        for tx in subs {
            gone |= tx.send(chunk.clone()).await.is_err();
        }
        if gone {
            self.lock().subscribers.retain(|(_, tx)| !tx.is_closed());
        }
    }

    fn end(&self, stream: Stream) {
        let mut g = self.lock();
        g.ended.push(stream);
        g.subscribers.retain(|(s, _)| *s != stream);
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Record(r, _) => write!(f, "Record({} bytes)", r.len()),
            Msg::Eof => f.write_str("Eof"),
            Msg::Reopen(_) => f.write_str("Reopen"),
        }
    }
}

/// Starts copying `io`'s stdout (and stderr, unless `tty`) into `log_path` in the CRI log
/// format, with the default [`LogOptions`]. An empty `log_path` writes no file but still drains
/// the FIFOs, so the container never blocks on a full pipe. Missing parent directories are
/// created; the file is opened for append (a restarted peapod continues the same file), mode
/// 0640. Needs a tokio runtime; the FIFOs' read ends are open when this returns.
pub fn spawn_log_writer(
    io: &ContainerIo,
    log_path: impl Into<LogTarget>,
    tty: bool,
) -> Result<LogHandle> {
    spawn_log_writer_with(io, log_path, tty, LogOptions::default())
}

/// Where a container's log goes: `rel` inside the pod's log directory `root`. The file is
/// opened through [`safe_fs`](crate::safe_fs), so it stays inside `root` whatever symlinks
/// appear there. An empty `rel` means no log file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogTarget {
    pub root: PathBuf,
    pub rel: PathBuf,
}

impl LogTarget {
    fn is_none(&self) -> bool {
        self.rel.as_os_str().is_empty()
    }
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.root.join(&self.rel).display())
    }
}

/// A full path: the file inside its own directory.
impl From<PathBuf> for LogTarget {
    fn from(p: PathBuf) -> Self {
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => LogTarget {
                root: dir.to_path_buf(),
                rel: PathBuf::from(name),
            },
            _ => LogTarget::default(),
        }
    }
}

/// [`spawn_log_writer`] with explicit options.
pub fn spawn_log_writer_with(
    io: &ContainerIo,
    log_path: impl Into<LogTarget>,
    tty: bool,
    opts: LogOptions,
) -> Result<LogHandle> {
    let log_path = log_path.into();
    let path = (!log_path.is_none()).then_some(log_path);
    let file = path.as_ref().map(open_log_file).transpose()?;

    let mut readers = vec![(Stream::Stdout, io.open_stdout()?)];
    if !tty {
        if let Some(rx) = io.open_stderr()? {
            readers.push((Stream::Stderr, rx));
        }
    }

    let tee = Arc::new(Tee::default());
    if tty {
        tee.end(Stream::Stderr);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let budget = Arc::new(Semaphore::new(opts.buffer_bytes.max(1)));
    let streams = readers.len();
    for (stream, pipe) in readers {
        tokio::spawn(read_stream(ReadStream {
            pipe,
            stream,
            max_line: opts.max_line,
            budget: budget.clone(),
            buffer_bytes: opts.buffer_bytes.max(1),
            tx: tx.clone(),
            stop: stop_rx.clone(),
            tee: tee.clone(),
        }));
    }
    let writer = tokio::spawn(write_loop(
        rx,
        path,
        file.map(|f| BufWriter::new(tokio::fs::File::from_std(f))),
        streams,
        done_tx,
    ));
    Ok(LogHandle {
        tx,
        done,
        stop,
        writer,
        tee,
    })
}

impl LogHandle {
    /// Closes the current file and opens a new one at the same path (kubelet renamed the old
    /// one to rotate it). Records read before the call land in the old file. If the new file
    /// cannot be opened, writing continues into the old one and the error is returned.
    /// Without a log path this does nothing.
    pub async fn reopen(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Reopen(reply))
            .map_err(|_| Error::FailedPrecondition("the log writer has stopped".into()))?;
        rx.await
            .map_err(|_| Error::FailedPrecondition("the log writer has stopped".into()))?
    }

    /// The container's live output, for an attached client (see [`Tee`]).
    pub fn tee(&self) -> &Arc<Tee> {
        &self.tee
    }

    /// Resolves once both streams reached EOF and everything read is written and flushed.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            // An error means the writer task is gone (it panicked): nothing more will come.
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// True once the writer finished.
    pub fn is_closed(&self) -> bool {
        *self.done.borrow()
    }

    /// Stops reading without waiting for EOF: whatever the pipes hold now is still read and
    /// written, a pending partial line is written as `P`, then the writer finishes. For a
    /// re-attached task that exited before we re-opened its FIFOs, or a shim that is gone.
    pub fn force_close(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the writer finished (see [`closed`](Self::closed)).
    pub async fn wait(self) -> Result<()> {
        self.writer
            .await
            .map_err(|e| Error::internal(format!("log writer task failed: {e}")))
    }
}

fn open_log_file(t: &LogTarget) -> Result<fs::File> {
    // The directory itself is kubelet's (validated absolute, without `..`); below it, nothing
    // is trusted.
    fs::create_dir_all(&t.root)
        .map_err(|e| Error::internal(format!("create log directory {}: {e}", t.root.display())))?;
    crate::safe_fs::open_append_in_root(&t.root, &t.rel, LOG_FILE_MODE)
}

struct ReadStream {
    pipe: pipe::Receiver,
    stream: Stream,
    max_line: usize,
    budget: Arc<Semaphore>,
    buffer_bytes: usize,
    tx: mpsc::UnboundedSender<Msg>,
    stop: watch::Receiver<bool>,
    tee: Arc<Tee>,
}

impl ReadStream {
    /// Formats and queues the records `data` completes; waits for buffer space (backpressure).
    async fn queue(&self, splitter: &mut LineSplitter, data: &[u8], eof: bool) {
        let ts = format_timestamp(SystemTime::now());
        let mut records = Vec::new();
        let mut emit = |content: &[u8], tag| {
            records.push(format_record(&ts, self.stream, tag, content));
        };
        splitter.push(data, &mut emit);
        if eof {
            splitter.finish(&mut emit);
        }
        for rec in records {
            let n = u32::try_from(rec.len().min(self.buffer_bytes)).unwrap_or(u32::MAX);
            let Ok(permit) = self.budget.clone().acquire_many_owned(n).await else {
                return; // never closed; nothing sensible to do if it were
            };
            if self.tx.send(Msg::Record(rec, permit)).is_err() {
                return; // the writer is gone
            }
        }
    }
}

async fn read_stream(r: ReadStream) {
    let mut splitter = LineSplitter::new(r.max_line);
    let mut buf = Vec::new();
    let mut stop = r.stop.clone();
    loop {
        let n = tokio::select! {
            res = read_some(&r.pipe, &mut buf) => match res {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(stream = r.stream.as_str(), error = %e, "reading container output failed");
                    0
                }
            },
            _ = stopped(&mut stop) => {
                // Take what is already in the pipe, without waiting for more.
                buf.resize(READ_CHUNK, 0);
                loop {
                    match r.pipe.try_read(&mut buf) {
                        Ok(n) if n > 0 => {
                            r.tee.send(r.stream, &buf[..n]).await;
                            r.queue(&mut splitter, &buf[..n], false).await
                        }
                        _ => break,
                    }
                }
                0
            }
        };
        if n == 0 {
            r.queue(&mut splitter, &[], true).await;
            break;
        }
        r.tee.send(r.stream, &buf[..n]).await;
        r.queue(&mut splitter, &buf[..n], false).await;
    }
    r.tee.end(r.stream);
    let _ = r.tx.send(Msg::Eof);
}

/// Reads what the pipe holds into `buf`, which is allocated only while output flows and
/// given back once the pipe is drained: most containers are idle most of the time, and two
/// idle 32 KiB buffers per running container were most of peapod's memory per pod.
async fn read_some(pipe: &pipe::Receiver, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        if buf.is_empty() {
            pipe.readable().await?;
            buf.resize(READ_CHUNK, 0);
        }
        match pipe.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => *buf = Vec::new(),
            Err(e) => return Err(e),
        }
    }
}

/// Resolves when `force_close` was called; never if the handle was dropped without it (the
/// writer then runs until EOF).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type LogFile = BufWriter<tokio::fs::File>;

async fn write_loop(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    path: Option<LogTarget>,
    mut out: Option<LogFile>,
    streams: usize,
    done: watch::Sender<bool>,
) {
    let mut eofs = 0;
    let mut failed: u64 = 0;
    while eofs < streams {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing queued: put what we have on disk before sleeping.
                flush(&mut out, &path, &mut failed).await;
                match rx.recv().await {
                    Some(m) => m,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        match msg {
            Msg::Record(rec, _permit) => {
                if let Some(w) = out.as_mut() {
                    if let Err(e) = w.write_all(&rec).await {
                        note_failure(&mut failed, &path, &e);
                    }
                }
            }
            Msg::Eof => eofs += 1,
            Msg::Reopen(reply) => {
                let res = match &path {
                    None => Ok(()),
                    Some(p) => {
                        flush(&mut out, &path, &mut failed).await;
                        let p = p.clone();
                        match tokio::task::spawn_blocking(move || open_log_file(&p)).await {
                            Ok(Ok(f)) => {
                                out = Some(BufWriter::new(tokio::fs::File::from_std(f)));
                                Ok(())
                            }
                            Ok(Err(e)) => Err(e),
                            Err(e) => Err(Error::internal(format!("reopen log file: {e}"))),
                        }
                    }
                };
                let _ = reply.send(res);
            }
        }
    }
    flush(&mut out, &path, &mut failed).await;
    if failed > 0 {
        tracing::warn!(log = ?path, failed, "log writer finished; some log records were lost");
    }
    let _ = done.send(true);
}

async fn flush(out: &mut Option<LogFile>, path: &Option<LogTarget>, failed: &mut u64) {
    if let Some(w) = out.as_mut() {
        if let Err(e) = w.flush().await {
            note_failure(failed, path, &e);
        }
    }
}

/// Counts a failed write; warns on the first and then every 1000th so a full disk does not
/// flood peapod's own log.
fn note_failure(failed: &mut u64, path: &Option<LogTarget>, e: &std::io::Error) {
    *failed += 1;
    if *failed == 1 || failed.is_multiple_of(1000) {
        tracing::warn!(log = ?path, error = %e, failed = *failed, "writing container log failed; dropping output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::path::Path;
    use std::time::Duration;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut emit = |c: &[u8], t: Tag| {
            out.push((
                t.as_str().to_string(),
                String::from_utf8(c.to_vec()).unwrap(),
            ))
        };
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    fn rec(t: &str, c: &str) -> (String, String) {
        (t.to_string(), c.to_string())
    }

    #[test]
    fn full_line_then_trailing_partial() {
        assert_eq!(split(16, &[b"a\nbb"]), vec![rec("F", "a"), rec("P", "bb")]);
    }

    #[test]
    fn long_line_is_cut_into_partials() {
        let line = "0123456789abcdef0123456789ABCDEFxyzwvuts"; // 40 bytes
        let input = format!("{line}\n");
        assert_eq!(
            split(16, &[input.as_bytes()]),
            vec![
                rec("P", &line[..16]),
                rec("P", &line[16..32]),
                rec("F", &line[32..]),
            ]
        );
        // The same line arriving in odd pieces splits the same way.
        let b = input.as_bytes();
        assert_eq!(
            split(16, &[&b[..3], &b[3..17], &b[17..33], &b[33..]]),
            split(16, &[b])
        );
    }

    #[test]
    fn exact_multiple_of_max_has_no_empty_record() {
        let line = "x".repeat(32);
        assert_eq!(
            split(16, &[format!("{line}\n").as_bytes()]),
            vec![rec("P", &line[..16]), rec("F", &line[16..])]
        );
        assert_eq!(
            split(16, &[&line.as_bytes()[..16], b"\n"]),
            vec![rec("F", &line[..16])]
        );
        // Exactly max_line with no newline at EOF: one partial.
        assert_eq!(
            split(16, &[&line.as_bytes()[..16]]),
            vec![rec("P", &line[..16])]
        );
    }

    #[test]
    fn crlf_and_empty_lines_are_kept() {
        assert_eq!(
            split(16, &[b"a\r\n\n\nb\n"]),
            vec![rec("F", "a\r"), rec("F", ""), rec("F", ""), rec("F", "b")]
        );
        assert_eq!(split(16, &[]), vec![]);
    }

    #[test]
    fn record_bytes() {
        let ts = "2016-10-06T00:17:09.669794202Z";
        assert_eq!(
            format_record(ts, Stream::Stdout, Tag::Full, b""),
            b"2016-10-06T00:17:09.669794202Z stdout F \n"
        );
        assert_eq!(
            format_record(ts, Stream::Stderr, Tag::Partial, b"bb"),
            b"2016-10-06T00:17:09.669794202Z stderr P bb\n"
        );
    }

    #[test]
    fn timestamps() {
        let at = |s: u64, n: u32| format_timestamp(UNIX_EPOCH + Duration::new(s, n));
        assert_eq!(
            at(1_475_713_029, 669_794_202),
            "2016-10-06T00:17:09.669794202Z"
        );
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z"); // leap day
        assert_eq!(
            at(4_107_542_399, 999_999_999),
            "2100-02-28T23:59:59.999999999Z"
        );
        assert_eq!(at(1_735_689_599, 1), "2024-12-31T23:59:59.000000001Z");
        let re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$").unwrap();
        assert!(re.is_match(&format_timestamp(SystemTime::now())));
    }

    /// Log file lines without their timestamps; also checks each timestamp's shape.
    fn lines_of(path: &Path) -> Vec<String> {
        let re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z (.*)$").unwrap();
        let text = fs::read_to_string(path).unwrap_or_default();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        // Not `lines()`: it would strip the `\r` of a CRLF line.
        text.split_terminator('\n')
            .map(|l| {
                let c = re.captures(l).unwrap_or_else(|| panic!("bad line {l:?}"));
                c[1].to_string()
            })
            .collect()
    }

    async fn wait_for_lines(path: &Path, n: usize) {
        for _ in 0..500 {
            if lines_of(path).len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} never had {n} lines: {:?}",
            path.display(),
            lines_of(path)
        );
    }

    fn shim_writer(p: &Path) -> fs::File {
        fs::OpenOptions::new().write(true).open(p).unwrap()
    }

    #[tokio::test]
    async fn writes_both_streams_and_reopens_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(&dir.path().join("fifo"), "c1", false, false).unwrap();
        let log = dir.path().join("pods/ns_pod_uid/ctr/0.log"); // parents do not exist yet
        let handle = spawn_log_writer_with(
            &io,
            log.clone(),
            false,
            LogOptions {
                max_line: 16,
                ..LogOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // The shim opens its write ends a little later than we open the read ends.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut out = shim_writer(io.stdout_path());
        let mut err = shim_writer(io.stderr_path().unwrap());

        out.write_all(b"hello\n").unwrap();
        wait_for_lines(&log, 1).await;
        err.write_all(b"oops\r\n").unwrap();
        wait_for_lines(&log, 2).await;
        out.write_all(b"0123456789abcdef0123456789ABCDEFxyzwvuts\n\n")
            .unwrap();
        wait_for_lines(&log, 6).await;

        // kubelet rotates: rename, then ReopenContainerLog.
        let rotated = log.with_extension("log.20240101");
        fs::rename(&log, &rotated).unwrap();
        handle.reopen().await.unwrap();
        assert_eq!(
            fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o640
        );
        err.write_all(b"after\n").unwrap();
        out.write_all(b"tail").unwrap(); // no newline before EOF
        drop(out);
        drop(err);
        let closed = handle.closed();
        tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .unwrap()
            .unwrap();
        closed.await;

        assert_eq!(
            lines_of(&rotated),
            vec![
                "stdout F hello",
                "stderr F oops\r",
                "stdout P 0123456789abcdef",
                "stdout P 0123456789ABCDEF",
                "stdout F xyzwvuts",
                "stdout F ",
            ]
        );
        let mut new = lines_of(&log);
        new.sort(); // the two streams race for the new file
        assert_eq!(new, vec!["stderr F after", "stdout P tail"]);
    }

    #[tokio::test]
    async fn tty_reads_only_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "t", false, true).unwrap();
        let log = dir.path().join("t.log");
        let handle = spawn_log_writer(&io, log.clone(), true).unwrap();
        let mut out = shim_writer(io.stdout_path());
        out.write_all(b"$ ls\r\n").unwrap();
        drop(out);
        tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lines_of(&log), vec!["stdout F $ ls\r"]);
    }

    #[tokio::test]
    async fn empty_log_path_still_drains() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "d", false, false).unwrap();
        let handle = spawn_log_writer(&io, PathBuf::new(), false).unwrap();
        handle.reopen().await.unwrap(); // nothing to reopen: fine
        let (o, e) = (
            io.stdout_path().to_owned(),
            io.stderr_path().unwrap().to_owned(),
        );
        // Far more than a pipe holds: finishes only if someone reads.
        let writer = tokio::task::spawn_blocking(move || {
            let mut o = shim_writer(&o);
            let _e = shim_writer(&e);
            o.write_all(&vec![b'y'; 512 * 1024]).unwrap();
        });
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2); // only the fifos
    }

    #[tokio::test]
    async fn small_buffer_is_lossless() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "b", false, true).unwrap();
        let log = dir.path().join("b.log");
        let handle = spawn_log_writer_with(
            &io,
            log.clone(),
            true,
            LogOptions {
                max_line: 64,
                buffer_bytes: 256,
            },
        )
        .unwrap();
        let o = io.stdout_path().to_owned();
        let writer = tokio::task::spawn_blocking(move || {
            let mut o = shim_writer(&o);
            for i in 0..5000 {
                writeln!(o, "line {i}").unwrap();
            }
        });
        tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), handle.wait())
            .await
            .unwrap()
            .unwrap();
        let lines = lines_of(&log);
        assert_eq!(lines.len(), 5000);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l, &format!("stdout F line {i}"));
        }
    }

    /// peapod restarts while the container runs: the shim keeps its ends open, a new peapod
    /// re-attaches to the same FIFOs and appends to the same log.
    #[tokio::test]
    async fn reattach_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "r", false, true).unwrap();
        let log = dir.path().join("r.log");
        let first = spawn_log_writer(&io, log.clone(), true).unwrap();
        // The shim holds a read end of its own besides the write end.
        let shim_read = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(io.stdout_path())
            .unwrap();
        let mut out = shim_writer(io.stdout_path());
        out.write_all(b"before\n").unwrap();
        wait_for_lines(&log, 1).await;

        // "peapod exits": its readers go away without EOF.
        first.force_close();
        tokio::time::timeout(Duration::from_secs(10), first.wait())
            .await
            .unwrap()
            .unwrap();
        out.write_all(b"while away\n").unwrap(); // sits in the pipe

        let io2 = ContainerIo::reopen_existing(dir.path(), "r", false, true).unwrap();
        let second = spawn_log_writer(&io2, log.clone(), true).unwrap();
        out.write_all(b"after\n").unwrap();
        drop(out);
        drop(shim_read);
        tokio::time::timeout(Duration::from_secs(10), second.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            lines_of(&log),
            vec!["stdout F before", "stdout F while away", "stdout F after"]
        );
        io2.remove().unwrap();
        assert!(!io.stdout_path().exists());
    }

    #[tokio::test]
    async fn attached_subscribers_get_the_raw_output_and_the_log_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "a", false, false).unwrap();
        let log = dir.path().join("a.log");
        let handle = spawn_log_writer(&io, log.clone(), false).unwrap();
        let mut out1 = handle.tee().subscribe(Stream::Stdout);
        let mut out2 = handle.tee().subscribe(Stream::Stdout);
        let mut err = handle.tee().subscribe(Stream::Stderr);
        let mut o = shim_writer(io.stdout_path());
        let mut e = shim_writer(io.stderr_path().unwrap());
        o.write_all(b"partial").unwrap();
        e.write_all(b"oops\n").unwrap();
        let got = |rx: &mut mpsc::Receiver<bytes::Bytes>| {
            let mut v = Vec::new();
            while let Ok(b) = rx.try_recv() {
                v.extend_from_slice(&b);
            }
            v
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(got(&mut out1), b"partial");
        assert_eq!(got(&mut out2), b"partial");
        assert_eq!(got(&mut err), b"oops\n");
        // A client that went away does not stop the others.
        drop(out2);
        o.write_all(b" line\n").unwrap();
        drop(o);
        drop(e);
        tokio::time::timeout(Duration::from_secs(10), handle.closed())
            .await
            .unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), out1.recv())
                .await
                .unwrap()
                .as_deref(),
            Some(&b" line\n"[..])
        );
        // EOF of the container's output ends every subscription, later ones at once.
        assert!(out1.recv().await.is_none());
        assert!(err.recv().await.is_none());
        assert!(handle
            .tee()
            .subscribe(Stream::Stdout)
            .recv()
            .await
            .is_none());
        let mut lines = lines_of(&log);
        lines.sort();
        assert_eq!(lines, vec!["stderr F oops", "stdout F partial line"]);
    }

    #[tokio::test]
    async fn a_tty_has_no_stderr_to_attach_to() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "t2", false, true).unwrap();
        let handle = spawn_log_writer(&io, PathBuf::new(), true).unwrap();
        assert!(handle
            .tee()
            .subscribe(Stream::Stderr)
            .recv()
            .await
            .is_none());
        drop(shim_writer(io.stdout_path()));
        handle.closed().await;
    }

    #[tokio::test]
    async fn reopen_after_the_writer_stopped_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::create(dir.path(), "s", false, true).unwrap();
        let handle = spawn_log_writer(&io, dir.path().join("s.log"), true).unwrap();
        drop(shim_writer(io.stdout_path()));
        handle.closed().await;
        assert!(handle.is_closed());
        assert!(matches!(
            handle.reopen().await,
            Err(Error::FailedPrecondition(_))
        ));
    }
}
