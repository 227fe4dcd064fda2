//! CreateContainer, StartContainer, StopContainer, RemoveContainer and ReopenContainerLog of
//! one container. What involves the pod (its sandbox's other containers, the image a
//! container is made from) is in [`crate::pod`].
//!
//! Concurrency: `Container::op` serialises start, the signalling part of stop, and remove of
//! one container. Waiting for an exit never holds it: the exit monitor (`monitor`) is the one
//! writer of the EXITED state, and stops wait on the record's `changed` notification, so
//! concurrent or repeated stops each wait for the same exit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::snapshots::MountsRequest;
use prost::Message;

use super::monitor::{self, emit};
use crate::containerd::{self, ContainerRecord};
use crate::cri;
use crate::error::{ctrd, Error, Result};
use crate::image::ImageInfo;
use crate::keys::{extension, label};
use crate::runtime::Runtime;
use crate::signal::{cri_signal_number, parse_signal};
use crate::spec::{self, HostInfo, SandboxInfo};
use crate::stdio::{log as logs, ContainerIo};
use crate::store::{Container, ContainerMeta, ContainerState, ContainerUserIds, Phase, Sandbox};
use crate::task;

/// How long a SIGKILLed container may take to be reported exited before the call fails.
const KILL_LIMIT: Duration = Duration::from_secs(30);

/// Checks what the request must carry before anything is reserved or made.
pub fn validate(config: &cri::ContainerConfig) -> Result<()> {
    let name = config.metadata.as_ref().map(|m| m.name.as_str());
    if name.unwrap_or_default().is_empty() {
        return Err(Error::invalid(
            "container config: metadata.name must not be empty",
        ));
    }
    let image = config.image.as_ref().map(|i| i.image.as_str());
    if image.unwrap_or_default().is_empty() {
        return Err(Error::invalid(
            "container config: image.image must not be empty",
        ));
    }
    Ok(())
}

/// The sandbox a container is created in: known and READY.
pub fn ready_sandbox(rt: &Runtime, sandbox_id: &str) -> Result<Arc<Sandbox>> {
    let sb = rt.sandboxes.get(sandbox_id)?;
    if !sb.is_ready() {
        return Err(Error::FailedPrecondition(format!(
            "pod sandbox {} is not ready",
            sb.id
        )));
    }
    Ok(sb)
}

/// What a CreateContainer has made so far, undone if a later step fails.
#[derive(Default)]
struct Made {
    objects: containerd::Made,
    state_file: Option<PathBuf>,
}

/// A container to make: its id, reserved name, sandbox (READY), image and config.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub sandbox: &'a Sandbox,
    pub image: &'a ImageInfo,
    pub config: cri::ContainerConfig,
}

/// Makes the container and emits its CREATED event: on failure, everything made so far is
/// undone before the error is returned.
pub async fn create(rt: &Arc<Runtime>, host: &HostInfo, new: NewContainer<'_>) -> Result<()> {
    let id = new.id;
    let mut made = Made::default();
    match create_in(rt, host, new, &mut made).await {
        Ok(c) => {
            emit(rt, &c, cri::ContainerEventType::ContainerCreatedEvent);
            Ok(())
        }
        Err(e) => {
            tracing::warn!(container = %id, error = %e, "CreateContainer failed; undoing");
            undo(rt, id, made).await;
            Err(e)
        }
    }
}

