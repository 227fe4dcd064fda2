//! SPDY/3.1 frames: layouts, encoding, and incremental decoding from a byte buffer.
//!
//! Mirrors `moby/spdystream` `spdy/types.go` (constants), `spdy/read.go` and `spdy/write.go`
//! (layouts). All integers are big-endian. A control frame is `u16 0x8000|version, u16 type,
//! u8 flags, u24 length`; a data frame `u32 stream id (top bit 0), u8 flags, u24 length`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::headers::{Compressor, Decompressor, HeaderError, Headers};

/// `spdy/types.go` `Version`: what writers put in control frames (readers do not check it).
pub const VERSION: u16 = 3;

// Control frame types, `spdy/types.go` `ControlFrameType`.
pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// `ControlFlagFin` / `DataFlagFin`: the sender's half of the stream ends with this frame.
pub const FLAG_FIN: u8 = 0x01;
/// `ControlFlagUnidirectional` (SYN_STREAM): the receiver may not send on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

// RST_STREAM status codes, `spdy/types.go` `RstStreamStatus`.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_INVALID_STREAM: u32 = 2;
pub const RST_REFUSED_STREAM: u32 = 3;
/// What spdystream's `Stream.Reset()` sends.
pub const RST_CANCEL: u32 = 5;
pub const RST_INTERNAL_ERROR: u32 = 6;

