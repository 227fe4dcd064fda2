//! Exec, Attach and PortForward end to end, through the real client: crictl v1.32 (from
//! `../shared/bin`) over its default SPDY transport and over `--transport websocket`, against
//! peapod on a real containerd + runc + CNI. Plus the bad-input and token rules through peapod's
//! own CRI client, and per-connection port-forward errors through peapod's own SPDY client.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use peapod::cri::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::cri::{config, pod, pod_with, status, try_run, Client, Pod};
use common::Rig;

const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// Root is a prerequisite: a loud skip outside CI, a failure under CI=true.
fn root() -> bool {
    if common::require_root() {
        return true;
    }
    common::bins::missing("tests/streaming.rs", "needs root");
    false
}

struct Crictl {
    bin: PathBuf,
    config: PathBuf,
}

impl Crictl {
    fn new(rig: &Rig) -> Option<Crictl> {
        let bin = match common::bins::real_binary("crictl") {
            Ok(b) => b,
            Err(why) => {
                common::bins::missing("streaming tests", &why);
                return None;
            }
        };
        let config = rig.dir.path().join("crictl.yaml");
        let ep = format!("unix://{}", rig.peapod_socket.display());
        std::fs::write(
            &config,
            format!("runtime-endpoint: {ep}\nimage-endpoint: {ep}\ntimeout: 30\n"),
        )
        .unwrap();
        Some(Crictl { bin, config })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    /// Runs to the end with `stdin` fed (and then closed), at most `limit`.
    fn run(&self, args: &[&str], stdin: &[u8], limit: Duration) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run crictl");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut input, &data);
        });
        let out = wait_output(child, limit, &format!("crictl {args:?}"));
        let _ = feeder.join();
        out
    }
}

/// Waits for `child` with a deadline (kills it and panics past it).
fn wait_output(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn run(rt: &mut Client, pod: &Pod, c: ContainerConfig) -> String {
    try_run(rt, pod, c)
        .await
        .expect("CreateContainer + StartContainer")
}

async fn exec_sync(rt: &mut Client, id: &str, script: &str) -> ExecSyncResponse {
    rt.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout: 30,
    })
    .await
    .unwrap_or_else(|e| panic!("ExecSync {script}: {e}"))
    .into_inner()
}

