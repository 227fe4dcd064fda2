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

/// CreateContainer in `pod`, the error returned rather than panicking.
pub async fn try_create(
    rt: &mut Client,
    pod: &Pod,
    c: ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(c),
        sandbox_config: Some(pod.config.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// CreateContainer then StartContainer, the first error returned.
pub async fn try_run(
    rt: &mut Client,
    pod: &Pod,
    c: ContainerConfig,
) -> Result<String, tonic::Status> {
    let id = try_create(rt, pod, c).await?;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

pub async fn start(rt: &mut Client, id: &str) {
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("StartContainer");
}

/// Waits for the container to reach `state`; panics with its status after `secs`.
pub async fn wait_state(
    rt: &mut Client,
    id: &str,
    state: ContainerState,
    secs: u64,
) -> ContainerStatus {
    let start = std::time::Instant::now();
    loop {
        let st = status(rt, id).await;
        if st.state == state as i32 {
            return st;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(secs),
            "container {id} did not reach {state:?}: {st:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub async fn stop_and_remove_pod(rt: &mut Client, id: &str) -> Result<(), tonic::Status> {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    Ok(())
}

/// Stops and removes every pod peapod lists (and so every container).
pub async fn remove_all_pods(rt: &mut Client) {
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    for p in pods {
        if let Err(e) = stop_and_remove_pod(rt, &p.id).await {
            panic!("remove pod {}: {e}", p.id);
        }
    }
}

/// The Status condition of type `t`.
pub fn runtime_condition(s: &StatusResponse, t: &str) -> Option<RuntimeCondition> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == t)
        .cloned()
}
