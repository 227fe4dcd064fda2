//! A remote command session as the exec and attach back-ends see it, whatever the protocol
//! (SPDY or WebSocket) underneath: channels of bytes for the stdio the client asked for,
//! terminal resizes, and a signal that the client went away.

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

/// Chunks of output queued towards the client before a back-end waits.
pub const OUTPUT_QUEUE: usize = 16;

/// A terminal size event, as client-go's `TerminalSize` encodes it (`{"Width":80,"Height":24}`;
/// Go decodes field names case-insensitively, so lower case is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TermSize {
    #[serde(alias = "width", alias = "WIDTH")]
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(alias = "height", alias = "HEIGHT")]
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The protocol side of a session. A back-end reads `stdin` to EOF, writes output into
/// `stdout`/`stderr` and drops them when the output ends (that ends the client's streams).
pub struct Session {
    /// Client input, when the request asked for stdin; EOF when the client closed it.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Terminal sizes, for a tty session.
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Becomes true when the client's connection ended.
    pub gone: watch::Receiver<bool>,
}

impl Session {
    /// Resolves once the client went away.
    pub async fn client_gone(&mut self) {
        let _ = self.gone.wait_for(|g| *g).await;
    }
}

/// Decodes the stream of JSON objects client-go writes on the resize stream, which arrive cut
/// at arbitrary points. Sizes with a zero dimension are skipped (containerd ignores them too).
#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    pub fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let mut it =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde_json::Value>();
            loop {
                match it.next() {
                    Some(Ok(v)) => {
                        consumed = it.byte_offset();
                        if let Ok(s) = serde_json::from_value::<TermSize>(v) {
                            if s.width > 0 && s.height > 0 {
                                out.push(s);
                            }
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        // Garbage: drop what we have rather than stall on it forever.
                        consumed = self.buf.len();
                        break;
                    }
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        // A hostile client cannot grow this without bound.
        if self.buf.len() > 64 * 1024 {
            self.buf.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_events_split_anywhere() {
        let wire = b"{\"Width\":80,\"Height\":24}\n{\"width\":100,\"height\":40}\n{\"Width\":0,\"Height\":5}\n";
        for cut in 0..wire.len() {
            let mut d = ResizeDecoder::default();
            let mut got = d.push(&wire[..cut]);
            got.extend(d.push(&wire[cut..]));
            assert_eq!(
                got,
                vec![
                    TermSize {
                        width: 80,
                        height: 24
                    },
                    TermSize {
                        width: 100,
                        height: 40
                    }
                ],
                "cut at {cut}"
            );
        }
    }
}
