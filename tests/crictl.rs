//! crictl v1.32.0 (from `../shared/bin`), the Go gRPC client operators debug with, against
//! the rig's peapod: every crictl command for what peapod implements, with assertions on
//! crictl's own output (`-o json` where it has one), and peapod's metrics endpoint after a
//! lifecycle crictl drove. Streaming commands (exec without -s, attach, port-forward) are
//! not here.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{oci, Rig, BUSYBOX};
use peapod::cri::{RemoveContainerRequest, RemovePodSandboxRequest};
use serde_json::{json, Value};

struct Crictl {
    bin: PathBuf,
    config: PathBuf,
}

/// What one crictl invocation printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Crictl {
    /// A crictl config file pointing both endpoints at the rig's peapod socket.
    fn new(bin: PathBuf, rig: &Rig) -> Crictl {
        let config = rig.dir.path().join("crictl.yaml");
        let ep = format!("unix://{}", rig.peapod_socket.display());
        std::fs::write(
            &config,
            format!(
                "runtime-endpoint: {ep}\nimage-endpoint: {ep}\ntimeout: 60\ndebug: false\n\
                 pull-image-on-create: false\n"
            ),
        )
        .unwrap();
        Crictl { bin, config }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let o: Output = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run crictl");
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "crictl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            r.code, r.stdout, r.stderr
        );
        r.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("crictl {args:?}: not JSON ({e}): {out}"))
    }
}

async fn setup(test: &str) -> Option<(Rig, Crictl)> {
    let bin = common::bins::require(test, "crictl")?;
    let rig = Rig::start().await;
    let c = Crictl::new(bin, &rig);
    Some((rig, c))
}

/// A protobuf-JSON integer: crictl prints 64-bit ones as strings.
fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {v}")),
        Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("not a u64: {v}")),
        _ => panic!("not a number: {v}"),
    }
}

/// A PID 1 that runs until TERM and then runs `on_term`.
fn until_term(on_term: &str) -> String {
    format!("trap '{on_term}' TERM; while :; do sleep 1 & wait $!; done")
}

/// Writes `v` as a JSON file in the rig's directory and returns its path.
fn write_json(rig: &Rig, name: &str, v: &Value) -> String {
    let p = rig.dir.path().join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    p.display().to_string()
}

fn pod_json(rig: &Rig, name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "crictl", "uid": format!("uid-{name}"), "attempt": 0},
        "hostname": name,
        "log_directory": rig.log_dir.join(name),
        "labels": {"suite": "crictl", "pod": name},
        "linux": {"cgroup_parent": rig.cgroup_parent},
    })
}

