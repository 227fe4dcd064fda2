//! peapod's Prometheus metrics: one registry, the metric families, and the thin recording
//! functions every other module calls (one per concern: CRI calls, containerd calls, CNI,
//! image pulls, streaming sessions, object counts). Recording is a few atomic operations and
//! happens whether or not the endpoint is served; the HTTP endpoint itself lives in
//! `server::metrics`, and is off unless `--metrics-address` is set.
//!
//! The exposition format is the `prometheus-client` crate's (OpenMetrics text, which
//! Prometheus scrapes natively). Names follow Prometheus conventions: a `peapod_` prefix,
//! base units (seconds, bytes), `_total` on counters; gRPC labels are named and valued as
//! go-grpc-prometheus does (`grpc_service`, `grpc_method`, `grpc_code="NotFound"`), which is
//! what containerd's own gRPC metrics use, so one dashboard reads both.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tonic::Code;

/// Latency buckets for calls that take from a millisecond (List*) to minutes (a stop with a
/// grace period, a slow CNI plugin).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Image pulls run from a second (a local registry) to many minutes.
const PULL_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

fn pull_histogram() -> Histogram {
    Histogram::new(PULL_BUCKETS.iter().copied())
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Registry,
    cri_requests: Family<CodeLabels, Counter>,
    cri_duration: Histograms<CallLabels>,
    containerd_requests: Family<CodeLabels, Counter>,
    containerd_duration: Histograms<CallLabels>,
    cni_duration: Histograms<OpLabels>,
    cni_failures: Family<OpLabels, Counter>,
    pulls: Family<ResultLabels, Counter>,
    pull_bytes: Counter,
    pull_duration: Histograms<ResultLabels>,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    streams_active: Family<KindLabels, Gauge>,
    streams: Family<KindLabels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            cri_requests: Family::default(),
            cri_duration: Family::new_with_constructor(latency_histogram),
            containerd_requests: Family::default(),
            containerd_duration: Family::new_with_constructor(latency_histogram),
            cni_duration: Family::new_with_constructor(latency_histogram),
            cni_failures: Family::default(),
            pulls: Family::default(),
            pull_bytes: Counter::default(),
            pull_duration: Family::new_with_constructor(pull_histogram),
            pods: Family::default(),
            containers: Family::default(),
            streams_active: Family::default(),
            streams: Family::default(),
            registry: Registry::default(),
        };
        // Process metrics carry no prefix: `process_*` is the name every exporter uses.
        m.registry.register_collector(Box::new(ProcessCollector));
        let registry = m.registry.sub_registry_with_prefix("peapod");
        registry.register(
            "cri_requests",
            "CRI calls served, by service, method and gRPC status code",
            m.cri_requests.clone(),
        );
        registry.register_with_unit(
            "cri_request_duration",
            "Time to answer a CRI call, by service and method",
            Unit::Seconds,
            m.cri_duration.clone(),
        );
        registry.register(
            "containerd_requests",
            "Calls peapod made to containerd, by service, method and gRPC status code \
             (Unavailable when containerd could not be reached)",
            m.containerd_requests.clone(),
        );
        registry.register_with_unit(
            "containerd_request_duration",
            "Time containerd took to answer, by service and method (long waits such as \
             Tasks/Wait and Events/Subscribe included)",
            Unit::Seconds,
            m.containerd_duration.clone(),
        );
        registry.register_with_unit(
            "cni_operation_duration",
            "Time to run a CNI network's plugin list, by operation (ADD, DEL)",
            Unit::Seconds,
            m.cni_duration.clone(),
        );
        registry.register(
            "cni_operation_failures",
            "CNI operations that failed, by operation (ADD, DEL)",
            m.cni_failures.clone(),
        );
        registry.register(
            "image_pulls",
            "Image pulls that ran (concurrent requests for one image share one), by result",
            m.pulls.clone(),
        );
        registry.register_with_unit(
            "image_pull",
            "Bytes received from registries by image pulls",
            Unit::Bytes,
            m.pull_bytes.clone(),
        );
        registry.register_with_unit(
            "image_pull_duration",
            "Time an image pull took, by result",
            Unit::Seconds,
            m.pull_duration.clone(),
        );
        registry.register(
            "pod_sandboxes",
            "Pod sandboxes peapod manages, by state (ready, notready)",
            m.pods.clone(),
        );
        registry.register(
            "containers",
            "Containers peapod manages, by state (created, running, exited, unknown)",
            m.containers.clone(),
        );
        registry.register(
            "streaming_sessions_active",
            "Streaming sessions (exec, attach, portforward) open now, by kind",
            m.streams_active.clone(),
        );
        registry.register(
            "streaming_sessions",
            "Streaming sessions opened, by kind",
            m.streams.clone(),
        );
        m
    }
}

