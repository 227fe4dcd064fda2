//! A SPDY/3.1 connection over any byte stream, in the server role (streams the peer opens
//! arrive on [`Incoming`]) or the client role ([`Connection::open_stream`]).
//!
//! Shape: one task reads and dispatches frames, one task owns the write half and the header
//! compressor and writes frames in the order they were queued, so a stream's final DATA+FIN
//! always precedes the GOAWAY that [`Connection::close`] sends (the Go client stops reading at
//! GOAWAY; `moby/spdystream` `connection.go` Serve). Streams are channels: inbound DATA goes to
//! the stream's [`StreamReader`], writes go through the writer task.
//!
//! Backpressure: the inbound channel of a stream is bounded and the read task waits when it is
//! full, which stops reading the socket (TCP then pushes back on the peer). That is what a peer
//! without flow control gets from spdystream too. A stream whose reader was dropped has its data
//! discarded, so an unwanted stream never stalls the others.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::frame::{
    Decoder, Encoder, Frame, FLAG_FIN, GOAWAY_OK, MAX_DATA_CHUNK, MAX_STREAM_ID,
    RST_PROTOCOL_ERROR, RST_REFUSED_STREAM,
};
use super::headers::Headers;

/// Frames queued for one stream's reader before the read task waits.
const INBOUND_FRAMES: usize = 64;
/// Frames queued for the writer task before writers wait.
const OUTBOUND_FRAMES: usize = 256;
/// Streams the peer opened that the handler has not taken yet.
const INCOMING_STREAMS: usize = 64;
/// How long [`Connection::close`] waits for the peer to close its side after our GOAWAY
/// before dropping the socket (closing with unread input would send a TCP RST, which can make
/// the peer discard our last frames).
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// How long a client waits for the SYN_REPLY to its SYN_STREAM (client-go's
/// `createStreamResponseTimeout`, `apimachinery/pkg/util/httpstream/spdy/connection.go`).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts the peer's streams (odd ids); never opens any.
    Server,
    /// Opens streams (odd ids).
    Client,
}

enum Out {
    Frame(Frame),
    /// Write GOAWAY after everything queued before it, flush, shut the write half down.
    Close(oneshot::Sender<()>),
}

struct Entry {
    inbound: Option<mpsc::Sender<Bytes>>,
    state: Arc<StreamState>,
    reply: Option<oneshot::Sender<Headers>>,
}

#[derive(Default)]
struct StreamState {
    /// The peer reset the stream: writes fail.
    peer_reset: AtomicBool,
    /// We sent FIN or RST: nothing more may be sent.
    local_done: AtomicBool,
    /// The peer sent FIN or RST.
    remote_done: AtomicBool,
}

struct Shared {
    streams: Mutex<HashMap<u32, Entry>>,
    /// Highest stream id the peer opened (for GOAWAY's last-good-stream-id).
    last_peer_stream: AtomicU32,
    /// Set once the peer sent GOAWAY or its side of the socket ended.
    peer_gone: watch::Sender<bool>,
}

impl Shared {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a stream once both halves are done.
    fn maybe_remove(&self, id: u32) {
        let mut s = self.streams();
        if let Some(e) = s.get(&id) {
            if e.state.local_done.load(Ordering::SeqCst)
                && e.state.remote_done.load(Ordering::SeqCst)
            {
                s.remove(&id);
            }
        }
    }
}