async fn create_in(
    rt: &Arc<Runtime>,
    host: &HostInfo,
    new: NewContainer<'_>,
    made: &mut Made,
) -> Result<Arc<Container>> {
    let NewContainer {
        id,
        name,
        sandbox: sb,
        image,
        config,
    } = new;
    let c = &rt.ctrd;
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    let image_stop_signal = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.stop_signal().clone())
        .unwrap_or_default();
    if !image_stop_signal.is_empty() {
        parse_signal(&image_stop_signal)
            .map_err(|e| Error::invalid(format!("image {image_name}: STOPSIGNAL: {e}")))?;
    }
    cri_signal_number(config.stop_signal)?;
    // Joined only once both are known to stay put: an absolute log_path would replace the
    // directory and `..` would climb out of it (the writer also opens the file inside the
    // directory, so a symlink cannot redirect it either).
    if !config.log_path.is_empty() {
        crate::safe_fs::check_relative(&config.log_path, "container config: log_path")?;
    }
    let log_path = if sb.config.log_directory.is_empty() || config.log_path.is_empty() {
        String::new()
    } else {
        crate::safe_fs::check_absolute_dir(&sb.config.log_directory, "log_directory")?;
        PathBuf::from(&sb.config.log_directory)
            .join(&config.log_path)
            .display()
            .to_string()
    };
    let mut meta = ContainerMeta {
        sandbox_id: sb.id.clone(),
        image: image_name.clone(),
        image_id: image.id.clone(),
        image_ref: image_ref(&image.name, &image.manifest_digest, &image.id),
        log_path,
        log_directory: sb.config.log_directory.clone(),
        created_at: task::now_ns(),
        image_stop_signal,
        user: None,
        cgroups_path: None,
    };

    crate::timed!("c.lease", c.create_lease(id).await)?;
    made.objects.lease = true;
    let what = format!("container {id}");
    let mounts = crate::timed!(
        "c.prepare",
        c.prepare_snapshot(&rt.config.snapshotter, id, &image.chain_id, &what)
            .await
    )?;
    made.objects.snapshot = true;

    // The user database of the image, from the container's own (still empty) snapshot.
    let tmp = super::rootfs::views_dir(rt);
    let view_id = id.to_string();
    let users = crate::timed!(
        "c.userdb",
        tokio::task::spawn_blocking(move || super::rootfs::read_user_db(&mounts, &tmp, &view_id))
            .await
    )
    .map_err(|e| Error::internal(format!("reading the image's users: {e}")))??;

    let target_pid = target_pid(rt, &config)?;
    let sandbox = sandbox_info(sb);
    let spec = crate::timed!(
        "c.spec",
        spec::container_spec(&spec::ContainerSpecInput {
            id,
            config: &config,
            sandbox_config: &sb.config,
            image: &image.config,
            users: &users,
            sandbox: &sandbox,
            target_pid,
            host,
        })
    )?;
    // The identity the first process starts with, for ContainerStatus.user (kubelet shows
    // it in the pod status when supplemental groups policy is supported, as peapod says).
    if let Some(p) = spec.process() {
        let u = p.user();
        meta.user = Some(ContainerUserIds {
            uid: u.uid(),
            gid: u.gid(),
            supplemental_groups: u.additional_gids().clone().unwrap_or_default(),
        });
    }
    meta.cgroups_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.display().to_string());
    let spec_bytes =
        serde_json::to_vec(&spec).map_err(|e| Error::internal(format!("encode spec: {e}")))?;
    let meta_bytes =
        serde_json::to_vec(&meta).map_err(|e| Error::internal(format!("encode meta: {e}")))?;

    let labels = HashMap::from([
        (label::KIND.to_string(), label::KIND_CONTAINER.to_string()),
        (label::SANDBOX_ID.to_string(), sb.id.clone()),
        (label::NAME.to_string(), name.to_string()),
    ]);
    let extensions = HashMap::from([
        (
            extension::CONTAINER_CONFIG.to_string(),
            prost_types::Any {
                type_url: extension::CONTAINER_CONFIG_TYPE.to_string(),
                value: config.encode_to_vec(),
            },
        ),
        (
            extension::CONTAINER_META.to_string(),
            prost_types::Any {
                type_url: extension::CONTAINER_META_TYPE.to_string(),
                value: meta_bytes,
            },
        ),
    ]);
    let record = ContainerRecord {
        id,
        image: &image.name,
        labels,
        extensions,
        spec: spec_bytes,
        created_at: task::ns_to_ts(meta.created_at),
    };
    // Counted as made before the call: a failed answer (a response too large to decode, a
    // broken connection) does not mean containerd did not create it, and the delete in
    // the undo is idempotent.
    made.objects.container = true;
    crate::timed!(
        "c.create",
        c.create_container(&rt.config, record, &what).await
    )?;

    let ctr = Arc::new(Container::new(
        id.to_string(),
        name.to_string(),
        config,
        meta,
        &rt.config.state_dir,
        ContainerState::default(),
    ));
    made.state_file = Some(ctr.state_path().to_path_buf());
    crate::timed!("c.statefile", ctr.update(|_| {}))?;
    rt.containers.insert(ctr.clone());
    tracing::info!(container = %id, name, sandbox = %sb.id, "container created");
    Ok(ctr)
}

