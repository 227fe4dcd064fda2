//! Reads images out of containerd's image and content stores: manifest (picking the host
//! platform from an index), config, and the chain id of the unpacked root filesystem.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use containerd_client::services::v1::{GetImageRequest, ListImagesRequest, ReadContentRequest};
use containerd_client::types::Descriptor;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;

use crate::containerd::Containerd;
use crate::error::{ctrd, Error, Result};
pub use crate::image::index::ImageInfo;
use crate::image::index::{Change, Records};
use crate::image::reference;
use crate::image::usage::SnapshotUsage;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The hex part of an image id or id prefix (`sha256:<hex>`, or 64 bare hex characters);
/// None for anything else, which is read as a reference.
fn id_prefix(r: &str) -> Option<&str> {
    let hex = r.strip_prefix("sha256:").unwrap_or(r);
    let is_id = !hex.is_empty()
        && hex.len() <= 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && (r.starts_with("sha256:") || hex.len() == 64);
    is_id.then_some(hex)
}

/// containerd's image records, read through the in-memory [`index`](super::index): the
/// lookups answer from memory; only a name the index does not hold is checked in containerd.
#[derive(Clone)]
pub struct ImageStore {
    ctrd: Containerd,
    index: Arc<Shared>,
    usage: Arc<SnapshotUsage>,
}

#[derive(Default)]
struct Shared {
    records: RwLock<Records>,
    /// Set once the records have been loaded from containerd.
    loaded: AtomicBool,
    /// Changes to the records are made one at a time, so a full synchronisation never
    /// overwrites a record changed while it was reading containerd.
    writer: tokio::sync::Mutex<()>,
}

impl ImageStore {
    pub fn new(ctrd: Containerd, snapshotter: &str) -> Self {
        ImageStore {
            usage: Arc::new(SnapshotUsage::new(ctrd.clone(), snapshotter)),
            ctrd,
            index: Arc::default(),
        }
    }

    pub fn ctrd(&self) -> &Containerd {
        &self.ctrd
    }

