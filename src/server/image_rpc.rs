//! ImageService: validation and translation only; the work is in `crate::image`.

use tonic::{Request, Response, Status};

use crate::cri::*;
use crate::error::Error;
use crate::server::Peapod;

#[tonic::async_trait]
impl image_service_server::ImageService for Peapod {
    async fn list_images(
        &self,
        _req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Err(Error::Unimplemented("ListImages").into())
    }

    async fn image_status(
        &self,
        _req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        Err(Error::Unimplemented("ImageStatus").into())
    }

    async fn pull_image(
        &self,
        _req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        Err(Error::Unimplemented("PullImage").into())
    }

    async fn remove_image(
        &self,
        _req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Err(Error::Unimplemented("RemoveImage").into())
    }

    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Err(Error::Unimplemented("ImageFsInfo").into())
    }
}