/// The image reference kubelet shows: a repo digest when the image was pulled by name,
/// else the image id.
fn image_ref(name: &str, manifest_digest: &str, image_id: &str) -> String {
    if name.contains('@') {
        return name.to_string();
    }
    if manifest_digest.is_empty() || name.starts_with("sha256:") {
        return image_id.to_string();
    }
    // Strip a tag (a ':' after the last '/'), keep a registry port.
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let repo = match name[slash..].rfind(':') {
        Some(i) => &name[..slash + i],
        None => name,
    };
    format!("{repo}@{manifest_digest}")
}

fn sandbox_info(sb: &Sandbox) -> SandboxInfo {
    let host_network = sb.host_network();
    SandboxInfo {
        id: sb.id.clone(),
        pid: sb.pid(),
        host_network,
        host_ipc: sb.host_ipc(),
        host_pid: sb.pid_mode() == cri::NamespaceMode::Node,
        hostname: if host_network {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default()
        } else {
            String::new()
        },
        hostname_path: Some(sb.hostname_path()),
        hosts_path: Some(sb.hosts_path()),
        resolv_conf_path: Some(sb.resolv_conf_path()),
        shm_path: Some(sb.shm_path()),
        cgroup_parent: sb.cgroup_parent(),
    }
}

/// For PID namespace mode TARGET: the pid of the running target container.
fn target_pid(rt: &Runtime, config: &cri::ContainerConfig) -> Result<Option<u32>> {
    let opts = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(o) = opts.filter(|o| o.pid == cri::NamespaceMode::Target as i32) else {
        return Ok(None);
    };
    let t = rt.containers.get(&o.target_id)?;
    let st = t.state();
    if st.phase != Phase::Running {
        return Err(Error::FailedPrecondition(format!(
            "target container {} of the PID namespace is not running",
            t.id
        )));
    }
    Ok(Some(st.pid))
}

async fn undo(rt: &Runtime, id: &str, made: Made) {
    rt.ctrd
        .undo_object(&rt.config.snapshotter, id, "container", &made.objects)
        .await;
    if let Some(p) = made.state_file {
        let _ = std::fs::remove_file(p);
    }
    rt.containers.remove(id);
}

pub async fn start(rt: Arc<Runtime>, id: &str) -> Result<()> {
    let c = rt.containers.get(id)?;
    // Its own task, like create: a cancelled request must not leave a task created but
    // not recorded.
    let h = tokio::spawn(async move {
        let _g = c.op.lock().await;
        match c.state().phase {
            Phase::Created => {}
            Phase::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is already running",
                    c.id
                )))
            }
            Phase::Exited | Phase::Unknown => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is exited; create a new one",
                    c.id
                )))
            }
        }
        ready_sandbox(&rt, &c.meta.sandbox_id)?;
        match start_task(&rt, &c).await {
            Ok(pid) => {
                let cgroup =
                    crate::timed!("st.cgroup", monitor::locate_cgroup(&rt, &c.id, pid).await);
                crate::timed!(
                    "st.state",
                    c.update(|s| {
                        s.phase = Phase::Running;
                        s.pid = pid;
                        s.started_at = task::now_ns();
                        s.cgroup = cgroup;
                    })
                )?;
                tracing::info!(container = %c.id, pid, "container started");
                emit(&rt, &c, cri::ContainerEventType::ContainerStartedEvent);
                monitor::spawn(rt.clone(), c.clone());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(container = %c.id, error = %e, "StartContainer failed");
                if let Err(e) = task::kill_and_delete(&rt.ctrd, &c.id, KILL_LIMIT).await {
                    tracing::warn!(container = %c.id, error = %e, "delete failed task");
                }
                if let Some(log) = c.log.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    log.force_close();
                }
                monitor::record_lost_exit(
                    &rt,
                    &c,
                    monitor::START_ERROR_EXIT_CODE,
                    "StartError",
                    e.to_string(),
                )
                .await?;
                emit(&rt, &c, cri::ContainerEventType::ContainerStoppedEvent);
                Err(e)
            }
        }
    });
    h.await
        .map_err(|e| Error::internal(format!("StartContainer task failed: {e}")))?
}

