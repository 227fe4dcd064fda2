//! A small SPDY client for the streaming protocols: enough to run a command or forward a port
//! through a streaming URL (peapod's own, or kubelet's `/exec` and `/portforward` endpoints that
//! proxy to it). The tests and the benchmark use it to drive servers directly, without a Go
//! client's process start-up in the measurement.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::spdy::{Connection, Headers, Role, Stream};

/// The largest HTTP response head accepted during the upgrade.
const MAX_HEAD: usize = 64 * 1024;

/// Upgrades `url` (`http://host:port/path?query`) to SPDY/3.1 offering `protocols` in order;
/// returns the connection and the protocol the server chose.
pub async fn connect(url: &str, protocols: &[&str]) -> io::Result<(Connection, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tcp = TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    handshake(tcp, authority, path, protocols).await
}

/// The SPDY upgrade over an established byte stream (TCP, or TLS to kubelet's port).
pub async fn handshake<T>(
    mut io: T,
    authority: &str,
    path: &str,
    protocols: &[&str],
) -> io::Result<(Connection, String)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await?;
    io.flush().await?;
    // Byte by byte up to the blank line: the server sends nothing after its 101 until we do,
    // but nothing of the SPDY stream may be swallowed here either way.
    let mut resp = Vec::new();
    while !resp.ends_with(b"\r\n\r\n") {
        if resp.len() > MAX_HEAD {
            return Err(io::Error::other("upgrade response head too large"));
        }
        let b = io.read_u8().await?;
        resp.push(b);
    }
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "101" {
        // Read what body there is, for the message.
        let mut body = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), io.read(&mut body))
            .await
            .unwrap_or(Ok(0))
            .unwrap_or(0);
        return Err(io::Error::other(format!(
            "upgrade refused: {} {}",
            text.lines().next().unwrap_or(""),
            String::from_utf8_lossy(&body[..n]).trim()
        )));
    }
    let protocol = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-stream-protocol-version"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let (conn, _incoming) = Connection::new(io, Role::Client, super::limits::IDLE_TIMEOUT);
    Ok((conn, protocol))
}

/// What a remote command produced.
#[derive(Debug, Default)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The raw error stream: a `metav1.Status` JSON with v4.
    pub status: Vec<u8>,
}

impl ExecResult {
    /// The exit code from a v4 status: 0 for Success, the ExitCode cause otherwise.
    pub fn exit_code(&self) -> Option<u32> {
        let v: serde_json::Value = serde_json::from_slice(&self.status).ok()?;
        if v["status"] == "Success" {
            return Some(0);
        }
        v["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")?["message"]
            .as_str()?
            .parse()
            .ok()
    }
}

/// Runs an exec/attach over `conn` (v4): opens error, stdin (if `stdin` is given), stdout and
/// stderr streams as client-go does, sends `stdin` then closes it, and collects the output
/// until the server ends the streams.
pub async fn run_command(
    conn: &Connection,
    stdin: Option<&[u8]>,
    stderr: bool,
) -> io::Result<ExecResult> {
    let open = |t: &str| conn.open_stream(Headers::new().with("streamType", t));
    let mut error = open("error").await?;
    let input = match stdin {
        Some(_) => Some(open("stdin").await?),
        None => None,
    };
    let mut stdout = open("stdout").await?;
    let mut err_stream = if stderr {
        Some(open("stderr").await?)
    } else {
        None
    };
    if let (Some(s), Some(data)) = (&input, stdin) {
        s.writer.write(Bytes::copy_from_slice(data)).await?;
        s.writer.close().await;
    }
    let out = async {
        let mut v = Vec::new();
        while let Some(b) = stdout.reader.recv().await {
            v.extend_from_slice(&b);
        }
        v
    };
    let errs = async {
        let mut v = Vec::new();
        if let Some(s) = err_stream.as_mut() {
            while let Some(b) = s.reader.recv().await {
                v.extend_from_slice(&b);
            }
        }
        v
    };
    let (stdout, stderr) = tokio::join!(out, errs);
    let mut status = Vec::new();
    while let Some(b) = error.reader.recv().await {
        status.extend_from_slice(&b);
    }
    conn.close().await;
    Ok(ExecResult {
        stdout,
        stderr,
        status,
    })
}

/// Opens one forwarded connection to `port` (the error and data streams of `request_id`, as
/// client-go does): the error stream is half-closed at once; read it to learn of a failure.
pub async fn forward(
    conn: &Connection,
    port: u16,
    request_id: u32,
) -> io::Result<(Stream, Stream)> {
    let h = |t: &str| {
        Headers::new()
            .with("streamType", t)
            .with("port", &port.to_string())
            .with("requestID", &request_id.to_string())
    };
    let error = conn.open_stream(h("error")).await?;
    error.writer.close().await;
    let data = conn.open_stream(h("data")).await?;
    Ok((error, data))
}
