//! ContainerStatus `info` (verbose): what `crictl inspect` prints under `.info` and operators
//! script against, above all `.info.pid` to enter a container's namespaces. The keys are
//! those containerd's CRI plugin uses (`sandboxID`, `pid`, `snapshotKey`, `snapshotter`,
//! `runtimeType`, `runtimeSpec`), so runbooks written for it keep working.

use std::collections::HashMap;

use serde_json::json;

use super::stored_spec;
use crate::runtime::Runtime;
use crate::store::Container;

/// The `info` map of a verbose ContainerStatus: one key, `info`, holding a JSON object.
/// The OCI spec is read from containerd; if that fails the rest is still reported.
pub async fn verbose_info(rt: &Runtime, c: &Container) -> HashMap<String, String> {
    let st = c.state();
    let mut v = json!({
        "sandboxID": c.meta.sandbox_id,
        "pid": st.pid,
        "snapshotKey": c.id,
        "snapshotter": rt.config.snapshotter,
        "runtimeType": rt.config.runtime,
    });
    match stored_spec::get(&rt.ctrd, &c.id).await {
        Ok((_, spec)) => v["runtimeSpec"] = spec,
        Err(e) => tracing::debug!(container = %c.id, error = %e, "no OCI spec for verbose status"),
    }
    HashMap::from([("info".to_string(), v.to_string())])
}