async fn wait_exited(rt: &mut Client, id: &str) -> ContainerStatus {
    let start = Instant::now();
    loop {
        let s = status(rt, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{id} did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_output_stdin_tty_and_exit_codes_over_spdy_and_websocket() {
    if !root() {
        return;
    }
    let rig = Rig::start().await;
    let Some(crictl) = Crictl::new(&rig) else {
        return;
    };
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "exec").await;
    let id = run(&mut rt, &pod, config("app", "exec sleep 1000")).await;
    let minute = Duration::from_secs(60);
    // 256 KiB that is not all one byte: a lost or reordered chunk changes the checksum.
    let input: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let pts = regex::Regex::new(r"/dev/pts/\d+").unwrap();
    for transport in TRANSPORTS {
        let r = crictl.run(
            &["exec", "-r", transport, &id, "echo", "hello", "world"],
            b"",
            minute,
        );
        assert!(r.status.success(), "{transport}: {}", text(&r.stderr));
        assert_eq!(text(&r.stdout), "hello world\n", "{transport}");

        // stdout and stderr stay apart without a terminal.
        let r = crictl.run(
            &[
                "exec",
                "-r",
                transport,
                &id,
                "sh",
                "-c",
                "echo out; echo err >&2",
            ],
            b"",
            minute,
        );
        assert_eq!(text(&r.stdout), "out\n", "{transport}");
        assert!(
            text(&r.stderr).contains("err\n"),
            "{transport}: {}",
            text(&r.stderr)
        );

        let r = crictl.run(
            &["exec", "-i", "-r", transport, &id, "sha256sum"],
            &input,
            minute,
        );
        assert!(r.status.success(), "{transport}: {}", text(&r.stderr));
        assert_eq!(
            text(&r.stdout).split_whitespace().next().unwrap_or(""),
            sha256_hex(&input),
            "{transport}: stdin arrived changed"
        );

        // The exit code reaches the client: client-go decodes it from the status into
        // "command terminated with exit code 3". crictl v1.32 itself then exits 1: its exec
        // wraps every error (cmd/crictl/exec.go), so no exit code becomes crictl's own status.
        let r = crictl.run(
            &["exec", "-r", transport, &id, "sh", "-c", "exit 3"],
            b"",
            minute,
        );
        assert!(!r.status.success(), "{transport}");
        assert!(
            text(&r.stderr).contains("command terminated with exit code 3"),
            "{transport}: {}",
            text(&r.stderr)
        );

        // -t needs a terminal: script(1) gives crictl one.
        let cmdline = format!(
            "{} --config {} exec -it -r {transport} {id} tty",
            crictl.bin.display(),
            crictl.config.display()
        );
        let child = Command::new("script")
            .args(["-q", "-e", "-c", &cmdline, "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run script (util-linux)");
        let r = wait_output(child, minute, "crictl exec -it under script");
        let out = text(&r.stdout);
        assert!(
            pts.is_match(&out),
            "{transport}: tty said {out:?} (stderr {})",
            text(&r.stderr)
        );
        assert!(r.status.success(), "{transport}: {out}");
    }

    // The same through ExecSync (`--sync`), whose client reports "exited with 3".
    let r = crictl.run(&["exec", "--sync", &id, "sh", "-c", "exit 3"], b"", minute);
    assert!(!r.status.success());
    assert!(
        text(&r.stderr).contains("exited with 3"),
        "{}",
        text(&r.stderr)
    );

    // The container was never touched, and no exec FIFO is left behind.
    assert_eq!(
        status(&mut rt, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    // (Removed right after each exec's answer, so give the last one a moment.)
    let exec_dir = rig.state_dir.join("exec");
    let gone = common::eventually(Duration::from_secs(5), || {
        let left: Vec<_> = std::fs::read_dir(&exec_dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        async move { left.is_empty().then_some(()) }
    })
    .await;
    assert!(gone.is_some(), "exec fifos left in {}", exec_dir.display());
}

/// `crictl attach -i` to a shell started with stdin and stdin_once: a command written is run,
/// its output comes back, and closing stdin ends the shell and the attach.
async fn attach_once(rig: &Rig, crictl: &Crictl, rt: &mut Client, pod: &Pod, transport: &str) {
    let mut c = config(&format!("sh-{transport}"), "");
    c.command = vec!["/bin/sh".into()];
    c.stdin = true;
    c.stdin_once = true;
    let id = run(rt, pod, c).await;
    let mut child = crictl
        .cmd(&["attach", "-i", "-r", transport, &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl attach");
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut output, &mut all);
        all
    });
    // Nothing has been typed: the shell waits (an early EOF would have ended it).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        status(rt, &id).await.state,
        ContainerState::ContainerRunning as i32,
        "{transport}: the shell ended before anything was written"
    );
    std::io::Write::write_all(&mut input, b"echo attached-$((6*7))\n").unwrap();
    drop(input); // closing stdin: stdin_once closes the shell's stdin for good
    let out = wait_output(child, Duration::from_secs(60), "crictl attach");
    let said = text(&reader.join().unwrap());
    assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
    assert_eq!(said, "attached-42\n", "{transport}");
    let st = wait_exited(rt, &id).await;
    assert_eq!(st.exit_code, 0, "{transport}");
    // The CRI log has the shell's output too.
    let log = std::fs::read_to_string(pod.log_dir.join(format!("sh-{transport}.log")))
        .unwrap_or_default();
    assert!(
        log.contains("stdout F attached-42"),
        "{transport}: log {log:?}"
    );
    let _ = rig;
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_attach_to_a_stdin_once_shell_over_spdy_and_websocket() {
    if !root() {
        return;
    }
    let rig = Rig::start().await;
    let Some(crictl) = Crictl::new(&rig) else {
        return;
    };
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "attach").await;
    for transport in TRANSPORTS {
        attach_once(&rig, &crictl, &mut rt, &pod, transport).await;
    }
}

/// Two clients attached at once to a tty container both see its output, which also reaches
/// the CRI log.
#[tokio::test(flavor = "multi_thread")]
async fn two_clients_attach_to_a_tty_container_and_the_log_keeps_its_output() {
    if !root() {
        return;
    }
    let rig = Rig::start().await;
    let Some(crictl) = Crictl::new(&rig) else {
        return;
    };
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "ttyattach").await;
    let mut c = config(
        "ticker",
        "i=0; while [ $i -lt 600 ]; do echo tick-$i; i=$((i+1)); sleep 0.1; done",
    );
    c.tty = true;
    let id = run(&mut rt, &pod, c).await;
    let spawn = |transport: &str| {
        crictl
            .cmd(&["attach", "-r", transport, &id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("crictl attach")
    };
    let mut a = spawn("spdy");
    let mut b = spawn("websocket");
    std::thread::sleep(Duration::from_secs(3));
    // Ending the container ends both attaches.
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    for (name, child) in [("spdy", &mut a), ("websocket", &mut b)] {
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name} attach did not end with the container"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let ticks = out.matches("tick-").count();
        assert!(ticks >= 5, "{name} saw {ticks} ticks: {out:?}");
    }
    let log = std::fs::read_to_string(pod.log_dir.join("ticker.log")).unwrap_or_default();
    assert!(log.contains("stdout F tick-0\r"), "log: {log:?}");
}

/// A server in the pod that serves `/f` (1 MiB) with busybox httpd; returns its checksum.
async fn web_server(rt: &mut Client, pod: &Pod, port: u16) -> String {
    let script = format!(
        "mkdir -p /www && head -c 1048576 /dev/urandom > /www/f && exec httpd -f -p {port} -h /www"
    );
    let id = run(rt, pod, config(&format!("web{port}"), &script)).await;
    let start = Instant::now();
    loop {
        let r = exec_sync(rt, &id, "sha256sum /www/f && netstat -ltn").await;
        let out = text(&r.stdout);
        if out.contains(&format!(":{port} ")) {
            return out.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "httpd not up: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// HTTP/1.0 GET of `/f` through `127.0.0.1:local`; the body's checksum.
async fn fetch(local: u16) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local)).await?;
    s.write_all(b"GET /f HTTP/1.0\r\n\r\n").await?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {} bytes", all.len())))?;
    let body = &all[split + 4..];
    if body.len() != 1 << 20 {
        return Err(std::io::Error::other(format!(
            "body of {} bytes",
            body.len()
        )));
    }
    Ok(sha256_hex(body))
}

use common::bins::free_port;

/// `crictl port-forward POD LOCAL:REMOTE` in the background, ready once it says so.
struct Forwarder(std::process::Child);

impl Forwarder {
    fn start(crictl: &Crictl, transport: &str, pod: &str, remote: u16) -> (Forwarder, u16) {
        for _ in 0..5 {
            let local = free_port();
            let mut child = crictl
                .cmd(&[
                    "port-forward",
                    "-r",
                    transport,
                    pod,
                    &format!("{local}:{remote}"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("crictl port-forward");
            // "Forwarding from 127.0.0.1:LOCAL -> REMOTE" once it listens.
            let mut out = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&seen).contains("Forwarding from") {
                        let _ = tx.send(());
                    }
                }
            });
            if rx.recv_timeout(Duration::from_secs(30)).is_ok() {
                return (Forwarder(child), local);
            }
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            eprintln!("port-forward did not start: {}", text(&out.stderr));
        }
        panic!("crictl port-forward never started");
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_port_forward_moves_1mib_over_ten_connections_and_to_a_host_network_pod() {
    if !root() {
        return;
    }
    let rig = Rig::start().await;
    let Some(crictl) = Crictl::new(&rig) else {
        return;
    };
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "pf").await;
    let sum = web_server(&mut rt, &pod, 8080).await;

    for transport in TRANSPORTS {
        let (_fwd, local) = Forwarder::start(&crictl, transport, &pod.id, 8080);
        assert_eq!(
            fetch(local).await.unwrap(),
            sum,
            "{transport}: one transfer"
        );
        let all = futures::future::join_all((0..10).map(|_| fetch(local))).await;
        for (i, r) in all.into_iter().enumerate() {
            assert_eq!(
                r.as_ref().ok(),
                Some(&sum),
                "{transport}: connection {i}: {r:?}"
            );
        }
    }

    // A host-network pod's ports are the host's: the server listens on a free host port.
    let host_port = free_port();
    let host = pod_with(&rig, &mut rt, "pfhost", |c| {
        c.linux
            .get_or_insert_with(Default::default)
            .security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    })
    .await;
    let host_sum = web_server(&mut rt, &host, host_port).await;
    for transport in TRANSPORTS {
        let (_fwd, local) = Forwarder::start(&crictl, transport, &host.id, host_port);
        assert_eq!(
            fetch(local).await.unwrap(),
            host_sum,
            "{transport}: host network"
        );
    }
}

/// Bad requests get a clear status and start nothing; tokens are single use; an upgrade the
/// server does not speak gets a 4xx, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn bad_streaming_requests_are_refused_cleanly() {
    if !root() {
        return;
    }
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "bad").await;
    let id = run(&mut rt, &pod, config("app", "exec sleep 1000")).await;
    let exec = |cmd: &[&str], tty, stdin, stdout, stderr| ExecRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
    };
    let code = |r: Result<tonic::Response<ExecResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(rt.exec(exec(&["true"], true, false, true, true)).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(rt.exec(exec(&["true"], false, false, false, false)).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(rt.exec(exec(&[], false, false, true, false)).await),
        tonic::Code::InvalidArgument
    );
    let mut unknown = exec(&["true"], false, false, true, false);
    unknown.container_id = "0123456789abcdef".into();
    assert_eq!(code(rt.exec(unknown).await), tonic::Code::NotFound);
    let e = rt
        .attach(AttachRequest {
            container_id: id.clone(),
            stdin: false,
            tty: true,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let pf = |port: Vec<i32>, sandbox: &str| PortForwardRequest {
        pod_sandbox_id: sandbox.into(),
        port,
    };
    for bad in [vec![0], vec![65536], vec![80, -1]] {
        let e = rt.port_forward(pf(bad.clone(), &pod.id)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e}");
    }
    let e = rt
        .port_forward(pf(vec![80], "0123456789abcdef"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // An exited container and a stopped pod are preconditions, not bugs.
    let done = run(&mut rt, &pod, config("done", "true")).await;
    wait_exited(&mut rt, &done).await;
    let mut on_exited = exec(&["true"], false, false, true, false);
    on_exited.container_id = done.clone();
    assert_eq!(
        code(rt.exec(on_exited).await),
        tonic::Code::FailedPrecondition
    );
    let stopped = pod_with(&rig, &mut rt, "stopped", |_| {}).await;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: stopped.id.clone(),
    })
    .await
    .unwrap();
    let e = rt
        .port_forward(pf(vec![80], &stopped.id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");

    // The URL is absolute, on loopback, single use.
    let url = rt
        .exec(exec(&["echo", "once"], false, false, true, false))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (conn, proto) = peapod::streaming::client::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "v4.channel.k8s.io");
    let r = peapod::streaming::client::run_command(&conn, None, false)
        .await
        .unwrap();
    assert_eq!(text(&r.stdout), "once\n");
    assert_eq!(r.exit_code(), Some(0), "{}", text(&r.status));
    let again = peapod::streaming::client::connect(&url, &["v4.channel.k8s.io"]).await;
    let err = again
        .err()
        .expect("a used token must be refused")
        .to_string();
    assert!(err.contains("404"), "{err}");

    // Raw HTTP: no upgrade → 400; an unknown WebSocket subprotocol → 403; SPDY with only
    // unknown protocols → 403. None of them hangs.
    let raw = |req: String| async move {
        let addr = req
            .split("Host: ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the server answered")
            .unwrap();
        text(&buf[..n])
    };
    let fresh = |rt: &mut Client| {
        let req = exec(&["true"], false, false, true, false);
        let mut rt = rt.clone();
        async move { rt.exec(req).await.unwrap().into_inner().url }
    };
    let split = |url: &str| {
        let rest = url.strip_prefix("http://").unwrap();
        let i = rest.find('/').unwrap();
        (rest[..i].to_string(), rest[i..].to_string())
    };
    let (host, path) = split(&fresh(&mut rt).await);
    let head = raw(format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (host, path) = split(&fresh(&mut rt).await);
    let head = raw(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v9.channel.k8s.io\r\n\r\n"
    ))
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (host, path) = split(&fresh(&mut rt).await);
    let head = raw(format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v9.channel.k8s.io\r\n\r\n"
    ))
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"),
        "{head}"
    );
    let (host, _) = split(&fresh(&mut rt).await);
    let head = raw(format!(
        "GET /exec/nosuchtoken HTTP/1.1\r\nHost: {host}\r\n\r\n"
    ))
    .await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // At most 1000 requests wait for their client.
    let mut exhausted = None;
    for _ in 0..1100 {
        if let Err(e) = rt.exec(exec(&["true"], false, false, true, false)).await {
            exhausted = Some(e);
            break;
        }
    }
    let e = exhausted.expect("the 1001st pending request is refused");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    // Nothing was started by any of this.
    let left: Vec<_> = std::fs::read_dir(rig.state_dir.join("exec"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// One SPDY connection carries many forwarded connections: one to a port where nothing
/// listens fails on its own error stream, and the others carry on.
#[tokio::test(flavor = "multi_thread")]
async fn a_port_forward_error_stays_on_its_own_connection() {
    if !root() {
        return;
    }
    use peapod::streaming::client;
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "pferr").await;
    let id = run(&mut rt, &pod, config("echo", "exec nc -ll -p 7000 -e cat")).await;
    let start = Instant::now();
    while !text(&exec_sync(&mut rt, &id, "netstat -ltn").await.stdout).contains(":7000 ") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nc not listening"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (conn, proto) = client::connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "portforward.k8s.io");

    let (mut bad_err, mut bad_data) = client::forward(&conn, 7001, 0).await.unwrap();
    let mut msg = Vec::new();
    while let Some(b) = bad_err.reader.recv().await {
        msg.extend_from_slice(&b);
    }
    let msg = text(&msg);
    assert!(
        msg.contains("error forwarding port 7001") && msg.contains(&pod.id),
        "{msg}"
    );
    assert!(bad_data.reader.recv().await.is_none());

    // Three echo connections on the same SPDY connection, after the failed one.
    for rid in 1..=3u32 {
        let (_err, mut data) = client::forward(&conn, 7000, rid).await.unwrap();
        let payload = format!("ping {rid}\n").repeat(1000);
        data.writer
            .write(bytes::Bytes::from(payload.clone()))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < payload.len() {
            match tokio::time::timeout(Duration::from_secs(10), data.reader.recv()).await {
                Ok(Some(b)) => got.extend_from_slice(&b),
                other => panic!("connection {rid}: {other:?} after {} bytes", got.len()),
            }
        }
        assert_eq!(text(&got), payload);
        data.writer.close().await;
    }
    conn.close().await;
}

/// A WebSocket client handshake by hand (the rig needs no HTTP client): returns the socket and
/// the subprotocol the server chose.
async fn ws_connect(
    url: &str,
    protocols: &[&str],
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    String,
) {
    let rest = url.strip_prefix("http://").unwrap();
    let i = rest.find('/').unwrap();
    let (host, path) = (&rest[..i], &rest[i..]);
    let mut tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        protocols.join(", ")
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = text(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    let proto = head
        .lines()
        .find_map(|l| l.strip_prefix("sec-websocket-protocol: "))
        .unwrap_or("")
        .to_string();
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tcp,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    (ws, proto)
}

/// What crictl does not exercise: the v4 base64 channel protocol for exec, the legacy v4
/// WebSocket port-forward, and terminal resizes reaching the exec's pty.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_channel_protocols_and_terminal_resize() {
    if !root() {
        return;
    }
    use base64::Engine;
    use futures::{SinkExt, StreamExt};
    use peapod::streaming::client;
    use peapod::streaming::spdy::Headers;
    use tokio_tungstenite::tungstenite::Message;
    let b64 = base64::engine::general_purpose::STANDARD;
    let rig = Rig::start().await;
    let mut rt = rig.runtime_client().await;
    let pod = pod(&rig, &mut rt, "ws").await;
    let id = run(&mut rt, &pod, config("app", "exec nc -ll -p 7000 -e cat")).await;

    // Exec over v4.base64: text messages '0'+channel then base64, status JSON on channel 3.
    let url = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "read x; echo \"got $x\"; echo err >&2; exit 7".into(),
            ],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, proto) = ws_connect(&url, &["v4.base64.channel.k8s.io"]).await;
    assert_eq!(proto, "v4.base64.channel.k8s.io");
    ws.send(Message::text(format!("0{}", b64.encode("hi\n"))))
        .await
        .unwrap();
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    let mut closed_normally = false;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        match m.unwrap() {
            Message::Text(t) => {
                let data = b64.decode(&t.as_str()[1..]).unwrap();
                match t.as_str().as_bytes()[0] {
                    b'1' => out.extend(data),
                    b'2' => err.extend(data),
                    b'3' => status.extend(data),
                    c => panic!("unexpected channel {c}"),
                }
            }
            Message::Close(f) => {
                closed_normally = f.is_some_and(|f| u16::from(f.code) == 1000);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(text(&out), "got hi\n");
    assert_eq!(text(&err), "err\n");
    let st: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(st["reason"], "NonZeroExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["message"], "7", "{st}");
    assert!(closed_normally, "the server ends with a normal close");

    // Legacy v4 WebSocket port-forward: ports from the request, data on channel 0, errors on 1,
    // each channel first says its port (little-endian).
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![7000],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, proto) = ws_connect(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(proto, "v4.channel.k8s.io");
    let mut firsts = Vec::new();
    while firsts.len() < 2 {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => firsts.push(b.to_vec()),
            other => panic!("{other:?}"),
        }
    }
    firsts.sort();
    assert_eq!(firsts, vec![vec![0, 0x58, 0x1b], vec![1, 0x58, 0x1b]]);
    let payload = b"echo through a websocket\n".repeat(100);
    let mut msg = vec![0u8];
    msg.extend_from_slice(&payload);
    ws.send(Message::binary(msg)).await.unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < payload.len() {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                assert_eq!(b[0], 0, "data comes on channel 0");
                echoed.extend_from_slice(&b[1..]);
            }
            other => panic!("after {} bytes: {other:?}", echoed.len()),
        }
    }
    assert_eq!(echoed, payload);
    let _ = ws.close(None).await;

    // A resize reaches the exec's terminal before the command reads its size.
    let url = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "sleep 2; stty size".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (conn, _) = client::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let open = |t: &'static str| {
        let conn = conn.clone();
        async move {
            conn.open_stream(Headers::new().with("streamType", t))
                .await
                .unwrap()
        }
    };
    let mut error = open("error").await;
    let _stdin = open("stdin").await;
    let mut stdout = open("stdout").await;
    let resize = open("resize").await;
    resize
        .writer
        .write(bytes::Bytes::from_static(
            b"{\"Width\":123,\"Height\":45}\n",
        ))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(b) = stdout.reader.recv().await {
        out.extend_from_slice(&b);
    }
    let mut status = Vec::new();
    while let Some(b) = error.reader.recv().await {
        status.extend_from_slice(&b);
    }
    assert_eq!(text(&out).trim(), "45 123");
    assert_eq!(text(&status), r#"{"metadata":{},"status":"Success"}"#);
    conn.close().await;
}
