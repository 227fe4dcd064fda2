//! ContainerStats / ListContainerStats / PodSandboxStats / ListPodSandboxStats.
//!
//! CPU and memory come from the cgroup files ([`crate::cgroup`]) of the cgroup located when
//! the container started (from the `cgroupsPath` of its spec), the writable layer from the
//! snapshot usage cache ([`crate::image::usage`]: the list RPCs kubelet polls answer from it,
//! a single ContainerStats or PodSandboxStats reads the snapshot now), and pod network
//! counters from the pause
//! process's `/proc/<pid>/net/dev`. `usage_nano_cores` is a rate, so the previous cumulative
//! reading of each container and pod is kept in memory; entries of containers and pods that
//! are gone are dropped on every list so the table does not grow under pod churn.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::node::Node;
use super::readings::u64v;

use crate::cgroup::{self, Cgroup, Sample};
use crate::cri;
use crate::error::Result;
use crate::store::{Container, Phase, Sandbox};
use crate::task::now_ns;

fn cgroup_root() -> &'static Path {
    Path::new(cgroup::ROOT)
}

/// The container's cgroup, as located at start; a container started by an older peapod is
/// found from its process.
fn container_cgroup(c: &Container) -> Option<Cgroup> {
    let st = c.state();
    st.cgroup.or_else(|| {
        (st.pid != 0)
            .then(|| Cgroup::of_container(None, st.pid))
            .flatten()
    })
}

fn memory_usage(s: &Sample, at_ns: i64) -> Option<cri::MemoryUsage> {
    let m = s.memory?;
    Some(cri::MemoryUsage {
        timestamp: at_ns,
        working_set_bytes: Some(u64v(m.working_set)),
        available_bytes: Some(u64v(m.limit.map_or(0, |l| l.saturating_sub(m.working_set)))),
        usage_bytes: Some(u64v(m.usage)),
        rss_bytes: Some(u64v(m.rss)),
        page_faults: Some(u64v(m.page_faults)),
        major_page_faults: Some(u64v(m.major_page_faults)),
    })
}

/// The container's writable layer, from the snapshot usage cache (refreshed in the
/// background, as containerd's CRI plugin does); with `fresh`, read now (a single
/// ContainerStats or PodSandboxStats: someone is looking at this one container). None when
/// the snapshot is gone (the container was removed meanwhile).
async fn writable_layer(
    node: &Node,
    id: &str,
    fresh: bool,
) -> Result<Option<cri::FilesystemUsage>> {
    let cache = node.images.usage();
    let Some(u) = cache.of(id, fresh).await? else {
        return Ok(None);
    };
    let mountpoint = cache.root().await.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "snapshotter root unknown");
        String::new()
    });
    Ok(Some(cri::FilesystemUsage {
        timestamp: u.at_ns,
        fs_id: Some(cri::FilesystemIdentifier { mountpoint }),
        used_bytes: Some(u64v(u.bytes)),
        inodes_used: Some(u64v(u.inodes)),
    }))
}

fn attributes(c: &Container) -> cri::ContainerAttributes {
    cri::ContainerAttributes {
        id: c.id.clone(),
        metadata: Some(c.metadata()),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
    }
}

