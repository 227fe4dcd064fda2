//! peapod: a Kubernetes CRI v1 runtime on containerd's native API.
//!
//! The gRPC layer (`server`) only validates and translates; the domain modules hold the logic.

pub mod cgroup;
pub mod check;
pub mod config;
pub mod container;
pub mod containerd;
pub mod containerd_caps;
pub mod error;
pub mod id;
pub mod image;
pub mod keys;
pub mod metrics;
pub mod network;
pub mod pod;
pub mod runtime;
pub mod safe_fs;
pub mod sandbox;
pub mod server;
pub mod signal;
pub mod spec;
pub mod stdio;
pub mod store;
pub mod streaming;
pub mod task;
pub mod uds;

/// The CRI v1 API generated from `proto/api.proto`.
pub mod cri {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("runtime.v1");
}

/// CRI messages as JSON the way containerd's CRI plugin shows them in verbose status info:
/// Go's encoding/json over the generated types, whose `omitempty` tags leave out zero fields.
pub mod cri_json {
    use serde_json::Value;

    /// `v` as JSON, without the fields Go's `omitempty` would leave out (null, false, 0, "",
    /// empty lists and maps); list elements are kept as they are.
    pub fn omitempty<T: serde::Serialize>(v: &T) -> Value {
        let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
        prune(&mut v);
        v
    }

    fn is_zero(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
        }
    }

    fn prune(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.retain(|_, x| !is_zero(x));
                o.values_mut().for_each(prune);
            }
            Value::Array(a) => a.iter_mut().for_each(prune),
            _ => {}
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn zero_fields_are_left_out_as_go_does() {
            let c = crate::cri::ContainerConfig {
                metadata: Some(crate::cri::ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                }),
                command: vec!["httpd".into(), "".into()],
                ..Default::default()
            };
            assert_eq!(
                super::omitempty(&c),
                serde_json::json!({"metadata": {"name": "web"}, "command": ["httpd", ""]})
            );
        }
    }
}

/// Runtime name reported by `Version`.
pub const RUNTIME_NAME: &str = "peapod";
/// CRI API version peapod implements.
pub const CRI_VERSION: &str = "v1";

/// Evaluates `$e` and logs, at debug level, how long it took as step `$what`: the per-step
/// timings that show where a lifecycle RPC spends its time (`--log-level debug`).
#[macro_export]
macro_rules! timed {
    ($what:expr, $e:expr) => {{
        let __t = std::time::Instant::now();
        let __r = $e;
        tracing::debug!(
            step = $what,
            us = __t.elapsed().as_micros() as u64,
            "step done"
        );
        __r
    }};
}
