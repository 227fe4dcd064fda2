//! The real kubelet (v1.28.7, standalone: static pods, no API server) drives pods through
//! peapod over the rig's containerd, CNI bridge and local busybox images. One kubelet runs
//! every scenario's pod at once; each scenario asserts on what kubelet reports (its
//! read-only `/pods` endpoint) and on what peapod reports (CRI), never on timing.
//!
//! Exit codes of containers whose pod was removed come from peapod's container event stream
//! (kubelet deletes such containers as soon as it sees them exit); what a container saw
//! (TERM, the preStop hook) is written to a hostPath directory the test reads afterwards.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::cri::Client;
use common::kubelet::Kubelet;
use common::{Rig, BUSYBOX};
use peapod::cri::*;
use serde_json::{json, Value};

/// Upper bound for any one wait; generous because CI machines are slow and shared.
const LIMIT: Duration = Duration::from_secs(120);
/// kubelet garbage-collects dead containers and sandboxes of removed pods once a minute.
const GC_LIMIT: Duration = Duration::from_secs(240);
/// A PID 1 that runs until TERM, then runs `on_term`.
fn until_term(on_term: &str) -> String {
    format!("trap '{on_term}' TERM; while :; do sleep 1 & wait $!; done")
}

type Check = Result<(), String>;

struct Ctx {
    // Field order is drop order: kubelet goes before the rig it runs on.
    kubelet: Kubelet,
    rig: Rig,
    rt: Client,
    events: Arc<Mutex<Vec<ContainerEventResponse>>>,
    evidence: PathBuf,
}

fn container(name: &str, script: &str) -> Value {
    json!({
        "name": name,
        "image": BUSYBOX,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
    })
}