/// FIFOs, the log writer (reading before the shim opens the FIFOs), task create and start.
async fn start_task(rt: &Runtime, c: &Container) -> Result<u32> {
    let tty = c.config.tty;
    let io = crate::timed!(
        "st.fifos",
        ContainerIo::create(&rt.fifo_dir(), &c.id, c.config.stdin, tty)
    )?;
    let log = crate::timed!(
        "st.log",
        logs::spawn_log_writer(&io, c.meta.log_target(), tty)
    )?;
    *c.log.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(log));
    // Open from the start, so the container reads nothing (rather than EOF) until a client
    // attaches (Kubernetes `stdin`).
    *c.stdin.lock().await = io.open_stdin()?;
    let rootfs = crate::timed!(
        "st.mounts",
        rt.ctrd
            .snapshots()
            .mounts(rt.ctrd.req(MountsRequest {
                snapshotter: rt.config.snapshotter.clone(),
                key: c.id.clone(),
            }))
            .await
            .map_err(ctrd(format!("mounts of container {}", c.id)))
    )?
    .into_inner()
    .mounts;
    let paths = io.stdio_paths();
    crate::timed!(
        "st.taskcreate",
        task::create(
            &rt.ctrd,
            &c.id,
            rootfs,
            task::TaskIo {
                stdin: &paths.stdin,
                stdout: &paths.stdout,
                stderr: &paths.stderr,
                terminal: tty,
            },
        )
        .await
    )?;
    crate::timed!("st.taskstart", task::start(&rt.ctrd, &c.id).await)
}

/// Waits until the container is no longer RUNNING, at most `limit`. True if it exited.
async fn wait_exited(c: &Container, limit: Duration) -> bool {
    // kubelet passes terminationGracePeriodSeconds as is; a limit past what the clock can
    // represent (near i64::MAX seconds) means "no deadline", not an overflow.
    let deadline = tokio::time::Instant::now().checked_add(limit);
    loop {
        let notified = c.changed.notified();
        tokio::pin!(notified);
        // Registered before the check, so a change between the check and the wait is seen.
        notified.as_mut().enable();
        if c.state().phase != Phase::Running {
            return true;
        }
        match deadline {
            Some(d) => {
                if tokio::time::timeout_at(d, notified).await.is_err() {
                    return c.state().phase != Phase::Running;
                }
            }
            None => notified.await,
        }
    }
}

pub async fn stop(rt: &Runtime, id: &str, timeout_s: i64) -> Result<()> {
    let Some(c) = rt.containers.find(id)? else {
        return Ok(());
    };
    {
        let _g = c.op.lock().await;
        let st = c.state();
        if st.phase != Phase::Running {
            return Ok(());
        }
        if timeout_s > 0 && !st.stop_signal_sent {
            let sig = c.stop_signal()?;
            // Recorded first: a repeated stop (now or after a restart) must not signal again.
            // A failed write must not stop the stop: the exit's record (retried until
            // written) carries the flag to disk later.
            if let Err(e) = c.apply(|s| s.stop_signal_sent = true).1 {
                tracing::warn!(container = %c.id, error = %e, "cannot persist the stop signal");
                rt.unpersisted.note(&c.id, &e.to_string());
            }
            tracing::info!(container = %c.id, signal = sig, "sending stop signal");
            task::kill(&rt.ctrd, &c.id, sig, false).await?;
        }
    }
    if timeout_s > 0 && wait_exited(&c, Duration::from_secs(timeout_s as u64)).await {
        return Ok(());
    }
    kill(rt, &c).await
}

/// SIGKILL and wait for the exit monitor to record the exit.
pub async fn kill(rt: &Runtime, c: &Container) -> Result<()> {
    if c.state().phase != Phase::Running {
        return Ok(());
    }
    tracing::info!(container = %c.id, "killing container");
    task::kill(&rt.ctrd, &c.id, libc::SIGKILL as u32, false).await?;
    if wait_exited(c, KILL_LIMIT).await {
        Ok(())
    } else {
        Err(Error::DeadlineExceeded(format!(
            "container {} was not reported exited within {}s of SIGKILL",
            c.id,
            KILL_LIMIT.as_secs()
        )))
    }
}