struct Inner {
    out: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    reader: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

/// A handle on the connection; clones share it. The socket closes after [`close`](Self::close)
/// or when the last handle is dropped.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

/// Streams the peer opens, in order.
pub struct Incoming {
    rx: mpsc::Receiver<Stream>,
}

impl Incoming {
    /// The next stream the peer opened; `None` once the peer is gone.
    pub async fn next(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

/// One SPDY stream: the headers of its SYN_STREAM (server role) or SYN_REPLY (client role),
/// and its two halves.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

/// The inbound half: DATA payloads until the peer's FIN or RST.
pub struct StreamReader {
    rx: mpsc::Receiver<Bytes>,
}

impl StreamReader {
    /// The next DATA payload; `None` at the peer's FIN or RST, or when the connection ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Reads until EOF, discarding (the peer may send nothing it expects to be read).
    pub async fn drain(&mut self) {
        while self.rx.recv().await.is_some() {}
    }
}

/// The outbound half. Clones write to the same stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    state: Arc<StreamState>,
    shared: Arc<Shared>,
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, what.to_string())
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Accepts a stream the peer opened (SYN_REPLY with `headers`, no FIN).
    pub async fn reply(&self, headers: Headers) -> io::Result<()> {
        self.send(Frame::SynReply {
            stream_id: self.id,
            flags: 0,
            headers,
        })
        .await
    }

    /// Sends `data` as DATA frames of at most 32 KiB. Fails once the stream or the connection
    /// is closed.
    pub async fn write(&self, data: Bytes) -> io::Result<()> {
        if self.state.peer_reset.load(Ordering::SeqCst) {
            return Err(broken("stream reset by the peer"));
        }
        if self.state.local_done.load(Ordering::SeqCst) {
            return Err(broken("stream already closed"));
        }
        let mut data = data;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_CHUNK));
            self.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes our side (empty DATA with FIN); later calls do nothing.
    pub async fn close(&self) {
        if self.state.local_done.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self
            .send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await;
        self.shared.maybe_remove(self.id);
    }

    /// Aborts the stream (RST_STREAM `status`); nothing is sent if our side already ended,
    /// as spdystream's `Reset()`.
    pub async fn reset(&self, status: u32) {
        if self.state.local_done.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self
            .send(Frame::RstStream {
                stream_id: self.id,
                status,
            })
            .await;
        self.state.remote_done.store(true, Ordering::SeqCst);
        self.shared.maybe_remove(self.id);
    }

    async fn send(&self, f: Frame) -> io::Result<()> {
        self.out
            .send(Out::Frame(f))
            .await
            .map_err(|_| broken("connection closed"))
    }
}

impl Connection {
    /// Starts serving SPDY on `io`. `idle` ends the connection after that long without a
    /// frame from the peer (kubelet's streaming server uses 4 hours).
    pub fn new<T>(io: T, role: Role, idle: Duration) -> (Connection, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let (in_tx, in_rx) = mpsc::channel(INCOMING_STREAMS);
        let shared = Arc::new(Shared {
            streams: Mutex::new(HashMap::new()),
            last_peer_stream: AtomicU32::new(0),
            peer_gone: watch::channel(false).0,
        });
        tokio::spawn(write_loop(w, out_rx));
        let reader = tokio::spawn(
            ReadLoop {
                shared: shared.clone(),
                out: out_tx.clone(),
                incoming: in_tx,
                role,
                idle,
                next_peer_id: if role == Role::Server { 1 } else { 2 },
                goaway: false,
            }
            .run(r),
        );
        let conn = Connection {
            inner: Arc::new(Inner {
                out: out_tx,
                shared,
                next_id: AtomicU32::new(1),
                reader: Mutex::new(Some(reader)),
                closed: AtomicBool::new(false),
            }),
        };
        (conn, Incoming { rx: in_rx })
    }

