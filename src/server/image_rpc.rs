//! ImageService: validation and translation only; the work is in `crate::image`.

use tonic::{Request, Response, Status};

use crate::cri::*;
use crate::error::Error;
use crate::server::Peapod;

fn image_name(spec: Option<&ImageSpec>, rpc: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(i) if !i.is_empty() => Ok(i.to_string()),
        _ => Err(Error::invalid(format!("{rpc}: image is empty")).into()),
    }
}

#[tonic::async_trait]
impl image_service_server::ImageService for Peapod {
    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let req = req.into_inner();
        let filter = req
            .filter
            .as_ref()
            .and_then(|f| f.image.as_ref())
            .map(|s| s.image.as_str());
        let images = self.node.inventory().list(filter).await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref(), "ImageStatus")?;
        let inv = self.node.inventory();
        // An absent image is an empty answer: kubelet then pulls it.
        let resp = match inv.find(&name).await? {
            None => ImageStatusResponse::default(),
            Some(g) => ImageStatusResponse {
                image: Some(inv.to_cri(&g)),
                info: if req.verbose {
                    inv.verbose_info(&g)
                } else {
                    Default::default()
                },
            },
        };
        Ok(Response::new(resp))
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref(), "PullImage")?;
        let image_ref = self.node.puller.pull(&name, req.auth.as_ref()).await?;
        Ok(Response::new(PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref(), "RemoveImage")?;
        self.node.inventory().remove(&name).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(self.node.inventory().fs_info().await?))
    }
}
