//! The node peapod runs pods on: the shared [`Runtime`] context, plus what the operations
//! that span pods need beyond it (the CNI network, the images, the node's facts, stats
//! readings), and the node-level answers (Version, Status, RuntimeConfig).

use std::collections::HashMap;
use std::sync::Arc;

use super::readings::StatsCache;
use crate::config::Config;
use crate::cri;
use crate::error::Result;
use crate::image::{ImageStore, Inventory, Puller};
use crate::network::Network;
use crate::runtime::Runtime;
use crate::spec::HostInfo;

pub struct Node {
    pub rt: Arc<Runtime>,
    /// Node facts the specs depend on, detected once at start-up.
    pub host: HostInfo,
    pub network: Network,
    pub images: ImageStore,
    pub puller: Puller,
    /// Earlier stats readings (CPU rates).
    pub stats: StatsCache,
}

impl Node {
    pub fn new(config: Config) -> Result<Self> {
        let host = HostInfo::from_config(&config);
        let network = Network::new(&config);
        let rt = Arc::new(Runtime::new(config));
        let images = ImageStore::new(rt.ctrd.clone(), &rt.config.snapshotter);
        Ok(Node {
            puller: Puller::new(&images, &rt.config),
            images,
            rt,
            host,
            network,
            stats: Default::default(),
        })
    }

    /// The image inventory view over containerd's image store.
    pub fn inventory(&self) -> Inventory<'_> {
        Inventory {
            ctrd: &self.rt.ctrd,
            store: &self.images,
            snapshotter: &self.rt.config.snapshotter,
            sandbox_image: &self.rt.config.sandbox_image,
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
        match self.rt.ctrd.capabilities().await {
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
        if let Some((n, id, err)) = self.rt.unpersisted.summary() {
            conditions.push(condition(
                "StatePersisted",
                false,
                "StateWriteFailed",
                &format!(
                    "{n} object(s) hold state peapod could not write to {} (retrying); \
                     e.g. {id}: {err}",
                    self.rt.config.state_dir.display()
                ),
            ));
        }
        if verbose {
            if let Ok(cfg) = serde_json::to_string(&self.rt.config) {
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
