//! The CRI socket at the HTTP/2 level, with frames built by hand: what Go, Java and Python
//! gRPC clients send that a Rust client never would (a socket path as `:authority`), and
//! how a client's deadline is answered.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use common::Rig;
use peapod::cri::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_uint(payload.len() as u64, 3);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u32(stream);
    b.extend_from_slice(payload);
    b.to_vec()
}

/// One gRPC call's outcome as read off the wire.
#[derive(Debug, Default)]
struct Answer {
    http_status: String,
    grpc_status: Option<String>,
    grpc_message: String,
    data: Vec<u8>,
    reset: Option<u32>,
}

/// A raw HTTP/2 client connection: the client side of HPACK is `loona-hpack` with indexing
/// (as grpc-go indexes), so later requests are mostly references into its dynamic table.
struct Wire {
    sock: UnixStream,
    enc: loona_hpack::Encoder<'static>,
    dec: loona_hpack::Decoder<'static>,
    next_stream: u32,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(rig: &Rig) -> Wire {
        let mut sock = UnixStream::connect(&rig.peapod_socket).await.unwrap();
        sock.write_all(PREFACE).await.unwrap();
        sock.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        Wire {
            sock,
            enc: loona_hpack::Encoder::new(),
            dec: loona_hpack::Decoder::new(),
            next_stream: 1,
            buf: Vec::new(),
        }
    }

    async fn call(
        &mut self,
        authority: &[u8],
        path: &str,
        msg: &impl Message,
        extra: &[(&[u8], &[u8])],
    ) -> Answer {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"grpc-go/1.56.3"),
        ];
        headers.extend_from_slice(extra);
        let block = self.enc.encode(headers);
        let mut body = vec![0u8];
        let m = msg.encode_to_vec();
        body.extend((m.len() as u32).to_be_bytes());
        body.extend(m);
        let mut out = frame(0x1, 0x4, stream, &block);
        out.extend(frame(0x0, 0x1, stream, &body));
        self.sock.write_all(&out).await.unwrap();
        self.read_answer(stream).await
    }

    async fn read_answer(&mut self, stream: u32) -> Answer {
        let mut ans = Answer::default();
        loop {
            while self.buf.len() < 9 {
                self.fill().await;
            }
            let len = (usize::from(self.buf[0]) << 16)
                | (usize::from(self.buf[1]) << 8)
                | usize::from(self.buf[2]);
            while self.buf.len() < 9 + len {
                self.fill().await;
            }
            let f: Vec<u8> = self.buf.drain(..9 + len).collect();
            let (kind, flags) = (f[3], f[4]);
            let sid = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
            let payload = &f[9..];
            match kind {
                // SETTINGS from the server: acknowledge it, as every client must.
                0x4 if flags & 0x1 == 0 => {
                    self.sock.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
                }
                0x1 => {
                    // Every server header block is decoded, whichever stream, to keep the
                    // HPACK state in step.
                    let fields = self.dec.decode(payload).expect("server HPACK");
                    if sid == stream {
                        for (n, v) in fields {
                            let v = String::from_utf8_lossy(&v).to_string();
                            match n.as_slice() {
                                b":status" => ans.http_status = v,
                                b"grpc-status" => ans.grpc_status = Some(v),
                                b"grpc-message" => ans.grpc_message = v,
                                _ => {}
                            }
                        }
                        if flags & 0x1 != 0 {
                            return ans;
                        }
                    }
                }
                0x0 if sid == stream => {
                    ans.data.extend_from_slice(payload);
                    if flags & 0x1 != 0 {
                        return ans;
                    }
                }
                0x3 if sid == stream => {
                    ans.reset = Some(u32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                    return ans;
                }
                0x7 => panic!("GOAWAY from peapod: {payload:?}"),
                _ => {}
            }
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(30), self.sock.read(&mut chunk))
            .await
            .expect("peapod answered within 30 s")
            .unwrap();
        assert!(n > 0, "peapod closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

fn version_of(ans: &Answer) -> VersionResponse {
    assert_eq!(ans.reset, None, "stream reset: {ans:?}");
    assert_eq!(ans.http_status, "200", "{ans:?}");
    assert_eq!(ans.grpc_status.as_deref(), Some("0"), "{ans:?}");
    assert!(ans.data.len() >= 5, "no message: {ans:?}");
    VersionResponse::decode(&ans.data[5..]).expect("a VersionResponse")
}

#[tokio::test]
async fn any_authority_a_grpc_client_sends_on_the_socket_is_served() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    let mut wire = Wire::connect(&rig).await;
    let path = rig.peapod_socket.display().to_string();
    let encoded = path.replace('/', "%2F");
    // kubelet ≤ 1.28 (the bare socket path), grpc-java, grpc-python ≥ 1.57 (%-encoded),
    // an empty value, and what grpc-go sends today; twice each on one connection, so the
    // second round is sent as references into the client's HPACK table.
    for round in 0..2 {
        for authority in [path.as_bytes(), encoded.as_bytes(), b"", b"localhost"] {
            let ans = wire
                .call(
                    authority,
                    "/runtime.v1.RuntimeService/Version",
                    &VersionRequest::default(),
                    &[],
                )
                .await;
            let v = version_of(&ans);
            assert_eq!(
                v.runtime_name,
                "peapod",
                "round {round}, authority {:?}",
                String::from_utf8_lossy(authority)
            );
        }
    }
    // A request with a body and a status answer, not just Version.
    let ans = wire
        .call(
            path.as_bytes(),
            "/runtime.v1.RuntimeService/ListPodSandbox",
            &ListPodSandboxRequest::default(),
            &[],
        )
        .await;
    assert_eq!(ans.grpc_status.as_deref(), Some("0"), "{ans:?}");
}

#[tokio::test]
async fn a_deadline_that_passes_in_the_server_answers_deadline_exceeded() {
    if !common::require_root() {
        return;
    }
    let rig = Rig::start().await;
    // A "registry" that accepts connections and never answers: the pull can only end by
    // the client's deadline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let mut wire = Wire::connect(&rig).await;
    let req = PullImageRequest {
        image: Some(ImageSpec {
            image: format!("127.0.0.1:{port}/silent/image:1"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ans = wire
        .call(
            b"localhost",
            "/runtime.v1.ImageService/PullImage",
            &req,
            &[(b"grpc-timeout", b"200m")],
        )
        .await;
    assert_eq!(
        ans.grpc_status.as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED expected: {ans:?}"
    );
    // The connection and peapod are fine afterwards.
    let v = wire
        .call(
            b"localhost",
            "/runtime.v1.RuntimeService/Version",
            &VersionRequest::default(),
            &[],
        )
        .await;
    assert_eq!(version_of(&v).runtime_name, "peapod");
    hold.abort();
}
