//! Making, stopping and removing one pod sandbox (its pause container, network namespace, CNI
//! attachment and files), and rebuilding the sandbox index after a peapod restart. The
//! pod-level RPCs around these (a sandbox's containers, its image) are in [`crate::pod`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::containerd::{self, ContainerRecord};
use crate::cri;
use crate::error::{Error, Result};
use crate::image::ImageInfo;
use crate::keys::{extension, label};
use crate::network::{netns, Network, PodNetworkRequest, PortMapping};
use crate::runtime::Runtime;
use crate::sandbox::{files, spec};
use crate::spec::HostInfo;
use crate::store::sandbox::{reserved_name, state_file};
use crate::store::{Sandbox, SandboxState};
use crate::{id, store, task};

const STOP_KILL_LIMIT: Duration = Duration::from_secs(10);

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

/// What a RunPodSandbox has made so far, undone if a later step fails: the task first, then
/// the containerd objects, then the network, the netns and the files.
#[derive(Default)]
struct Made {
    objects: containerd::Made,
    dir: Option<PathBuf>,
    netns: Option<PathBuf>,
    network: Option<PodNetworkRequest>,
    task: bool,
}

/// A sandbox to make: its id, reserved name, image, config and runtime handler.
pub struct NewSandbox<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub image: &'a ImageInfo,
    pub config: cri::PodSandboxConfig,
    pub handler: String,
}

/// Makes the sandbox: on failure, everything made so far is undone before the error is
/// returned.
pub async fn create(
    rt: &Arc<Runtime>,
    network: &Network,
    host: &HostInfo,
    new: NewSandbox<'_>,
) -> Result<()> {
    let id = new.id;
    let mut made = Made::default();
    let res = create_in(rt, network, host, new, &mut made).await;
    if let Err(e) = &res {
        tracing::warn!(sandbox = %id, error = %e, "RunPodSandbox failed; undoing");
        undo(rt, network, id, made).await;
    }
    res
}

