//! CRI helpers the container test suites share: a pod handle and a busybox container config.

use std::path::PathBuf;

use peapod::cri::runtime_service_client::RuntimeServiceClient;
use peapod::cri::*;
use tonic::transport::Channel;

use super::{Rig, BUSYBOX};

pub type Client = RuntimeServiceClient<Channel>;

/// A running pod sandbox and the config it was made from (CreateContainer wants both).
#[derive(Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
}

/// Runs the rig's pod config for `name`, edited by `f`.
pub async fn pod_with(
    rig: &Rig,
    rt: &mut Client,
    name: &str,
    f: impl FnOnce(&mut PodSandboxConfig),
) -> Pod {
    let mut config = rig.pod_config(name);
    f(&mut config);
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", rig.peapod_log()))
        .into_inner()
        .pod_sandbox_id;
    Pod {
        id,
        log_dir: PathBuf::from(&config.log_directory),
        config,
    }
}

pub async fn pod(rig: &Rig, rt: &mut Client, name: &str) -> Pod {
    pod_with(rig, rt, name, |_| {}).await
}

/// A busybox container running `sh -c script`, logging to `<name>.log`, labelled with its name.
pub fn config(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: [("container".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

pub async fn status(rt: &mut Client, id: &str) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .expect("ContainerStatus.status")
}
