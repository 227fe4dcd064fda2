//! Fuzzing the CRI surface end to end (issue 12): every RPC of RuntimeService and
//! ImageService called with randomised and malformed fields (empty, huge, path tricks,
//! negative and overflowing numbers, unknown enum values, duplicate names, ids of the wrong
//! kind, prefixes), plus raw protobuf bytes (garbage, deeply nested, oversized) sent to
//! every method, against a running peapod on a real containerd. A fixed seed makes a run
//! repeatable (PEAPOD_FUZZ_SEED, PEAPOD_FUZZ_CASES change them).
//!
//! Every answer must be a gRPC status or a success, peapod must never panic or stop serving,
//! and once the test has removed what it made through the CRI, nothing is left behind.
//!
//! Random values stay inside the rig where they could touch the host: cgroup parents under
//! the rig's own, log directories under the rig's, no real host ports (only 0 and invalid
//! ones), registries all pointed at a closed port on 127.0.0.1 by a `_default` hosts.toml.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut};
use common::inventory::tail;
use common::{Rig, BUSYBOX, PAUSE};
use peapod::cri::image_service_client::ImageServiceClient;
use peapod::cri::runtime_service_client::RuntimeServiceClient;
use peapod::cri::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const DEFAULT_SEED: u64 = 0x5eed_cafe_0012;
const DEFAULT_CASES: usize = 2500;
const RAW_CASES: usize = 500;
/// Each call's gRPC deadline; peapod answers DEADLINE_EXCEEDED itself when it passes.
const CALL_DEADLINE: Duration = Duration::from_secs(15);

