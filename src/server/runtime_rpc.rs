//! RuntimeService: each RPC validates its request and hands it to the module that owns it:
//! [`pod`] for what spans a pod's sandbox and containers (and the node-level RPCs),
//! [`container`] for one container, the records in [`crate::store`] for List and Status.
//! Recovery is awaited by one layer in front of all of them ([`super::recovery`]).

use tonic::{Request, Response, Status};

use futures::StreamExt;

use crate::container;
use crate::cri::*;
use crate::error::Error;
use crate::pod;
use crate::sandbox;
use crate::server::Peapod;

/// An id field the RPC cannot do without.
fn require_id(id: &str, field: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    Ok(())
}

#[tonic::async_trait]
impl runtime_service_server::RuntimeService for Peapod {
    async fn version(
        &self,
        _req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(self.node.version()))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| Error::invalid("RunPodSandbox: config is required"))?;
        let id = pod::run_sandbox(&self.node, config, req.runtime_handler).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        require_id(&id, "pod_sandbox_id")?;
        pod::stop_sandbox(&self.node, &id).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        require_id(&id, "pod_sandbox_id")?;
        pod::remove_sandbox(&self.node, &id).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let sb = self.rt().sandboxes.get(&req.pod_sandbox_id)?;
        let mut resp = sb.status();
        if req.verbose {
            resp.info = sandbox::inspect::verbose_info(self.rt(), &self.node.network, &sb).await;
        }
        Ok(Response::new(resp))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter;
        Ok(Response::new(ListPodSandboxResponse {
            items: self.rt().sandboxes.list(filter.as_ref()),
        }))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| Error::invalid("CreateContainer: config is required"))?;
        let id = pod::create_container(&self.node, req.pod_sandbox_id, config).await?;
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        require_id(&id, "container_id")?;
        container::lifecycle::start(self.rt().clone(), &id).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.container_id, "container_id")?;
        container::lifecycle::stop(self.rt(), &req.container_id, req.timeout).await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        require_id(&id, "container_id")?;
        container::lifecycle::remove(self.rt(), &id).await?;
        // Its writable layer no longer counts in ImageFsInfo.
        self.node.images.usage().forget(&id);
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = req.into_inner().filter;
        Ok(Response::new(ListContainersResponse {
            containers: self.rt().containers.list(filter.as_ref()),
        }))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.container_id, "container_id")?;
        let c = self.rt().containers.get(&req.container_id)?;
        let info = if req.verbose {
            container::inspect::verbose_info(self.rt(), &c).await
        } else {
            Default::default()
        };
        Ok(Response::new(ContainerStatusResponse {
            status: Some(c.status()),
            info,
        }))
    }

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.container_id, "container_id")?;
        container::update::update_resources(self.rt(), &self.node.host, req).await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = req.into_inner().container_id;
        require_id(&id, "container_id")?;
        container::lifecycle::reopen_log(self.rt(), &id).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.container_id, "container_id")?;
        Ok(Response::new(
            container::exec::exec_sync(self.rt().clone(), req).await?,
        ))
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.container_id, "container_id")?;
        let url = self.streaming.exec_url(self.rt(), req)?;
        Ok(Response::new(ExecResponse { url }))
    }

    async fn attach(
        &self,
        req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.container_id, "container_id")?;
        let url = self.streaming.attach_url(self.rt(), req)?;
        Ok(Response::new(AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let url = self.streaming.port_forward_url(self.rt(), req)?;
        Ok(Response::new(PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = req.into_inner().container_id;
        require_id(&id, "container_id")?;
        Ok(Response::new(ContainerStatsResponse {
            stats: Some(pod::stats::container_stats(&self.node, &id).await?),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = req.into_inner().filter;
        Ok(Response::new(ListContainerStatsResponse {
            stats: pod::stats::list_container_stats(&self.node, filter.as_ref()).await?,
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        require_id(&id, "pod_sandbox_id")?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(pod::stats::pod_sandbox_stats(&self.node, &id).await?),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let filter = req.into_inner().filter;
        Ok(Response::new(ListPodSandboxStatsResponse {
            stats: pod::stats::list_pod_sandbox_stats(&self.node, filter.as_ref()).await?,
        }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        self.node.network.set_pod_cidr(&cidr)?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(
            self.node.status(req.into_inner().verbose).await,
        ))
    }

    async fn checkpoint_container(
        &self,
        _req: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Err(Error::Unimplemented("CheckpointContainer").into())
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _req: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let events = container::events::subscribe(&self.rt().events).map(Ok);
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Err(Error::Unimplemented("ListMetricDescriptors").into())
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        Err(Error::Unimplemented("ListPodSandboxMetrics").into())
    }

    async fn runtime_config(
        &self,
        _req: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(self.node.runtime_config()))
    }
}