/// Splits a gRPC path `/runtime.v1.RuntimeService/RunPodSandbox` into service and method.
fn call_labels(path: &str) -> CallLabels {
    let p = path.trim_start_matches('/');
    let (service, method) = p.split_once('/').unwrap_or(("", p));
    CallLabels {
        grpc_service: service.to_string(),
        grpc_method: method.to_string(),
    }
}

fn with_code(l: &CallLabels, code: Code) -> CodeLabels {
    CodeLabels {
        grpc_service: l.grpc_service.clone(),
        grpc_method: l.grpc_method.clone(),
        grpc_code: crate::error::code_name(code).to_string(),
    }
}

/// The gRPC status of a response whose status came in its headers (an error answered
/// trailers-only, as tonic and grpc-go do); OK when there is none there.
pub fn header_code(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
        .unwrap_or(Code::Ok)
}

/// One CRI call answered (or abandoned: `Cancelled`), by its gRPC path.
pub fn cri_call(path: &str, code: Code, elapsed: Duration) {
    let m = &*METRICS;
    let l = call_labels(path);
    m.cri_requests.get_or_create(&with_code(&l, code)).inc();
    m.cri_duration
        .get_or_create(&l)
        .observe(elapsed.as_secs_f64());
}

/// One call to containerd, by its gRPC path.
pub fn containerd_call(path: &str, code: Code, elapsed: Duration) {
    let m = &*METRICS;
    let l = call_labels(path);
    m.containerd_requests
        .get_or_create(&with_code(&l, code))
        .inc();
    m.containerd_duration
        .get_or_create(&l)
        .observe(elapsed.as_secs_f64());
}

/// One CNI operation ("ADD" or "DEL") over a whole plugin list.
pub fn cni_operation(operation: &str, ok: bool, elapsed: Duration) {
    let m = &*METRICS;
    let l = OpLabels {
        operation: operation.to_string(),
    };
    m.cni_duration
        .get_or_create(&l)
        .observe(elapsed.as_secs_f64());
    if !ok {
        m.cni_failures.get_or_create(&l).inc();
    }
}

/// One image pull that ran, with the bytes it received from registries.
pub fn image_pull(ok: bool, bytes: u64, elapsed: Duration) {
    let m = &*METRICS;
    let l = ResultLabels {
        result: if ok { "success" } else { "failure" }.to_string(),
    };
    m.pulls.get_or_create(&l).inc();
    m.pull_bytes.inc_by(bytes);
    m.pull_duration
        .get_or_create(&l)
        .observe(elapsed.as_secs_f64());
}

/// Pod sandboxes and containers by state, as the index holds them at scrape time. Every
/// state is given (zeros too), so a state that empties reads 0 rather than its last value.
pub fn set_object_counts(pods: &[(&str, i64)], containers: &[(&str, i64)]) {
    let m = &*METRICS;
    for (family, counts) in [(&m.pods, pods), (&m.containers, containers)] {
        for (state, n) in counts {
            family
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(*n);
        }
    }
}

/// An open streaming session; dropping it closes it in the metrics.
pub struct StreamingSession(KindLabels);

/// A streaming session (`exec`, `attach`, `portforward`) opened; it counts as active until
/// the returned guard is dropped.
pub fn streaming_session(kind: &str) -> StreamingSession {
    let m = &*METRICS;
    let l = KindLabels {
        kind: kind.to_string(),
    };
    m.streams.get_or_create(&l).inc();
    m.streams_active.get_or_create(&l).inc();
    StreamingSession(l)
}

impl Drop for StreamingSession {
    fn drop(&mut self) {
        METRICS.streams_active.get_or_create(&self.0).dec();
    }
}