    /// Opens a stream (client role): SYN_STREAM with `headers`, then waits for the SYN_REPLY.
    pub async fn open_stream(&self, headers: Headers) -> io::Result<Stream> {
        let id = self.inner.next_id.fetch_add(2, Ordering::SeqCst);
        if id > MAX_STREAM_ID {
            return Err(io::Error::other("stream ids exhausted"));
        }
        let (tx, rx) = mpsc::channel(INBOUND_FRAMES);
        let (reply_tx, reply_rx) = oneshot::channel();
        let state = Arc::new(StreamState::default());
        self.inner.shared.streams().insert(
            id,
            Entry {
                inbound: Some(tx),
                state: state.clone(),
                reply: Some(reply_tx),
            },
        );
        let writer = StreamWriter {
            id,
            out: self.inner.out.clone(),
            state,
            shared: self.inner.shared.clone(),
        };
        writer
            .send(Frame::SynStream {
                stream_id: id,
                assoc_stream_id: 0,
                priority: 0,
                flags: 0,
                headers,
            })
            .await?;
        let headers = match tokio::time::timeout(REPLY_TIMEOUT, reply_rx).await {
            Ok(Ok(h)) => h,
            Ok(Err(_)) => return Err(broken("stream refused or connection closed")),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no SYN_REPLY in time",
                ))
            }
        };
        Ok(Stream {
            id,
            headers,
            reader: StreamReader { rx },
            writer,
        })
    }

    /// Resolves once the peer sent GOAWAY or closed its side of the socket.
    pub fn peer_gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shared.peer_gone.subscribe();
        async move {
            let _ = rx.wait_for(|g| *g).await;
        }
    }

    pub fn is_peer_gone(&self) -> bool {
        *self.inner.shared.peer_gone.borrow()
    }

    /// Sends GOAWAY after every frame queued so far, shuts our side of the socket, and waits
    /// (a few seconds at most) for the peer to close its side. Idempotent.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.inner.out.send(Out::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let reader = self
            .inner
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut h) = reader {
            if tokio::time::timeout(CLOSE_LINGER, &mut h).await.is_err() {
                h.abort();
            }
        }
    }
}

async fn write_loop<W: AsyncWrite>(w: W, mut rx: mpsc::Receiver<Out>) {
    tokio::pin!(w);
    let mut enc = Encoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut broken = false;
    let mut last_good = 0u32;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = None;
        // Batch what is already queued into one write.
        while let Some(msg) = next.take() {
            match msg {
                Out::Frame(f) => {
                    if let Frame::SynReply { stream_id, .. } = &f {
                        last_good = last_good.max(*stream_id);
                    }
                    if !broken {
                        enc.encode(&f, &mut buf);
                    }
                }
                Out::Close(reply) => {
                    close = Some(reply);
                    break;
                }
            }
            if buf.len() >= 64 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if let Some(reply) = close {
            if !broken {
                enc.encode(
                    &Frame::GoAway {
                        last_good_stream_id: last_good,
                        status: GOAWAY_OK,
                    },
                    &mut buf,
                );
                let _ = w.write_all(&buf).await;
                let _ = w.flush().await;
                let _ = w.shutdown().await;
            }
            let _ = reply.send(());
            // Anything queued later goes nowhere; keep draining so no writer waits forever.
            broken = true;
            buf.clear();
            continue;
        }
        if !broken && !buf.is_empty() {
            if let Err(e) = w.write_all(&buf).await {
                tracing::debug!(error = %e, "SPDY write failed; the connection is gone");
                broken = true;
            }
        }
        buf.clear();
    }
}

struct ReadLoop {
    shared: Arc<Shared>,
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<Stream>,
    role: Role,
    idle: Duration,
    /// Lowest id the peer's next SYN_STREAM may have (spdystream `validateStreamId`).
    next_peer_id: u32,
    goaway: bool,
}

