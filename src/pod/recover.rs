//! Recovery at start-up: the sandbox and container indexes rebuilt from containerd and the
//! state directory, in that order, retried until containerd answers.

use std::time::Duration;

use super::node::Node;
use crate::{container, sandbox};

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
    let mut delay = Duration::from_millis(200);
    loop {
        let done = async {
            sandbox::lifecycle::recover(rt, &node.network).await?;
            container::recover::recover(rt).await
        };
        match done.await {
            Ok(()) => {
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
