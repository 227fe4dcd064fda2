//! Serves gRPC clients that send a unix socket's path as the HTTP/2 `:authority`.
//!
//! kubelet ≤ 1.28 dials the bare socket path, so grpc-go sends `/run/peapod/peapod.sock`
//! as `:authority`; grpc-java and grpc-python ≥ 1.57 send the path or its %-encoding.
//! The `h2` crate (under hyper and tonic) answers such a request with RST_STREAM
//! PROTOCOL_ERROR, because the value is not a URI authority
//! (<https://github.com/hyperium/h2/pull/487>, open; `h2::server::Peer::convert_poll_message`
//! rejects it before any hook peapod could use). containerd and CRI-O, on Go's HTTP/2,
//! accept any authority on their sockets, so peapod must too.
//!
//! No crate relaxes that check, so this module sits between the socket and the HTTP/2
//! server and rewrites the client's header blocks: it decodes each HEADERS (+ CONTINUATION)
//! block with the client's HPACK state (`loona-hpack`), replaces an `:authority` that is not
//! a valid URI authority by `localhost` (what Kubernetes itself sends on unix sockets), and
//! re-encodes the block with literals that never touch the dynamic table, so the server's
//! decoder stays in step whatever the client indexed. Every other frame, and the whole
//! server-to-client direction, passes through unchanged. Anything that is not well-formed
//! HTTP/2 is passed through untouched from that point on, for the server to reject.
//!
//! Frame layout and flags: RFC 9113 §4.1, §6.2, §6.10; HPACK literals: RFC 7541 §6.2.2.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// RFC 9113 §3.4: the client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE's initial value. peapod's server never raises
/// it, so every frame it is sent must fit.
const MAX_FRAME_SIZE: usize = 16_384;
/// A header block larger than this is left to the server to refuse (its own header list
/// limit is far smaller); it bounds what one connection can make peapod buffer.
const MAX_HEADER_BLOCK: usize = 1 << 20;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// What `:authority` becomes when the client's value is not a URI authority.
pub const REPLACEMENT_AUTHORITY: &str = "localhost";

/// An IO stream whose client-to-server header blocks carry a valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    inbuf: BytesMut,
    outbuf: BytesMut,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::default(),
            inbuf: BytesMut::with_capacity(8 * 1024),
            outbuf: BytesMut::with_capacity(8 * 1024),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.outbuf.is_empty() {
                let n = this.outbuf.len().min(buf.remaining());
                buf.put_slice(&this.outbuf[..n]);
                this.outbuf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left is an incomplete frame: hand it over as it is, so the
                // server sees the same truncated stream the client sent.
                if !this.inbuf.is_empty() {
                    let rest = this.inbuf.split();
                    this.outbuf.extend_from_slice(&rest);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.inbuf.extend_from_slice(rb.filled());
                        this.rewriter.process(&mut this.inbuf, &mut this.outbuf);
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[derive(Default, PartialEq, Eq, Debug)]
enum Phase {
    #[default]
    Preface,
    Frames,
    /// Not HTTP/2 as expected: bytes go through as they came.
    Passthrough,
}

/// A header block being gathered from a HEADERS frame and its CONTINUATIONs.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    /// The 5 priority bytes of the HEADERS frame, kept as sent.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, for passthrough if the block cannot be decoded.
    raw: Vec<u8>,
}

/// The client-to-server half of the connection, frame by frame.
pub struct Rewriter {
    phase: Phase,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<PendingBlock>,
    /// Bytes of the current non-header frame still to forward.
    skip: usize,
    /// How many header blocks had their `:authority` replaced (for logs and tests).
    pub rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            phase: Phase::Preface,
            decoder: loona_hpack::Decoder::new(),
            pending: None,
            skip: 0,
            rewritten: 0,
        }
    }
}