    /// The snapshotter's disk usage, cached (image layers and containers' writable layers).
    pub fn usage(&self) -> &Arc<SnapshotUsage> {
        &self.usage
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        // A poisoned lock still guards whole records (each change is one map operation).
        self.index.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Records> {
        self.index
            .records
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the index unless it is loaded: before the first synchronisation (containerd
    /// was down at start) every lookup tries it, and fails as containerd does.
    async fn ensure_loaded(&self) -> Result<()> {
        if self.index.loaded.load(Ordering::Acquire) {
            return Ok(());
        }
        let _w = self.index.writer.lock().await;
        if self.index.loaded.load(Ordering::Acquire) {
            return Ok(());
        }
        self.sync_locked().await.map(|_| ())
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
        Ok(self.lookup(reference_or_id).await?.map(|i| (*i).clone()))
    }

    /// As [`find`](Self::find), without copying the record out of the index.
    pub async fn lookup(&self, reference_or_id: &str) -> Result<Option<Arc<ImageInfo>>> {
        self.ensure_loaded().await?;
        let r = reference_or_id.trim();
        if let Some(hex_prefix) = id_prefix(r) {
            if let Some(hit) = self.read().by_id_prefix(hex_prefix)? {
                return Ok(Some(hit));
            }
            // An image imported a moment ago whose event is still on its way.
            self.sync().await?;
            return self.read().by_id_prefix(hex_prefix);
        }
        let name = reference::normalize(r)?;
        self.get_by_name(&name).await
    }

    pub async fn get_by_name(&self, name: &str) -> Result<Option<Arc<ImageInfo>>> {
        self.ensure_loaded().await?;
        if let Some(hit) = self.read().get(name) {
            return Ok(Some(hit));
        }
        // Absent from the index: confirm with containerd before saying so.
        self.refresh(name).await
    }

    /// Every record of image `id`, by name.
    pub fn records_of(&self, id: &str) -> Vec<Arc<ImageInfo>> {
        self.read().with_id(id)
    }

    /// A record of repository `repo` whose target or manifest digest is `digest`.
    pub async fn by_repo_digest(&self, repo: &str, digest: &str) -> Result<Option<Arc<ImageInfo>>> {
        self.ensure_loaded().await?;
        Ok(self.read().by_repo_digest(repo, digest))
    }

    /// All image records, described. Records whose content is missing are left out.
    pub async fn list(&self) -> Result<Vec<Arc<ImageInfo>>> {
        self.ensure_loaded().await?;
        Ok(self.read().all().cloned().collect())
    }

    /// Reads record `name` from containerd into the index (or drops it from the index when
    /// containerd no longer has it); returns what the index now holds.
    pub async fn refresh(&self, name: &str) -> Result<Option<Arc<ImageInfo>>> {
        let _w = self.index.writer.lock().await;
        let resp = self
            .ctrd
            .images()
            .get(self.ctrd.req(GetImageRequest {
                name: name.to_string(),
            }))
            .await;
        let image = match resp {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(ctrd(format!("get image {name}"))(s)),
        };
        let Some(image) = image else {
            self.write().remove(name);
            return Ok(None);
        };
        let target = image
            .target
            .ok_or_else(|| Error::internal(format!("image {name} has no target")))?;
        let current = self.read().get(name);
        if let Some(c) = current.filter(|c| c.target == target && c.labels == image.labels) {
            return Ok(Some(c));
        }
        let info = Arc::new(
            self.describe_shared(image.name, target, image.labels)
                .await?,
        );
        self.write().insert(info.clone());
        Ok(Some(info))
    }

    /// Drops record `name` from the index (it was deleted).
    pub async fn forget(&self, name: &str) {
        self.usage.mark_stale();
        let _w = self.index.writer.lock().await;
        if self.write().remove(name) {
            tracing::debug!(image = %name, "image record left the index");
        }
    }

    /// Records a record peapod itself just wrote, described from what the pull had at hand.
    pub async fn record(&self, info: ImageInfo) {
        self.usage.mark_stale();
        let _w = self.index.writer.lock().await;
        self.write().insert(Arc::new(info));
    }

    /// Applies one image event.
    pub async fn apply(&self, change: Change) {
        // An image imported or removed by another client brings or takes snapshots.
        self.usage.mark_stale();
        match change {
            Change::Refresh(name) => {
                if let Err(e) = self.refresh(&name).await {
                    tracing::debug!(image = %name, error = %e, "cannot index image record");
                }
            }
            Change::Forget(name) => self.forget(&name).await,
        }
    }

    /// Makes the index match containerd's records: one List call, and a description read
    /// only for records that are new or changed. Returns the number of records indexed.
    pub async fn sync(&self) -> Result<usize> {
        let _w = self.index.writer.lock().await;
        self.sync_locked().await
    }

    /// [`sync`](Self::sync), with the writer lock held by the caller.
    async fn sync_locked(&self) -> Result<usize> {
        let images = self
            .ctrd
            .images()
            .list(self.ctrd.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(ctrd("list images"))?
            .into_inner()
            .images;
        let mut next = Records::default();
        for i in images {
            let Some(target) = i.target else { continue };
            let known = self.read().get(&i.name);
            if let Some(k) = known.filter(|k| k.target == target && k.labels == i.labels) {
                next.insert(k);
                continue;
            }
            let shared = next.described(&target.digest);
            let described = match shared {
                Some(s) => Ok(s.renamed(i.name.clone(), target, i.labels)),
                None => self.describe_shared(i.name.clone(), target, i.labels).await,
            };
            match described {
                Ok(info) => next.insert(Arc::new(info)),
                Err(e) => tracing::debug!(image = %i.name, error = %e, "skipping unreadable image"),
            }
        }
        let n = next.len();
        *self.write() = next;
        self.index.loaded.store(true, Ordering::Release);
        Ok(n)
    }

    /// Describes a record, reusing the description of another record with the same target.
    async fn describe_shared(
        &self,
        name: String,
        target: Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<ImageInfo> {
        let known = self.read().described(&target.digest);
        match known {
            Some(k) => Ok(k.renamed(name, target, labels)),
            None => self.describe(name, target, labels).await,
        }
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
