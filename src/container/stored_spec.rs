//! The OCI spec containerd stores with a container, read and written as JSON.
//!
//! Kept as `serde_json::Value` rather than `oci_spec::runtime::Spec`: exec and resource
//! updates change one part and must hand every other field back to runc untouched, including
//! fields a typed round trip might not know.

use containerd_client::services::v1::{Container as CtrdContainer, UpdateContainerRequest};
use serde_json::Value;

use std::sync::Arc;

use crate::containerd::Containerd;
use crate::error::{ctrd, Error, Result};
use crate::runtime::Runtime;

/// The containerd container record and its spec.
pub async fn get(c: &Containerd, id: &str) -> Result<(CtrdContainer, Value)> {
    c.container_with_spec(id).await
}

/// What an exec process is made from: `{"process": <the spec's process>}`, read from
/// containerd once per container and kept in memory ([`crate::store::Container::exec_base`]).
pub async fn exec_base(rt: &Runtime, id: &str) -> Result<Arc<Value>> {
    let c = rt.containers.get(id)?;
    if let Some(base) = c.exec_base.get() {
        return Ok(base.clone());
    }
    let (_, mut spec) = get(&rt.ctrd, &c.id).await?;
    let process = spec
        .get_mut("process")
        .map(Value::take)
        .ok_or_else(|| Error::internal("container OCI spec has no process"))?;
    let base = Arc::new(serde_json::json!({ "process": process }));
    Ok(c.exec_base.get_or_init(|| base).clone())
}

/// The `linux.cgroupsPath` runc was given; None when the spec leaves it to runc.
pub async fn cgroups_path(c: &Containerd, id: &str) -> Result<Option<String>> {
    let (_, spec) = get(c, id).await?;
    Ok(spec
        .pointer("/linux/cgroupsPath")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_string))
}

/// Replaces the stored spec (update mask `spec`), keeping the record's type URL.
pub async fn put(c: &Containerd, mut ctr: CtrdContainer, spec: &Value) -> Result<()> {
    let id = ctr.id.clone();
    let bytes = serde_json::to_vec(spec)
        .map_err(|e| Error::internal(format!("encode OCI spec of {id}: {e}")))?;
    let mut any = ctr.spec.take().unwrap_or_default();
    any.value = bytes;
    ctr.spec = Some(any);
    c.containers()
        .update(c.req(UpdateContainerRequest {
            container: Some(ctr),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["spec".to_string()],
            }),
        }))
        .await
        .map_err(ctrd(format!("update spec of container {id}")))?;
    Ok(())
}