fn container_json(name: &str, script: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "image": {"image": BUSYBOX},
        "command": ["sh", "-c", script],
        "log_path": format!("{name}.log"),
        "labels": {"container": name},
    })
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Polls `f` (a crictl query) until it holds.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_info_and_a_pod_lifecycle() {
    let Some((rig, crictl)) = setup("runtime_info_and_a_pod_lifecycle").await else {
        return;
    };

    // version: crictl's own text format.
    let v = crictl.ok(&["version"]);
    let field = |k: &str| {
        v.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{k}:"))
                    .map(|x| x.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {k} in crictl version: {v}"))
    };
    assert_eq!(field("RuntimeName"), "peapod");
    assert_eq!(field("RuntimeApiVersion"), "v1");
    assert_eq!(field("RuntimeVersion"), env!("CARGO_PKG_VERSION"));

    // info: both conditions true, as crictl shows them.
    let info = crictl.json(&["info", "-o", "json"]);
    let conds = info["status"]["conditions"].as_array().expect("conditions");
    for t in ["RuntimeReady", "NetworkReady"] {
        assert!(
            conds.iter().any(|c| c["type"] == t && c["status"] == true),
            "{t} not true in crictl info: {info}"
        );
    }
    // ... and the containerd peapod is connected to (the one this run chose).
    let (bin_version, _) = common::containerd_bin_version();
    assert_eq!(
        info["containerdVersion"]
            .as_str()
            .map(|v| v.trim_start_matches('v')),
        Some(bin_version.trim_start_matches('v')),
        "crictl info: {info}"
    );
    assert!(
        info["containerd"]["release"].is_string(),
        "crictl info: {info}"
    );
    let rc = crictl.ok(&["runtime-config"]);
    assert!(rc.contains("CGROUPFS"), "runtime-config: {rc}");

    // runp, pods, inspectp.
    let pod_cfg = write_json(&rig, "pod.json", &pod_json(&rig, "lifecycle"));
    let pod = crictl.ok(&["runp", &pod_cfg]).trim().to_string();
    assert!(is_id(&pod), "runp printed {pod:?}");
    let pods = crictl.json(&["pods", "--label", "suite=crictl", "-o", "json"]);
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{pods}");
    assert_eq!(items[0]["id"], pod.as_str());
    assert_eq!(items[0]["state"], "SANDBOX_READY");
    assert_eq!(items[0]["metadata"]["name"], "lifecycle");
    assert_eq!(
        crictl
            .ok(&["pods", "-q", "--name", "lifecycle", "--state", "ready"])
            .trim(),
        pod
    );
    assert_eq!(
        crictl
            .ok(&["pods", "-q", "--name", "nothing-like-it"])
            .trim(),
        ""
    );
    let p = crictl.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(p["status"]["state"], "SANDBOX_READY");
    assert_eq!(p["status"]["metadata"]["namespace"], "crictl");
    assert_eq!(p["status"]["labels"]["pod"], "lifecycle");
    let ip = p["status"]["network"]["ip"].as_str().unwrap_or("");
    assert!(
        ip.starts_with(&format!("{}.", rig.subnet_prefix)),
        "pod IP {ip:?} not from the rig's CNI subnet {}",
        rig.subnet_prefix
    );

    // create, ps (CREATED), start, ps (RUNNING), inspect.
    let script = format!(
        "echo line1; echo line2; echo oops >&2; echo line3; {}",
        until_term("exit 0")
    );
    let c_cfg = write_json(&rig, "worker.json", &container_json("worker", &script));
    let worker = crictl
        .ok(&["create", &pod, &c_cfg, &pod_cfg])
        .trim()
        .to_string();
    assert!(is_id(&worker), "create printed {worker:?}");
    let ps = crictl.json(&["ps", "-a", "--id", &worker, "-o", "json"]);
    assert_eq!(ps["containers"][0]["state"], "CONTAINER_CREATED", "{ps}");
    assert_eq!(crictl.ok(&["ps", "-q"]).trim(), "", "nothing runs yet");
    assert_eq!(crictl.ok(&["start", &worker]).trim(), worker);
    let ps = crictl.json(&["ps", "--pod", &pod, "-o", "json"]);
    let cs = ps["containers"].as_array().unwrap();
    assert_eq!(cs.len(), 1, "{ps}");
    assert_eq!(cs[0]["id"], worker.as_str());
    assert_eq!(cs[0]["state"], "CONTAINER_RUNNING");
    assert_eq!(cs[0]["podSandboxId"], pod.as_str());
    assert_eq!(cs[0]["metadata"]["name"], "worker");
    assert_eq!(cs[0]["image"]["image"], BUSYBOX);
    assert_eq!(
        crictl.ok(&["ps", "-q", "--name", "work"]).trim(),
        worker,
        "name regex"
    );
    assert_eq!(
        crictl
            .ok(&["ps", "-q", "--label", "container=worker"])
            .trim(),
        worker
    );
    let i = crictl.json(&["inspect", "-o", "json", &worker]);
    let st = &i["status"];
    assert_eq!(st["state"], "CONTAINER_RUNNING", "{i}");
    assert_eq!(st["metadata"]["name"], "worker");
    assert_eq!(st["image"]["image"], BUSYBOX);
    assert_eq!(
        st["logPath"],
        rig.log_dir
            .join("lifecycle/worker.log")
            .display()
            .to_string()
    );
    // .info, as operators script against it: the pid shares the pause process's namespaces.
    let info = &i["info"];
    assert_eq!(info["sandboxID"], pod.as_str(), "{i}");
    assert_eq!(
        info["runtimeSpec"]["process"]["args"][2],
        script.as_str(),
        "{i}"
    );
    let pid = info["pid"].as_u64().unwrap_or(0);
    let pause_pid = p["info"]["pid"].as_u64().unwrap_or(0);
    assert!(pid > 0 && pause_pid > 0, "pids {pid} / {pause_pid}");
    for ns in ["net", "uts", "ipc"] {
        let link = |pid: u64| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_eq!(link(pid), link(pause_pid), "{ns} namespace of .info.pid");
    }
    // The one-liner runbooks use to find a container's host pid: it is the task's pid as
    // containerd has it, and a live process running the container's command.
    let tmpl = crictl.ok(&[
        "inspect",
        "-o",
        "go-template",
        "--template",
        "{{.info.pid}}",
        &worker,
    ]);
    let task_pid = rig
        .tasks()
        .get(&worker)
        .map(|t| t.pid.to_string())
        .unwrap_or_else(|| panic!("no task {worker} in ctr tasks ls"));
    assert_eq!(tmpl.trim(), task_pid, "crictl inspect .info.pid");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", tmpl.trim())).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("line3"),
        "pid {} is not the container's process",
        tmpl.trim()
    );
    // The rest of containerd's ContainerInfo: config, snapshot and runtime.
    assert_eq!(info["config"]["metadata"]["name"], "worker", "{i}");
    assert_eq!(info["snapshotKey"], worker.as_str());
    assert_eq!(info["snapshotter"], "overlayfs");
    assert_eq!(info["runtimeType"], "io.containerd.runc.v2");
    // inspectp: the pinned netns and the IP, as containerd reports them.
    let netns = p["info"]["sandboxMetadata"]["Metadata"]["NetNSPath"]
        .as_str()
        .unwrap_or("");
    assert!(
        Path::new(netns).starts_with(&rig.netns_dir) && Path::new(netns).exists(),
        "netns {netns:?} not pinned under {}: {p}",
        rig.netns_dir.display()
    );
    assert_eq!(p["info"]["sandboxMetadata"]["Metadata"]["IP"], ip, "{p}");
    assert_eq!(
        p["info"]["cniResult"]["Interfaces"]["eth0"]["IPConfigs"][0]["IP"],
        ip
    );
    assert_eq!(
        p["info"]["cniResult"]["Interfaces"]["eth0"]["Sandbox"],
        netns
    );
    assert_eq!(p["info"]["processStatus"], "running");
    assert_eq!(p["info"]["netNamespaceClosed"], false);
    assert_eq!(p["info"]["image"], common::PAUSE);
    assert_eq!(p["info"]["config"]["metadata"]["name"], "lifecycle");
    assert!(
        p["info"]["runtimeSpec"]["linux"]["namespaces"].is_array(),
        "{p}"
    );
    let shown = crictl.ok(&[
        "inspectp",
        "-o",
        "go-template",
        "--template",
        "{{.info.sandboxMetadata.Metadata.NetNSPath}} {{.status.network.ip}}",
        &pod,
    ]);
    assert_eq!(shown.trim(), format!("{netns} {ip}"));
    // The pause process is in that namespace.
    assert_eq!(
        std::fs::metadata(format!("/proc/{pause_pid}/ns/net"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap(),
        std::fs::metadata(netns)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap(),
        "pause pid {pause_pid} is not in {netns}"
    );

    // Short ids work as crictl users type them.
    assert_eq!(
        crictl.json(&["inspect", "-o", "json", &worker[..12]])["status"]["id"],
        worker.as_str()
    );

    // logs: crictl reads the CRI-format file itself; stderr lines go to its stderr.
    wait_for("all of worker's output in its log", || {
        crictl.ok(&["logs", &worker]).contains("line3")
    });
    let r = crictl.run(&["logs", &worker]);
    assert_eq!(r.stdout, "line1\nline2\nline3\n");
    assert_eq!(r.stderr, "oops\n");
    // stdout and stderr are separate pipes, so the file's last entry may be either.
    let file = std::fs::read_to_string(rig.log_dir.join("lifecycle/worker.log")).unwrap();
    let last = file.lines().last().unwrap().to_string();
    let mut f = last.splitn(4, ' ');
    let (_, stream, _, text) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
    let r = crictl.run(&["logs", "--tail", "1", &worker]);
    let (got, other) = match stream {
        Some("stdout") => (r.stdout, r.stderr),
        _ => (r.stderr, r.stdout),
    };
    assert_eq!(
        (got, other),
        (format!("{text}\n"), String::new()),
        "--tail 1 of {last:?}"
    );

    // exec -s (ExecSync): output, exit code, and a timeout that spares the container.
    let r = crictl.run(&["exec", "-s", &worker, "sh", "-c", "echo out; echo err >&2"]);
    // crictl prints the command's stdout, then its stderr, each with a blank line after.
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "out\n\nerr\n\n"),
        "stderr {:?}",
        r.stderr
    );
    let r = crictl.run(&["exec", "-s", &worker, "sh", "-c", "echo err >&2; exit 3"]);
    // crictl exits 1 and names the command's exit code and its stderr.
    assert_ne!(r.code, 0, "exec -s of a failing command");
    assert!(
        r.stderr.contains("exited with 3: err"),
        "exec -s stderr: {:?}",
        r.stderr
    );
    assert_eq!(
        crictl.ok(&["exec", "-s", &worker, "hostname"]).trim(),
        "lifecycle"
    );
    let r = crictl.run(&["exec", "-s", "--timeout", "1", &worker, "sleep", "30"]);
    assert_ne!(
        r.code, 0,
        "exec -s --timeout 1 sleep 30 succeeded: {}",
        r.stdout
    );
    assert_eq!(
        crictl.json(&["inspect", "-o", "json", &worker])["status"]["state"],
        "CONTAINER_RUNNING",
        "a timed-out exec must not kill the container"
    );

    // stats, statsp.
    let s = crictl.json(&["stats", "--id", &worker, "-o", "json"]);
    let s0 = &s["stats"][0];
    assert_eq!(s0["attributes"]["id"], worker.as_str(), "{s}");
    assert!(num(&s0["cpu"]["usageCoreNanoSeconds"]["value"]) > 0, "{s}");
    assert!(num(&s0["memory"]["workingSetBytes"]["value"]) > 0, "{s}");
    assert_eq!(
        s0["writableLayer"]["fsId"]["mountpoint"]
            .as_str()
            .map(|m| m.contains("overlayfs")),
        Some(true),
        "{s}"
    );
    let sp = crictl.json(&["statsp", "--id", &pod, "-o", "json"]);
    let p0 = &sp["stats"][0];
    assert_eq!(p0["attributes"]["id"], pod.as_str(), "{sp}");
    assert!(
        num(&p0["linux"]["memory"]["workingSetBytes"]["value"]) > 0,
        "{sp}"
    );
    assert!(
        num(&p0["linux"]["cpu"]["usageCoreNanoSeconds"]["value"]) > 0,
        "{sp}"
    );
    assert_eq!(
        p0["linux"]["containers"][0]["attributes"]["id"],
        worker.as_str(),
        "{sp}"
    );

    // update: the new limits reach the container's cgroup (cgroup v1 shows it at the root).
    crictl.ok(&[
        "update",
        "--memory",
        "67108864",
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "100000",
        &worker,
    ]);
    let got = crictl.ok(&[
        "exec",
        "-s",
        &worker,
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    ]);
    assert_eq!(got.trim_end(), "67108864\n20000");

    // stop --timeout: one container answers TERM (exit 0), one ignores it (SIGKILL, 137).
    let stubborn_cfg = write_json(
        &rig,
        "stubborn.json",
        &container_json("stubborn", "trap '' TERM; while :; do sleep 1; done"),
    );
    let stubborn = crictl
        .ok(&["create", &pod, &stubborn_cfg, &pod_cfg])
        .trim()
        .to_string();
    crictl.ok(&["start", &stubborn]);
    assert_eq!(
        crictl.ok(&["stop", "--timeout", "2", &stubborn]).trim(),
        stubborn
    );
    let st = crictl.json(&["inspect", "-o", "json", &stubborn])["status"].clone();
    assert_eq!(st["state"], "CONTAINER_EXITED", "{st}");
    assert_eq!(st["exitCode"], 137, "{st}");
    assert_eq!(
        crictl.ok(&["stop", "--timeout", "30", &worker]).trim(),
        worker
    );
    let st = crictl.json(&["inspect", "-o", "json", &worker])["status"].clone();
    assert_eq!(st["state"], "CONTAINER_EXITED", "{st}");
    assert_eq!(st["exitCode"], 0, "{st}");
    assert_eq!(st["reason"], "Completed", "{st}");
    // Stopping again is harmless.
    crictl.ok(&["stop", "--timeout", "0", &worker]);
    let exited = crictl.ok(&["ps", "-a", "-q", "--state", "exited"]);
    let mut exited: Vec<&str> = exited.lines().collect();
    exited.sort();
    let mut want = vec![worker.as_str(), stubborn.as_str()];
    want.sort();
    assert_eq!(exited, want);

    // rm, stopp, rmp.
    assert_eq!(crictl.ok(&["rm", &stubborn]).trim(), stubborn);
    assert_eq!(crictl.ok(&["ps", "-a", "-q", "--id", &stubborn]).trim(), "");
    assert_ne!(
        crictl.run(&["inspect", &stubborn]).code,
        0,
        "inspect of a removed container"
    );
    assert!(crictl.ok(&["stopp", &pod]).contains(&pod));
    let p = crictl.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(p["status"]["state"], "SANDBOX_NOTREADY", "{p}");
    assert!(crictl.ok(&["rmp", &pod]).contains(&pod));
    assert_eq!(crictl.ok(&["pods", "-q"]).trim(), "");
    assert_eq!(
        crictl.ok(&["ps", "-a", "-q"]).trim(),
        "",
        "rmp removes the pod's containers"
    );
}