impl Ctx {
    /// A static pod manifest named `name`, in the run's namespace, with `spec` merged over
    /// the defaults (a short grace period; the node's resolv.conf, as there is no cluster DNS).
    fn pod(&self, name: &str, spec: Value) -> Value {
        let mut s = json!({
            "terminationGracePeriodSeconds": 2,
            "dnsPolicy": "Default",
        });
        for (k, v) in spec.as_object().expect("spec is an object") {
            s[k] = v.clone();
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.kubelet.namespace},
            "spec": s,
        })
    }

    /// A hostPath volume for what the containers of pod `name` want to tell the test.
    fn evidence_volume(&self, name: &str) -> Value {
        let d = self.evidence.join(name);
        std::fs::create_dir_all(&d).unwrap();
        json!({"name": "evidence", "hostPath": {"path": d, "type": "Directory"}})
    }

    fn evidence(&self, pod: &str, file: &str) -> String {
        std::fs::read_to_string(self.evidence.join(pod).join(file)).unwrap_or_default()
    }

    /// Polls kubelet's view of pod `name` until `pred` holds.
    async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let start = Instant::now();
        let mut last = None;
        loop {
            if let Some(p) = self.kubelet.pod(name).await {
                if pred(&p) {
                    return Ok(p);
                }
                last = Some(p);
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "{name}: kubelet never reported {what}; last status: {}",
                    last.map(|p| p["status"].to_string())
                        .unwrap_or_else(|| "pod not listed".into())
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// peapod's containers of static pod `name` (by the labels kubelet puts on them).
    async fn peapod_containers(&self, name: &str) -> Vec<Container> {
        self.rt
            .clone()
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    label_selector: self.pod_labels(name),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().containers)
            .unwrap_or_default()
    }

    async fn peapod_sandboxes(&self, name: &str) -> Vec<PodSandbox> {
        self.rt
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: self.pod_labels(name),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default()
    }

    fn pod_labels(&self, name: &str) -> HashMap<String, String> {
        [
            (
                "io.kubernetes.pod.name".to_string(),
                self.kubelet.pod_name(name),
            ),
            (
                "io.kubernetes.pod.namespace".to_string(),
                self.kubelet.namespace.clone(),
            ),
        ]
        .into()
    }

    async fn status(&self, id: &str) -> Result<ContainerStatus, String> {
        self.rt
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|e| format!("ContainerStatus {id}: {e}"))?
            .into_inner()
            .status
            .ok_or_else(|| format!("ContainerStatus {id}: no status"))
    }

    /// ExecSync through peapod: (exit code, stdout).
    async fn exec(&self, id: &str, cmd: &[&str]) -> Result<(i32, String), String> {
        let r = self
            .rt
            .clone()
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .map_err(|e| format!("ExecSync {cmd:?} in {id}: {e}"))?
            .into_inner();
        Ok((r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned()))
    }

    /// The STOPPED events peapod sent for container `container` of static pod `pod`.
    fn stopped(&self, pod: &str, container: &str) -> Vec<ContainerStatus> {
        let full = self.kubelet.pod_name(pod);
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.container_event_type == ContainerEventType::ContainerStoppedEvent as i32)
            .flat_map(|e| e.containers_statuses.iter())
            .filter(|s| {
                s.labels.get("io.kubernetes.pod.name") == Some(&full)
                    && s.labels
                        .get("io.kubernetes.container.name")
                        .map(String::as_str)
                        == Some(container)
            })
            .cloned()
            .collect()
    }

    /// Waits for peapod's STOPPED event of `container` in `pod`.
    async fn wait_stopped(&self, pod: &str, container: &str) -> Result<ContainerStatus, String> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.stopped(pod, container).into_iter().next() {
                return Ok(s);
            }
            if start.elapsed() > LIMIT {
                return Err(format!("{pod}/{container}: peapod sent no STOPPED event"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The status kubelet reports for `container` (app or init) of `pod`.
fn cstatus<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|c| c["name"] == container)
}

fn running(pod: &Value, container: &str) -> bool {
    cstatus(pod, container).is_some_and(|c| c["state"]["running"].is_object())
}

/// The peapod container id kubelet reports (`peapod://<id>`: kubelet names the runtime by
/// the name peapod gives in Version).
fn cid(pod: &Value, container: &str) -> Result<String, String> {
    let s = cstatus(pod, container)
        .and_then(|c| c["containerID"].as_str())
        .ok_or_else(|| format!("no containerID for {container}: {}", pod["status"]))?;
    s.strip_prefix("peapod://")
        .map(String::from)
        .ok_or_else(|| format!("containerID {s:?} does not name the runtime peapod"))
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

async fn setup(test: &str) -> Option<Ctx> {
    let bin = common::bins::require(test, "kubelet")?;
    let rig = Rig::start().await;
    let kubelet = match Kubelet::start(&rig, &bin).await {
        Ok(k) => k,
        Err(e) => panic!(
            "kubelet did not start on peapod: {e}\npeapod log:\n{}",
            tail(&rig.peapod_log(), 30)
        ),
    };
    let mut rt = rig.runtime_client().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut stream = rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let sink = events.clone();
    tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.message().await {
            sink.lock().unwrap().push(ev);
        }
    });
    let evidence = kubelet.dir.path().join("evidence");
    Some(Ctx {
        kubelet,
        rig,
        rt,
        events,
        evidence,
    })
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Scenarios: each has a manifest and a check.

/// Init containers run one after another, each to completion, and only then the app.
fn init_order(cx: &Ctx) -> Value {
    cx.pod(
        "init-order",
        json!({
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                with_mount(container("i1", "sleep 1; echo i1 >> /work/order"), "work", "/work"),
                with_mount(container("i2", "[ \"$(cat /work/order)\" = i1 ] || exit 7; echo i2 >> /work/order"), "work", "/work"),
            ],
            "containers": [with_mount(
                container("app", &format!("echo app >> /work/order; {}", until_term("exit 0"))),
                "work",
                "/work",
            )],
        }),
    )
}

