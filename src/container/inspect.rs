//! ContainerStatus `info` (verbose): what `crictl inspect` prints under `.info` and operators
//! script against, above all `.info.pid` to enter a container's namespaces. The keys and
//! their shapes are those of containerd's CRI plugin (`ContainerInfo` in containerd's
//! `internal/cri/server/container_status.go`), so runbooks written for it keep working.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::runtime::Runtime;
use crate::store::Container;

/// The `info` map of a verbose ContainerStatus: one key, `info`, holding a JSON object.
/// What containerd's own record says (snapshot, runtime, spec) is read from it; if that
/// fails, the rest is still reported.
pub async fn verbose_info(rt: &Runtime, c: &Container) -> HashMap<String, String> {
    let st = c.state();
    let mut v = json!({
        "sandboxID": c.meta.sandbox_id,
        "pid": st.pid,
        "snapshotKey": c.id,
        "snapshotter": rt.config.snapshotter,
        "runtimeType": rt.config.runtime,
        "runtimeOptions": Value::Null,
        "config": crate::cri_json::omitempty(&c.config),
        "runtimeSpec": Value::Null,
    });
    if let Err(e) = rt.ctrd.fill_verbose_info(&c.id, &mut v, false).await {
        tracing::debug!(container = %c.id, error = %e, "no containerd record for verbose status");
    }
    HashMap::from([("info".to_string(), v.to_string())])
}