async fn create_in(
    rt: &Arc<Runtime>,
    network: &Network,
    host: &HostInfo,
    new: NewSandbox<'_>,
    made: &mut Made,
) -> Result<()> {
    let NewSandbox {
        id,
        name,
        image,
        config,
        handler,
    } = new;
    let c = &rt.ctrd;
    let ns = crate::spec::sandbox::namespace_options(&config);
    let host_net = ns.network == cri::NamespaceMode::Node as i32;
    let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
    let created_at = task::now_ns();

    crate::timed!("s.lease", c.create_lease(id).await)?;
    made.objects.lease = true;

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
    crate::timed!("s.files", files::write(&dir, &config, &hostname, host_ipc))?;

    let mut state = SandboxState {
        ready: false,
        created_at,
        ..Default::default()
    };
    if !host_net {
        let path = crate::timed!("s.netns", network.create_netns(&netns_name(id)))?;
        made.netns = Some(path.clone());
        state.netns_path = Some(path.clone());
        // Recorded before CNI ADD: if peapod dies during it, recovery finds the namespace
        // and runs DEL (idempotent), so no IP or veth outlives a crash.
        state.network_attached = true;
        crate::timed!(
            "s.state1",
            store::write_json_atomic(&state_file(&dir), &state)
        )?;
        let req = network_request(id, &config, path);
        made.network = Some(req.clone());
        let net = crate::timed!("s.cni", network.setup(&req).await)?;
        state.ips = net.ips;
        state.network_attached = true;
    }
    store::write_json_atomic(&state_file(&dir), &state)?;

    let what = format!("sandbox {id}");
    let mounts = crate::timed!(
        "s.prepare",
        c.prepare_snapshot(&rt.config.snapshotter, id, &image.chain_id, &what)
            .await
    )?;
    made.objects.snapshot = true;

    let spec = crate::spec::sandbox_spec(&crate::spec::SandboxSpecInput {
        id,
        config: &config,
        image: &image.config,
        hostname: &hostname,
        netns: state.netns_path.as_deref(),
        cgroups_path: host.cgroup_driver.sandbox_cgroups_path(
            config
                .linux
                .as_ref()
                .map_or("", |l| l.cgroup_parent.as_str()),
            id,
        ),
        min_oom_score_adj: host.own_oom_score_adj,
    })?;
    let spec_bytes =
        serde_json::to_vec(&spec).map_err(|e| Error::internal(format!("encode spec: {e}")))?;
    let mut labels = HashMap::new();
    labels.insert(label::KIND.to_string(), label::KIND_SANDBOX.to_string());
    labels.insert(label::NAME.to_string(), name.to_string());
    let mut extensions = HashMap::new();
    extensions.insert(
        extension::SANDBOX_CONFIG.to_string(),
        prost_types::Any {
            type_url: extension::SANDBOX_CONFIG_TYPE.to_string(),
            value: config.encode_to_vec(),
        },
    );
    let record = ContainerRecord {
        id,
        image: &image.name,
        labels,
        extensions,
        spec: spec_bytes,
        created_at: task::ns_to_ts(created_at),
    };
    // Counted as made before the call: a failed answer (a response too large to decode, a
    // broken connection) does not mean containerd did not create it, and the delete in
    // the undo is idempotent.
    made.objects.container = true;
    crate::timed!(
        "s.create",
        c.create_container(&rt.config, record, &what).await
    )?;

    crate::timed!(
        "s.taskcreate",
        task::create(c, id, mounts, task::NO_IO).await
    )?;
    made.task = true;
    let pid = crate::timed!("s.taskstart", task::start(c, id).await)?;
    state.pid = pid;
    state.ready = true;
    store::write_json_atomic(&state_file(&dir), &state)?;

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

/// Undoes a failed RunPodSandbox, logging (not returning) failures so every step is tried.
async fn undo(rt: &Runtime, network: &Network, id: &str, made: Made) {
    let c = &rt.ctrd;
    if made.task {
        if let Err(e) = task::kill_and_delete(c, id, STOP_KILL_LIMIT).await {
            tracing::warn!(sandbox = id, error = %e, "undo: task");
        }
    }
    rt.ctrd
        .undo_object(&rt.config.snapshotter, id, "sandbox", &made.objects)
        .await;
    if let Some(req) = made.network {
        if let Err(e) = network.teardown(&req).await {
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

/// Stops the sandbox: its pause task, its CNI attachment and network namespace, its shm.
/// The caller holds `sb.op` and has stopped the pod's containers. Idempotent.
pub async fn stop(rt: &Runtime, network: &Network, sb: &Sandbox) -> Result<()> {
    // Recorded before the kill: a crash from here on leaves a NOTREADY pod whose stop
    // recovery finishes, never a READY one whose pause was killed or half deleted.
    crate::timed!("st.state", sb.update(|s| s.ready = false))?;
    crate::timed!(
        "st.killdel",
        task::kill_and_delete(&rt.ctrd, &sb.id, STOP_KILL_LIMIT).await
    )?;
    let st = sb.state();
    if st.network_attached {
        let req = network_request(
            &sb.id,
            &sb.config,
            st.netns_path.clone().unwrap_or_default(),
        );
        crate::timed!("st.cnidel", network.teardown(&req).await)?;
        sb.update(|s| s.network_attached = false)?;
    }
    if let Some(p) = st.netns_path {
        crate::timed!("st.netns", netns::remove(&p))?;
        sb.update(|s| s.netns_path = None)?;
    }
    crate::timed!("st.shm", files::unmount_shm(&sb.dir))?;
    tracing::info!(sandbox = %sb.id, "pod sandbox stopped");
    Ok(())
}

/// Removes a stopped sandbox: its task, container, snapshot, lease, files, index entry and
/// name. The caller holds `sb.op` and has removed the pod's containers. Idempotent.
pub async fn remove(rt: &Runtime, sb: &Sandbox) -> Result<()> {
    task::delete(&rt.ctrd, &sb.id).await?;
    // The path the pause spec was given (the same function wrote it at create).
    let cgroups_path = rt
        .config
        .cgroup_driver
        .sandbox_cgroups_path(&sb.cgroup_parent(), &sb.id);
    let removed =
        crate::cgroup::remove_leftover(std::path::Path::new(crate::cgroup::ROOT), &cgroups_path);
    if !removed.is_empty() {
        tracing::info!(sandbox = %sb.id, dirs = removed.len(), "removed the cgroup an interrupted task create left behind");
    }
    rt.ctrd
        .delete_object(&rt.config.snapshotter, &sb.id)
        .await?;
    files::remove(&sb.dir)?;
    rt.sandboxes.remove(&sb.id);
    rt.names.release(&sb.name, &sb.id);
    tracing::info!(sandbox = %sb.id, "pod sandbox removed");
    Ok(())
}

/// The pinned network namespace's name: derived from the id, so recovery finds it even when
/// a crash came before the state file recorded it.
fn netns_name(id: &str) -> String {
    format!("peapod-{}", &id[..16.min(id.len())])
}

/// Rebuilds the sandbox index from containerd and the state directory, reconciles each
/// with its pause task, and cleans up what a crash mid-creation left behind.
pub async fn recover(rt: &Arc<Runtime>, network: &Network) -> Result<()> {
    let list = rt.ctrd.list_containers(label::KIND_SANDBOX).await?;
    // Asked of every pause task at once: a busy shim's UNKNOWN is asked again for up to
    // SETTLE_LIMIT, and one such shim must not hold up the recovery of all the others.
    let ids = list.iter().map(|c| c.id.clone()).collect();
    let mut task_states = task::settled_states(&rt.ctrd, ids, task::SETTLE_LIMIT).await;
    let mut known = std::collections::HashSet::new();
    for ctr in list {
        let id = ctr.id.clone();
        known.insert(id.clone());
        let Some(cfg_any) = ctr.extensions.get(extension::SANDBOX_CONFIG) else {
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
        let mut state: SandboxState = store::read_json(&state_file(&dir))
            .unwrap_or_else(|e| {
                tracing::warn!(sandbox = %id, error = %e, "unreadable sandbox state");
                None
            })
            .unwrap_or_else(|| SandboxState {
                created_at: ctr.created_at.map(task::ts_ns).unwrap_or(0),
                ..Default::default()
            });
        let task_state = task_states
            .remove(&id)
            .unwrap_or_else(|| Ok(task::State::Absent))?;
        let running = matches!(task_state, task::State::Running { .. });
        if let task::State::Other(status) = task_state {
            // Still UNKNOWN after SETTLE_LIMIT: the pod is not vouched for. As containerd's
            // CRI does, it is reported NOTREADY rather than READY on a pause nobody can
            // see; a pause that may still run is then stopped by the interrupted-stop
            // pass (pid kept), and kubelet recreates the pod.
            tracing::warn!(sandbox = %id, status, "pause task state still unknown; the pod is not ready");
        }
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
            watch_pause(rt.clone(), sb.clone());
        }
        if unfinished {
            // A RunPodSandbox cut off by a crash after the containerd container was made:
            // kubelet never got its id, so the pod is removed whole rather than kept half.
            // (It has no containers: those are recovered after the sandboxes.)
            let removed = async {
                let _g = sb.op.lock().await;
                stop(rt, network, &sb).await?;
                remove(rt, &sb).await
            };
            match removed.await {
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
            let st: Option<SandboxState> = store::read_json(&state_file(&dir)).ok().flatten();
            // Without a state file the namespace (if the crash came after making it) is
            // still found by its name.
            let netns = st
                .and_then(|s| s.netns_path)
                .unwrap_or_else(|| rt.config.netns_dir.join(netns_name(&id)));
            if netns.exists() {
                let req = network_request(&id, &cri::PodSandboxConfig::default(), netns.clone());
                if let Err(e) = network.teardown(&req).await {
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
