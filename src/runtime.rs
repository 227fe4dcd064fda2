//! The runtime context every RPC works through: settings, the containerd connection,
//! and the domain managers.

use std::collections::HashMap;

use crate::config::Config;
use crate::containerd::Containerd;
use crate::cri;
use crate::error::Result;
use crate::image::{ImageStore, Inventory, Puller};
use crate::network::Network;
use crate::sandbox::Sandboxes;
use crate::store::Names;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Runtime {
    pub config: Config,
    pub ctrd: Containerd,
    pub images: ImageStore,
    pub puller: Puller,
    pub network: Network,
    /// Sandbox and container names share one table, as kubelet's names never collide across kinds.
    pub names: Names,
    pub sandboxes: Sandboxes,
    pub containers: crate::container::Containers,
    /// Node facts the container spec depends on, detected once at start-up.
    pub host: crate::spec::HostInfo,
    /// Container lifecycle events for GetContainerEvents subscribers.
    pub events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
    /// Earlier stats readings (CPU rates) and resolved cgroups.
    pub stats: crate::container::stats::StatsCache,
    /// Set once the index has been rebuilt from containerd; until then state-changing and
    /// listing RPCs answer Unavailable rather than act on an empty index.
    recovered: std::sync::atomic::AtomicBool,
    /// Containers whose latest state could not be written to the state directory.
    pub unpersisted: Unpersisted,
}

/// Objects whose state peapod holds in memory but could not write (disk full, read-only
/// state directory), with the last error; Status reports them until the retries succeed.
#[derive(Default)]
pub struct Unpersisted(std::sync::Mutex<std::collections::BTreeMap<String, String>>);

impl Unpersisted {
    pub fn note(&self, id: &str, error: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), error.to_string());
    }

    pub fn clear(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// The number of objects and one of their errors, when there are any.
    pub fn summary(&self) -> Option<(usize, String, String)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .next()
            .map(|(id, e)| (m.len(), id.clone(), e.clone()))
    }
}

impl Runtime {
    pub fn new(config: Config) -> Result<Self> {
        let ctrd = Containerd::connect_lazy(&config.containerd_socket, &config.namespace)?;
        let images = ImageStore::new(ctrd.clone(), &config.snapshotter);
        let puller = Puller::new(&images, &config);
        let network = Network::new(&config);
        let host = crate::spec::HostInfo::from_config(&config);
        Ok(Runtime {
            config,
            ctrd,
            images,
            puller,
            network,
            names: Names::default(),
            sandboxes: Sandboxes::default(),
            containers: Default::default(),
            host,
            events: tokio::sync::broadcast::channel(1024).0,
            stats: Default::default(),
            recovered: std::sync::atomic::AtomicBool::new(false),
            unpersisted: Unpersisted::default(),
        })
    }

    /// The image inventory view over containerd's image store.
    pub fn inventory(&self) -> Inventory<'_> {
        Inventory {
            ctrd: &self.ctrd,
            store: &self.images,
            snapshotter: &self.config.snapshotter,
            sandbox_image: &self.config.sandbox_image,
        }
    }

    pub fn version(&self) -> cri::VersionResponse {
        cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: crate::RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: crate::CRI_VERSION.into(),
        }
    }

    /// RuntimeReady follows containerd's health; NetworkReady a loadable CNI configuration.
    pub async fn status(&self, verbose: bool) -> cri::StatusResponse {
        let mut conditions = Vec::new();
        let mut info = HashMap::new();
        match self.ctrd.capabilities().await {
            Ok(caps) => {
                conditions.push(condition("RuntimeReady", true, "", ""));
                info.insert("containerdVersion".to_string(), caps.version.clone());
                // crictl info prints each value parsed as JSON.
                if let Ok(j) = serde_json::to_string(&caps) {
                    info.insert("containerd".to_string(), j);
                }
            }
            Err(e) => conditions.push(condition(
                "RuntimeReady",
                false,
                "ContainerdUnreachable",
                &e.to_string(),
            )),
        }
        match self.network.status() {
            Ok(name) => {
                conditions.push(condition("NetworkReady", true, "", ""));
                info.insert("cniNetwork".to_string(), name);
            }
            Err(msg) => conditions.push(condition(
                "NetworkReady",
                false,
                "NetworkPluginNotReady",
                &format!("Network plugin returns error: cni plugin not initialized: {msg}"),
            )),
        }
        // Not one of the two conditions kubelet requires, so it does not take the node
        // down; it tells the operator that recorded state is only in memory.
        if let Some((n, id, err)) = self.unpersisted.summary() {
            conditions.push(condition(
                "StatePersisted",
                false,
                "StateWriteFailed",
                &format!(
                    "{n} object(s) hold state peapod could not write to {} (retrying); \
                     e.g. {id}: {err}",
                    self.config.state_dir.display()
                ),
            ));
        }
        if verbose {
            if let Ok(cfg) = serde_json::to_string(&self.config) {
                info.insert("config".to_string(), cfg);
            }
            // Live tokio tasks: a figure that must return to its level after pod churn (a
            // leaked log writer, monitor or exec task shows here first).
            info.insert(
                "tokioAliveTasks".to_string(),
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
                    .to_string(),
            );
        }
        cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures {
                    // Honest: true only when the kernel and runc can both do it.
                    recursive_read_only_mounts: crate::spec::features::recursive_read_only_mounts(),
                    user_namespaces: false,
                }),
            }],
            features: Some(cri::RuntimeFeatures {
                // Strict and Merge are both honoured (spec::user::resolve_user).
                supplemental_groups_policy: true,
            }),
        }
    }

    pub fn runtime_config(&self) -> cri::RuntimeConfigResponse {
        cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::from(self.host.cgroup_driver) as i32,
            }),
        }
    }
}

