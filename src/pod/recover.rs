//! Recovery at start-up: the sandbox and container indexes rebuilt from containerd and the
//! state directory, in that order, retried until containerd answers.

use std::time::Duration;

use super::node::Node;
use crate::runtime::Runtime;
use crate::{container, keys, sandbox, task};

/// How long recovery waits between attempts at most while containerd does not answer.
const RECOVERY_RETRY_MAX: Duration = Duration::from_secs(5);

/// Rebuilds the index from containerd and the state directory after a start: sandboxes
/// first, then containers, whose events carry their sandbox's status. containerd may be
/// down: then recovery is retried until it answers.
pub async fn recover(node: &Node) {
    let rt = &node.rt;
    // No ExecSync outlives the peapod that served it: its FIFOs are leftovers (the shim
    // keeps its own descriptors, so a still-running exec process is not disturbed).
    let exec_dir = container::exec::fifo_dir(rt);
    if let Err(e) = std::fs::remove_dir_all(&exec_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %exec_dir.display(), error = %e, "cannot sweep exec FIFOs");
        }
    }
    crate::store::sweep_temp_files(&rt.config.state_dir);
    let mut delay = Duration::from_millis(200);
    loop {
        let done = async {
            sandbox::lifecycle::recover(rt, &node.network).await?;
            container::recover::recover(rt).await
        };
        match done.await {
            Ok(()) => {
                finish_interrupted_stops(node).await;
                sweep_orphan_leases(rt).await;
                rt.set_recovered();
                tracing::info!("state recovered from containerd");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "recovery failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECOVERY_RETRY_MAX);
            }
        }
    }
}

/// After recovery of sandboxes and containers: a sandbox that is not ready but whose pause
/// task still runs had its StopPodSandbox cut off by a crash; the stop is finished, so a
/// NOTREADY pod never keeps running processes or network. The stops run side by side, each
/// bounded: a wedged shim (whose kill containerd never answers) must not keep peapod from
/// serving; its pod stays NOTREADY and kubelet's own StopPodSandbox tries again.
async fn finish_interrupted_stops(node: &Node) {
    use futures::StreamExt;
    let rt = &node.rt;
    let candidates = rt
        .sandboxes
        .all()
        .into_iter()
        .filter(|sb| {
            let st = sb.state();
            !st.ready && st.pid != 0
        })
        .collect::<Vec<_>>();
    futures::stream::iter(candidates)
        .for_each_concurrent(INTERRUPTED_STOP_CONCURRENCY, |sb| async move {
            // UNKNOWN (a shim that did not answer containerd in time) may well be running.
            if !matches!(
                task::state(&rt.ctrd, &sb.id).await,
                Ok(task::State::Running { .. } | task::State::Other(_))
            ) {
                return;
            }
            let stop = super::lifecycle::stop_sandbox(node, &sb.id);
            match tokio::time::timeout(INTERRUPTED_STOP_LIMIT, stop).await {
                Ok(Ok(())) => {
                    tracing::info!(sandbox = %sb.id, "finished a stop a crash interrupted")
                }
                Ok(Err(e)) => {
                    tracing::warn!(sandbox = %sb.id, error = %e, "finish an interrupted stop")
                }
                Err(_) => tracing::warn!(
                    sandbox = %sb.id,
                    limit_s = INTERRUPTED_STOP_LIMIT.as_secs(),
                    "an interrupted stop did not finish in time; left to kubelet's StopPodSandbox"
                ),
            }
        })
        .await;
}

/// Interrupted stops finished at once, and how long each may take, before serving.
const INTERRUPTED_STOP_CONCURRENCY: usize = 8;
const INTERRUPTED_STOP_LIMIT: Duration = Duration::from_secs(10);

/// Leases a crashed peapod left: a pull's (no pull outlives the process) and those of
/// sandboxes or containers whose creation was cut off before containerd had a record of
/// them. Each holds content or a snapshot from the garbage collector, so each goes, with
/// the snapshot of the same key. Runs once recovery has rebuilt the index, before serving.
async fn sweep_orphan_leases(rt: &Runtime) {
    let leases = match rt.ctrd.lease_ids().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list leases to sweep orphans");
            return;
        }
    };
    for lease in leases {
        let orphan = match keys::lease_owner(&lease) {
            None => continue,
            Some(keys::LeaseOwner::Pull) => None,
            Some(keys::LeaseOwner::Object(id)) => {
                if rt.sandboxes.get(id).is_ok() || rt.containers.get(id).is_ok() {
                    continue;
                }
                Some(id)
            }
        };
        if let Some(id) = orphan {
            if let Err(e) = rt.ctrd.remove_snapshot(&rt.config.snapshotter, id).await {
                tracing::warn!(lease = %lease, error = %e, "remove orphan snapshot");
            }
        }
        match rt.ctrd.delete_lease_id(&lease).await {
            Ok(()) => tracing::info!(lease = %lease, "removed a lease a crash left behind"),
            Err(e) => tracing::warn!(lease = %lease, error = %e, "remove orphan lease"),
        }
    }
}
