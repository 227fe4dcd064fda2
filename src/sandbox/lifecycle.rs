//! RunPodSandbox, StopPodSandbox, RemovePodSandbox and recovery after a peapod restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as CtrRuntime;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::{Container, CreateContainerRequest, ListContainersRequest};
use prost::Message;

use crate::cri;
use crate::error::{ctrd, Error, Result};
use crate::network::{netns, PodNetworkRequest, PortMapping};
use crate::runtime::Runtime;
use crate::sandbox::{files, reserved_name, spec, Sandbox, SandboxState};
use crate::{id, store, task};

pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const STOP_KILL_LIMIT: Duration = Duration::from_secs(10);

pub use crate::containerd::lease_id;

pub fn validate(config: &cri::PodSandboxConfig, handler: &str) -> Result<()> {
    let m = config
        .metadata
        .as_ref()
        .ok_or_else(|| Error::invalid("pod sandbox config: metadata is required"))?;
    for (field, v) in [
        ("metadata.name", &m.name),
        ("metadata.namespace", &m.namespace),
        ("metadata.uid", &m.uid),
    ] {
        if v.is_empty() {
            return Err(Error::invalid(format!(
                "pod sandbox config: {field} must not be empty"
            )));
        }
    }
    if m.attempt > 1_000_000 {
        return Err(Error::invalid(
            "pod sandbox config: metadata.attempt is unreasonably large",
        ));
    }
    if !config.hostname.is_empty() && !valid_hostname(&config.hostname) {
        return Err(Error::invalid(format!(
            "pod sandbox config: hostname {:?} is not a valid hostname (RFC 1123, at most 64 characters)",
            config.hostname
        )));
    }
    if !config.log_directory.is_empty() {
        crate::safe_fs::check_absolute_dir(
            &config.log_directory,
            "pod sandbox config: log_directory",
        )?;
    }
    for (i, p) in config.port_mappings.iter().enumerate() {
        if cri::Protocol::try_from(p.protocol).is_err() {
            return Err(Error::invalid(format!(
                "port_mappings[{i}]: unknown protocol {}",
                p.protocol
            )));
        }
        if !(1..=65535).contains(&p.container_port) {
            return Err(Error::invalid(format!(
                "port_mappings[{i}]: container_port {} is not in 1-65535",
                p.container_port
            )));
        }
        if !(0..=65535).contains(&p.host_port) {
            return Err(Error::invalid(format!(
                "port_mappings[{i}]: host_port {} is not in 0-65535",
                p.host_port
            )));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::invalid(format!(
                "port_mappings[{i}]: host_ip {:?} is not an IP",
                p.host_ip
            )));
        }
    }
    if !matches!(handler, "" | "runc") {
        return Err(Error::invalid(format!(
            "runtime handler {handler:?} is not configured (peapod knows \"runc\", the default)"
        )));
    }
    spec::validate_security(config)
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn network_request(
    sb_id: &str,
    config: &cri::PodSandboxConfig,
    netns: PathBuf,
) -> PodNetworkRequest {
    let m = config.metadata.clone().unwrap_or_default();
    PodNetworkRequest {
        sandbox_id: sb_id.to_string(),
        netns_path: netns,
        pod_name: m.name,
        pod_namespace: m.namespace,
        pod_uid: m.uid,
        port_mappings: config
            .port_mappings
            .iter()
            .map(|p| PortMapping {
                protocol: match cri::Protocol::try_from(p.protocol) {
                    Ok(cri::Protocol::Udp) => "udp",
                    Ok(cri::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                }
                .to_string(),
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        dns: config
            .dns_config
            .as_ref()
            .map(|d| crate::network::DnsConfig {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            }),
    }
}

/// What a RunPodSandbox has made so far, undone in reverse order if a later step fails.
#[derive(Default)]
struct Made {
    lease: bool,
    dir: Option<PathBuf>,
    netns: Option<PathBuf>,
    network: Option<PodNetworkRequest>,
    snapshot: bool,
    container: bool,
    task: bool,
}

pub async fn run(
    rt: Arc<Runtime>,
    config: cri::PodSandboxConfig,
    handler: String,
) -> Result<String> {
    validate(&config, &handler)?;
    let meta = config.metadata.clone().unwrap_or_default();
    let name = reserved_name(&meta);
    let id = id::generate();
    let reservation = rt.names.reserve(&name, &id, "pod sandbox")?;
    // Creation runs as its own task, holding the reservation: a request cancelled by kubelet's
    // timeout must neither stop it halfway nor free the name while it still runs.
    let h = tokio::spawn(async move {
        let mut made = Made::default();
        match create(&rt, &id, &name, config, handler, &mut made).await {
            Ok(()) => {
                reservation.keep();
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "RunPodSandbox failed; undoing");
                undo(&rt, &id, made).await;
                Err(e)
            }
        }
    });
    h.await
        .map_err(|e| Error::internal(format!("RunPodSandbox task failed: {e}")))?
}

async fn create(
    rt: &Arc<Runtime>,
    id: &str,
    name: &str,
    config: cri::PodSandboxConfig,
    handler: String,
    made: &mut Made,
) -> Result<()> {
    let c = &rt.ctrd;
    let image = sandbox_image(rt).await?;
    let ns = spec::namespace_options(&config);
    let host_net = ns.network == cri::NamespaceMode::Node as i32;
    let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
    let created_at = task::now_ns();

    c.create_lease(id).await?;
    made.lease = true;

    if !config.log_directory.is_empty() {
        std::fs::create_dir_all(&config.log_directory).map_err(|e| {
            Error::internal(format!(
                "create log directory {}: {e}",
                config.log_directory
            ))
        })?;
    }
    let dir = rt.sandbox_dir(id);
    made.dir = Some(dir.clone());
    let hostname = if config.hostname.is_empty() {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    files::write(&dir, &config, &hostname, host_ipc)?;

    let mut state = SandboxState {
        ready: false,
        created_at,
        ..Default::default()
    };
    if !host_net {
        let path = rt.network.create_netns(&netns_name(id))?;
        made.netns = Some(path.clone());
        state.netns_path = Some(path.clone());
        // Recorded before CNI ADD: if peapod dies during it, recovery finds the namespace
        // and runs DEL (idempotent), so no IP or veth outlives a crash.
        state.network_attached = true;
        store::write_json_atomic(&super::state_file(&dir), &state)?;
        let req = network_request(id, &config, path);
        made.network = Some(req.clone());
        let net = rt.network.setup(&req).await?;
        state.ips = net.ips;
        state.network_attached = true;
    }
    store::write_json_atomic(&super::state_file(&dir), &state)?;

    let mounts = c
        .snapshots()
        .prepare(c.req_leased(
            PrepareSnapshotRequest {
                snapshotter: rt.config.snapshotter.clone(),
                key: id.to_string(),
                parent: image.chain_id.clone(),
                labels: HashMap::new(),
            },
            &lease_id(id),
        ))
        .await
        .map_err(ctrd(format!(
            "prepare snapshot for sandbox {id} from {}",
            image.chain_id
        )))?
        .into_inner()
        .mounts;
    made.snapshot = true;

    let spec = spec::pause_spec(&spec::PauseSpecInput {
        id,
        config: &config,
        image: &image.config,
        hostname: &hostname,
        netns: state.netns_path.as_deref(),
        cgroups_path: rt.host.cgroup_driver.sandbox_cgroups_path(
            config
                .linux
                .as_ref()
                .map_or("", |l| l.cgroup_parent.as_str()),
            id,
        ),
        min_oom_score_adj: spec::own_oom_score_adj(),
    })?;
    let spec_bytes =
        serde_json::to_vec(&spec).map_err(|e| Error::internal(format!("encode spec: {e}")))?;
    let mut labels = HashMap::new();
    labels.insert(
        super::LABEL_KIND.to_string(),
        super::KIND_SANDBOX.to_string(),
    );
    labels.insert("io.peapod.name".to_string(), name.to_string());
    let mut extensions = HashMap::new();
    extensions.insert(
        super::EXT_SANDBOX_CONFIG.to_string(),
        prost_types::Any {
            type_url: super::TYPE_SANDBOX_CONFIG.to_string(),
            value: config.encode_to_vec(),
        },
    );
    // Counted as made before the call: a failed answer (a response too large to decode, a
    // broken connection) does not mean containerd did not create it, and the delete in
    // the undo is idempotent.
    made.container = true;
    c.containers()
        .create(c.req_leased(
            CreateContainerRequest {
                container: Some(Container {
                    id: id.to_string(),
                    labels,
                    image: image.name.clone(),
                    runtime: Some(CtrRuntime {
                        name: rt.config.runtime.clone(),
                        options: rt.host.cgroup_driver.runc_options(&rt.config.runtime),
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE_URL.to_string(),
                        value: spec_bytes,
                    }),
                    snapshotter: rt.config.snapshotter.clone(),
                    snapshot_key: id.to_string(),
                    created_at: Some(task::ns_to_ts(created_at)),
                    updated_at: None,
                    extensions,
                    sandbox: String::new(),
                }),
            },
            &lease_id(id),
        ))
        .await
        .map_err(ctrd(format!("create container for sandbox {id}")))?;

    task::create(c, id, mounts, task::NO_IO).await?;
    made.task = true;
    let pid = task::start(c, id).await?;
    state.pid = pid;
    state.ready = true;
    store::write_json_atomic(&super::state_file(&dir), &state)?;

    let sb = Arc::new(Sandbox::new(
        id.to_string(),
        name.to_string(),
        config,
        handler,
        dir,
        state,
    ));
    rt.sandboxes.insert(sb.clone());
    watch_pause(rt.clone(), sb);
    tracing::info!(sandbox = %id, pod = %name, pid, "pod sandbox ready");
    Ok(())
}

/// The configured sandbox image, pulled first if absent, as containerd's CRI plugin does.
async fn sandbox_image(rt: &Arc<Runtime>) -> Result<crate::image::ImageInfo> {
    let name = &rt.config.sandbox_image;
    if let Some(i) = rt.images.find(name).await? {
        return Ok(i);
    }
    tracing::info!(image = %name, "sandbox image absent; pulling it");
    if let Err(e) = rt.puller.pull(name, None).await {
        let status: tonic::Status = e.into();
        return Err(Error::NotFound(format!(
            "sandbox image {name} is not present in containerd namespace {} and pulling it failed: {}; \
             pull or import it",
            rt.ctrd.namespace(),
            status.message()
        )));
    }
    rt.images
        .find(name)
        .await?
        .ok_or_else(|| Error::not_found(format!("sandbox image {name} vanished after its pull")))
}

/// Undoes a failed RunPodSandbox, logging (not returning) failures so every step is tried.
async fn undo(rt: &Runtime, id: &str, made: Made) {
    let c = &rt.ctrd;
    if made.task {
        if let Err(e) = task::kill_and_delete(c, id, STOP_KILL_LIMIT).await {
            tracing::warn!(sandbox = id, error = %e, "undo: task");
        }
    }
    if made.container {
        if let Err(e) = rt.ctrd.delete_container(id).await {
            tracing::warn!(sandbox = id, error = %e, "undo: container");
        }
    }
    if made.snapshot {
        if let Err(e) = rt.ctrd.remove_snapshot(&rt.config.snapshotter, id).await {
            tracing::warn!(sandbox = id, error = %e, "undo: snapshot");
        }
    }
    if let Some(req) = made.network {
        if let Err(e) = rt.network.teardown(&req).await {
            tracing::warn!(sandbox = id, error = %e, "undo: CNI teardown");
        }
    }
    if let Some(p) = made.netns {
        if let Err(e) = netns::remove(&p) {
            tracing::warn!(sandbox = id, error = %e, "undo: netns");
        }
    }
    if let Some(d) = made.dir {
        if let Err(e) = files::remove(&d) {
            tracing::warn!(sandbox = id, error = %e, "undo: sandbox dir");
        }
    }
    if made.lease {
        if let Err(e) = rt.ctrd.delete_lease(id).await {
            tracing::warn!(sandbox = id, error = %e, "undo: lease");
        }
    }
}

/// Marks the sandbox NOTREADY when its pause process exits, whoever killed it.
pub fn watch_pause(rt: Arc<Runtime>, sb: Arc<Sandbox>) {
    tokio::spawn(async move {
        let exit = task::wait(&rt.ctrd, &sb.id).await;
        tracing::info!(sandbox = %sb.id, code = exit.code, "pause process exited");
        if let Err(e) = sb.update(|s| s.ready = false) {
            tracing::warn!(sandbox = %sb.id, error = %e, "cannot record sandbox exit");
        }
    });
}

pub async fn stop(rt: &Runtime, id: &str) -> Result<()> {
    let Some(sb) = rt.sandboxes.find(id)? else {
        return Ok(());
    };
    let _g = sb.op.lock().await;
    stop_locked(rt, &sb).await
}

async fn stop_locked(rt: &Runtime, sb: &Sandbox) -> Result<()> {
    rt.stop_pod_containers(&sb.id).await?;
    task::kill_and_delete(&rt.ctrd, &sb.id, STOP_KILL_LIMIT).await?;
    sb.update(|s| s.ready = false)?;
    let st = sb.state();
    if st.network_attached {
        let req = network_request(
            &sb.id,
            &sb.config,
            st.netns_path.clone().unwrap_or_default(),
        );
        rt.network.teardown(&req).await?;
        sb.update(|s| s.network_attached = false)?;
    }
    if let Some(p) = st.netns_path {
        netns::remove(&p)?;
        sb.update(|s| s.netns_path = None)?;
    }
    files::unmount_shm(&sb.dir)?;
    tracing::info!(sandbox = %sb.id, "pod sandbox stopped");
    Ok(())
}

pub async fn remove(rt: &Runtime, id: &str) -> Result<()> {
    let Some(sb) = rt.sandboxes.find(id)? else {
        return Ok(());
    };
    let _g = sb.op.lock().await;
    stop_locked(rt, &sb).await?;
    rt.remove_pod_containers(&sb.id).await?;
    task::delete(&rt.ctrd, &sb.id).await?;
    rt.ctrd.delete_container(&sb.id).await?;
    rt.ctrd
        .remove_snapshot(&rt.config.snapshotter, &sb.id)
        .await?;
    rt.ctrd.delete_lease(&sb.id).await?;
    files::remove(&sb.dir)?;
    rt.sandboxes.remove(&sb.id);
    rt.names.release(&sb.name, &sb.id);
    tracing::info!(sandbox = %sb.id, "pod sandbox removed");
    Ok(())
}

/// After recovery of sandboxes and containers: a sandbox that is not ready but whose pause
/// task still runs had its StopPodSandbox cut off by a crash; the stop is finished, so a
/// NOTREADY pod never keeps running processes or network.
pub async fn finish_interrupted_stops(rt: &Runtime) {
    for sb in rt.sandboxes.all() {
        let st = sb.state();
        if st.ready || st.pid == 0 {
            continue;
        }
        // UNKNOWN (the shim did not answer containerd in time) may well be running.
        if !matches!(
            task::state(&rt.ctrd, &sb.id).await,
            Ok(task::State::Running { .. } | task::State::Other(_))
        ) {
            continue;
        }
        match stop(rt, &sb.id).await {
            Ok(()) => tracing::info!(sandbox = %sb.id, "finished a stop a crash interrupted"),
            Err(e) => tracing::warn!(sandbox = %sb.id, error = %e, "finish an interrupted stop"),
        }
    }
}

/// The pinned network namespace's name: derived from the id, so recovery finds it even when
/// a crash came before the state file recorded it.
fn netns_name(id: &str) -> String {
    format!("peapod-{}", &id[..16.min(id.len())])
}

/// Rebuilds the sandbox index from containerd and the state directory, reconciles each
/// with its pause task, and cleans up what a crash mid-creation left behind.
pub async fn recover(rt: &Arc<Runtime>) -> Result<()> {
    let list = rt
        .ctrd
        .containers()
        .list(rt.ctrd.req(ListContainersRequest {
            filters: vec![format!(
                "labels.\"{}\"=={}",
                super::LABEL_KIND,
                super::KIND_SANDBOX
            )],
        }))
        .await
        .map_err(ctrd("list sandbox containers"))?
        .into_inner()
        .containers;
    let mut known = std::collections::HashSet::new();
    for ctr in list {
        let id = ctr.id.clone();
        known.insert(id.clone());
        let Some(cfg_any) = ctr.extensions.get(super::EXT_SANDBOX_CONFIG) else {
            tracing::warn!(sandbox = %id, "containerd container has no sandbox config; skipping");
            continue;
        };
        let config = match cri::PodSandboxConfig::decode(cfg_any.value.as_slice()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "undecodable sandbox config; skipping");
                continue;
            }
        };
        let dir = rt.sandbox_dir(&id);
        let mut state: SandboxState = store::read_json(&super::state_file(&dir))
            .unwrap_or_else(|e| {
                tracing::warn!(sandbox = %id, error = %e, "unreadable sandbox state");
                None
            })
            .unwrap_or_else(|| SandboxState {
                created_at: ctr.created_at.map(task::ts_ns).unwrap_or(0),
                ..Default::default()
            });
        // containerd reports UNKNOWN when the shim does not answer within its 2 s state
        // timeout (a loaded node): the pause may be running, so it is watched as running
        // (the watcher settles it) rather than declared gone while it keeps its network.
        let running = matches!(
            task::state(&rt.ctrd, &id).await?,
            task::State::Running { .. } | task::State::Other(_)
        );
        if !running {
            state.ready = false;
        }
        let name = reserved_name(&config.metadata.clone().unwrap_or_default());
        let sb = Arc::new(Sandbox::new(
            id.clone(),
            name.clone(),
            config,
            String::new(),
            dir,
            state,
        ));
        if sb.dir.exists() {
            sb.update(|_| {})?;
        }
        // pid is recorded together with ready at the end of RunPodSandbox and kept by a
        // stop: not ready without a pid means the creation never finished.
        let unfinished = !sb.state().ready && sb.state().pid == 0;

        rt.names.restore(&name, &id);
        rt.sandboxes.insert(sb.clone());
        if running {
            watch_pause(rt.clone(), sb);
        }
        if unfinished {
            // A RunPodSandbox cut off by a crash after the containerd container was made:
            // kubelet never got its id, so the pod is removed whole rather than kept half.
            match remove(rt, &id).await {
                Ok(()) => {
                    tracing::info!(sandbox = %id, pod = %name, "removed a pod sandbox whose creation was interrupted")
                }
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "remove interrupted pod sandbox")
                }
            }
            continue;
        }
        tracing::info!(sandbox = %id, pod = %name, running, "recovered pod sandbox");
    }
    // Directories without a containerd container: a RunPodSandbox that crashed before
    // creating it. Release what they hold.
    if let Ok(rd) = std::fs::read_dir(rt.config.state_dir.join("sandboxes")) {
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if known.contains(&id) || !id::is_valid_ref(&id) {
                continue;
            }
            let dir = e.path();
            let st: Option<SandboxState> =
                store::read_json(&super::state_file(&dir)).ok().flatten();
            // Without a state file the namespace (if the crash came after making it) is
            // still found by its name.
            let netns = st
                .and_then(|s| s.netns_path)
                .unwrap_or_else(|| rt.config.netns_dir.join(netns_name(&id)));
            if netns.exists() {
                let req = network_request(&id, &cri::PodSandboxConfig::default(), netns.clone());
                if let Err(e) = rt.network.teardown(&req).await {
                    tracing::warn!(sandbox = %id, error = %e, "orphan CNI teardown");
                }
                let _ = netns::remove(&netns);
            }
            let _ = files::remove(&dir);
            let _ = rt.ctrd.delete_lease(&id).await;
            let _ = rt.ctrd.remove_snapshot(&rt.config.snapshotter, &id).await;
            tracing::info!(sandbox = %id, "removed leftovers of an unfinished sandbox");
        }
    }
    Ok(())
}