async fn check_init_order(cx: &Ctx) -> Check {
    let p = cx
        .wait_pod("init-order", "app running", LIMIT, |p| running(p, "app"))
        .await?;
    for i in ["i1", "i2"] {
        let t = &cstatus(&p, i).ok_or(format!("no status for {i}"))?["state"]["terminated"];
        ensure!(
            t["exitCode"] == 0 && t["reason"] == "Completed",
            "init container {i}: {t}"
        );
    }
    let (i1, i2, app) = (cid(&p, "i1")?, cid(&p, "i2")?, cid(&p, "app")?);
    let (s1, s2, sa) = (
        cx.status(&i1).await?,
        cx.status(&i2).await?,
        cx.status(&app).await?,
    );
    ensure!(
        s1.finished_at <= s2.started_at && s2.finished_at <= sa.started_at,
        "peapod's times overlap: i1 {}..{}, i2 {}..{}, app from {}",
        s1.started_at,
        s1.finished_at,
        s2.started_at,
        s2.finished_at,
        sa.started_at
    );
    let (code, out) = cx.exec(&app, &["cat", "/work/order"]).await?;
    ensure!(
        code == 0 && out == "i1\ni2\napp\n",
        "/work/order in app: exit {code}, {out:?}"
    );
    Ok(())
}

fn with_mount(mut c: Value, volume: &str, path: &str) -> Value {
    c["volumeMounts"] = json!([{"name": volume, "mountPath": path}]);
    c
}

/// Two containers of a pod: one serves HTTP on localhost, the other fetches from it; both
/// see each other's files in a shared emptyDir.
fn pair(cx: &Ctx) -> Value {
    cx.pod(
        "pair",
        json!({
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "containers": [
                with_mount(container("web", "echo from-web > /shared/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /shared & wait $!"), "shared", "/shared"),
                with_mount(container("client", &until_term("exit 0")), "shared", "/shared"),
            ],
        }),
    )
}

async fn check_pair(cx: &Ctx) -> Check {
    let p = cx
        .wait_pod("pair", "both containers running", LIMIT, |p| {
            running(p, "web") && running(p, "client")
        })
        .await?;
    let (web, client) = (cid(&p, "web")?, cid(&p, "client")?);
    // httpd may still be binding its port right after the container started.
    let mut got = (0, String::new());
    for _ in 0..50 {
        got = cx
            .exec(
                &client,
                &["wget", "-qO-", "http://localhost:8080/index.html"],
            )
            .await?;
        if got.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        got == (0, "from-web\n".to_string()),
        "client fetching web on localhost:8080: {got:?}"
    );
    let (code, _) = cx
        .exec(&client, &["sh", "-c", "echo from-client > /shared/c.txt"])
        .await?;
    ensure!(code == 0, "write in client: exit {code}");
    let got = cx.exec(&web, &["cat", "/shared/c.txt"]).await?;
    ensure!(
        got == (0, "from-client\n".to_string()),
        "web reading client's file in the emptyDir: {got:?}"
    );
    Ok(())
}

/// restartPolicy Never, a container that exits 3: reported, not restarted; its output is in
/// /var/log/pods in the CRI log format.
fn exit3(cx: &Ctx) -> Value {
    cx.pod(
        "exit3",
        json!({
            "restartPolicy": "Never",
            "containers": [container("c", "echo out-exit3; echo err-exit3 >&2; exit 3")],
        }),
    )
}