/// `crictl run` (a pod and a container in one go) while `crictl events` watches: every
/// step of the container shows up in crictl's event stream (GetContainerEvents).
#[tokio::test(flavor = "multi_thread")]
async fn run_and_events() {
    let Some((rig, crictl)) = setup("run_and_events").await else {
        return;
    };
    let out = rig.dir.path().join("events.json");
    let mut events = crictl
        .command(&["events", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(rig.dir.path().join("events.err")).unwrap())
        .spawn()
        .expect("crictl events");
    // crictl prints nothing when its subscription is live: create canary containers until
    // one shows up in its stream, so what follows cannot be missed.
    let canary_pod_cfg = write_json(&rig, "canary-pod.json", &pod_json(&rig, "canary"));
    let canary_pod = crictl.ok(&["runp", &canary_pod_cfg]).trim().to_string();
    let mut subscribed = false;
    for n in 0..20 {
        let cfg = write_json(
            &rig,
            "canary.json",
            &container_json(&format!("canary{n}"), "true"),
        );
        let c = crictl
            .ok(&["create", &canary_pod, &cfg, &canary_pod_cfg])
            .trim()
            .to_string();
        let start = Instant::now();
        while !subscribed && start.elapsed() < Duration::from_secs(2) {
            subscribed = std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains(&c);
            std::thread::sleep(Duration::from_millis(100));
        }
        if subscribed {
            break;
        }
    }
    assert!(
        subscribed,
        "crictl events never showed a container being created"
    );
    crictl.ok(&["rmp", "-f", &canary_pod]);
    let pod_cfg = write_json(&rig, "pod.json", &pod_json(&rig, "runner"));
    let c_cfg = write_json(
        &rig,
        "c.json",
        &container_json("one", &until_term("exit 0")),
    );
    // --no-pull: the test image was imported, there is no registry behind its name.
    let id = crictl
        .ok(&["run", "--no-pull", &c_cfg, &pod_cfg])
        .trim()
        .to_string();
    assert!(is_id(&id), "run printed {id:?}");
    let ps = crictl.json(&["ps", "--id", &id, "-o", "json"]);
    assert_eq!(ps["containers"][0]["state"], "CONTAINER_RUNNING", "{ps}");
    let pod = ps["containers"][0]["podSandboxId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        crictl.json(&["inspectp", "-o", "json", &pod])["status"]["metadata"]["name"],
        "runner"
    );
    // rmp -f stops and removes the pod and its container.
    assert!(crictl.ok(&["rmp", "-f", &pod]).contains(&pod));
    assert_eq!(crictl.ok(&["ps", "-a", "-q"]).trim(), "");

    let want = [
        "CONTAINER_CREATED_EVENT",
        "CONTAINER_STARTED_EVENT",
        "CONTAINER_STOPPED_EVENT",
        "CONTAINER_DELETED_EVENT",
    ];
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        seen = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .filter(|e| e["containerId"] == id.as_str())
            .map(|e| e["containerEventType"].as_str().unwrap_or("").to_string())
            .collect();
        if want.iter().all(|w| seen.iter().any(|s| s == w)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = events.kill();
    let _ = events.wait();
    let order: Vec<&str> = want
        .iter()
        .filter_map(|w| seen.iter().position(|s| s == w).map(|_| *w))
        .collect();
    assert_eq!(
        order,
        want,
        "events for {id} in crictl's stream: {seen:?}\n{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    let firsts: Vec<usize> = want
        .iter()
        .map(|w| seen.iter().position(|s| s == w).unwrap())
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seen:?}"
    );
}

/// pull from a local registry, images, inspecti, imagefsinfo, rmi.
#[tokio::test(flavor = "multi_thread")]
async fn images_pull_list_inspect_remove() {
    let Some((rig, crictl)) = setup("images_pull_list_inspect_remove").await else {
        return;
    };
    if !Path::new("/usr/bin/docker-registry").exists() {
        common::bins::missing(
            "images_pull_list_inspect_remove",
            "no /usr/bin/docker-registry (apt-get install docker-registry)",
        );
        return;
    }
    let reg = registry::Registry::start(None);
    let img = oci::build(
        rig.dir.path(),
        &oci::ImageSpec {
            name: "localhost/crictl/pulled:1".into(),
            cmd: vec!["sh".into()],
            user: "1000".into(),
            files: vec![("/etc/crictl-pulled".into(), b"yes".to_vec())],
            ..Default::default()
        },
    );
    let manifest = reg.push_image("crictl/pulled", "v1", &img, false).await;
    let r#ref = format!("{}/crictl/pulled:v1", reg.addr);

    let fs_before = crictl.json(&["imagefsinfo", "-o", "json"]);
    let used = |v: &Value| num(&v["status"]["imageFilesystems"][0]["usedBytes"]["value"]);
    assert!(used(&fs_before) > 0, "{fs_before}");
    let mp = fs_before["status"]["imageFilesystems"][0]["fsId"]["mountpoint"]
        .as_str()
        .unwrap_or("");
    assert!(
        mp.starts_with(&rig.dir.path().display().to_string()),
        "image filesystem mountpoint {mp:?} is not the rig's containerd root"
    );

    let out = crictl.ok(&["pull", &r#ref]);
    assert!(
        out.contains(&img.config_digest),
        "crictl pull names the image id {}: {out}",
        img.config_digest
    );
    let images = crictl.json(&["images", "-o", "json"]);
    // The sandbox image is pinned (kubelet's image GC leaves it alone), the others not.
    for i in images["images"].as_array().unwrap() {
        let is_pause = i["repoTags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == common::PAUSE);
        assert_eq!(i["pinned"], is_pause, "pinned of {i}");
    }
    let ours: Vec<&Value> = images["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["id"] == img.config_digest.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{images}");
    assert_eq!(ours[0]["repoTags"], json!([r#ref]));
    assert_eq!(
        ours[0]["repoDigests"],
        json!([format!("{}/crictl/pulled@{manifest}", reg.addr)])
    );
    assert_eq!(
        num(&ours[0]["size"]),
        (img.config.len() + img.layer.len()) as u64
    );
    assert_eq!(num(&ours[0]["uid"]["value"]), 1000);
    // The text table, filtered by reference, as operators read it.
    let table = crictl.ok(&["images", &r#ref]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{}/crictl/pulled", reg.addr))
                && l.contains(" v1 ")
                && l.contains(&img.config_digest[7..20])),
        "crictl images table: {table}"
    );

    let i = crictl.json(&["inspecti", "-o", "json", &r#ref]);
    assert_eq!(i["status"]["id"], img.config_digest.as_str(), "{i}");
    // containerd's verbose image info: the chain id and the image config.
    assert!(
        i["info"]["chainID"]
            .as_str()
            .is_some_and(|c| c.starts_with("sha256:")),
        "{i}"
    );
    assert_eq!(i["info"]["imageSpec"]["os"], "linux", "{i}");
    assert!(
        i["info"]["imageSpec"]["rootfs"]["diff_ids"].is_array(),
        "{i}"
    );
    assert_eq!(i["status"]["repoTags"], json!([r#ref]));
    // By id too.
    assert_eq!(
        crictl.json(&["inspecti", "-o", "json", &img.config_digest])["status"]["repoTags"],
        json!([r#ref])
    );
    assert!(used(&crictl.json(&["imagefsinfo", "-o", "json"])) >= used(&fs_before));

    // A missing tag fails with the registry's answer.
    let r = crictl.run(&["pull", &format!("{}/crictl/pulled:nope", reg.addr)]);
    assert_ne!(r.code, 0, "pull of a missing tag succeeded: {}", r.stdout);
    assert!(
        r.stderr.to_lowercase().contains("not found"),
        "pull of a missing tag: {}",
        r.stderr
    );

    let out = crictl.ok(&["rmi", &r#ref]);
    assert!(
        out.contains(&r#ref) || out.contains(&img.config_digest),
        "rmi: {out}"
    );
    let images = crictl.json(&["images", "-o", "json"]);
    assert!(
        !images["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == img.config_digest.as_str()),
        "image still listed after rmi: {images}"
    );
    let r = crictl.run(&["inspecti", "-o", "json", &r#ref]);
    assert_ne!(r.code, 0, "inspecti after rmi: {}", r.stdout);
    // The test images are still there.
    assert!(crictl.ok(&["images", "-q"]).lines().count() >= 2);
}

/// cri-tools' idempotence specs: stop/remove of an id that names nothing (a UUID, as the
/// specs use, or a well-formed id) succeed, for containers and pods alike (issue 8 item 3).
/// `crictl stop`/`stopp` call the RPC directly; `crictl rm`/`rmp` ask for the status first
/// and fail on NotFound whatever the runtime, so RemoveContainer and RemovePodSandbox are
/// called as the specs call them, through the CRI.
#[tokio::test(flavor = "multi_thread")]
async fn stop_and_remove_of_unknown_ids_succeed() {
    let Some((rig, crictl)) = setup("stop_and_remove_of_unknown_ids_succeed").await else {
        return;
    };
    let uuid = "7f1f1e2d-3c4b-4a59-8e7d-6c5b4a392817";
    let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut rt = rig.runtime_client().await;
    let mut failed = Vec::new();
    for id in [uuid, hex] {
        for cmd in [&["stop", id][..], &["stopp", id]] {
            let r = crictl.run(cmd);
            if r.code != 0 {
                failed.push(format!(
                    "crictl {}: exit {}: {}",
                    cmd.join(" "),
                    r.code,
                    r.stderr.trim()
                ));
            }
        }
        if let Err(e) = rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
        {
            failed.push(format!("RemoveContainer {id}: {e}"));
        }
        if let Err(e) = rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
        {
            failed.push(format!("RemovePodSandbox {id}: {e}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The metrics endpoint after a pod lifecycle driven by crictl (grpc-go, as kubelet): each
/// call counted under its method and code, its latency in the histogram, and the objects by
/// state back to zero once the pod is gone.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_crictl_did() {
    use common::metrics::{assert_answered_once, cri, sample, scrape};
    let Some(bin) = common::bins::require("metrics_count_what_crictl_did", "crictl") else {
        return;
    };
    let port = common::bins::free_port();
    let rig = Rig::start_with(vec![
        "--metrics-address".into(),
        format!("127.0.0.1:{port}"),
    ])
    .await;
    let crictl = Crictl::new(bin, &rig);
    let pod_cfg = write_json(&rig, "pod.json", &pod_json(&rig, "scraped"));
    let c_cfg = write_json(
        &rig,
        "c.json",
        &container_json("web", &until_term("exit 0")),
    );
    let pod = crictl.ok(&["runp", &pod_cfg]).trim().to_string();
    let c = crictl
        .ok(&["create", &pod, &c_cfg, &pod_cfg])
        .trim()
        .to_string();
    crictl.ok(&["start", &c]);
    assert_eq!(crictl.ok(&["exec", "-s", &c, "echo", "hi"]).trim(), "hi");

    // While it runs: one pod ready, one container running.
    let text = scrape(port);
    let series = |name: &str, state: &str| format!("peapod_{name}{{state=\"{state}\"}}");
    assert_eq!(
        sample(&text, &series("pod_sandboxes", "ready")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &series("containers", "running")),
        Some(1.0),
        "{text}"
    );

    // A call that fails, counted under its code as grpc-go names it.
    let unknown = "e".repeat(64);
    let r = crictl.run(&["inspectp", &unknown]);
    assert_ne!(r.code, 0, "inspectp of an unknown pod: {}", r.stdout);
    crictl.ok(&["stop", &c]);
    crictl.ok(&["rm", &c]);
    crictl.ok(&["stopp", &pod]);
    crictl.ok(&["rmp", &pod]);

    let text = scrape(port);
    for method in [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "ExecSync",
        "StopContainer",
        "RemoveContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ] {
        assert_answered_once(&text, method);
    }
    assert!(
        sample(&text, &cri("PodSandboxStatus", "NotFound")).is_some_and(|n| n >= 1.0),
        "PodSandboxStatus NotFound in\n{text}"
    );
    assert!(sample(&text, &cri("Version", "OK")).is_some_and(|n| n >= 1.0));
    assert_eq!(sample(&text, &series("pod_sandboxes", "ready")), Some(0.0));
    assert_eq!(
        sample(&text, &series("pod_sandboxes", "notready")),
        Some(0.0)
    );
    assert_eq!(sample(&text, &series("containers", "running")), Some(0.0));
    assert_eq!(sample(&text, &series("containers", "exited")), Some(0.0));
}