/// The whole exposition, in the OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry) {
        // Writing into a String cannot fail; a broken label encoder would.
        tracing::warn!(error = %e, "encode metrics");
    }
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process metrics every Prometheus client library exports (`process_*`), read from
/// /proc/self at scrape time, and the async runtime's live task count.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = ProcessStats::read();
        let mut gauge = |name: &str, help: &str, unit: Option<&Unit>, v: i64| {
            let g = ConstGauge::new(v);
            let e = encoder.encode_descriptor(name, help, unit, g.metric_type())?;
            g.encode(e)
        };
        if let Some(v) = p.rss_bytes {
            gauge(
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                v,
            )?;
        }
        if let Some(v) = p.vm_bytes {
            gauge(
                "process_virtual_memory",
                "Virtual memory size",
                Some(&Unit::Bytes),
                v,
            )?;
        }
        if let Some(v) = p.open_fds {
            gauge("process_open_fds", "Open file descriptors", None, v)?;
        }
        if let Some(v) = p.max_fds {
            gauge("process_max_fds", "Limit of open file descriptors", None, v)?;
        }
        if let Some(v) = p.threads {
            gauge("process_threads", "OS threads", None, v)?;
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            gauge(
                "peapod_runtime_tasks",
                "Live tasks of peapod's async runtime",
                None,
                h.metrics().num_alive_tasks() as i64,
            )?;
        }
        if let Some(v) = p.cpu_seconds {
            let c = ConstCounter::new(v);
            let e = encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?;
            c.encode(e)?;
        }
        if let Some(v) = p.start_time_seconds {
            let g = ConstGauge::new(v);
            let e = encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(&Unit::Seconds),
                g.metric_type(),
            )?;
            g.encode(e)?;
        }
        Ok(())
    }
}

/// What /proc says about this process; a field is None where the kernel did not say.
#[derive(Debug, Default)]
struct ProcessStats {
    rss_bytes: Option<i64>,
    vm_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    threads: Option<i64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    fn read() -> ProcessStats {
        let mut p = ProcessStats::default();
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kib = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<i64>().ok())
            };
            p.rss_bytes = kib("VmRSS:").map(|k| k * 1024);
            p.vm_bytes = kib("VmSize:").map(|k| k * 1024);
            p.threads = kib("Threads:");
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as i64);
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            p.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok());
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if let (Ok(stat), true) = (std::fs::read_to_string("/proc/self/stat"), ticks > 0) {
            // Fields after the command name, which is in parentheses and may hold spaces.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // rest[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
                let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
                if let (Some(u), Some(s)) = (field(14), field(15)) {
                    p.cpu_seconds = Some((u + s) / ticks as f64);
                }
                if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                    p.start_time_seconds = Some(boot + start / ticks as f64);
                }
            }
        }
        p
    }
}

/// The boot time (`btime` in /proc/stat), seconds since the epoch.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `name{labels}` in an exposition, if present.
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_cri_call_is_counted_by_code_and_timed() {
        let path = "/runtime.v1.RuntimeService/UnitTestOnlyCall";
        cri_call(path, Code::NotFound, Duration::from_millis(3));
        cri_call(path, Code::Ok, Duration::from_millis(700));
        let text = encode();
        let l = r#"grpc_service="runtime.v1.RuntimeService",grpc_method="UnitTestOnlyCall""#;
        assert_eq!(
            sample(
                &text,
                &format!(r#"peapod_cri_requests_total{{{l},grpc_code="NotFound"}}"#)
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"peapod_cri_request_duration_seconds_count{{{l}}}"#)
            ),
            Some(2.0)
        );
        // 3 ms falls in the 5 ms bucket, 700 ms only from the 1 s bucket on.
        let bucket = |le: &str| {
            sample(
                &text,
                &format!(r#"peapod_cri_request_duration_seconds_bucket{{le="{le}",{l}}}"#),
            )
        };
        assert_eq!(bucket("0.005"), Some(1.0), "{text}");
        assert_eq!(bucket("0.5"), Some(1.0));
        assert_eq!(bucket("1.0"), Some(2.0));
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let text = encode();
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
            "process_cpu_seconds_total",
        ] {
            let v = sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"));
            assert!(v > 0.0, "{name} = {v}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_streaming_session_is_active_until_dropped() {
        let active = || {
            sample(
                &encode(),
                r#"peapod_streaming_sessions_active{kind="unit-test"}"#,
            )
        };
        let s = streaming_session("unit-test");
        assert_eq!(active(), Some(1.0));
        drop(s);
        assert_eq!(active(), Some(0.0));
    }
}