impl Rewriter {
    /// Moves every complete unit (preface, frame) from `input` to `output`, rewritten.
    pub fn process(&mut self, input: &mut BytesMut, output: &mut BytesMut) {
        loop {
            match self.phase {
                Phase::Passthrough => {
                    output.extend_from_slice(&input.split());
                    return;
                }
                Phase::Preface => {
                    let n = input.len().min(PREFACE.len());
                    if input[..n] != PREFACE[..n] {
                        self.passthrough(output);
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    output.extend_from_slice(&input.split_to(PREFACE.len()));
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    if self.skip > 0 {
                        // The rest of a frame that is not a header frame: forwarded as it
                        // arrives, so DATA is never held back.
                        let n = self.skip.min(input.len());
                        if n == 0 {
                            return;
                        }
                        output.extend_from_slice(&input.split_to(n));
                        self.skip -= n;
                        continue;
                    }
                    if input.len() < FRAME_HEADER_LEN {
                        return;
                    }
                    let len = (usize::from(input[0]) << 16)
                        | (usize::from(input[1]) << 8)
                        | usize::from(input[2]);
                    let kind = input[3];
                    if self.pending.is_none() && kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                        output.extend_from_slice(&input.split_to(FRAME_HEADER_LEN));
                        self.skip = len;
                        continue;
                    }
                    if len > MAX_HEADER_BLOCK {
                        self.passthrough(output);
                        continue;
                    }
                    if input.len() < FRAME_HEADER_LEN + len {
                        return;
                    }
                    let frame = input.split_to(FRAME_HEADER_LEN + len);
                    if let Err(raw) = self.header_frame(&frame, output) {
                        // Hand the server exactly what came, from here on.
                        tracing::debug!(
                            frame_type = kind,
                            "not a header block peapod can decode; passing the connection through"
                        );
                        output.extend_from_slice(&raw);
                        self.phase = Phase::Passthrough;
                    }
                }
            }
        }
    }

    fn passthrough(&mut self, output: &mut BytesMut) {
        tracing::debug!("not HTTP/2 as expected; passing the connection through");
        if let Some(p) = self.pending.take() {
            output.extend_from_slice(&p.raw);
        }
        self.phase = Phase::Passthrough;
    }

    /// Handles one HEADERS or CONTINUATION frame (or any frame while a block is open).
    /// When the connection is not valid HTTP/2, gives back the bytes received since the
    /// last block that was forwarded, for the caller to pass through as they came.
    fn header_frame(&mut self, frame: &[u8], output: &mut BytesMut) -> Result<(), Vec<u8>> {
        let unread = |pending: Option<PendingBlock>| {
            let mut raw = pending.map(|p| p.raw).unwrap_or_default();
            raw.extend_from_slice(frame);
            raw
        };
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match (kind, self.pending.as_mut()) {
            (TYPE_HEADERS, None) => {
                let mut body = payload;
                let mut pad = 0usize;
                if flags & FLAG_PADDED != 0 {
                    let Some((&p, rest)) = body.split_first() else {
                        return Err(unread(None));
                    };
                    pad = usize::from(p);
                    body = rest;
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    if body.len() < 5 {
                        return Err(unread(None));
                    }
                    let mut p = [0u8; 5];
                    p.copy_from_slice(&body[..5]);
                    priority = Some(p);
                    body = &body[5..];
                }
                if pad > body.len() {
                    return Err(unread(None));
                }
                let fragment = body[..body.len() - pad].to_vec();
                self.pending = Some(PendingBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment,
                    raw: frame.to_vec(),
                });
            }
            (TYPE_CONTINUATION, Some(p)) if p.stream_id == stream_id => {
                if p.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(unread(self.pending.take()));
                }
                p.fragment.extend_from_slice(payload);
                p.raw.extend_from_slice(frame);
            }
            // A CONTINUATION out of place, or any frame inside a header block: a
            // connection error the server must see for itself.
            _ => return Err(unread(self.pending.take())),
        }
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.pending.take() else {
            return Err(Vec::new());
        };
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if self
            .decoder
            .decode_with_cb(&block.fragment, |n, v| {
                fields.push((n.into_owned(), v.into_owned()))
            })
            .is_err()
        {
            // The client's HPACK state is now unknown: the server decodes the rest itself
            // (and will fail the connection with COMPRESSION_ERROR, as it should).
            return Err(block.raw);
        }
        if fix_authority(&mut fields) {
            self.rewritten += 1;
            tracing::debug!(
                stream = block.stream_id,
                "replaced a non-URI :authority (a socket path) by {REPLACEMENT_AUTHORITY}"
            );
        }
        write_block(&block, &encode_literals(&fields), output);
        Ok(())
    }
}