async fn check_exit3(cx: &Ctx) -> Check {
    let p = cx
        .wait_pod("exit3", "phase Failed", LIMIT, |p| {
            p["status"]["phase"] == "Failed"
        })
        .await?;
    let c = cstatus(&p, "c").ok_or("no status for c")?;
    let t = &c["state"]["terminated"];
    ensure!(
        t["exitCode"] == 3 && t["reason"] == "Error" && c["restartCount"] == 0,
        "kubelet's status of c: {c}"
    );
    let id = cid(&p, "c")?;
    let s = cx.status(&id).await?;
    ensure!(
        s.state == ContainerState::ContainerExited as i32 && s.exit_code == 3,
        "peapod's status: state {} exit {}",
        s.state,
        s.exit_code
    );
    let all = cx.peapod_containers("exit3").await;
    ensure!(
        all.len() == 1 && all[0].id == id,
        "peapod has {} containers for a pod that must not restart: {:?}",
        all.len(),
        all.iter()
            .map(|c| (&c.id, c.metadata.as_ref().map(|m| m.attempt)))
            .collect::<Vec<_>>()
    );
    // kubelet's log layout: /var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log.
    let log = cx.kubelet.pod_log_dir(&p).join("c/0.log");
    ensure!(
        Path::new(&s.log_path) == log,
        "peapod's log path {} is not kubelet's {}",
        s.log_path,
        log.display()
    );
    let text = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let re = regex::Regex::new(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) (stdout|stderr) F (.*)$",
    )
    .unwrap();
    let mut lines = Vec::new();
    for l in text.lines() {
        let m = re.captures(l).ok_or(format!("not a CRI log line: {l:?}"))?;
        lines.push(format!("{} {}", &m[3], &m[4]));
    }
    lines.sort();
    ensure!(
        lines == ["stderr err-exit3", "stdout out-exit3"],
        "log {}: {text:?}",
        log.display()
    );
    Ok(())
}

/// restartPolicy Always, a container that keeps crashing: restarted, with back-off.
fn crashloop(cx: &Ctx) -> Value {
    cx.pod(
        "crashloop",
        json!({"containers": [container("c", "echo crashing; exit 1")]}),
    )
}

