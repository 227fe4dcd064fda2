//! peapod: a Kubernetes CRI v1 runtime on containerd's native API.
//!
//! The gRPC layer (`server`) only validates and translates; the domain modules hold the logic.

pub mod cgroup;
pub mod config;
pub mod container;
pub mod containerd;
pub mod containerd_caps;
pub mod error;
pub mod id;
pub mod image;
pub mod keys;
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

/// The CRI v1 API generated from `proto/api.proto`.
pub mod cri {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("runtime.v1");
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