/// Replaces an `:authority` that h2 would refuse. True when something changed.
pub fn fix_authority(fields: &mut [(Vec<u8>, Vec<u8>)]) -> bool {
    let mut changed = false;
    for (name, value) in fields.iter_mut() {
        if name.as_slice() == b":authority" && !is_uri_authority(value) {
            *value = REPLACEMENT_AUTHORITY.as_bytes().to_vec();
            changed = true;
        }
    }
    changed
}

/// The test h2 itself applies (`http::uri::Authority`), so nothing it would refuse gets by.
fn is_uri_authority(v: &[u8]) -> bool {
    !v.is_empty() && http::uri::Authority::try_from(v).is_ok()
}

/// RFC 7541 §6.2.2: "Literal Header Field without Indexing — New Name", no Huffman coding.
/// Nothing is added to the decoder's dynamic table, so the server's table stays empty and
/// cannot drift from what this side assumes.
fn encode_literals(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 11).sum();
    let mut out = Vec::with_capacity(size);
    for (name, value) in fields {
        out.push(0x00);
        for s in [name, value] {
            // Writing into a Vec cannot fail.
            let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut out);
            out.extend_from_slice(s);
        }
    }
    out
}

/// Writes the block as one HEADERS frame, followed by CONTINUATIONs where it does not fit.
fn write_block(block: &PendingBlock, encoded: &[u8], output: &mut BytesMut) {
    let mut flags = 0u8;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    let prefix: &[u8] = match &block.priority {
        Some(p) => {
            flags |= FLAG_PRIORITY;
            p
        }
        None => &[],
    };
    let first_room = MAX_FRAME_SIZE - prefix.len();
    let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    put_frame_header(
        output,
        prefix.len() + first.len(),
        TYPE_HEADERS,
        flags,
        block.stream_id,
    );
    output.extend_from_slice(prefix);
    output.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_header(
            output,
            chunk.len(),
            TYPE_CONTINUATION,
            flags,
            block.stream_id,
        );
        output.extend_from_slice(chunk);
        rest = tail;
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id & 0x7fff_ffff);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame_header(&mut b, payload.len(), kind, flags, stream);
        b.extend_from_slice(payload);
        b.to_vec()
    }

    /// Splits a rewritten byte stream back into frames: (type, flags, stream, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= FRAME_HEADER_LEN {
            let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    fn run(input: &[u8]) -> (Vec<u8>, Rewriter) {
        let mut rw = Rewriter::default();
        let mut out = BytesMut::new();
        // Byte by byte: every split point of the stream must give the same result.
        let mut inbuf = BytesMut::new();
        for b in input {
            inbuf.put_u8(*b);
            rw.process(&mut inbuf, &mut out);
        }
        (out.to_vec(), rw)
    }

    fn headers(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/runtime.v1.RuntimeService/Version".to_vec()),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
        ]
    }

    fn decode_all(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut dec = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut cur = Vec::new();
        for (kind, flags, _, payload) in frames {
            if *kind == TYPE_HEADERS || *kind == TYPE_CONTINUATION {
                let mut p = payload.as_slice();
                if *kind == TYPE_HEADERS && flags & FLAG_PRIORITY != 0 {
                    p = &p[5..];
                }
                cur.extend_from_slice(p);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(dec.decode(&cur).unwrap());
                    cur.clear();
                }
            }
        }
        blocks
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        // The client indexes everything (grpc-go does), so the second request is mostly
        // references into the client's dynamic table.
        let mut enc = loona_hpack::Encoder::new();
        let h = headers(b"/run/peapod/peapod.sock");
        let b1 = enc.encode(h.iter().map(|(n, v)| (*n, v.as_slice())));
        let b2 = enc.encode(h.iter().map(|(n, v)| (*n, v.as_slice())));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b2));
        let (out, rw) = run(&input);
        assert_eq!(rw.rewritten, 2);
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let fr = frames(&out[PREFACE.len()..]);
        assert_eq!(fr.len(), 4);
        assert_eq!((fr[0].0, fr[1].0, fr[2].0, fr[3].0), (0x4, 0x1, 0x0, 0x1));
        assert_eq!(fr[2].3, b"\0\0\0\0\0", "DATA passes unchanged");
        let blocks = decode_all(&fr);
        for block in &blocks {
            let auth = block.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(auth.1, b"localhost");
            let path = block.iter().find(|(n, _)| n == b":path").unwrap();
            assert_eq!(path.1, b"/runtime.v1.RuntimeService/Version");
            assert_eq!(block.len(), 5);
        }
        // A literal without indexing: the server's decoder gets nothing to index.
        assert_eq!(fr[1].3[0], 0x00);
    }

    #[test]
    fn every_form_clients_send_is_accepted_or_replaced() {
        for (sent, expect) in [
            (&b"/run/peapod/peapod.sock"[..], &b"localhost"[..]),
            (b"%2Frun%2Fpeapod%2Fpeapod.sock", b"localhost"),
            (b"", b"localhost"),
            (b"localhost", b"localhost"),
            (b"127.0.0.1:1234", b"127.0.0.1:1234"),
        ] {
            let mut f = vec![(b":authority".to_vec(), sent.to_vec())];
            fix_authority(&mut f);
            assert_eq!(f[0].1, expect, "for {:?}", String::from_utf8_lossy(sent));
        }
    }

    #[test]
    fn continuation_frames_are_joined_and_large_blocks_split_again() {
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        let h: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":authority", b"/a/socket"),
            (b"x-big", &big),
        ];
        let block = enc.encode(h.clone());
        let (a, b) = block.split_at(100);
        let mut input = PREFACE.to_vec();
        // PADDED + PRIORITY on the HEADERS frame, and the block split across a CONTINUATION.
        let mut p = vec![3u8];
        p.extend([0, 0, 0, 0, 16]);
        p.extend(a);
        p.extend([0, 0, 0]);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &p,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, b));
        let (out, _) = run(&input);
        let fr = frames(&out[PREFACE.len()..]);
        assert!(
            fr.len() >= 3,
            "40 KB needs a HEADERS and at least two CONTINUATIONs"
        );
        assert!(fr.iter().all(|f| f.3.len() <= MAX_FRAME_SIZE));
        assert_eq!(
            fr[0].1 & (FLAG_END_STREAM | FLAG_PRIORITY | FLAG_PADDED),
            FLAG_END_STREAM | FLAG_PRIORITY
        );
        assert_eq!(&fr[0].3[..5], &[0, 0, 0, 0, 16]);
        assert_eq!(fr.last().unwrap().1 & FLAG_END_HEADERS, FLAG_END_HEADERS);
        let blocks = decode_all(&fr);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0][1].1, b"localhost");
        assert_eq!(blocks[0][2].1, big);
    }

    #[test]
    fn what_is_not_http2_passes_through_unchanged() {
        let input = b"GET / HTTP/1.1\r\nHost: /x\r\n\r\n".to_vec();
        let (out, _) = run(&input);
        assert_eq!(out, input);
        // A CONTINUATION without a HEADERS before it: the server must see the error.
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"abc"));
        input.extend(frame(0x0, 0, 1, b"more"));
        let (out, _) = run(&input);
        assert_eq!(out, input);
        // Garbage HPACK: passed through as sent.
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        let (out, _) = run(&input);
        assert_eq!(out, input);
    }
}
