//! UpdateContainerResources: new cgroup limits for a created or running container.
//!
//! The stored spec is changed first (so a task created later, or a recovery, sees the new
//! limits), then the running task's cgroup; if the task refuses the values, the stored spec
//! is put back so the two never disagree.

use containerd_client::services::v1::UpdateTaskRequest;
use serde_json::{Map, Value};

use super::stored_spec;
use crate::cri;
use crate::error::{ctrd, Error, Result};
use crate::keys::type_url;
use crate::runtime::Runtime;
use crate::spec::resources::enforceable_resources;
use crate::spec::HostInfo;
use crate::store::Phase;

/// Sections of OCI `LinuxResources` that are merged field by field: a field the request
/// leaves at zero ("not set" in CRI) keeps its current value.
const MERGED: &[&str] = &[
    "cpu", "memory", "pids", "blockIO", "unified", "network", "rdma",
];

pub async fn update_resources(
    rt: &Runtime,
    host: &HostInfo,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<()> {
    let c = rt.containers.get(&req.container_id)?;
    // Start/stop change the phase and the task under this lock; the update must see a task
    // that stays as it found it.
    let _op = c.op.lock().await;
    let phase = c.state().phase;
    if !matches!(phase, Phase::Created | Phase::Running) {
        return Err(Error::FailedPrecondition(format!(
            "container {} is {phase:?}; only created or running containers can be updated",
            c.id
        )));
    }
    let Some(linux) = req.linux else {
        return Ok(());
    };
    let requested_cri = linux.clone();
    validate(&linux)?;
    let requested = enforceable_resources(
        Some(&linux),
        host.cgroup,
        &host.limits,
        Vec::new(),
        &format!("container {}", c.id),
    )?;
    let requested = serde_json::to_value(&requested)
        .map_err(|e| Error::internal(format!("encode resources: {e}")))?;

    let (ctr, old_spec) = stored_spec::get(&rt.ctrd, &c.id).await?;
    let mut spec = old_spec.clone();
    let merged = merge_resources(
        old_spec.pointer("/linux/resources").unwrap_or(&Value::Null),
        &requested,
    );
    let linux_obj = spec
        .as_object_mut()
        .ok_or_else(|| Error::internal(format!("container {}: OCI spec is not an object", c.id)))?
        .entry("linux")
        .or_insert_with(|| Value::Object(Map::new()));
    match linux_obj.as_object_mut() {
        Some(l) => {
            l.insert("resources".into(), merged.clone());
        }
        None => {
            return Err(Error::internal(format!(
                "container {}: OCI spec's linux is not an object",
                c.id
            )))
        }
    }
    stored_spec::put(&rt.ctrd, ctr.clone(), &spec).await?;

    if c.state().phase == Phase::Running {
        let value = serde_json::to_vec(&merged)
            .map_err(|e| Error::internal(format!("encode resources: {e}")))?;
        let res = rt
            .ctrd
            .tasks()
            .update(rt.ctrd.req(UpdateTaskRequest {
                container_id: c.id.clone(),
                resources: Some(prost_types::Any {
                    type_url: type_url::LINUX_RESOURCES.to_string(),
                    value,
                }),
                annotations: req.annotations,
            }))
            .await;
        match res {
            Ok(_) => {}
            // The task exited meanwhile: the stored spec is all there is to update.
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => {
                if let Err(e) = stored_spec::put(&rt.ctrd, ctr, &old_spec).await {
                    tracing::error!(container = %c.id, error = %e,
                        "restoring the stored spec after a failed resource update failed");
                }
                let e = ctrd(format!("update resources of container {}", c.id))(s);
                // runc rejecting a value (below current usage, out of range) is the caller's
                // doing, not an internal failure.
                return Err(match &e {
                    Error::Containerd { status, .. }
                        if matches!(
                            status.code(),
                            tonic::Code::Unknown | tonic::Code::InvalidArgument
                        ) && !status.message().contains("transport") =>
                    {
                        Error::invalid(e.to_string())
                    }
                    _ => e,
                });
            }
        }
    }
    c.record_resources_update(&requested_cri)?;
    tracing::info!(container = %c.id, "container resources updated");
    Ok(())
}

/// Rejects values runc would misread rather than refuse.
fn validate(r: &cri::LinuxContainerResources) -> Result<()> {
    if r.memory_limit_in_bytes < 0 {
        return Err(Error::invalid(format!(
            "memory_limit_in_bytes {} must not be negative",
            r.memory_limit_in_bytes
        )));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(Error::invalid(format!(
            "memory_swap_limit_in_bytes {} must be -1 (unlimited) or more",
            r.memory_swap_limit_in_bytes
        )));
    }
    if r.cpu_quota < -1 {
        return Err(Error::invalid(format!(
            "cpu_quota {} must be -1 (unlimited) or more",
            r.cpu_quota
        )));
    }
    Ok(())
}

/// The resources after an update: sections in [`MERGED`] take the request's fields over the
/// current ones; the device rules stay as created (CRI cannot change them); anything else the
/// request sets replaces the current value.
pub fn merge_resources(current: &Value, requested: &Value) -> Value {
    let mut out = current.as_object().cloned().unwrap_or_default();
    let Some(req) = requested.as_object() else {
        return Value::Object(out);
    };
    for (k, v) in req {
        if k == "devices" || v.is_null() {
            continue;
        }
        match (MERGED.contains(&k.as_str()), out.get_mut(k), v.as_object()) {
            (true, Some(Value::Object(cur)), Some(new)) => {
                for (f, fv) in new {
                    cur.insert(f.clone(), fv.clone());
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::resources::linux_resources;
    use crate::spec::CgroupHost;
    use serde_json::json;

    #[test]
    fn merge_keeps_unset_fields_and_devices() {
        let current = json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "memory": {"limit": 134217728, "swap": 134217728},
        });
        let requested = json!({
            "devices": [],
            "cpu": {"quota": 20000},
            "memory": {"limit": 67108864},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        });
        let m = merge_resources(&current, &requested);
        assert_eq!(m["devices"], current["devices"]);
        assert_eq!(
            m["cpu"],
            json!({"shares": 512, "quota": 20000, "period": 100000})
        );
        assert_eq!(m["memory"], json!({"limit": 67108864, "swap": 134217728}));
        assert_eq!(m["hugepageLimits"], requested["hugepageLimits"]);
    }

    #[test]
    fn merge_into_nothing() {
        let m = merge_resources(&Value::Null, &json!({"memory": {"limit": 1}}));
        assert_eq!(m, json!({"memory": {"limit": 1}}));
    }

    #[test]
    fn requested_resources_from_cri_merge_as_expected() {
        let r = cri::LinuxContainerResources {
            cpu_quota: 30000,
            cpu_period: 100000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        let host = CgroupHost {
            v2: false,
            swap: false,
        };
        let v = serde_json::to_value(linux_resources(Some(&r), host, Vec::new()).unwrap()).unwrap();
        let m = merge_resources(&json!({"cpu": {"shares": 2}}), &v);
        assert_eq!(m.pointer("/cpu/quota"), Some(&json!(30000)));
        assert_eq!(m.pointer("/cpu/shares"), Some(&json!(2)));
        assert_eq!(m.pointer("/memory/limit"), Some(&json!(64 << 20)));
    }

    #[test]
    fn negative_values_are_invalid() {
        for r in [
            cri::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            },
            cri::LinuxContainerResources {
                cpu_quota: -2,
                ..Default::default()
            },
        ] {
            assert!(matches!(validate(&r), Err(Error::InvalidArgument(_))));
        }
        assert!(validate(&cri::LinuxContainerResources {
            cpu_quota: -1,
            ..Default::default()
        })
        .is_ok());
    }
}