/// Stats of one container, and its cgroup reading (for summing into a pod). A container
/// without a live cgroup (created, exited) has attributes and a writable layer only.
async fn stats_of(
    node: &Node,
    c: &Container,
    fresh: bool,
) -> Result<(cri::ContainerStats, Option<Sample>)> {
    let mut out = cri::ContainerStats {
        attributes: Some(attributes(c)),
        writable_layer: writable_layer(node, &c.id, fresh).await?,
        ..Default::default()
    };
    let mut sample = None;
    if c.phase() == Phase::Running {
        if let Some(cg) = container_cgroup(c) {
            let at = now_ns();
            match cg.sample() {
                Ok(s) => {
                    out.cpu = node.stats.cpu(&c.id, s.cpu_usage_ns, at);
                    out.memory = memory_usage(&s, at);
                    sample = Some(s);
                }
                // The container exited between the phase check and the read.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok((out, sample))
}

pub async fn container_stats(node: &Node, id: &str) -> Result<cri::ContainerStats> {
    let c = node.rt.containers.get(id)?;
    Ok(stats_of(node, &c, true).await?.0)
}

fn container_matches(c: &Container, f: Option<&cri::ContainerStatsFilter>) -> bool {
    let Some(f) = f else { return true };
    (f.id.is_empty() || c.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || c.meta.sandbox_id.starts_with(&f.pod_sandbox_id))
        && crate::store::labels_match(&c.config.labels, &f.label_selector)
}

/// Stats of every running container that matches the filter (kubelet asks for running ones;
/// an exited container has no cgroup to read).
pub async fn list_container_stats(
    node: &Node,
    filter: Option<&cri::ContainerStatsFilter>,
) -> Result<Vec<cri::ContainerStats>> {
    forget_gone(node);
    let cs: Vec<Arc<Container>> = node
        .rt
        .containers
        .all()
        .into_iter()
        .filter(|c| c.state().phase == Phase::Running && container_matches(c, filter))
        .collect();
    let results = futures::future::join_all(cs.iter().map(|c| stats_of(node, c, false))).await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok((s, _)) => out.push(s),
            // Removed while we were reading: it no longer belongs in the list.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| attr_id(a).cmp(attr_id(b)));
    Ok(out)
}

fn attr_id(s: &cri::ContainerStats) -> &str {
    s.attributes.as_ref().map_or("", |a| a.id.as_str())
}

fn forget_gone(node: &Node) {
    let mut live: std::collections::HashSet<String> = node
        .rt
        .containers
        .all()
        .iter()
        .map(|c| c.id.clone())
        .collect();
    live.extend(node.rt.sandboxes.all().iter().map(|s| pod_key(&s.id)));
    node.stats.forget_except(&live);
}

/// Pods and containers share the CPU table; pod keys cannot collide with 64-hex ids.
fn pod_key(id: &str) -> String {
    format!("pod:{id}")
}

/// The pod-level cgroup kubelet made (the sandbox's cgroup parent), if it exists.
fn pod_cgroup(node: &Node, sb: &Sandbox) -> Option<Cgroup> {
    let parent = sb.cgroup_parent();
    let dir = node.host.cgroup_driver.pod_dir(&parent)?;
    let root = cgroup_root();
    Some(Cgroup::at(root, cgroup::is_v2(root), &dir)).filter(|cg| cg.exists())
}

/// Rx/tx counters of one interface in `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes packets errs drop fifo
/// frame compressed multicast tx_bytes packets errs ...`.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            if f.len() < 11 {
                return None;
            }
            Some(NetDev {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

fn network_usage(sb: &Sandbox, at_ns: i64) -> Option<cri::NetworkUsage> {
    if sb.host_network() || sb.pid() == 0 {
        return None;
    }
    let text =
        std::fs::read_to_string(PathBuf::from(format!("/proc/{}/net/dev", sb.pid()))).ok()?;
    let ifaces: Vec<cri::NetworkInterfaceUsage> = parse_net_dev(&text)
        .into_iter()
        .filter(|d| d.name != "lo")
        .map(|d| cri::NetworkInterfaceUsage {
            name: d.name,
            rx_bytes: Some(u64v(d.rx_bytes)),
            rx_errors: Some(u64v(d.rx_errors)),
            tx_bytes: Some(u64v(d.tx_bytes)),
            tx_errors: Some(u64v(d.tx_errors)),
        })
        .collect();
    Some(cri::NetworkUsage {
        timestamp: at_ns,
        default_interface: ifaces.iter().find(|i| i.name == "eth0").cloned(),
        interfaces: ifaces,
    })
}

async fn pod_stats_of(node: &Node, sb: &Sandbox, fresh: bool) -> Result<cri::PodSandboxStats> {
    let containers: Vec<Arc<Container>> = node
        .rt
        .containers
        .in_sandbox(&sb.id)
        .into_iter()
        .filter(|c| c.phase() == Phase::Running)
        .collect();
    let mut per_container = Vec::new();
    let mut summed = Sample::default();
    let results =
        futures::future::join_all(containers.iter().map(|c| stats_of(node, c, fresh))).await;
    for r in results {
        match r {
            Ok((s, sample)) => {
                if let Some(sample) = sample {
                    summed.add(&sample);
                }
                per_container.push(s);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let at = now_ns();
    let root = cgroup_root();
    // Without a pod-level cgroup, the pod is its pause process plus its containers.
    let pod = match pod_cgroup(node, sb).map(|cg| cg.sample()) {
        Some(Ok(s)) => s,
        _ => {
            if sb.pid() != 0 {
                if let Ok(s) =
                    Cgroup::of_pid(root, cgroup::is_v2(root), sb.pid()).and_then(|cg| cg.sample())
                {
                    summed.add(&s);
                }
            }
            summed
        }
    };
    let meta = sb.metadata();
    Ok(cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: Some(meta),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: node.stats.cpu(&pod_key(&sb.id), pod.cpu_usage_ns, at),
            memory: memory_usage(&pod, at),
            network: network_usage(sb, at),
            process: pod.pids.map(|n| cri::ProcessUsage {
                timestamp: at,
                process_count: Some(u64v(n)),
            }),
            containers: per_container,
        }),
        windows: None,
    })
}

pub async fn pod_sandbox_stats(node: &Node, id: &str) -> Result<cri::PodSandboxStats> {
    let sb = node.rt.sandboxes.get(id)?;
    pod_stats_of(node, &sb, true).await
}

/// Stats of every ready pod that matches the filter.
pub async fn list_pod_sandbox_stats(
    node: &Node,
    filter: Option<&cri::PodSandboxStatsFilter>,
) -> Result<Vec<cri::PodSandboxStats>> {
    forget_gone(node);
    let mut sbs: Vec<Arc<Sandbox>> = node
        .rt
        .sandboxes
        .all()
        .into_iter()
        .filter(|s| s.is_ready())
        .filter(|s| match filter {
            None => true,
            Some(f) => {
                (f.id.is_empty() || s.id.starts_with(&f.id))
                    && crate::store::labels_match(&s.config.labels, &f.label_selector)
            }
        })
        .collect();
    sbs.sort_by(|a, b| a.id.cmp(&b.id));
    // Pods gathered concurrently: one slow cgroup read or usage read does not hold up the
    // rest (the writable layers come from the usage cache).
    let results =
        futures::future::join_all(sbs.iter().map(|sb| pod_stats_of(node, sb, false))).await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(s) => out.push(s),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0\n  \
eth0:    5230      40    1    0    0     0          0         0     1092      12    2    0    0     0       0          0\n";
        let devs = parse_net_dev(text);
        assert_eq!(devs.len(), 2);
        assert_eq!(
            devs[1],
            NetDev {
                name: "eth0".into(),
                rx_bytes: 5230,
                rx_errors: 1,
                tx_bytes: 1092,
                tx_errors: 2
            }
        );
    }

    #[test]
    fn memory_usage_reports_available_against_the_limit() {
        let s = Sample {
            memory: Some(cgroup::Memory {
                usage: 100,
                working_set: 60,
                rss: 50,
                page_faults: 3,
                major_page_faults: 1,
                limit: Some(1000),
            }),
            ..Default::default()
        };
        let m = memory_usage(&s, 7).unwrap();
        assert_eq!(m.working_set_bytes, Some(u64v(60)));
        assert_eq!(m.available_bytes, Some(u64v(940)));
        assert_eq!(m.usage_bytes, Some(u64v(100)));
        assert_eq!(m.timestamp, 7);
        assert!(memory_usage(&Sample::default(), 7).is_none());
    }
}
