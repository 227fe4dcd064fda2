//! Reads images out of containerd's image and content stores: manifest (picking the host
//! platform from an index), config, and the chain id of the unpacked root filesystem.

use std::collections::HashMap;

use containerd_client::services::v1::{GetImageRequest, ListImagesRequest, ReadContentRequest};
use containerd_client::types::Descriptor;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;

use crate::containerd::Containerd;
use crate::error::{ctrd, Error, Result};
use crate::image::reference;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What peapod needs to know of one image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The image record's name (a normalised reference).
    pub name: String,
    /// The record's target (manifest or index).
    pub target: Descriptor,
    /// The platform manifest's digest.
    pub manifest_digest: String,
    /// Image id: the config digest.
    pub id: String,
    pub config: ImageConfiguration,
    /// Chain id of the top layer: the committed snapshot a container's rootfs starts from.
    pub chain_id: String,
    /// Sum of the manifest, config and layer sizes.
    pub size: u64,
    pub labels: HashMap<String, String>,
}

#[derive(Clone)]
pub struct ImageStore {
    ctrd: Containerd,
}

impl ImageStore {
    pub fn new(ctrd: Containerd) -> Self {
        ImageStore { ctrd }
    }

    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .ctrd
            .content()
            .read(self.ctrd.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(ctrd(format!("read content {digest}")))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(ctrd(format!("read content {digest}")))?;
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Looks an image up by reference (normalised), digest reference, or image id
    /// (`sha256:<hex>`, bare hex, or a unique id prefix). `Ok(None)` when absent.
    pub async fn find(&self, reference_or_id: &str) -> Result<Option<ImageInfo>> {
        let r = reference_or_id.trim();
        let id_like = r.strip_prefix("sha256:").unwrap_or(r);
        if !id_like.is_empty()
            && id_like.len() <= 64
            && id_like
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && (r.starts_with("sha256:") || id_like.len() == 64)
        {
            return self.find_by_id(id_like).await;
        }
        let name = reference::normalize(r)?;
        self.get_by_name(&name).await
    }

    pub async fn get_by_name(&self, name: &str) -> Result<Option<ImageInfo>> {
        let resp = self
            .ctrd
            .images()
            .get(self.ctrd.req(GetImageRequest {
                name: name.to_string(),
            }))
            .await;
        let image = match resp {
            Ok(r) => match r.into_inner().image {
                Some(i) => i,
                None => return Ok(None),
            },
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(ctrd(format!("get image {name}"))(s)),
        };
        let target = image
            .target
            .ok_or_else(|| Error::internal(format!("image {name} has no target")))?;
        self.describe(image.name, target, image.labels)
            .await
            .map(Some)
    }

    /// All image records, described. Records whose content is missing are skipped with a log.
    pub async fn list(&self) -> Result<Vec<ImageInfo>> {
        let images = self
            .ctrd
            .images()
            .list(self.ctrd.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(ctrd("list images"))?
            .into_inner()
            .images;
        let mut out = Vec::with_capacity(images.len());
        for i in images {
            let Some(target) = i.target else { continue };
            match self.describe(i.name.clone(), target, i.labels).await {
                Ok(info) => out.push(info),
                Err(e) => tracing::debug!(image = %i.name, error = %e, "skipping unreadable image"),
            }
        }
        Ok(out)
    }

    async fn find_by_id(&self, hex_prefix: &str) -> Result<Option<ImageInfo>> {
        let want = format!("sha256:{hex_prefix}");
        let mut hits: Vec<ImageInfo> = self
            .list()
            .await?
            .into_iter()
            .filter(|i| i.id.starts_with(&want))
            .collect();
        hits.sort_by(|a, b| a.name.cmp(&b.name));
        let distinct: std::collections::BTreeSet<&str> =
            hits.iter().map(|i| i.id.as_str()).collect();
        if distinct.len() > 1 {
            return Err(Error::invalid(format!(
                "image id prefix {hex_prefix:?} matches more than one image"
            )));
        }
        Ok(hits.into_iter().next())
    }

    async fn describe(
        &self,
        name: String,
        target: Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<ImageInfo> {
        let (manifest_digest, manifest) = self.platform_manifest(&target).await?;
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self.read_blob(&config_digest).await?;
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .map_err(|e| Error::internal(format!("image {name}: bad config: {e}")))?;
        let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
        let chain_id = chain_id(&diff_ids);
        let size =
            manifest.config().size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
        Ok(ImageInfo {
            name,
            target,
            manifest_digest,
            id: config_digest,
            config,
            chain_id,
            size,
            labels,
        })
    }

    /// Resolves an index to the manifest for this host's platform.
    pub async fn platform_manifest(&self, target: &Descriptor) -> Result<(String, ImageManifest)> {
        let mut desc_digest = target.digest.clone();
        let mut media_type = target.media_type.clone();
        for _ in 0..4 {
            let bytes = self.read_blob(&desc_digest).await?;
            let is_index = media_type == MT_OCI_INDEX
                || media_type == MT_DOCKER_LIST
                || (media_type.is_empty() && looks_like_index(&bytes));
            if !is_index {
                let m = ImageManifest::from_reader(&bytes[..])
                    .map_err(|e| Error::internal(format!("manifest {desc_digest}: {e}")))?;
                return Ok((desc_digest, m));
            }
            let idx = ImageIndex::from_reader(&bytes[..])
                .map_err(|e| Error::internal(format!("index {desc_digest}: {e}")))?;
            let chosen = pick_platform(&idx).ok_or_else(|| {
                Error::not_found(format!(
                    "index {desc_digest} has no manifest for linux/{}",
                    host_arch()
                ))
            })?;
            desc_digest = chosen.0;
            media_type = chosen.1;
        }
        Err(Error::internal(format!(
            "index nesting too deep at {desc_digest}"
        )))
    }
}

fn looks_like_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .map(|v| v.get("manifests").is_some())
        .unwrap_or(false)
}

/// The OCI architecture name of this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Picks linux/<host arch> from an index (a manifest without platform counts as a match).
pub fn pick_platform(idx: &ImageIndex) -> Option<(String, String)> {
    let arch = host_arch();
    let matches = |m: &&oci_spec::image::Descriptor| match m.platform() {
        Some(p) => p.os().to_string() == "linux" && p.architecture().to_string() == arch,
        None => true,
    };
    idx.manifests()
        .iter()
        .find(matches)
        .map(|m| (m.digest().to_string(), m.media_type().to_string()))
}

/// The OCI chain id: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut it = diff_ids.iter();
    let Some(first) = it.next() else {
        return String::new();
    };
    let mut cur = first.clone();
    for d in it {
        let mut h = Sha256::new();
        h.update(format!("{cur} {d}").as_bytes());
        cur = format!("sha256:{}", hex::encode(h.finalize()));
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_follows_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        let mut h = Sha256::new();
        h.update(format!("{a} {b}").as_bytes());
        assert_eq!(
            chain_id(&[a, b]),
            format!("sha256:{}", hex::encode(h.finalize()))
        );
        assert_eq!(chain_id(&[]), "");
    }
}
