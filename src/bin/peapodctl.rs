//! peapodctl: a small CRI client for peapod's socket, for demos and quick checks.
//!
//! It speaks the same CRI v1 API kubelet does (the client generated from `proto/api.proto`).
//! crictl remains the full-featured tool; point it at the same socket (deploy/crictl.yaml).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use tonic::transport::Channel;

use peapod::cri::image_service_client::ImageServiceClient;
use peapod::cri::runtime_service_client::RuntimeServiceClient;
use peapod::cri::*;

#[derive(Parser)]
#[command(name = "peapodctl", version, about = "A small CRI client for peapod")]
struct Cli {
    /// CRI socket (a path, or unix:///path).
    #[arg(
        long,
        env = "PEAPOD_ENDPOINT",
        default_value = "/run/peapod/peapod.sock"
    )]
    endpoint: String,
    /// Seconds to wait for the connection and for each RPC.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runtime name and versions (Version).
    Version,
    /// Runtime conditions and verbose info (Status).
    Info,
    /// Create and start a pod sandbox; prints its id (RunPodSandbox).
    Runp {
        name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Pod UID [default: peapodctl-<name>].
        #[arg(long)]
        uid: Option<String>,
        /// Pod hostname [default: the pod name].
        #[arg(long)]
        hostname: Option<String>,
        /// Share the host's network namespace instead of a CNI network.
        #[arg(long)]
        host_network: bool,
        /// Directory for the pod's container logs [default: /var/log/pods/<ns>_<name>_<uid>].
        #[arg(long)]
        log_directory: Option<String>,
    },
    /// List pod sandboxes (ListPodSandbox).
    Pods,
    /// Show a pod sandbox's status (PodSandboxStatus).
    Inspectp { id: String },
    /// Stop a pod sandbox (StopPodSandbox).
    Stopp { id: String },
    /// Remove a pod sandbox (RemovePodSandbox).
    Rmp { id: String },
    /// List images (ListImages).
    Images,
    /// Pull an image (PullImage); prints its image ref.
    Pull { image: String },
    /// List containers (ListContainers).
    Ps,
    /// Create and start a container in a pod; prints its id (CreateContainer + StartContainer).
    /// peapod takes the pod's config from its own record, so none is sent.
    Run {
        /// The pod sandbox's id.
        pod: String,
        name: String,
        #[arg(long)]
        image: String,
        /// Environment variable KEY=VALUE; repeat for several.
        #[arg(long = "env")]
        env: Vec<String>,
        /// Command and arguments [default: the image's entrypoint and cmd].
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a command in a running container and print its output; exits with the command's
    /// exit code. Through the streaming server (Exec, SPDY as crictl and kubelet use it), or
    /// with --sync through ExecSync.
    Exec {
        id: String,
        /// Use ExecSync instead of the streaming server.
        #[arg(long)]
        sync: bool,
        /// With --sync: seconds before the command is killed (0: no limit).
        #[arg(long, default_value_t = 10)]
        timeout_secs: i64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a container's log (the CRI log file ContainerStatus names).
    Logs { id: String },
    /// Stop a container (StopContainer).
    Stop {
        id: String,
        /// Seconds to wait after the stop signal before SIGKILL.
        #[arg(long, default_value_t = 10)]
        timeout: i64,
    },
    /// Remove a container (RemoveContainer).
    Rm { id: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // As other command-line tools: output into a closed pipe (`| head`) ends the process
    // quietly instead of a panic in println!.
    // SAFETY: restoring the default disposition of SIGPIPE has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("peapodctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A failure to report: a gRPC status (`<code>: <message>`) or a connection problem.
enum Failure {
    Rpc(tonic::Status),
    Connect(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Rpc(s) => write!(f, "{}: {}", peapod::error::code_name(s.code()), s.message()),
            Failure::Connect(m) => write!(f, "Unavailable: {m}"),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Rpc(s)
    }
}

async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel, Failure> {
    let path = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
    peapod::uds::endpoint(timeout)
        .timeout(timeout)
        .connect_with_connector(peapod::uds::connector(path.clone()))
        .await
        .map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            Failure::Connect(format!("cannot connect to {}: {cause}", path.display()))
        })
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let ch = connect(&cli.endpoint, Duration::from_secs(cli.timeout)).await?;
    let mut rs = RuntimeServiceClient::new(ch.clone());
    let mut is = ImageServiceClient::new(ch);
    match cli.cmd {
        Cmd::Version => {
            let v = rs.version(VersionRequest::default()).await?.into_inner();
            println!("Version:  {}", v.version);
            println!("RuntimeName:  {}", v.runtime_name);
            println!("RuntimeVersion:  {}", v.runtime_version);
            println!("RuntimeApiVersion:  {}", v.runtime_api_version);
        }
        Cmd::Info => {
            let s = rs
                .status(StatusRequest { verbose: true })
                .await?
                .into_inner();
            println!("{{");
            println!("  \"conditions\": [");
            let conds = s.status.map(|s| s.conditions).unwrap_or_default();
            for (i, c) in conds.iter().enumerate() {
                let comma = if i + 1 < conds.len() { "," } else { "" };
                println!(
                    "    {{\"type\": {:?}, \"status\": {}, \"reason\": {:?}, \"message\": {:?}}}{comma}",
                    c.r#type, c.status, c.reason, c.message
                );
            }
            println!("  ],");
            let handlers: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
            println!("  \"runtimeHandlers\": {handlers:?},");
            println!("  \"info\": {{");
            let mut keys: Vec<_> = s.info.keys().collect();
            keys.sort();
            for (i, k) in keys.iter().enumerate() {
                let comma = if i + 1 < keys.len() { "," } else { "" };
                // Values are usually JSON already: print those as they are, quote the rest.
                let v = &s.info[*k];
                if serde_json::from_str::<serde_json::Value>(v).is_ok() {
                    println!("    {k:?}: {v}{comma}");
                } else {
                    println!("    {k:?}: {v:?}{comma}");
                }
            }
            println!("  }}");
            println!("}}");
        }
        Cmd::Runp {
            name,
            namespace,
            uid,
            hostname,
            host_network,
            log_directory,
        } => {
            let uid = uid.unwrap_or_else(|| format!("peapodctl-{name}"));
            let log_directory =
                log_directory.unwrap_or_else(|| format!("/var/log/pods/{namespace}_{name}_{uid}"));
            let network = if host_network {
                NamespaceMode::Node
            } else {
                NamespaceMode::Pod
            };
            let config = PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: name.clone(),
                    namespace,
                    uid,
                    attempt: 0,
                }),
                hostname: hostname.unwrap_or(name),
                log_directory,
                linux: Some(LinuxPodSandboxConfig {
                    security_context: Some(LinuxSandboxSecurityContext {
                        namespace_options: Some(NamespaceOption {
                            network: network as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let r = rs
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner();
            println!("{}", r.pod_sandbox_id);
        }
        Cmd::Pods => {
            let pods = rs
                .list_pod_sandbox(ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items;
            let mut rows = vec![row([
                "POD ID",
                "NAME",
                "NAMESPACE",
                "STATE",
                "CREATED",
                "IP",
            ])];
            for p in pods {
                // ListPodSandbox carries no IP; ask for each pod's status (best effort).
                let ip = rs
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: p.id.clone(),
                        verbose: false,
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().status)
                    .and_then(|s| s.network)
                    .map(|n| n.ip)
                    .unwrap_or_default();
                let md = p.metadata.unwrap_or_default();
                rows.push(vec![
                    short(&p.id),
                    md.name,
                    md.namespace,
                    sandbox_state(p.state),
                    ago(p.created_at),
                    ip,
                ]);
            }
            print_table(&rows);
        }
        Cmd::Inspectp { id } => {
            let r = rs
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                })
                .await?
                .into_inner();
            let s = r.status.unwrap_or_default();
            let md = s.metadata.clone().unwrap_or_default();
            println!("ID:         {}", s.id);
            println!("Name:       {}", md.name);
            println!("Namespace:  {}", md.namespace);
            println!("UID:        {}", md.uid);
            println!("Attempt:    {}", md.attempt);
            println!("State:      {}", sandbox_state(s.state));
            println!(
                "Created:    {} ({})",
                rfc3339(s.created_at),
                ago(s.created_at)
            );
            if let Some(n) = &s.network {
                println!("IP:         {}", n.ip);
                for ip in &n.additional_ips {
                    println!("            {}", ip.ip);
                }
            }
            if let Some(ns) = s
                .linux
                .as_ref()
                .and_then(|l| l.namespaces.as_ref())
                .and_then(|n| n.options.as_ref())
            {
                println!(
                    "Namespaces: network={} pid={} ipc={}",
                    ns_mode(ns.network),
                    ns_mode(ns.pid),
                    ns_mode(ns.ipc)
                );
            }
            if !s.runtime_handler.is_empty() {
                println!("Handler:    {}", s.runtime_handler);
            }
            print_map("Labels", &s.labels);
            print_map("Annotations", &s.annotations);
            for c in &r.containers_statuses {
                let cmd = c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
                println!(
                    "Container:  {} {} {}",
                    short(&c.id),
                    cmd,
                    container_state(c.state)
                );
            }
            print_map("Info", &r.info);
        }
        Cmd::Stopp { id } => {
            rs.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            println!("Stopped sandbox {id}");
        }
        Cmd::Rmp { id } => {
            rs.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            println!("Removed sandbox {id}");
        }
        Cmd::Images => {
            let images = is
                .list_images(ListImagesRequest::default())
                .await?
                .into_inner()
                .images;
            let mut rows = vec![row(["IMAGE", "TAG", "IMAGE ID", "SIZE"])];
            for i in images {
                let id = short(i.id.trim_start_matches("sha256:"));
                let size = human_size(i.size);
                if i.repo_tags.is_empty() {
                    let repo = i
                        .repo_digests
                        .first()
                        .and_then(|d| d.split('@').next())
                        .unwrap_or("<none>")
                        .to_string();
                    rows.push(vec![repo, "<none>".into(), id, size]);
                    continue;
                }
                for t in &i.repo_tags {
                    let (repo, tag) = split_tag(t);
                    rows.push(vec![repo, tag, id.clone(), size.clone()]);
                }
            }
            print_table(&rows);
        }
        Cmd::Pull { image } => {
            let r = is
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    auth: None,
                    sandbox_config: None,
                })
                .await?
                .into_inner();
            println!("Image is up to date for {}", r.image_ref);
        }
        Cmd::Ps => {
            let cs = rs
                .list_containers(ListContainersRequest::default())
                .await?
                .into_inner()
                .containers;
            let mut rows = vec![row([
                "CONTAINER",
                "IMAGE",
                "CREATED",
                "STATE",
                "NAME",
                "POD ID",
            ])];
            for c in cs {
                let image = c.image.map(|i| i.image).unwrap_or_default();
                rows.push(vec![
                    short(&c.id),
                    if image.is_empty() { c.image_ref } else { image },
                    ago(c.created_at),
                    container_state(c.state),
                    c.metadata.map(|m| m.name).unwrap_or_default(),
                    short(&c.pod_sandbox_id),
                ]);
            }
            print_table(&rows);
        }
        Cmd::Run {
            pod,
            name,
            image,
            env,
            command,
        } => {
            let envs = env
                .iter()
                .map(|kv| {
                    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                    KeyValue {
                        key: key.into(),
                        value: value.into(),
                    }
                })
                .collect();
            let config = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.clone(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image,
                    ..Default::default()
                }),
                command,
                envs,
                log_path: format!("{name}.log"),
                ..Default::default()
            };
            let id = rs
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: None,
                })
                .await?
                .into_inner()
                .container_id;
            rs.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            println!("{id}");
        }
        Cmd::Exec {
            id,
            sync: false,
            command,
            ..
        } => {
            let url = rs
                .exec(ExecRequest {
                    container_id: id,
                    cmd: command,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .url;
            let stream_err =
                |e: std::io::Error| Failure::Connect(format!("exec stream {url}: {e}"));
            let (conn, _) = peapod::streaming::client::connect(&url, &["v4.channel.k8s.io"])
                .await
                .map_err(stream_err)?;
            let r = peapod::streaming::client::run_command(&conn, None, true)
                .await
                .map_err(stream_err)?;
            use std::io::Write;
            let _ = std::io::stdout().write_all(&r.stdout);
            let _ = std::io::stderr().write_all(&r.stderr);
            let code = r.exit_code().ok_or_else(|| {
                Failure::Connect(format!(
                    "exec ended without an exit status: {}",
                    String::from_utf8_lossy(&r.status)
                ))
            })?;
            return Ok(ExitCode::from(code.min(255) as u8));
        }
        Cmd::Exec {
            id,
            sync: true,
            timeout_secs,
            command,
        } => {
            let r = rs
                .exec_sync(ExecSyncRequest {
                    container_id: id,
                    cmd: command,
                    timeout: timeout_secs,
                })
                .await?
                .into_inner();
            use std::io::Write;
            let _ = std::io::stdout().write_all(&r.stdout);
            let _ = std::io::stderr().write_all(&r.stderr);
            return Ok(ExitCode::from(r.exit_code.clamp(0, 255) as u8));
        }
        Cmd::Logs { id } => {
            let st = rs
                .container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .unwrap_or_default();
            if st.log_path.is_empty() {
                return Err(Failure::Connect(format!("container {id} has no log file")));
            }
            let text = std::fs::read_to_string(&st.log_path)
                .map_err(|e| Failure::Connect(format!("read {}: {e}", st.log_path)))?;
            print!("{}", cri_log_text(&text));
        }
        Cmd::Stop { id, timeout } => {
            rs.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout,
            })
            .await?;
            println!("{id}");
        }
        Cmd::Rm { id } => {
            rs.remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            println!("{id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The messages of a CRI log file (`<time> <stream> <P|F> <message>` per line), partial
/// lines (`P`) joined with what follows, as `crictl logs` prints them.
fn cri_log_text(file: &str) -> String {
    let mut out = String::new();
    for line in file.lines() {
        let mut f = line.splitn(4, ' ');
        let (_, _, tag, msg) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
        out.push_str(msg);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

/// Left-aligned columns separated by three spaces, as crictl prints them.
fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn print_map(title: &str, m: &HashMap<String, String>) {
    if m.is_empty() {
        return;
    }
    println!("{title}:");
    let mut keys: Vec<_> = m.keys().collect();
    keys.sort();
    for k in keys {
        println!("  {k} -> {}", m[k]);
    }
}

/// The first 13 characters of an id, as crictl shows them.
fn short(id: &str) -> String {
    id.chars().take(13).collect()
}

fn sandbox_state(s: i32) -> String {
    match PodSandboxState::try_from(s) {
        Ok(PodSandboxState::SandboxReady) => "Ready".into(),
        Ok(PodSandboxState::SandboxNotready) => "NotReady".into(),
        Err(_) => format!("Unknown({s})"),
    }
}

fn container_state(s: i32) -> String {
    match ContainerState::try_from(s) {
        Ok(ContainerState::ContainerCreated) => "Created".into(),
        Ok(ContainerState::ContainerRunning) => "Running".into(),
        Ok(ContainerState::ContainerExited) => "Exited".into(),
        Ok(ContainerState::ContainerUnknown) => "Unknown".into(),
        Err(_) => format!("Unknown({s})"),
    }
}

fn ns_mode(m: i32) -> &'static str {
    match NamespaceMode::try_from(m) {
        Ok(NamespaceMode::Pod) => "pod",
        Ok(NamespaceMode::Container) => "container",
        Ok(NamespaceMode::Node) => "node",
        Ok(NamespaceMode::Target) => "target",
        Err(_) => "?",
    }
}

/// "3 minutes ago" from a CRI timestamp in nanoseconds since the epoch.
fn ago(created_ns: i64) -> String {
    if created_ns <= 0 {
        return "unknown".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let secs = (now - created_ns / 1_000_000_000).max(0);
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// UTC date and time (RFC 3339) from nanoseconds since the epoch.
fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.3}{}", UNITS[i])
    }
}

/// Splits `repo:tag` at the last colon that comes after the last slash (ports stay in repo).
fn split_tag(r: &str) -> (String, String) {
    let slash = r.rfind('/').map_or(0, |i| i + 1);
    match r[slash..].rfind(':') {
        Some(i) => (r[..slash + i].to_string(), r[slash + i + 1..].to_string()),
        None => (r.to_string(), "<none>".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_767_225_600 * 1_000_000_000 + 3_723 * 1_000_000_000),
            "2026-01-01T01:02:03Z"
        );
    }

    #[test]
    fn tags() {
        assert_eq!(
            split_tag("localhost:5000/a/b:1"),
            ("localhost:5000/a/b".into(), "1".into())
        );
        assert_eq!(
            split_tag("localhost:5000/a"),
            ("localhost:5000/a".into(), "<none>".into())
        );
    }

    #[test]
    fn log_lines() {
        let f = "2026-01-01T00:00:00Z stdout F hello\n\
                 2026-01-01T00:00:00Z stderr P par\n\
                 2026-01-01T00:00:00Z stderr F tial\n";
        assert_eq!(cri_log_text(f), "hello\npartial\n");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500_000), "1.500MB");
    }
}