fn condition(t: &str, ok: bool, reason: &str, message: &str) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: t.into(),
        status: ok,
        reason: reason.into(),
        message: message.into(),
    }
}

impl Runtime {
    /// Rebuilds the in-memory index from containerd and the state directory after a start.
    /// containerd may be down: then recovery is retried until it answers.
    pub async fn recover(self: &Arc<Self>) {
        // No ExecSync outlives the peapod that served it: its FIFOs are leftovers (the shim
        // keeps its own descriptors, so a still-running exec process is not disturbed).
        let exec_dir = self.config.state_dir.join("exec");
        if let Err(e) = std::fs::remove_dir_all(&exec_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %exec_dir.display(), error = %e, "cannot sweep exec FIFOs");
            }
        }
        crate::store::sweep_temp_files(&self.config.state_dir);
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            // Containers after sandboxes: their events carry their sandbox's status.
            let done = async {
                crate::sandbox::lifecycle::recover(self).await?;
                crate::container::lifecycle::recover(self).await
            };
            match done.await {
                Ok(()) => {
                    crate::sandbox::lifecycle::finish_interrupted_stops(self).await;
                    self.sweep_orphan_leases().await;
                    self.recovered
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!("state recovered from containerd");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recovery failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Leases a crashed peapod left: a pull's (no pull outlives the process) and those of
    /// sandboxes or containers whose creation was cut off before containerd had a record of
    /// them. Each holds content or a snapshot from the garbage collector, so each goes, with
    /// the snapshot of the same key. Runs once recovery has rebuilt the index, before serving.
    async fn sweep_orphan_leases(&self) {
        let leases = match self.ctrd.lease_ids().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list leases to sweep orphans");
                return;
            }
        };
        for lease in leases {
            let Some(rest) = lease.strip_prefix("peapod-") else {
                continue;
            };
            let orphan = if rest.starts_with("pull-") {
                true
            } else {
                rest.len() == 64
                    && crate::id::is_valid_ref(rest)
                    && self.sandboxes.get(rest).is_err()
                    && self.containers.get(rest).is_err()
            };
            if !orphan {
                continue;
            }
            if !rest.starts_with("pull-") {
                if let Err(e) = self
                    .ctrd
                    .remove_snapshot(&self.config.snapshotter, rest)
                    .await
                {
                    tracing::warn!(lease = %lease, error = %e, "remove orphan snapshot");
                }
            }
            match self.ctrd.delete_lease_id(&lease).await {
                Ok(()) => tracing::info!(lease = %lease, "removed a lease a crash left behind"),
                Err(e) => tracing::warn!(lease = %lease, error = %e, "remove orphan lease"),
            }
        }
    }

    pub fn require_recovered(&self) -> Result<()> {
        if self.recovered.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(crate::error::Error::Unavailable(format!(
                "peapod is still recovering its state from containerd at {}",
                self.ctrd.socket().display()
            )))
        }
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("sandboxes").join(id)
    }

    /// Kills every container of the pod (no grace: kubelet has already stopped them).
    pub async fn stop_pod_containers(&self, sandbox_id: &str) -> Result<()> {
        crate::container::lifecycle::stop_pod_containers(self, sandbox_id).await
    }

    /// Removes every container of the pod.
    pub async fn remove_pod_containers(&self, sandbox_id: &str) -> Result<()> {
        crate::container::lifecycle::remove_pod_containers(self, sandbox_id).await
    }

    /// Where the stdio FIFOs of containers live (under the state dir, so a test rig's
    /// peapod keeps its own).
    pub fn fifo_dir(&self) -> PathBuf {
        self.config.state_dir.join("fifo")
    }
}
