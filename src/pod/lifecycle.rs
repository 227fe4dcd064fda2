//! The RPCs that span a pod's sandbox and its containers, or a domain module and the images:
//! RunPodSandbox (the sandbox image, then the sandbox), CreateContainer (the container's
//! image, then the container), StopPodSandbox (its containers, then the sandbox) and
//! RemovePodSandbox (the same, then removal of each).
//!
//! A create runs as its own task holding the name reservation: a request cancelled by
//! kubelet's timeout must neither stop it halfway nor free the name while it still runs.

use std::sync::Arc;
use std::time::Duration;

use super::node::Node;
use crate::cri;
use crate::error::{Error, Result};
use crate::image::ImageInfo;
use crate::runtime::Runtime;
use crate::store::{self, Sandbox};
use crate::{container, id, sandbox};

/// How long RemovePodSandbox waits for the background removals of its containers.
const REMOVALS_LIMIT: Duration = Duration::from_secs(60);

pub async fn run_sandbox(
    node: &Arc<Node>,
    config: cri::PodSandboxConfig,
    handler: String,
) -> Result<String> {
    sandbox::lifecycle::validate(&config, &handler)?;
    let meta = config.metadata.clone().unwrap_or_default();
    let name = store::sandbox::reserved_name(&meta);
    let id = id::generate();
    let reservation = node.rt.names.reserve(&name, &id, "pod sandbox")?;
    let node = node.clone();
    let h = tokio::spawn(async move {
        let image = match sandbox_image(&node).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "RunPodSandbox failed");
                return Err(e);
            }
        };
        let new = sandbox::lifecycle::NewSandbox {
            id: &id,
            name: &name,
            image: &image,
            config,
            handler,
        };
        sandbox::lifecycle::create(&node.rt, &node.network, &node.host, new).await?;
        reservation.keep();
        Ok(id)
    });
    h.await
        .map_err(|e| Error::internal(format!("RunPodSandbox task failed: {e}")))?
}

/// The configured sandbox image, pulled first if absent, as containerd's CRI plugin does.
async fn sandbox_image(node: &Node) -> Result<ImageInfo> {
    let name = &node.rt.config.sandbox_image;
    if let Some(i) = node.images.find(name).await? {
        return Ok(i);
    }
    tracing::info!(image = %name, "sandbox image absent; pulling it");
    if let Err(e) = node.puller.pull(name, None).await {
        let status: tonic::Status = e.into();
        return Err(Error::NotFound(format!(
            "sandbox image {name} is not present in containerd namespace {} and pulling it failed: {}; \
             pull or import it",
            node.rt.ctrd.namespace(),
            status.message()
        )));
    }
    node.images
        .find(name)
        .await?
        .ok_or_else(|| Error::not_found(format!("sandbox image {name} vanished after its pull")))
}

pub async fn create_container(
    node: &Arc<Node>,
    sandbox_id: String,
    config: cri::ContainerConfig,
) -> Result<String> {
    container::lifecycle::validate(&config)?;
    if sandbox_id.is_empty() {
        return Err(Error::invalid("pod_sandbox_id must not be empty"));
    }
    // The sandbox config is taken from peapod's own record of the sandbox, not from the
    // request, so a container always matches the sandbox it joins.
    let sb = container::lifecycle::ready_sandbox(&node.rt, &sandbox_id)?;
    let name = store::container::reserved_name(
        &config.metadata.clone().unwrap_or_default(),
        &sb.metadata(),
    );
    let id = id::generate();
    let reservation = node.rt.names.reserve(&name, &id, "container")?;
    let node = node.clone();
    let h = tokio::spawn(async move {
        let image = match container_image(&node, &config).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "CreateContainer failed");
                return Err(e);
            }
        };
        let new = container::lifecycle::NewContainer {
            id: &id,
            name: &name,
            sandbox: &sb,
            image: &image,
            config,
        };
        container::lifecycle::create(&node.rt, &node.host, new).await?;
        reservation.keep();
        Ok(id)
    });
    h.await
        .map_err(|e| Error::internal(format!("CreateContainer task failed: {e}")))?
}

/// The image a container is created from: it must have been pulled.
async fn container_image(node: &Node, config: &cri::ContainerConfig) -> Result<ImageInfo> {
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    node.images.find(&image_name).await?.ok_or_else(|| {
        Error::not_found(format!(
            "image {image_name:?} is not present; pull it first"
        ))
    })
}

pub async fn stop_sandbox(node: &Node, id: &str) -> Result<()> {
    let Some(sb) = node.rt.sandboxes.find(id)? else {
        return Ok(());
    };
    let _g = sb.op.lock().await;
    stop_locked(node, &sb).await
}

async fn stop_locked(node: &Node, sb: &Sandbox) -> Result<()> {
    kill_containers(&node.rt, &sb.id).await?;
    sandbox::lifecycle::stop(&node.rt, &node.network, sb).await
}

pub async fn remove_sandbox(node: &Node, id: &str) -> Result<()> {
    let Some(sb) = node.rt.sandboxes.find(id)? else {
        return Ok(());
    };
    let _g = sb.op.lock().await;
    stop_locked(node, &sb).await?;
    for c in node.rt.containers.in_sandbox(&sb.id) {
        container::lifecycle::remove(&node.rt, &c.id).await?;
        node.images.usage().forget(&c.id);
    }
    // RemoveContainer leaves containerd's objects to a background task: when the pod is
    // gone, so is everything of its containers.
    if !node
        .rt
        .containers
        .removals_settled(&sb.id, REMOVALS_LIMIT)
        .await
    {
        return Err(Error::Unavailable(format!(
            "pod sandbox {}: the removal of its containers from containerd at {} has not \
             finished within {}s; retry",
            sb.id,
            node.rt.ctrd.socket().display(),
            REMOVALS_LIMIT.as_secs()
        )));
    }
    sandbox::lifecycle::remove(&node.rt, &sb).await
}

/// StopPodSandbox: kubelet has stopped the containers gracefully already, so what still
/// runs is killed at once.
async fn kill_containers(rt: &Runtime, sandbox_id: &str) -> Result<()> {
    let all = rt.containers.in_sandbox(sandbox_id);
    let results = futures::future::join_all(all.iter().map(|c| async move {
        // Taking the op lock lets a StartContainer already under way finish first, so its
        // container is killed too rather than left running in a stopped pod.
        let _g = c.op.lock().await;
        container::lifecycle::kill(rt, c).await
    }))
    .await;
    results.into_iter().collect()
}
