//! SPDY/3 header blocks: the plain name/value layout and the zlib stream each direction of a
//! connection shares across all its SYN_STREAM, SYN_REPLY and HEADERS frames.
//!
//! Mirrors `moby/spdystream` `spdy/read.go` (`parseHeaderValueBlock`), `spdy/write.go`
//! (`writeHeaderValueBlock`) and `spdy/dictionary.go`. The Go reader fails the whole connection
//! on an upper-case or duplicate header name, or on a frame whose compressed block it does not
//! consume exactly, so the writer lower-cases and merges names and sync-flushes after every
//! block.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Header name/value pairs in wire order. Names are lower-case on the wire; lookups ignore case
/// (Go canonicalises `streamType` in memory and sends `streamtype`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Adds a value; a second value for the same name is joined with NUL, as SPDY/3 encodes
    /// repeated headers.
    pub fn add(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        if let Some((_, v)) = self.0.iter_mut().find(|(n, _)| *n == name) {
            v.push('\0');
            v.push_str(value);
        } else {
            self.0.push((name, value.to_string()));
        }
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.add(name, value);
        self
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Largest decompressed header block accepted from a peer. Kubernetes streams carry two or three
/// short headers; this only bounds a hostile peer's zlib bomb.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// The SPDY/3 header compression dictionary (SPDY/3 draft §2.6.10.1; `spdy/dictionary.go`
/// `headerDictionaryV3` in moby/spdystream): 65 length-prefixed words, then a block of text.
/// Built at first use from that structure; `tests::dictionary_is_the_spdy3_one` checks its
/// length (1423) and Adler-32 (0xE3C6A7C2, the DICTID every Go peer's zlib header carries).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
            " 00:00:00",
            " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,public",
            "private",
            "max-age=",
            "gzip,deflate,sdch",
            "charset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Adler-32 of [`dictionary`]: the DICTID in the zlib header of every header stream.
pub const DICTIONARY_ID: u32 = 0xE3C6_A7C2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header block: {0}")]
    Malformed(&'static str),
    #[error("header block: zlib: {0}")]
    Zlib(String),
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
}

/// The uncompressed block: `u32 count`, then per pair `u32 len, name, u32 len, value`.
pub fn encode_plain(h: &Headers) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(h.0.len() as u32).to_be_bytes());
    for (n, v) in &h.0 {
        let n = n.to_ascii_lowercase();
        b.extend_from_slice(&(n.len() as u32).to_be_bytes());
        b.extend_from_slice(n.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

pub fn decode_plain(mut b: &[u8]) -> Result<Headers, HeaderError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if b.len() < n {
            return Err(HeaderError::Malformed("truncated"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> Result<usize, HeaderError> {
        let s = take(b, 4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    }
    let count = len(&mut b)?;
    let mut h = Headers::new();
    for _ in 0..count {
        let n = len(&mut b)?;
        let name = take(&mut b, n)?;
        let n = len(&mut b)?;
        let value = take(&mut b, n)?;
        let name =
            std::str::from_utf8(name).map_err(|_| HeaderError::Malformed("name not UTF-8"))?;
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty header name"));
        }
        // Values are opaque bytes to SPDY; Kubernetes only sends ASCII.
        let value = String::from_utf8_lossy(value).into_owned();
        if h.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(HeaderError::Malformed("duplicate header name"));
        }
        h.0.push((name.to_ascii_lowercase(), value));
    }
    if !b.is_empty() {
        return Err(HeaderError::Malformed("bytes after the last header"));
    }
    Ok(h)
}

/// The sending direction's zlib stream: best compression with the SPDY dictionary, one sync
/// flush per block (Go's `zlib.NewWriterLevelDict(.., BestCompression, ..)` + `Flush`).
pub struct Compressor(Compress);

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    pub fn new() -> Self {
        let mut c = Compress::new(Compression::best(), true);
        // Before the first byte, so the zlib header carries FDICT and the dictionary's id.
        c.set_dictionary(dictionary())
            .expect("a fresh deflate stream accepts a dictionary");
        Compressor(c)
    }

    /// One header block, compressed and sync-flushed: a frame's complete header payload.
    pub fn compress(&mut self, h: &Headers) -> Vec<u8> {
        let plain = encode_plain(h);
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.0.total_in();
            // Compressing into a Vec cannot fail on a healthy stream.
            let _ = self.0.compress_vec(input, &mut out, FlushCompress::Sync);
            let used = (self.0.total_in() - before) as usize;
            input = &input[used..];
            // Done once all input is in and the flush left room to spare (it completed).
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// The receiving direction's zlib stream. The peer's first block names the SPDY dictionary;
/// it is supplied when zlib asks for it (a peer without FDICT is accepted too, as Go does).
pub struct Decompressor(Decompress);

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    pub fn new() -> Self {
        Decompressor(Decompress::new(true))
    }

    /// Inflates one frame's complete header payload and parses it. All of `block` must be
    /// consumed, as spdystream demands (`WrongCompressedPayloadSize`).
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(1024);
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(HeaderError::TooLarge);
            }
            let before = self.0.total_in();
            let res = self
                .0
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.0.total_in() - before) as usize;
            input = &input[used..];
            match res {
                Ok(Status::StreamEnd) => {
                    return Err(HeaderError::Zlib("the peer ended its header stream".into()))
                }
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                    if used == 0 && out.len() < out.capacity() {
                        return Err(HeaderError::Malformed("incomplete compressed block"));
                    }
                }
                Err(e) => match e.needs_dictionary() {
                    Some(id) if id == DICTIONARY_ID => {
                        self.0
                            .set_dictionary(dictionary())
                            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                    }
                    Some(id) => {
                        return Err(HeaderError::Zlib(format!(
                            "unknown dictionary id {id:#010x}"
                        )))
                    }
                    None => return Err(HeaderError::Zlib(e.to_string())),
                },
            }
        }
        decode_plain(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(s).unwrap()
    }

    fn adler32(d: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in d {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(adler32(d), DICTIONARY_ID);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
    }

    #[test]
    fn plain_block_round_trip_and_lowercase() {
        let mut h = Headers::new();
        h.add("streamType", "error");
        h.add("Port", "80");
        h.add("port", "81");
        let b = encode_plain(&h);
        let back = decode_plain(&b).unwrap();
        assert_eq!(back.get("STREAMTYPE"), Some("error"));
        assert_eq!(back.0[0].0, "streamtype");
        assert_eq!(back.get("port"), Some("80"));
        assert_eq!(back.0[1].1, "80\081");
    }

    #[test]
    fn plain_block_rejects_duplicates_truncation_and_trailing_bytes() {
        let dup = [&1u32.to_be_bytes()[..], &[0, 0, 0, 1, b'a', 0, 0, 0, 0][..]].concat();
        let mut two = 2u32.to_be_bytes().to_vec();
        two.extend_from_slice(&dup[4..]);
        two.extend_from_slice(&[0, 0, 0, 1, b'A', 0, 0, 0, 0]);
        assert!(decode_plain(&two).is_err());
        assert!(decode_plain(&dup[..6]).is_err());
        let mut extra = dup.clone();
        extra.push(0);
        assert!(decode_plain(&extra).is_err());
        assert!(decode_plain(&dup).is_ok());
    }

    /// Brief §3.2: the client's first SYN_STREAM block (`{streamtype: error}`), produced by
    /// CPython's zlib with the SPDY dictionary.
    const CLIENT_BLOCK: &str = "78f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff";
    /// Brief §3.2: the server's first and second SYN_REPLY blocks (empty headers), one stream.
    const SERVER_BLOCK_1: &str = "78f9e3c6a7c202a6230600000000ffff";
    const SERVER_BLOCK_2: &str = "020100000000ffff";

    #[test]
    fn inflates_the_brief_vectors() {
        let mut d = Decompressor::new();
        let h = d.decompress(&unhex(CLIENT_BLOCK)).unwrap();
        assert_eq!(h.0, vec![("streamtype".to_string(), "error".to_string())]);

        let mut d = Decompressor::new();
        assert!(d.decompress(&unhex(SERVER_BLOCK_1)).unwrap().is_empty());
        assert!(d.decompress(&unhex(SERVER_BLOCK_2)).unwrap().is_empty());
    }

    #[test]
    fn deflates_like_the_brief_vectors() {
        let mut c = Compressor::new();
        let first = c.compress(&Headers::new());
        // The zlib header: deflate, best compression, FDICT, the SPDY dictionary's id.
        assert_eq!(&first[..6], &unhex("78f9e3c6a7c2")[..]);
        assert!(first.ends_with(&[0, 0, 0xff, 0xff]), "sync flush trailer");
        let second = c.compress(&Headers::new());
        assert!(second.ends_with(&[0, 0, 0xff, 0xff]));
        // Byte-identical to CPython's zlib at level 9 for these blocks.
        assert_eq!(hex::encode(&first), SERVER_BLOCK_1);
        assert_eq!(hex::encode(&second), SERVER_BLOCK_2);
    }

    #[test]
    fn one_stream_per_direction_round_trips_many_blocks() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        for i in 0..50 {
            let h = Headers::new()
                .with("streamType", if i % 2 == 0 { "error" } else { "data" })
                .with("port", &format!("{}", 8000 + i))
                .with("requestID", &i.to_string());
            let block = c.compress(&h);
            assert_eq!(d.decompress(&block).unwrap(), h);
        }
    }

    #[test]
    fn a_block_split_short_is_an_error_not_a_hang() {
        let mut c = Compressor::new();
        let block = c.compress(&Headers::new().with("streamtype", "stdout"));
        let mut d = Decompressor::new();
        assert!(d.decompress(&block[..block.len() / 2]).is_err());
    }
}