const RUNTIME_METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
];
const IMAGE_METHODS: &[&str] = &[
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// Passes bytes through unchanged: raw protobuf to any method.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

/// Outcomes per RPC: "OK" or the status code's name.
#[derive(Default)]
struct Tally {
    by_rpc: BTreeMap<String, BTreeMap<String, usize>>,
    cases: usize,
}

impl Tally {
    fn note(&mut self, rpc: &str, outcome: &str) {
        self.cases += 1;
        *self
            .by_rpc
            .entry(rpc.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }
    fn total(&self, outcome: &str) -> usize {
        self.by_rpc
            .values()
            .map(|m| m.get(outcome).copied().unwrap_or(0))
            .sum()
    }
}

struct Fuzz<'a> {
    rng: StdRng,
    rig: &'a Rig,
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    /// Ids seen: the live pod and container, and whatever random calls created.
    sandboxes: Vec<String>,
    containers: Vec<String>,
    volume: String,
    tally: Tally,
}

impl Fuzz<'_> {
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.rng.gen_range(0..xs.len())].clone()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    /// A string from the palette of troublemakers, or a random short one.
    fn s(&mut self) -> String {
        match self.rng.gen_range(0..14) {
            0 => String::new(),
            1 => "..".into(),
            2 => "../../etc/passwd".into(),
            3 => "/etc/passwd".into(),
            4 => "x".repeat(300),
            5 => "y".repeat(70_000),
            6 => "nul\0byte".into(),
            7 => "名前-ünïcödé".into(),
            8 => " leading and trailing ".into(),
            9 => "a/b/c".into(),
            10 => format!("sha256:{}", "0".repeat(64)),
            11 => "-".into(),
            _ => {
                let n = self.rng.gen_range(1..12);
                (0..n)
                    .map(|_| self.rng.gen_range(b'a'..=b'z') as char)
                    .collect()
            }
        }
    }

    fn i64(&mut self) -> i64 {
        match self.rng.gen_range(0..9) {
            0 => 0,
            1 => -1,
            2 => i64::MIN,
            3 => i64::MAX,
            4 => i32::MAX as i64 + 1,
            5 => 1,
            6 => 1 << 40,
            _ => self.rng.gen_range(-1000..100_000),
        }
    }

    fn i32(&mut self) -> i32 {
        match self.rng.gen_range(0..6) {
            0 => i32::MIN,
            1 => i32::MAX,
            2 => -1,
            _ => self.rng.gen_range(-3..8),
        }
    }

    fn map(&mut self) -> std::collections::HashMap<String, String> {
        let n = self.pick(&[0usize, 1, 3, 200]);
        (0..n)
            .map(|i| (format!("{}{i}", self.s()), self.s()))
            .collect()
    }

    /// An id: the live ones, prefixes of them, ids of the wrong kind, garbage.
    fn id(&mut self, containers: bool) -> String {
        let own = if containers {
            self.containers.clone()
        } else {
            self.sandboxes.clone()
        };
        let other = if containers {
            self.sandboxes.clone()
        } else {
            self.containers.clone()
        };
        match self.rng.gen_range(0..8) {
            0 | 1 if !own.is_empty() => self.pick(&own),
            2 if !own.is_empty() => {
                let id = self.pick(&own);
                let n = self.rng.gen_range(1..id.len());
                id[..n].to_string()
            }
            3 if !other.is_empty() => self.pick(&other),
            4 => hex::encode(self.rng.gen::<[u8; 32]>()),
            5 => String::new(),
            _ => self.s(),
        }
    }

    fn pod_config(&mut self) -> PodSandboxConfig {
        let name = format!("fz{}", self.rng.gen_range(0..6)); // duplicates on purpose
        let mut c = self.rig.pod_config(&name);
        let edits = self.rng.gen_range(0..5);
        for _ in 0..edits {
            match self.rng.gen_range(0..14) {
                0 => c.metadata = None,
                1 => {
                    let s = self.s();
                    if let Some(m) = c.metadata.as_mut() {
                        m.name = s;
                    }
                }
                2 => {
                    let s = self.s();
                    let a = self.i32();
                    if let Some(m) = c.metadata.as_mut() {
                        m.namespace = s;
                        m.attempt = a as u32;
                    }
                }
                3 => c.hostname = self.s(),
                4 => {
                    c.log_directory = match self.rng.gen_range(0..4) {
                        0 => String::new(),
                        1 => "relative/logs".into(),
                        2 => format!("{}/../../../etc", self.rig.log_dir.display()),
                        _ => format!("{}/{}", self.rig.log_dir.display(), name),
                    }
                }
                5 => {
                    let servers = vec![self.s(), "10.96.0.10".into()];
                    let n = self.pick(&[0usize, 1, 7, 100]);
                    let searches = (0..n).map(|_| self.s()).collect();
                    c.dns_config = Some(DnsConfig {
                        servers,
                        searches,
                        options: vec![self.s()],
                    })
                }
                6 => {
                    // Never a real host port: only 0 (ignored) and invalid numbers.
                    let host_port = self.pick(&[0, -1, 70_000, i32::MAX, i32::MIN]);
                    let container_port = self.i32();
                    let protocol = self.i32();
                    let host_ip = self.pick(&[String::new(), "bogus".into(), "::1".into()]);
                    c.port_mappings = vec![PortMapping {
                        protocol,
                        container_port,
                        host_port,
                        host_ip,
                    }];
                }
                7 => c.labels = self.map(),
                8 => c.annotations = self.map(),
                9 => {
                    let parent = self.rig.cgroup_parent.clone();
                    let sub = self.pick(&[String::new(), "/sub".into()]);
                    let l = c.linux.get_or_insert_with(Default::default);
                    l.cgroup_parent = format!("{parent}{sub}");
                }
                10 => {
                    let network = self.i32();
                    let pid = self.i32();
                    let ipc = self.i32();
                    let privileged = self.chance(0.3);
                    let run_as_user = self.chance(0.3).then_some(Int64Value { value: 0 });
                    let l = c.linux.get_or_insert_with(Default::default);
                    l.security_context = Some(LinuxSandboxSecurityContext {
                        namespace_options: Some(NamespaceOption {
                            network,
                            pid,
                            ipc,
                            ..Default::default()
                        }),
                        privileged,
                        run_as_user,
                        ..Default::default()
                    });
                }
                11 => {
                    let k = self.pick(&[
                        "kernel.shm_rmid_forced".to_string(),
                        "net.core.somaxconn".into(),
                        "bogus.key".into(),
                        String::new(),
                    ]);
                    let v = self.s();
                    let l = c.linux.get_or_insert_with(Default::default);
                    l.sysctls = [(k, v)].into();
                }
                12 => {
                    let r = self.resources();
                    let l = c.linux.get_or_insert_with(Default::default);
                    l.resources = Some(r.clone());
                    l.overhead = Some(r);
                }
                _ => c.linux = None,
            }
        }
        // Sysctls never reach the host's own network namespace.
        let host_net = c
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == NamespaceMode::Node as i32);
        if host_net {
            if let Some(l) = c.linux.as_mut() {
                l.sysctls.clear();
            }
        }
        if let Some(l) = c.linux.as_mut() {
            if !l.cgroup_parent.starts_with(&self.rig.cgroup_parent) {
                l.cgroup_parent = self.rig.cgroup_parent.clone();
            }
        }
        c
    }

    fn resources(&mut self) -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: self.i64(),
            cpu_quota: self.i64(),
            cpu_shares: self.i64(),
            memory_limit_in_bytes: self.pick(&[0, 1, 4096, 64 << 20, i64::MAX, -1]),
            oom_score_adj: self.pick(&[0, 1000, -1000, -5, i64::MAX, i64::MIN]),
            cpuset_cpus: self.pick(&[
                String::new(),
                "0".into(),
                "0-1".into(),
                "99".into(),
                "x".into(),
            ]),
            cpuset_mems: self.pick(&[String::new(), "0".into(), "9".into()]),
            hugepage_limits: if self.chance(0.2) {
                vec![HugepageLimit {
                    page_size: self.pick(&["2MB".to_string(), "1GB".into(), "bogus".into()]),
                    limit: self.rng.gen(),
                }]
            } else {
                vec![]
            },
            unified: if self.chance(0.2) {
                self.map()
            } else {
                Default::default()
            },
            memory_swap_limit_in_bytes: self.i64(),
        }
    }

    fn container_config(&mut self) -> ContainerConfig {
        let name = format!("c{}", self.rng.gen_range(0..6));
        let mut c = common::cri::config(&name, "true");
        let edits = self.rng.gen_range(0..5);
        for _ in 0..edits {
            match self.rng.gen_range(0..14) {
                0 => c.metadata = None,
                1 => {
                    let s = self.s();
                    if let Some(m) = c.metadata.as_mut() {
                        m.name = s;
                    }
                }
                2 => {
                    let image = match self.rng.gen_range(0..4) {
                        0 => PAUSE.to_string(),
                        1 => String::new(),
                        _ => self.s(),
                    };
                    c.image = Some(ImageSpec {
                        image,
                        ..Default::default()
                    })
                }
                3 => {
                    c.command = match self.rng.gen_range(0..5) {
                        0 => vec![],
                        1 => vec!["/nonexistent".into()],
                        2 => vec!["sh".into(), "-c".into(), "exit 3".into()],
                        3 => vec![self.s()],
                        _ => vec!["true".into()],
                    };
                    c.args = if self.chance(0.3) {
                        vec![self.s()]
                    } else {
                        vec![]
                    };
                }
                4 => c.working_dir = self.s(),
                5 => {
                    let n = self.pick(&[1usize, 50]);
                    c.envs = (0..n)
                        .map(|_| KeyValue {
                            key: self.s(),
                            value: self.s(),
                        })
                        .collect();
                }
                6 => {
                    let host_path = self.pick(&[
                        self.volume.clone(),
                        "/nonexistent-peapod-fuzz".into(),
                        "relative".into(),
                        String::new(),
                        "/dev/null".into(),
                    ]);
                    let container_path = self.pick(&[
                        "/data".to_string(),
                        String::new(),
                        "relative".into(),
                        "/../../etc".into(),
                    ]);
                    let propagation = self.i32();
                    let readonly = self.chance(0.5);
                    c.mounts = vec![Mount {
                        container_path,
                        host_path,
                        readonly,
                        propagation,
                        ..Default::default()
                    }];
                }
                7 => {
                    c.devices = vec![Device {
                        container_path: self.pick(&[
                            "/dev/x".to_string(),
                            String::new(),
                            "rel".into(),
                        ]),
                        host_path: self.pick(&[
                            "/dev/null".to_string(),
                            "/dev/nonexistent".into(),
                            String::new(),
                        ]),
                        permissions: self.pick(&["rwm".to_string(), String::new(), "xyz".into()]),
                    }]
                }
                8 => c.labels = self.map(),
                9 => c.annotations = self.map(),
                10 => {
                    c.log_path = self.pick(&[
                        "x.log".to_string(),
                        "../x.log".into(),
                        "/abs.log".into(),
                        String::new(),
                        "a/b/c.log".into(),
                    ])
                }
                11 => {
                    let ns = NamespaceOption {
                        network: self.i32(),
                        pid: self.i32(),
                        ipc: self.i32(),
                        target_id: self.id(true),
                        ..Default::default()
                    };
                    let caps = self.pick(&[
                        "ALL".to_string(),
                        "NET_ADMIN".into(),
                        "BOGUS".into(),
                        String::new(),
                    ]);
                    let sc = LinuxContainerSecurityContext {
                        privileged: self.chance(0.3),
                        namespace_options: Some(ns),
                        run_as_user: self.chance(0.5).then(|| Int64Value { value: self.i64() }),
                        run_as_group: self.chance(0.3).then(|| Int64Value { value: self.i64() }),
                        run_as_username: if self.chance(0.3) {
                            self.s()
                        } else {
                            String::new()
                        },
                        supplemental_groups: vec![self.i64()],
                        readonly_rootfs: self.chance(0.3),
                        capabilities: Some(Capability {
                            add_capabilities: vec![caps.clone()],
                            drop_capabilities: vec![caps],
                            ..Default::default()
                        }),
                        masked_paths: vec![self.s()],
                        readonly_paths: vec![self.s()],
                        seccomp: Some(SecurityProfile {
                            profile_type: self.i32(),
                            localhost_ref: self.pick(&[
                                String::new(),
                                "/dev/zero".into(),
                                "/nonexistent.json".into(),
                                "../x".into(),
                            ]),
                        }),
                        apparmor: Some(SecurityProfile {
                            profile_type: self.i32(),
                            localhost_ref: self.s(),
                        }),
                        supplemental_groups_policy: self.i32(),
                        ..Default::default()
                    };
                    let l = c.linux.get_or_insert_with(Default::default);
                    l.security_context = Some(sc);
                }
                12 => {
                    let r = self.resources();
                    c.linux.get_or_insert_with(Default::default).resources = Some(r);
                }
                _ => {
                    c.stop_signal = self.i32();
                    c.tty = self.chance(0.5);
                    c.stdin = self.chance(0.5);
                }
            }
        }
        c
    }

    fn sandbox_filter(&mut self) -> Option<PodSandboxFilter> {
        self.chance(0.7).then(|| PodSandboxFilter {
            id: self.id(false),
            state: self
                .chance(0.5)
                .then(|| PodSandboxStateValue { state: self.i32() }),
            label_selector: self.map(),
        })
    }

    /// One random RPC; its name and outcome.
    async fn one(&mut self) -> (&'static str, Result<(), tonic::Status>) {
        macro_rules! call {
            ($client:ident . $m:ident ( $req:expr )) => {{
                let mut r = tonic::Request::new($req);
                r.set_timeout(CALL_DEADLINE);
                self.$client.$m(r).await.map(|x| x.into_inner())
            }};
        }
        let which = self.rng.gen_range(0..34);
        match which {
            0 => (
                "Version",
                call!(rt.version(VersionRequest { version: self.s() })).map(drop),
            ),
            1 | 2 => {
                let config = self.chance(0.95).then(|| self.pod_config());
                let runtime_handler = if self.chance(0.1) {
                    self.s()
                } else {
                    String::new()
                };
                let r = call!(rt.run_pod_sandbox(RunPodSandboxRequest {
                    config,
                    runtime_handler
                }));
                if let Ok(r) = &r {
                    self.sandboxes.push(r.pod_sandbox_id.clone());
                }
                ("RunPodSandbox", r.map(drop))
            }
            3 => {
                let id = self.id(false);
                (
                    "StopPodSandbox",
                    call!(rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id }))
                        .map(drop),
                )
            }
            4 => {
                let id = self.id(false);
                (
                    "RemovePodSandbox",
                    call!(rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }))
                        .map(drop),
                )
            }
            5 => {
                let id = self.id(false);
                let verbose = self.chance(0.5);
                (
                    "PodSandboxStatus",
                    call!(rt.pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: id,
                        verbose
                    }))
                    .map(drop),
                )
            }
            6 => {
                let filter = self.sandbox_filter();
                (
                    "ListPodSandbox",
                    call!(rt.list_pod_sandbox(ListPodSandboxRequest { filter })).map(drop),
                )
            }
            7 | 8 => {
                let pod_sandbox_id = self.id(false);
                let config = self.chance(0.95).then(|| self.container_config());
                let sandbox_config = self.chance(0.8).then(|| self.pod_config());
                let r = call!(rt.create_container(CreateContainerRequest {
                    pod_sandbox_id,
                    config,
                    sandbox_config
                }));
                if let Ok(r) = &r {
                    self.containers.push(r.container_id.clone());
                }
                ("CreateContainer", r.map(drop))
            }
            9 => {
                let id = self.id(true);
                (
                    "StartContainer",
                    call!(rt.start_container(StartContainerRequest { container_id: id })).map(drop),
                )
            }
            10 => {
                let id = self.id(true);
                let timeout = self.pick(&[0, 1, -1, i64::MIN, i64::MAX]);
                (
                    "StopContainer",
                    call!(rt.stop_container(StopContainerRequest {
                        container_id: id,
                        timeout
                    }))
                    .map(drop),
                )
            }
            11 => {
                let id = self.id(true);
                (
                    "RemoveContainer",
                    call!(rt.remove_container(RemoveContainerRequest { container_id: id }))
                        .map(drop),
                )
            }
            12 => {
                let filter = self.chance(0.7).then(|| ContainerFilter {
                    id: self.id(true),
                    state: self
                        .chance(0.5)
                        .then(|| ContainerStateValue { state: self.i32() }),
                    pod_sandbox_id: self.id(false),
                    label_selector: self.map(),
                });
                (
                    "ListContainers",
                    call!(rt.list_containers(ListContainersRequest { filter })).map(drop),
                )
            }
            13 => {
                let id = self.id(true);
                let verbose = self.chance(0.5);
                (
                    "ContainerStatus",
                    call!(rt.container_status(ContainerStatusRequest {
                        container_id: id,
                        verbose
                    }))
                    .map(drop),
                )
            }
            14 => {
                let id = self.id(true);
                let linux = self.chance(0.9).then(|| self.resources());
                let annotations = self.map();
                (
                    "UpdateContainerResources",
                    call!(
                        rt.update_container_resources(UpdateContainerResourcesRequest {
                            container_id: id,
                            linux,
                            windows: None,
                            annotations,
                        })
                    )
                    .map(drop),
                )
            }
            15 => {
                let id = self.id(true);
                (
                    "ReopenContainerLog",
                    call!(rt.reopen_container_log(ReopenContainerLogRequest { container_id: id }))
                        .map(drop),
                )
            }
            16 | 17 => {
                let id = self.id(true);
                let cmd = match self.rng.gen_range(0..5) {
                    0 => vec![],
                    1 => vec!["true".into()],
                    2 => vec![
                        "sh".into(),
                        "-c".into(),
                        "echo out; echo err >&2; exit 4".into(),
                    ],
                    3 => vec!["/nonexistent".into()],
                    _ => vec![self.s()],
                };
                let timeout = self.pick(&[0, 1, 5, -1, i64::MIN, i64::MAX]);
                (
                    "ExecSync",
                    call!(rt.exec_sync(ExecSyncRequest {
                        container_id: id,
                        cmd,
                        timeout
                    }))
                    .map(drop),
                )
            }
            18 => {
                let id = self.id(true);
                let req = ExecRequest {
                    container_id: id,
                    cmd: vec![self.s()],
                    tty: self.chance(0.5),
                    stdin: self.chance(0.5),
                    stdout: self.chance(0.5),
                    stderr: self.chance(0.5),
                };
                ("Exec", call!(rt.exec(req)).map(drop))
            }
            19 => {
                let id = self.id(true);
                let req = AttachRequest {
                    container_id: id,
                    stdin: self.chance(0.5),
                    tty: self.chance(0.5),
                    stdout: self.chance(0.5),
                    stderr: self.chance(0.5),
                };
                ("Attach", call!(rt.attach(req)).map(drop))
            }
            20 => {
                let id = self.id(false);
                let port = vec![self.i32(), 0, 65536];
                (
                    "PortForward",
                    call!(rt.port_forward(PortForwardRequest {
                        pod_sandbox_id: id,
                        port
                    }))
                    .map(drop),
                )
            }
            21 => {
                let id = self.id(true);
                (
                    "ContainerStats",
                    call!(rt.container_stats(ContainerStatsRequest { container_id: id })).map(drop),
                )
            }
            22 => {
                let filter = self.chance(0.7).then(|| ContainerStatsFilter {
                    id: self.id(true),
                    pod_sandbox_id: self.id(false),
                    label_selector: self.map(),
                });
                (
                    "ListContainerStats",
                    call!(rt.list_container_stats(ListContainerStatsRequest { filter })).map(drop),
                )
            }
            23 => {
                let id = self.id(false);
                (
                    "PodSandboxStats",
                    call!(rt.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: id }))
                        .map(drop),
                )
            }
            24 => {
                let filter = self.chance(0.7).then(|| PodSandboxStatsFilter {
                    id: self.id(false),
                    label_selector: self.map(),
                });
                (
                    "ListPodSandboxStats",
                    call!(rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter }))
                        .map(drop),
                )
            }
            25 => {
                let cidr = self.pick(&["10.244.0.0/24".to_string(), "bogus".into(), String::new()]);
                let req = UpdateRuntimeConfigRequest {
                    runtime_config: self.chance(0.8).then_some(RuntimeConfig {
                        network_config: Some(NetworkConfig { pod_cidr: cidr }),
                    }),
                };
                (
                    "UpdateRuntimeConfig",
                    call!(rt.update_runtime_config(req)).map(drop),
                )
            }
            26 => {
                let verbose = self.chance(0.5);
                (
                    "Status",
                    call!(rt.status(StatusRequest { verbose })).map(drop),
                )
            }
            27 => {
                let id = self.id(true);
                let req = CheckpointContainerRequest {
                    container_id: id,
                    location: self.s(),
                    timeout: self.i64(),
                };
                (
                    "CheckpointContainer",
                    call!(rt.checkpoint_container(req)).map(drop),
                )
            }
            28 => {
                // A stream: opened, then dropped without reading.
                let r = call!(rt.get_container_events(GetEventsRequest {}));
                ("GetContainerEvents", r.map(drop))
            }
            29 => {
                let r = call!(rt.list_metric_descriptors(ListMetricDescriptorsRequest {}));
                let r2 = call!(rt.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {}));
                ("ListMetricDescriptors", r.map(drop).and(r2.map(drop)))
            }
            30 => (
                "RuntimeConfig",
                call!(rt.runtime_config(RuntimeConfigRequest {})).map(drop),
            ),
            31 => {
                let image = self.s();
                let filter = self.chance(0.5).then(|| ImageFilter {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                });
                let r = call!(img.list_images(ListImagesRequest { filter }));
                let r2 = call!(img.image_status(ImageStatusRequest {
                    image: self.chance(0.9).then(|| ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    verbose: self.chance(0.5),
                }));
                ("ImageStatus", r.map(drop).and(r2.map(drop)))
            }
            32 => {
                let random = self.s();
                let image = self.pick(&[
                    random,
                    "docker.io/library/busybox:1".into(),
                    "../x/y:1".into(),
                    "localhost:1/x:1".into(),
                ]);
                let auth = self.chance(0.5).then(|| AuthConfig {
                    username: self.s(),
                    password: self.s(),
                    auth: self.s(),
                    server_address: self.s(),
                    identity_token: self.s(),
                    registry_token: self.s(),
                });
                let req = PullImageRequest {
                    image: Some(ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    auth,
                    sandbox_config: self.chance(0.3).then(|| self.pod_config()),
                };
                ("PullImage", call!(img.pull_image(req)).map(drop))
            }
            _ => {
                // Never the rig's own images: the rest of the run needs them.
                let image = self.s();
                let r = if image == BUSYBOX || image == PAUSE {
                    Ok(())
                } else {
                    call!(img.remove_image(RemoveImageRequest {
                        image: Some(ImageSpec {
                            image,
                            ..Default::default()
                        }),
                    }))
                    .map(drop)
                };
                let r2 = call!(img.image_fs_info(ImageFsInfoRequest {}));
                ("RemoveImage", r.and(r2.map(drop)))
            }
        }
    }

    /// Random bytes (or a crafted pathological message) to a random method.
    async fn raw(&mut self, channel: &Channel) -> (String, Result<(), tonic::Status>) {
        let (service, method) = if self.chance(0.85) {
            ("runtime.v1.RuntimeService", self.pick(RUNTIME_METHODS))
        } else {
            ("runtime.v1.ImageService", self.pick(IMAGE_METHODS))
        };
        let body: Vec<u8> = match self.rng.gen_range(0..5) {
            0 => (0..self.rng.gen_range(0..64))
                .map(|_| self.rng.gen())
                .collect(),
            1 => {
                // Field 1, length-delimited, nested 5000 deep.
                let mut b: Vec<u8> = Vec::new();
                for _ in 0..5000 {
                    let mut outer = vec![0x0a];
                    let mut len = b.len();
                    loop {
                        let byte = (len & 0x7f) as u8;
                        len >>= 7;
                        if len == 0 {
                            outer.push(byte);
                            break;
                        }
                        outer.push(byte | 0x80);
                    }
                    outer.extend_from_slice(&b);
                    b = outer;
                }
                b
            }
            2 => vec![0xff; 8 << 20], // larger than a gRPC message may be
            3 => vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // a length far past the end
            _ => vec![],
        };
        let path: http::uri::PathAndQuery = format!("/{service}/{method}").parse().unwrap();
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let r = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
            let mut req = tonic::Request::new(body);
            req.set_timeout(CALL_DEADLINE);
            if method == "GetContainerEvents" {
                grpc.server_streaming(req, path, RawCodec).await.map(drop)
            } else {
                grpc.unary(req, path, RawCodec).await.map(drop)
            }
        }
        .await;
        (format!("raw {method}"), r)
    }
}