/// RemoveContainer. Once the removal is recorded in the container's state file, the
/// container leaves the index and its name is free; what containerd holds of it (the exited
/// task, the record, the snapshot, the lease) is deleted right after, in the background, so
/// the answer does not wait for the shim to tear the task down. A restarted peapod finishes a
/// removal it finds recorded ([`super::recover`]), and RemovePodSandbox waits for the
/// removals of its containers.
pub async fn remove(rt: &Arc<Runtime>, id: &str) -> Result<()> {
    let Some(c) = rt.containers.find(id)? else {
        return Ok(());
    };
    let _g = c.op.lock().await;
    if rt.containers.get(&c.id).is_err() {
        return Ok(()); // removed while we waited for the lock
    }
    kill(rt, &c).await?;
    match c.update(|s| s.removing = true) {
        Ok(_) => {
            let under_way = rt.containers.removal_started(&c.id, &c.meta.sandbox_id);
            forget(rt, &c);
            let rt = rt.clone();
            let id = c.id.clone();
            let meta = c.meta.clone();
            let state_path = c.state_path().to_path_buf();
            tokio::spawn(async move {
                finish_removal(&rt, &id, &meta, &state_path).await;
                drop(under_way);
            });
        }
        Err(e) => {
            // Unrecorded, a removal cut off by a crash could not be finished later: it is
            // done before the answer instead.
            tracing::warn!(container = %c.id, error = %e, "cannot record the removal; removing in the foreground");
            delete_objects(rt, &c.id, &c.meta).await?;
            remove_state_file(c.state_path())?;
            forget(rt, &c);
            tracing::info!(container = %c.id, "container removed");
        }
    }
    Ok(())
}

/// Takes the container out of peapod's view: index, name, log writer, FIFOs; emits DELETED.
fn forget(rt: &Runtime, c: &Container) {
    if let Some(log) = c.log.lock().unwrap_or_else(|p| p.into_inner()).take() {
        log.force_close();
    }
    monitor::remove_fifos(rt, &c.id);
    rt.containers.remove(&c.id);
    rt.unpersisted.clear(&c.id);
    rt.names.release(&c.name, &c.id);
    emit(rt, c, cri::ContainerEventType::ContainerDeletedEvent);
}

/// Deletes what containerd holds of a container: its task (it has exited), the empty cgroup
/// an interrupted task create leaves behind, then its record, snapshot and lease, which do
/// not depend on each other. Absent objects are fine.
pub async fn delete_objects(rt: &Runtime, id: &str, meta: &ContainerMeta) -> Result<()> {
    task::delete(&rt.ctrd, id).await?;
    if let Some(path) = &meta.cgroups_path {
        let removed =
            crate::cgroup::remove_leftover(std::path::Path::new(crate::cgroup::ROOT), path);
        if !removed.is_empty() {
            tracing::info!(container = %id, dirs = removed.len(), "removed the cgroup an interrupted task create left behind");
        }
    }
    let (record, snapshot, lease) = tokio::join!(
        rt.ctrd.delete_container(id),
        rt.ctrd.remove_snapshot(&rt.config.snapshotter, id),
        rt.ctrd.delete_lease(id),
    );
    record.and(snapshot).and(lease)
}

fn remove_state_file(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("remove {}: {e}", path.display()))),
    }
}

/// One attempt at what follows a recorded removal: the containerd objects, then the state
/// file that recorded it.
pub async fn finish_removal_once(
    rt: &Runtime,
    id: &str,
    meta: &ContainerMeta,
    state_path: &std::path::Path,
) -> Result<()> {
    delete_objects(rt, id, meta).await?;
    if let Err(e) = remove_state_file(state_path) {
        tracing::warn!(container = %id, error = %e, "remove the state file of a removed container");
    }
    tracing::info!(container = %id, "container removed");
    Ok(())
}

/// The background half of a removal: [`finish_removal_once`], retried while containerd
/// fails (e.g. while it restarts).
pub async fn finish_removal(
    rt: &Runtime,
    id: &str,
    meta: &ContainerMeta,
    state_path: &std::path::Path,
) {
    let mut delay = Duration::from_millis(200);
    while let Err(e) = finish_removal_once(rt, id, meta, state_path).await {
        tracing::warn!(container = %id, error = %e, "removing container from containerd; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

pub async fn reopen_log(rt: &Runtime, id: &str) -> Result<()> {
    let c = rt.containers.get(id)?;
    if c.state().phase != Phase::Running {
        return Err(Error::FailedPrecondition(format!(
            "container {} is not running",
            c.id
        )));
    }
    let log = c.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match log {
        Some(l) => l.reopen().await,
        None => Err(Error::FailedPrecondition(format!(
            "container {} has no log writer attached",
            c.id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ref_prefers_the_repo_digest() {
        assert_eq!(
            image_ref("localhost:5000/a/b:1", "sha256:m", "sha256:c"),
            "localhost:5000/a/b@sha256:m"
        );
        assert_eq!(
            image_ref("docker.io/library/x@sha256:m", "sha256:m", "sha256:c"),
            "docker.io/library/x@sha256:m"
        );
        assert_eq!(image_ref("sha256:c", "", "sha256:c"), "sha256:c");
    }
}
