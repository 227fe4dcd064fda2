//! The peapod daemon: loads its settings, connects to containerd, serves the CRI; and its
//! operator commands (`peapod check`, `peapod config default|show`).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use peapod::config::{Cli, Command, Config, ConfigCommand, DEFAULT_CONFIG_TOML};
use peapod::pod::Node;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The defaults need no configuration, and print even when the config file is broken.
    if let Some(Command::Config(ConfigCommand::Default)) = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peapod: {e}");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        Some(Command::Config(_)) => show_config(&cli, &config),
        Some(Command::Check(args)) => check(&config, args),
        None => daemon(config),
    }
}

fn show_config(cli: &Cli, config: &Config) -> ExitCode {
    let text = match config.to_toml() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("peapod: {e}");
            return ExitCode::FAILURE;
        }
    };
    let file = match &cli.config {
        Some(p) => p.display().to_string(),
        None if std::path::Path::new(peapod::config::DEFAULT_CONFIG_FILE).exists() => {
            peapod::config::DEFAULT_CONFIG_FILE.to_string()
        }
        None => "none".to_string(),
    };
    println!("# peapod's effective configuration: defaults, config file ({file}), PEAPOD_* environment, flags.");
    if let Ok(filter) = std::env::var("RUST_LOG") {
        println!("# RUST_LOG={filter} is set and wins over log_level.");
    }
    print!("{text}");
    ExitCode::SUCCESS
}

fn check(config: &Config, args: &peapod::config::CheckArgs) -> ExitCode {
    // Only what the checks themselves say goes to the terminal, unless RUST_LOG asks for more.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let Some(rt) = async_runtime(Some(2)) else {
        return ExitCode::FAILURE;
    };
    let findings = rt.block_on(peapod::check::run(config, args));
    let mut failed = 0;
    for f in &findings {
        println!("{f}");
        if f.verdict == peapod::check::Verdict::Fail {
            failed += 1;
        }
    }
    if failed == 0 {
        println!("peapod check: all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("peapod check: {failed} check(s) failed");
        ExitCode::FAILURE
    }
}

fn daemon(config: Config) -> ExitCode {
    init_logging(&config);
    let Some(rt) = async_runtime(None) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("peapod: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded async runtime (one worker per core unless `workers` says), or None
/// after saying why it could not start.
fn async_runtime(workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    match b.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("peapod: cannot start the async runtime: {e}");
            None
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes belong on a terminal, not in journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(config: Config) -> peapod::error::Result<()> {
    let listen = config.listen.clone();
    let listener = peapod::server::bind(&listen).await?;
    let (streaming, stream_listener) =
        peapod::streaming::Streaming::bind(&config.stream_address, config.stream_port).await?;
    let metrics = match config.metrics_address {
        Some(addr) => Some(peapod::server::metrics::bind(addr).await?),
        None => None,
    };
    let node = Arc::new(Node::new(config)?);
    let rt = node.rt.clone();
    if let Some(l) = metrics {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        }
        peapod::server::metrics::spawn(rt.clone(), l);
    }
    match rt.ctrd.capabilities().await {
        Ok(caps) => log_containerd(&caps, rt.ctrd.socket()),
        Err(e) => tracing::warn!("{e}; RuntimeReady stays false until it answers"),
    }
    // The socket is bound (so a second peapod has already been turned away) but not served
    // yet: clients queue until recovery is done, so the first RPCs see the whole index.
    // If containerd is down, recovery goes on in the background and serving starts anyway,
    // so Status can say why the runtime is not ready.
    // Before recovery, so no OOM kill reported meanwhile is missed.
    peapod::container::oom::watch(rt.clone());
    // Loads the image index and keeps it current with containerd's image events.
    peapod::image::watch::watch(node.images.clone());
    // Snapshot usage for ImageFsInfo and the stats RPCs, refreshed in the background.
    node.images.usage().spawn();
    let rec = node.clone();
    let mut recovery = tokio::spawn(async move { peapod::pod::recover(&rec).await });
    if tokio::time::timeout(std::time::Duration::from_secs(10), &mut recovery)
        .await
        .is_err()
    {
        tracing::warn!("recovery is waiting for containerd; serving meanwhile");
    }
    streaming.spawn(rt.clone(), stream_listener);
    tracing::info!(socket = %listen.display(), namespace = %rt.ctrd.namespace(), streaming = %streaming.base_url(), "peapod serving CRI v1");
    // Graceful shutdown waits for open connections, and kubelet never closes its own:
    // in-flight RPCs get a few seconds after the signal, then peapod exits regardless.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = peapod::server::serve(node.clone(), streaming, listener, async {
        shutdown_signal().await;
        let _ = tx.send(());
    });
    let result = tokio::select! {
        r = server => r,
        _ = async {
            let _ = rx.await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        } => Ok(()),
    };
    let _ = std::fs::remove_file(&listen);
    tracing::info!("peapod stopped");
    result
}

/// What an operator must hear about the containerd peapod found at start.
fn log_containerd(caps: &peapod::containerd_caps::Capabilities, socket: &std::path::Path) {
    use peapod::containerd_caps::disabled_plugins_line;
    tracing::info!(
        version = %caps.version,
        revision = %caps.revision,
        socket = %socket.display(),
        "connected to containerd"
    );
    let line = disabled_plugins_line(caps.parsed_release());
    if caps.builtin_cri_serving() {
        tracing::warn!(
            "containerd's built-in CRI plugin is enabled on {}: it and peapod would both manage pods \
             and CNI on this node; disable it ({line})",
            socket.display()
        );
    } else if !caps.cri_plugins_loaded.is_empty() {
        tracing::info!(
            plugins = ?caps.cri_plugins_loaded,
            "containerd's CRI image/runtime plugins are loaded (they serve no CRI, but load \
             their own config and CNI); to leave them out: {line}"
        );
    }
    for (id, message) in &caps.deprecations {
        tracing::warn!(id = %id, "containerd reports a deprecation: {message}");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop peapod with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