/// A status that came from the transport rather than from peapod: a handler that panicked
/// or a server that went away.
fn from_transport(s: &tonic::Status) -> bool {
    let m = s.message();
    m.contains("transport error")
        || m.contains("h2 protocol error")
        || m.contains("broken pipe")
        || m.contains("connection reset")
        || m.contains("error trying to connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_get_statuses_and_leave_nothing_behind() {
    if !common::require_root() {
        return;
    }
    let seed = std::env::var("PEAPOD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let cases = std::env::var("PEAPOD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut rig = Rig::prepare(false);
    // Every registry resolves to a closed port on 127.0.0.1: no pull leaves the machine.
    let certs = rig.dir.path().join("certs.d").join("_default");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(
        certs.join("hosts.toml"),
        "server = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    rig.start_containerd();
    rig.import_test_images();
    rig.start_peapod().await;
    let volume = rig.dir.path().join("fuzz-volume");
    std::fs::create_dir_all(&volume).unwrap();
    let before = rig.inventory();
    let channel = rig.channel().await;

    // One live pod and container, so ids of real objects are in the mix.
    let mut rt = rig.runtime_client().await;
    let live = common::cri::pod(&rig, &mut rt, "fuzz-live").await;
    let live_ctr = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: live.id.clone(),
            config: Some(common::cri::config(
                "live",
                "trap 'exit 0' TERM; while :; do sleep 1; done",
            )),
            sandbox_config: Some(live.config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: live_ctr.clone(),
    })
    .await
    .unwrap();

    let mut f = Fuzz {
        rng: StdRng::seed_from_u64(seed),
        rig: &rig,
        rt: RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        img: ImageServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        sandboxes: vec![live.id.clone()],
        containers: vec![live_ctr.clone()],
        volume: volume.display().to_string(),
        tally: Tally::default(),
    };
    let start = std::time::Instant::now();
    for i in 0..cases + RAW_CASES {
        let (rpc, r) = if i < cases {
            let (rpc, r) = f.one().await;
            (rpc.to_string(), r)
        } else {
            f.raw(&channel).await
        };
        let outcome = match &r {
            Ok(()) => "OK".to_string(),
            Err(s) => {
                assert!(
                    !from_transport(s),
                    "case {i} ({rpc}, seed {seed}): not a status from peapod: {s:?}\n{}",
                    tail(&rig.peapod_log(), 40)
                );
                format!("{:?}", s.code())
            }
        };
        f.tally.note(&rpc, &outcome);
        if i % 200 == 0 {
            let mut probe = rig.runtime_client().await;
            probe
                .version(VersionRequest::default())
                .await
                .unwrap_or_else(|e| panic!("case {i}: peapod stopped serving: {e}"));
        }
    }
    let took = start.elapsed();
    let log = rig.peapod_log();
    assert!(
        !log.contains("panicked"),
        "peapod panicked:\n{}",
        tail(&log, 80)
    );
    assert!(rig.peapod_resources().is_some(), "peapod is gone");

    // Remove what the run made, through the CRI, then nothing may be left.
    let mut rt = rig.runtime_client().await;
    let ctrs = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    for c in ctrs {
        rt.remove_container(RemoveContainerRequest {
            container_id: c.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("remove container {}: {e}", c.id));
    }
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    let made_pods = pods.len();
    for p in pods {
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("stop pod {}: {e}", p.id));
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("remove pod {}: {e}", p.id));
    }
    rig.assert_no_leaks(&before, 30, "after the fuzz run").await;

    let mut report = String::new();
    for (rpc, outcomes) in &f.tally.by_rpc {
        let o: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        report.push_str(&format!("  {rpc}: {}\n", o.join(" ")));
    }
    eprintln!(
        "fuzz: seed {seed:#x}, {} cases ({cases} structured, {RAW_CASES} raw) in {:.0}s, {} OK, \
         {} pods alive at the end; no panic, no transport failure, nothing left\n{report}",
        f.tally.cases,
        took.as_secs_f64(),
        f.tally.total("OK"),
        made_pods,
    );
    // A deadline means a handler hung on some input: that is a defect too.
    assert_eq!(
        f.tally.total("DeadlineExceeded"),
        0,
        "calls hit the {CALL_DEADLINE:?} deadline:\n{report}"
    );
}
