//! PodSandboxStatus `info` (verbose): what `crictl inspectp` prints under `.info`. The keys
//! and their shapes are those of containerd's CRI plugin (`SandboxInfo` in containerd's
//! `internal/cri/server/podsandbox/types/sandbox_info.go`, with `sandboxMetadata` as its
//! `sandboxstore.Metadata` marshals and `cniResult` as go-cni's `Result`), so tools and
//! runbooks written against containerd read peapod's the same way. One key is peapod's own:
//! `stateDir`, the directory of the pod's files.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::network::Network;
use crate::runtime::Runtime;
use crate::store::Sandbox;
use crate::task;

/// The `info` map of a verbose PodSandboxStatus: one key, `info`, holding a JSON object.
/// What containerd's record of the pause container says (image, snapshot, runtime, spec) is
/// read from it; when that fails, the rest is still reported.
pub async fn verbose_info(
    rt: &Runtime,
    network: &Network,
    sb: &Sandbox,
) -> HashMap<String, String> {
    let st = sb.state();
    let netns = st
        .netns_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let cni_result = network.attachment(&sb.id);
    let mut ips = st.ips.iter();
    let mut v = json!({
        "pid": st.pid,
        "processStatus": process_status(rt, &sb.id).await,
        // A pod on the host's network has no namespace of its own to close.
        "netNamespaceClosed": st.netns_path.as_ref().is_some_and(|p| !p.exists()),
        "image": Value::Null,
        "snapshotKey": sb.id,
        "snapshotter": rt.config.snapshotter,
        "runtimeType": rt.config.runtime,
        "runtimeOptions": Value::Null,
        "config": crate::cri_json::omitempty(&sb.config),
        "runtimeSpec": Value::Null,
        "cniResult": cni_result,
        // peapod's own addition: where the pod's hostname, hosts, resolv.conf and shm are.
        "stateDir": sb.dir,
        "sandboxMetadata": {
            "Version": "v1",
            "Metadata": {
                "ID": sb.id,
                "Name": sb.name,
                "Config": crate::cri_json::omitempty(&sb.config),
                "NetNSPath": netns,
                "IP": ips.next().cloned().unwrap_or_default(),
                "AdditionalIPs": ips.cloned().collect::<Vec<_>>(),
                "RuntimeHandler": sb.runtime_handler,
                "CNIResult": cni_result,
                "ProcessLabel": "",
            },
        },
    });
    // The image the pause container really runs, not today's sandbox_image setting.
    if let Err(e) = rt.ctrd.fill_verbose_info(&sb.id, &mut v, true).await {
        tracing::debug!(sandbox = %sb.id, error = %e, "no containerd record for verbose status");
    }
    HashMap::from([("info".to_string(), v.to_string())])
}

/// The pause task's status as containerd names it (`running`, `stopped`, ...), `deleted`
/// once the task is gone, as containerd's CRI plugin says.
async fn process_status(rt: &Runtime, id: &str) -> &'static str {
    match task::state(&rt.ctrd, id).await {
        Ok(task::State::Created { .. }) => "created",
        Ok(task::State::Running { .. }) => "running",
        Ok(task::State::Stopped(_)) => "stopped",
        Ok(task::State::Absent) => "deleted",
        Ok(task::State::Other(_)) | Err(_) => "unknown",
    }
}