async fn check_crashloop(cx: &Ctx) -> Check {
    let seen_backoff = std::sync::atomic::AtomicBool::new(false);
    let p = cx
        .wait_pod(
            "crashloop",
            "two restarts and CrashLoopBackOff",
            LIMIT,
            |p| {
                let c = cstatus(p, "c");
                if c.is_some_and(|c| c["state"]["waiting"]["reason"] == "CrashLoopBackOff") {
                    seen_backoff.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                seen_backoff.load(std::sync::atomic::Ordering::SeqCst)
                    && c.is_some_and(|c| c["restartCount"].as_u64() >= Some(2))
            },
        )
        .await?;
    let c = cstatus(&p, "c").ok_or("no status for c")?;
    ensure!(
        c["lastState"]["terminated"]["exitCode"] == 1,
        "last state of c: {c}"
    );
    let attempts: Vec<u32> = cx
        .peapod_containers("crashloop")
        .await
        .iter()
        .filter_map(|c| c.metadata.as_ref().map(|m| m.attempt))
        .collect();
    ensure!(
        attempts.iter().any(|a| *a >= 1),
        "peapod holds no restarted container (attempts {attempts:?})"
    );
    Ok(())
}

/// A failing exec liveness probe restarts the container: it answers TERM with exit 42, so
/// the exit code tells that kubelet stopped it (it never exits on its own).
fn liveness(cx: &Ctx) -> Value {
    let mut c = container("c", &until_term("exit 42"));
    // Healthy until the test marks it otherwise: no race with the container's own start.
    c["livenessProbe"] = json!({
        "exec": {"command": ["sh", "-c", "[ ! -e /tmp/unhealthy ]"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    });
    cx.pod("liveness", json!({"containers": [c]}))
}

async fn check_liveness(cx: &Ctx) -> Check {
    let p = cx
        .wait_pod("liveness", "c running", LIMIT, |p| running(p, "c"))
        .await?;
    let c = cstatus(&p, "c").ok_or("no status for c")?;
    ensure!(c["restartCount"] == 0, "restarted while healthy: {c}");
    let id = cid(&p, "c")?;
    let (code, _) = cx.exec(&id, &["touch", "/tmp/unhealthy"]).await?;
    ensure!(code == 0, "touch /tmp/unhealthy: exit {code}");
    let p = cx
        .wait_pod("liveness", "a restart after the probe failed", LIMIT, |p| {
            cstatus(p, "c").is_some_and(|c| c["restartCount"].as_u64() >= Some(1))
        })
        .await?;
    let c = cstatus(&p, "c").ok_or("no status for c")?;
    ensure!(
        c["lastState"]["terminated"]["exitCode"] == 42,
        "the probed container was not stopped by TERM: {c}"
    );
    let s = cx.status(&id).await?;
    ensure!(
        s.state == ContainerState::ContainerExited as i32 && s.exit_code == 42,
        "peapod's status of the first attempt: state {} exit {}",
        s.state,
        s.exit_code
    );
    Ok(())
}

/// Removing the manifest: a container that traps TERM exits at once (0), one that ignores
/// it is killed at the end of the grace period (137); both saw the TERM.
fn graceful(cx: &Ctx) -> Value {
    let ev = cx.evidence_volume("graceful");
    cx.pod(
        "graceful",
        json!({
            "terminationGracePeriodSeconds": 3,
            "volumes": [ev],
            "containers": [
                with_mount(container("trapper", &until_term("echo got-term > /evidence/trapper; exit 0")), "evidence", "/evidence"),
                with_mount(container("ignorer", &until_term("echo ignoring-term >> /evidence/ignorer")), "evidence", "/evidence"),
            ],
        }),
    )
}

/// A preStop exec hook runs before TERM: the TERM handler sees the hook's file.
fn prestop(cx: &Ctx) -> Value {
    let ev = cx.evidence_volume("prestop");
    let mut c = with_mount(
        container(
            "c",
            &until_term(
                "if [ -f /evidence/hook ]; then echo term-after-hook > /evidence/term; exit 42; fi; \
                 echo term-before-hook > /evidence/term; exit 43",
            ),
        ),
        "evidence",
        "/evidence",
    );
    c["lifecycle"] =
        json!({"preStop": {"exec": {"command": ["sh", "-c", "echo ran > /evidence/hook"]}}});
    cx.pod(
        "prestop",
        json!({"terminationGracePeriodSeconds": 20, "volumes": [ev], "containers": [c]}),
    )
}

async fn check_termination(cx: &Ctx) -> Check {
    cx.wait_pod("graceful", "both containers running", LIMIT, |p| {
        running(p, "trapper") && running(p, "ignorer")
    })
    .await?;
    cx.wait_pod("prestop", "c running", LIMIT, |p| running(p, "c"))
        .await?;
    cx.kubelet.remove_pod("graceful");
    cx.kubelet.remove_pod("prestop");
    let t = cx.wait_stopped("graceful", "trapper").await?;
    let i = cx.wait_stopped("graceful", "ignorer").await?;
    let p = cx.wait_stopped("prestop", "c").await?;
    let mut errs = Vec::new();
    if t.exit_code != 0 || cx.evidence("graceful", "trapper") != "got-term\n" {
        errs.push(format!(
            "trapper: exit {} (want 0), evidence {:?}",
            t.exit_code,
            cx.evidence("graceful", "trapper")
        ));
    }
    if i.exit_code != 137
        || !cx
            .evidence("graceful", "ignorer")
            .starts_with("ignoring-term\n")
    {
        errs.push(format!(
            "ignorer: exit {} (want 137, SIGKILL), evidence {:?}",
            i.exit_code,
            cx.evidence("graceful", "ignorer")
        ));
    }
    if p.exit_code != 42 || cx.evidence("prestop", "term") != "term-after-hook\n" {
        errs.push(format!(
            "prestop: exit {} (want 42), hook {:?}, TERM handler {:?}",
            p.exit_code,
            cx.evidence("prestop", "hook"),
            cx.evidence("prestop", "term")
        ));
    }
    ensure!(errs.is_empty(), "{}", errs.join("; "));
    Ok(())
}

/// cpu/memory requests and limits reach the container's own cgroup, under the pod cgroup
/// kubelet chose.
fn resources(cx: &Ctx) -> Value {
    let mut c = container("c", &until_term("exit 0"));
    c["resources"] = json!({
        "requests": {"cpu": "100m", "memory": "32Mi"},
        "limits": {"cpu": "250m", "memory": "64Mi"},
    });
    cx.pod("resources", json!({"containers": [c]}))
}

async fn check_resources(cx: &Ctx) -> Check {
    let p = cx
        .wait_pod("resources", "c running", LIMIT, |p| running(p, "c"))
        .await?;
    ensure!(
        p["status"]["qosClass"] == "Burstable",
        "qosClass: {}",
        p["status"]["qosClass"]
    );
    let id = cid(&p, "c")?;
    let (code, out) = cx.exec(&id, &["cat", "/proc/self/cgroup"]).await?;
    ensure!(code == 0, "cat /proc/self/cgroup: exit {code}");
    // cgroup v1: "<n>:<controllers>:<path>"; no cgroup namespace, so host paths.
    let path_of = |ctl: &str| {
        out.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctls, path) = (f.next()?, f.next()?, f.next()?);
            ctls.split(',').any(|c| c == ctl).then(|| path.to_string())
        })
    };
    let mem = path_of("memory").ok_or(format!("no memory cgroup in {out:?}"))?;
    let cpu = path_of("cpu").ok_or(format!("no cpu cgroup in {out:?}"))?;
    let pod_cgroup = format!(
        "{}/kubepods/burstable/pod{}/",
        cx.kubelet.cgroup_root,
        p["metadata"]["uid"].as_str().unwrap_or("")
    );
    ensure!(
        mem.starts_with(&pod_cgroup) && cpu.starts_with(&pod_cgroup),
        "container cgroups {mem} / {cpu} are not under kubelet's pod cgroup {pod_cgroup}"
    );
    let read = |ctl: &str, path: &str, file: &str| {
        let f = Path::new("/sys/fs/cgroup")
            .join(ctl)
            .join(path.trim_start_matches('/'))
            .join(file);
        std::fs::read_to_string(&f)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{}: {e}", f.display()))
    };
    let got = (
        read("memory", &mem, "memory.limit_in_bytes")?,
        read("cpu", &cpu, "cpu.shares")?,
        read("cpu", &cpu, "cpu.cfs_quota_us")?,
        read("cpu", &cpu, "cpu.cfs_period_us")?,
    );
    // 64Mi; 100m → 1024*100/1000 = 102 shares; 250m of a 100ms period.
    let want = (
        (64u64 << 20).to_string(),
        "102".to_string(),
        "25000".to_string(),
        "100000".to_string(),
    );
    ensure!(
        got == want,
        "cgroup (memory.limit_in_bytes, cpu.shares, cfs_quota, cfs_period) = {got:?}, want {want:?}"
    );
    Ok(())
}