impl ReadLoop {
    async fn run<R: AsyncRead>(mut self, r: R) {
        tokio::pin!(r);
        let mut dec = Decoder::new();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        'read: loop {
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => self.handle(f).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "bad SPDY frame; closing the connection");
                        break 'read;
                    }
                }
            }
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            match tokio::time::timeout(self.idle, r.read_buf(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "SPDY read failed");
                    break;
                }
                Err(_) => {
                    tracing::debug!("SPDY connection idle for {:?}; closing", self.idle);
                    break;
                }
            }
        }
        self.shared.peer_gone.send_replace(true);
        // Every reader sees EOF; every writer fails from now on.
        let streams: Vec<Entry> = self.shared.streams().drain().map(|(_, e)| e).collect();
        for e in streams {
            e.state.peer_reset.store(true, Ordering::SeqCst);
        }
    }

    async fn handle(&mut self, f: Frame) {
        match f {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.syn_stream(stream_id, flags, headers).await,
            Frame::SynReply {
                stream_id, headers, ..
            } => {
                let reply = self
                    .shared
                    .streams()
                    .get_mut(&stream_id)
                    .and_then(|e| e.reply.take());
                if let Some(r) = reply {
                    let _ = r.send(headers);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(e) = self.shared.streams().remove(&stream_id) {
                    e.state.peer_reset.store(true, Ordering::SeqCst);
                    e.state.remote_done.store(true, Ordering::SeqCst);
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let fin = flags & FLAG_FIN != 0;
                let tx = {
                    let mut s = self.shared.streams();
                    let Some(e) = s.get_mut(&stream_id) else {
                        return; // unknown or finished stream: dropped, as spdystream does
                    };
                    if fin {
                        e.state.remote_done.store(true, Ordering::SeqCst);
                        e.inbound.take()
                    } else {
                        e.inbound.clone()
                    }
                };
                if let Some(tx) = tx {
                    if !data.is_empty() {
                        // A dropped reader means nobody wants this stream's data.
                        let _ = tx.send(data).await;
                    }
                }
                if fin {
                    self.shared.maybe_remove(stream_id);
                }
            }
            Frame::Ping { id } => {
                // Echo the peer's pings (their parity differs from ours); we send none.
                let ours = if self.role == Role::Server { 0 } else { 1 };
                if id % 2 != ours {
                    let _ = self.out.send(Out::Frame(Frame::Ping { id })).await;
                }
            }
            Frame::GoAway { .. } => {
                self.goaway = true;
                self.shared.peer_gone.send_replace(true);
            }
            Frame::Headers { .. }
            | Frame::Settings
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }

    async fn syn_stream(&mut self, id: u32, flags: u8, headers: Headers) {
        if self.goaway {
            return; // spdystream ignores new streams after GOAWAY
        }
        let peer_parity = if self.role == Role::Server { 1 } else { 0 };
        if id < self.next_peer_id || id % 2 != peer_parity {
            let _ = self
                .out
                .send(Out::Frame(Frame::RstStream {
                    stream_id: id,
                    status: RST_PROTOCOL_ERROR,
                }))
                .await;
            return;
        }
        self.next_peer_id = id.saturating_add(2);
        self.shared.last_peer_stream.store(id, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(INBOUND_FRAMES);
        let state = Arc::new(StreamState::default());
        let fin = flags & FLAG_FIN != 0;
        if fin {
            state.remote_done.store(true, Ordering::SeqCst);
        }
        self.shared.streams().insert(
            id,
            Entry {
                inbound: (!fin).then_some(tx),
                state: state.clone(),
                reply: None,
            },
        );
        let stream = Stream {
            id,
            headers,
            reader: StreamReader { rx },
            writer: StreamWriter {
                id,
                out: self.out.clone(),
                state,
                shared: self.shared.clone(),
            },
        };
        if self.incoming.send(stream).await.is_err() {
            self.shared.streams().remove(&id);
            let _ = self
                .out
                .send(Out::Frame(Frame::RstStream {
                    stream_id: id,
                    status: RST_REFUSED_STREAM,
                }))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, Incoming, Connection, Incoming) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let idle = Duration::from_secs(60);
        let (srv, srv_in) = Connection::new(a, Role::Server, idle);
        let (cli, cli_in) = Connection::new(b, Role::Client, idle);
        (srv, srv_in, cli, cli_in)
    }

    #[tokio::test]
    async fn streams_carry_data_both_ways_and_fin_is_eof() {
        let (srv, mut incoming, cli, _) = pair();
        let server = tokio::spawn(async move {
            let mut s = incoming.next().await.unwrap();
            assert_eq!(s.headers.get("streamType"), Some("stdin"));
            s.writer.reply(Headers::new()).await.unwrap();
            let mut got = Vec::new();
            while let Some(b) = s.reader.recv().await {
                got.extend_from_slice(&b);
            }
            s.writer.write(Bytes::from(got)).await.unwrap();
            s.writer.close().await;
            srv.close().await;
        });
        let mut s = cli
            .open_stream(Headers::new().with("streamType", "stdin"))
            .await
            .unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        s.writer.write(Bytes::from(big.clone())).await.unwrap();
        s.writer.close().await;
        let mut echo = Vec::new();
        while let Some(b) = s.reader.recv().await {
            echo.extend_from_slice(&b);
        }
        assert_eq!(echo, big);
        cli.peer_gone().await;
        drop(s);
        drop(cli);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn reset_by_the_peer_fails_writes_and_ends_reads() {
        let (_srv, mut incoming, cli, _) = pair();
        let opener = tokio::spawn({
            let cli = cli.clone();
            async move { cli.open_stream(Headers::new().with("x", "1")).await }
        });
        let s2 = incoming.next().await.unwrap();
        assert_eq!(s2.id, 1);
        s2.writer.reply(Headers::new()).await.unwrap();
        let mut client = opener.await.unwrap().unwrap();
        s2.writer.reset(super::super::frame::RST_CANCEL).await;
        assert!(client.reader.recv().await.is_none());
        // The client learns of the reset when the RST arrives; writes then fail.
        let mut failed = false;
        for _ in 0..100 {
            if client.writer.write(Bytes::from_static(b"x")).await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(failed);
    }

    #[tokio::test]
    async fn pings_are_echoed_and_bad_stream_ids_refused() {
        let (a, b) = tokio::io::duplex(4096);
        let (_srv, _incoming) = Connection::new(a, Role::Server, Duration::from_secs(60));
        let (mut r, mut w) = tokio::io::split(b);
        let mut enc = Encoder::new();
        let mut out = BytesMut::new();
        enc.encode(&Frame::Ping { id: 7 }, &mut out);
        // An even (server-side) stream id from a client is a protocol error.
        enc.encode(
            &Frame::SynStream {
                stream_id: 2,
                assoc_stream_id: 0,
                priority: 0,
                flags: 0,
                headers: Headers::new(),
            },
            &mut out,
        );
        w.write_all(&out).await.unwrap();
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        while frames.len() < 2 {
            r.read_buf(&mut buf).await.unwrap();
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames[0], Frame::Ping { id: 7 });
        assert_eq!(
            frames[1],
            Frame::RstStream {
                stream_id: 2,
                status: RST_PROTOCOL_ERROR
            }
        );
    }

    #[tokio::test]
    async fn close_sends_goaway_after_the_last_data() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (srv, mut incoming) = Connection::new(a, Role::Server, Duration::from_secs(60));
        let (mut r, mut w) = tokio::io::split(b);
        let mut enc = Encoder::new();
        let mut out = BytesMut::new();
        enc.encode(
            &Frame::SynStream {
                stream_id: 1,
                assoc_stream_id: 0,
                priority: 0,
                flags: 0,
                headers: Headers::new().with("streamtype", "stdout"),
            },
            &mut out,
        );
        w.write_all(&out).await.unwrap();
        let s = incoming.next().await.unwrap();
        s.writer.reply(Headers::new()).await.unwrap();
        s.writer
            .write(Bytes::from(vec![b'a'; 100_000]))
            .await
            .unwrap();
        s.writer.close().await;
        let closer = tokio::spawn(async move { srv.close().await });
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        loop {
            if r.read_buf(&mut buf).await.unwrap() == 0 {
                break;
            }
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        w.shutdown().await.unwrap();
        closer.await.unwrap();
        let n = frames.len();
        assert!(matches!(frames[0], Frame::SynReply { stream_id: 1, .. }));
        let data: usize = frames
            .iter()
            .map(|f| match f {
                Frame::Data { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(data, 100_000);
        assert!(matches!(
            frames[n - 2],
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                ..
            }
        ));
        assert_eq!(
            frames[n - 1],
            Frame::GoAway {
                last_good_stream_id: 1,
                status: GOAWAY_OK
            }
        );
    }
}