// GOAWAY status codes, `spdy/types.go` `GoAwayStatus`.
pub const GOAWAY_OK: u32 = 0;
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// `spdy/types.go` `MaxDataLength`: the u24 length field's limit.
pub const MAX_FRAME_LENGTH: usize = (1 << 24) - 1;
/// Largest DATA payload peapod sends in one frame (spdystream accepts up to 16 MiB - 1; smaller
/// frames keep one busy stream from delaying the others' frames for long).
pub const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Largest stream id (31 bits).
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        assoc_stream_id: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// Parsed past, never acted on (spdystream ignores it too).
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    /// Parsed past, never acted on: no flow control (spdystream sends none).
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame type SPDY/3.1 does not define (skipped; spdystream would fail instead).
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY frame: {0}")]
    Malformed(&'static str),
    #[error("SPDY frame: {0}")]
    Headers(#[from] HeaderError),
}

/// Encodes frames for one direction of a connection; owns that direction's header zlib stream.
#[derive(Default)]
pub struct Encoder {
    zlib: Compressor,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the frame's bytes to `out`. DATA payloads must fit one frame (callers chunk).
    pub fn encode(&mut self, f: &Frame, out: &mut BytesMut) {
        match f {
            Frame::SynStream {
                stream_id,
                assoc_stream_id,
                priority,
                flags,
                headers,
            } => {
                let block = self.zlib.compress(headers);
                control(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
                out.put_u32(*stream_id & MAX_STREAM_ID);
                out.put_u32(*assoc_stream_id & MAX_STREAM_ID);
                out.put_u8((*priority & 0x7) << 5);
                out.put_u8(0); // slot
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.zlib.compress(headers);
                control(out, TYPE_SYN_REPLY, *flags, 4 + block.len());
                out.put_u32(*stream_id & MAX_STREAM_ID);
                out.put_slice(&block);
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.zlib.compress(headers);
                control(out, TYPE_HEADERS, *flags, 4 + block.len());
                out.put_u32(*stream_id & MAX_STREAM_ID);
                out.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control(out, TYPE_RST_STREAM, 0, 8);
                out.put_u32(*stream_id & MAX_STREAM_ID);
                out.put_u32(*status);
            }
            Frame::Settings => {
                control(out, TYPE_SETTINGS, 0, 4);
                out.put_u32(0);
            }
            Frame::Ping { id } => {
                control(out, TYPE_PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control(out, TYPE_GOAWAY, 0, 8);
                out.put_u32(*last_good_stream_id & MAX_STREAM_ID);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(out, TYPE_WINDOW_UPDATE, 0, 8);
                out.put_u32(*stream_id & MAX_STREAM_ID);
                out.put_u32(*delta & MAX_STREAM_ID);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                debug_assert!(data.len() <= MAX_FRAME_LENGTH);
                out.put_u32(*stream_id & MAX_STREAM_ID);
                out.put_u8(*flags);
                put_u24(out, data.len());
                out.put_slice(data);
            }
            Frame::Unknown { kind } => {
                control(out, *kind, 0, 0);
            }
        }
    }
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    put_u24(out, len);
}

fn put_u24(out: &mut BytesMut, n: usize) {
    out.put_u8((n >> 16) as u8);
    out.put_u8((n >> 8) as u8);
    out.put_u8(n as u8);
}

/// Decodes frames of one direction; owns that direction's header zlib stream.
#[derive(Default)]
pub struct Decoder {
    zlib: Decompressor,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one complete frame off the front of `buf`; `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(8 + len);
        let is_control = frame[0] & 0x80 != 0;
        if !is_control {
            let stream_id = frame.get_u32() & MAX_STREAM_ID;
            let flags = frame.get_u8();
            frame.advance(3);
            if stream_id == 0 {
                return Err(FrameError::Malformed("DATA frame on stream 0"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: frame.freeze(),
            }));
        }
        let _version = frame.get_u16() & 0x7fff;
        let kind = frame.get_u16();
        let flags = frame.get_u8();
        frame.advance(3);
        let mut p = frame;
        let need = |p: &BytesMut, n: usize| {
            if p.len() < n {
                Err(FrameError::Malformed("control frame too short"))
            } else {
                Ok(())
            }
        };
        let f = match kind {
            TYPE_SYN_STREAM => {
                need(&p, 10)?;
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let assoc_stream_id = p.get_u32() & MAX_STREAM_ID;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                if stream_id == 0 {
                    return Err(FrameError::Malformed("SYN_STREAM for stream 0"));
                }
                Frame::SynStream {
                    stream_id,
                    assoc_stream_id,
                    priority,
                    flags,
                    headers: self.zlib.decompress(&p)?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(&p, 4)?;
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                if stream_id == 0 {
                    return Err(FrameError::Malformed("SYN_REPLY/HEADERS for stream 0"));
                }
                let headers = self.zlib.decompress(&p)?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(&p, 8)?;
                Frame::RstStream {
                    stream_id: p.get_u32() & MAX_STREAM_ID,
                    status: p.get_u32(),
                }
            }
            TYPE_SETTINGS => Frame::Settings,
            TYPE_PING => {
                need(&p, 4)?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                need(&p, 8)?;
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & MAX_STREAM_ID,
                    status: p.get_u32(),
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(&p, 8)?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & MAX_STREAM_ID,
                    delta: p.get_u32() & MAX_STREAM_ID,
                }
            }
            kind => Frame::Unknown { kind },
        };
        Ok(Some(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> BytesMut {
        let s: String = s.split_whitespace().collect();
        BytesMut::from(&hex::decode(s).unwrap()[..])
    }

    fn enc(e: &mut Encoder, f: &Frame) -> String {
        let mut out = BytesMut::new();
        e.encode(f, &mut out);
        hex::encode(&out)
    }

    /// The test vectors of the brief (§3.2), decoded by a server.
    #[test]
    fn decodes_the_client_syn_stream_vector() {
        let mut d = Decoder::new();
        let mut b = unhex(
            "80030001 00000028 00000001 00000000 0000 \
             78f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff",
        );
        let f = d.decode(&mut b).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::SynStream {
                stream_id: 1,
                assoc_stream_id: 0,
                priority: 0,
                flags: 0,
                headers: Headers(vec![("streamtype".into(), "error".into())]),
            }
        );
        assert!(b.is_empty());
    }

    #[test]
    fn encodes_the_server_syn_reply_vectors() {
        let mut e = Encoder::new();
        let reply = |id| Frame::SynReply {
            stream_id: id,
            flags: 0,
            headers: Headers::new(),
        };
        assert_eq!(
            enc(&mut e, &reply(1)),
            "80030002 00000014 00000001 78f9e3c6a7c202a6230600000000ffff".replace(' ', "")
        );
        assert_eq!(
            enc(&mut e, &reply(3)),
            "800300020000000c00000003020100000000ffff"
        );
        // And a Go-like client (a fresh inflater) reads both back.
        let mut d = Decoder::new();
        let mut b = unhex(
            "80030002 00000014 00000001 78f9e3c6a7c202a6230600000000ffff \
             80030002 0000000c 00000003 020100000000ffff",
        );
        for id in [1, 3] {
            assert_eq!(d.decode(&mut b).unwrap().unwrap(), reply(id));
        }
        assert!(b.is_empty());
    }

    #[test]
    fn other_vectors_both_ways() {
        let mut e = Encoder::new();
        let mut d = Decoder::new();
        let cases = [
            (Frame::Ping { id: 1 }, "800300060000000400000001"),
            (
                Frame::Data {
                    stream_id: 1,
                    flags: FLAG_FIN,
                    data: Bytes::new(),
                },
                "0000000101000000",
            ),
            (
                Frame::GoAway {
                    last_good_stream_id: 7,
                    status: GOAWAY_OK,
                },
                "80030007000000080000000700000000",
            ),
            (
                Frame::RstStream {
                    stream_id: 5,
                    status: RST_CANCEL,
                },
                "80030003000000080000000500000005",
            ),
        ];
        for (f, hx) in cases {
            assert_eq!(enc(&mut e, &f), hx, "{f:?}");
            assert_eq!(d.decode(&mut unhex(hx)).unwrap().unwrap(), f);
        }
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut d = Decoder::new();
        let full = unhex("00000003 00000005 68656c6c6f 800300060000000400000009");
        for cut in 0..13 {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(d.decode(&mut b).unwrap(), None, "cut at {cut}");
            assert_eq!(b.len(), cut);
        }
        let mut b = full.clone();
        assert_eq!(
            d.decode(&mut b).unwrap().unwrap(),
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(d.decode(&mut b).unwrap().unwrap(), Frame::Ping { id: 9 });
        assert!(b.is_empty());
    }

    #[test]
    fn ignorable_and_malformed_frames() {
        let mut d = Decoder::new();
        // SETTINGS with one entry (INITIAL_WINDOW_SIZE), WINDOW_UPDATE, an unknown type 5.
        let mut b = unhex(
            "80030004 0000000c 00000001 00000007 00010000 \
             80030009 00000008 00000001 00001000 \
             80030005 00000000",
        );
        assert_eq!(d.decode(&mut b).unwrap().unwrap(), Frame::Settings);
        assert_eq!(
            d.decode(&mut b).unwrap().unwrap(),
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 4096
            }
        );
        assert_eq!(
            d.decode(&mut b).unwrap().unwrap(),
            Frame::Unknown { kind: 5 }
        );
        assert!(d.decode(&mut unhex("00000000 00000000")).is_err());
        assert!(d.decode(&mut unhex("80030003 00000004 00000001")).is_err());
        assert!(d
            .decode(&mut unhex("80030001 0000000a 00000000 00000000 0000"))
            .is_err());
    }

    #[test]
    fn syn_stream_round_trip_through_one_zlib_stream() {
        let mut e = Encoder::new();
        let mut d = Decoder::new();
        let mut wire = BytesMut::new();
        let frames: Vec<Frame> = (0..6)
            .map(|i| Frame::SynStream {
                stream_id: 2 * i + 1,
                assoc_stream_id: 0,
                priority: 0,
                flags: 0,
                headers: Headers::new()
                    .with("streamtype", ["error", "data"][i as usize % 2])
                    .with("port", "8080")
                    .with("requestid", &(i / 2).to_string()),
            })
            .collect();
        for f in &frames {
            e.encode(f, &mut wire);
        }
        for f in &frames {
            assert_eq!(&d.decode(&mut wire).unwrap().unwrap(), f);
        }
        assert!(wire.is_empty());
    }
}