/// kubelet's main port answers an anonymous client (what exec/port-forward tests need).
async fn check_main_port(cx: &Ctx) -> Check {
    let (status, body) = cx.kubelet.main_port_get("/pods").await?;
    ensure!(status == 200, "GET /pods on the main port: {status} {body}");
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("/pods: {e}"))?;
    ensure!(v["kind"] == "PodList", "GET /pods on the main port: {body}");
    Ok(())
}

/// Seconds from each manifest written to its pod's first container running (peapod's
/// started_at), from peapod's STARTED events.
fn start_latencies(cx: &Ctx, written: &HashMap<String, SystemTime>) -> Vec<f64> {
    let ev = cx.events.lock().unwrap();
    let mut out = Vec::new();
    for (name, at) in written {
        let full = cx.kubelet.pod_name(name);
        let first = ev
            .iter()
            .filter(|e| e.container_event_type == ContainerEventType::ContainerStartedEvent as i32)
            .flat_map(|e| e.containers_statuses.iter())
            .filter(|s| s.labels.get("io.kubernetes.pod.name") == Some(&full))
            .map(|s| s.started_at)
            .filter(|t| *t > 0)
            .min();
        let at_ns = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        if let Some(t) = first {
            out.push((t - at_ns) as f64 / 1e9);
        }
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_runs_pods_through_peapod() {
    let Some(mut cx) = setup("kubelet_runs_pods_through_peapod").await else {
        return;
    };
    let manifests = [
        init_order(&cx),
        pair(&cx),
        exit3(&cx),
        crashloop(&cx),
        liveness(&cx),
        graceful(&cx),
        prestop(&cx),
        resources(&cx),
    ];
    let mut written = HashMap::new();
    for m in &manifests {
        let name = m["metadata"]["name"].as_str().unwrap().to_string();
        written.insert(name, cx.kubelet.write_pod(m));
    }
    let results: Vec<(&str, Check)> = {
        let c = &cx;
        let (a, b, d, e, f, g, h, i) = tokio::join!(
            check_init_order(c),
            check_pair(c),
            check_exit3(c),
            check_crashloop(c),
            check_liveness(c),
            check_termination(c),
            check_resources(c),
            check_main_port(c),
        );
        vec![
            ("init containers in order", a),
            ("two containers: localhost and emptyDir", b),
            ("restartPolicy Never, exit 3, logs", d),
            ("restartPolicy Always, crash loop", e),
            ("exec liveness probe", f),
            ("grace period and preStop", g),
            ("cpu/memory in the cgroup", h),
            ("kubelet's main port, anonymous", i),
        ]
    };
    let lat = start_latencies(&cx, &written);
    if !lat.is_empty() {
        common::bins::loud(&format!(
            "kubelet: manifest written → first container running: median {:.2}s over {} pods \
             (min {:.2}s, max {:.2}s; informational)",
            lat[lat.len() / 2],
            lat.len(),
            lat[0],
            lat[lat.len() - 1]
        ));
    }
    // Everything removed: kubelet stops the pods, then deletes their containers and
    // sandboxes from peapod.
    for name in written.keys() {
        cx.kubelet.remove_pod(name);
    }
    let gone = gone_from_peapod(&cx, written.keys()).await;
    let mut failures: Vec<String> = results
        .into_iter()
        .filter_map(|(what, r)| r.err().map(|e| format!("{what}: {e}")))
        .collect();
    if let Err(e) = gone {
        failures.push(format!("removed pods: {e}"));
    }
    if !cx.kubelet.alive() {
        failures.push("kubelet exited during the test".into());
    }
    if failures.is_empty() {
        return;
    }
    let kept = keep_logs(&cx);
    panic!(
        "{} scenario(s) failed:\n  {}\n--- kubelet log (tail):\n{}\n--- peapod log (tail):\n{}\n\
         --- full logs: {kept}",
        failures.len(),
        failures.join("\n  "),
        cx.kubelet.log_tail(40),
        tail(&cx.rig.peapod_log(), 40),
    );
}

/// Copies kubelet's and peapod's logs out of the temporary directories that teardown
/// removes, into `target/e2e-logs/`; returns where (or why not).
fn keep_logs(cx: &Ctx) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/e2e-logs")
        .join(&cx.kubelet.node);
    let r = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(dir.join("kubelet.log"), cx.kubelet.log()))
        .and_then(|_| std::fs::write(dir.join("peapod.log"), cx.rig.peapod_log()));
    match r {
        Ok(()) => dir.display().to_string(),
        Err(e) => format!("not kept ({}: {e})", dir.display()),
    }
}

async fn gone_from_peapod<'a>(cx: &Ctx, names: impl Iterator<Item = &'a String>) -> Check {
    let names: Vec<&String> = names.collect();
    let start = Instant::now();
    loop {
        let mut left = Vec::new();
        for n in &names {
            let (c, s) = (cx.peapod_containers(n).await, cx.peapod_sandboxes(n).await);
            if !c.is_empty() || !s.is_empty() {
                left.push(format!(
                    "{n}: {} containers, {} sandboxes",
                    c.len(),
                    s.len()
                ));
            }
        }
        let listed = cx
            .kubelet
            .pods()
            .await
            .map(|p| p.len())
            .unwrap_or(usize::MAX);
        if left.is_empty() && listed == 0 {
            return Ok(());
        }
        if start.elapsed() > GC_LIMIT {
            return Err(format!(
                "kubelet lists {listed} pods; still in peapod: {}",
                left.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
