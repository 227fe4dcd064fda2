//! The in-memory image index: every image record of peapod's containerd namespace, each
//! described once (platform manifest, config, chain id, size), so ImageStatus, ListImages and
//! the image lookup of CreateContainer and RunPodSandbox answer without a containerd round
//! trip. [`super::ImageStore`] loads it at start and keeps it current with peapod's own pulls
//! and removals; [`super::watch`] follows containerd's image events, so images added or removed by
//! others (`ctr images import`, `kind load`, `ctr images rm`) show without a restart.
//!
//! containerd's CRI plugin keeps the same kind of cache (its image store, fed by its own
//! pulls and by the `/images/` events); a record the index has not heard of yet is looked up
//! in containerd once before an image is called absent, so an import followed at once by a
//! CreateContainer does not depend on the event arriving first.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_client::types::Descriptor;
use oci_spec::image::ImageConfiguration;
use prost::Message;

use crate::error::{Error, Result};

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

impl ImageInfo {
    /// The same image under another record (a tag and its digest record share a target).
    pub fn renamed(
        &self,
        name: String,
        target: Descriptor,
        labels: HashMap<String, String>,
    ) -> Self {
        ImageInfo {
            name,
            target,
            labels,
            ..self.clone()
        }
    }
}

/// The image record names and what each describes.
#[derive(Default)]
pub struct Records {
    by_name: HashMap<String, Arc<ImageInfo>>,
}

impl Records {
    pub fn get(&self, name: &str) -> Option<Arc<ImageInfo>> {
        self.by_name.get(name).cloned()
    }

    pub fn insert(&mut self, info: Arc<ImageInfo>) {
        self.by_name.insert(info.name.clone(), info);
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ImageInfo>> {
        self.by_name.values()
    }

    /// A record with this target already described: another name of the same image (a tag
    /// and its digest record), whose description can be shared instead of read again.
    pub fn described(&self, target_digest: &str) -> Option<Arc<ImageInfo>> {
        self.by_name
            .values()
            .find(|i| i.target.digest == target_digest)
            .cloned()
    }

    /// The one image whose id (`sha256:<hex>`) starts with `sha256:<hex_prefix>`; several
    /// distinct images matching is an error. Of its records, the first by name.
    pub fn by_id_prefix(&self, hex_prefix: &str) -> Result<Option<Arc<ImageInfo>>> {
        let want = format!("sha256:{hex_prefix}");
        let mut hit: Option<&Arc<ImageInfo>> = None;
        for i in self.by_name.values().filter(|i| i.id.starts_with(&want)) {
            match hit {
                Some(h) if h.id != i.id => {
                    return Err(Error::invalid(format!(
                        "image id prefix {hex_prefix:?} matches more than one image"
                    )))
                }
                Some(h) if h.name <= i.name => {}
                _ => hit = Some(i),
            }
        }
        Ok(hit.cloned())
    }

    /// Every record of image `id`, by name.
    pub fn with_id(&self, id: &str) -> Vec<Arc<ImageInfo>> {
        let mut v: Vec<Arc<ImageInfo>> = self
            .by_name
            .values()
            .filter(|i| i.id == id)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A record of repository `repo` whose target or platform manifest is `digest` (the
    /// digest reference of an image whose own digest record is missing, e.g. one imported
    /// by ctr). Of several, the first by name.
    pub fn by_repo_digest(&self, repo: &str, digest: &str) -> Option<Arc<ImageInfo>> {
        self.by_name
            .values()
            .filter(|i| {
                super::reference::repository(&i.name) == repo
                    && (i.target.digest == digest || i.manifest_digest == digest)
            })
            .min_by(|a, b| a.name.cmp(&b.name))
            .cloned()
    }
}

/// containerd's image event topics (`images.ImageCreate` etc. in containerd's
/// `api/events/image.proto`, published by its image service).
pub const TOPIC_CREATE: &str = "/images/create";
pub const TOPIC_UPDATE: &str = "/images/update";
pub const TOPIC_DELETE: &str = "/images/delete";

/// What an image event asks of the index.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// The record may be new or point elsewhere: read it again.
    Refresh(String),
    /// The record is gone.
    Forget(String),
}

/// The change an event envelope carries; None for other topics and undecodable payloads.
pub fn change_of(topic: &str, payload: &[u8]) -> Option<Change> {
    use containerd_client::services::v1::{ImageCreate, ImageDelete, ImageUpdate};
    match topic {
        TOPIC_CREATE => ImageCreate::decode(payload)
            .ok()
            .map(|e| Change::Refresh(e.name)),
        TOPIC_UPDATE => ImageUpdate::decode(payload)
            .ok()
            .map(|e| Change::Refresh(e.name)),
        TOPIC_DELETE => ImageDelete::decode(payload)
            .ok()
            .map(|e| Change::Forget(e.name)),
        _ => None,
    }
    .filter(|c| match c {
        Change::Refresh(n) | Change::Forget(n) => !n.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, id: &str, target: &str) -> Arc<ImageInfo> {
        Arc::new(ImageInfo {
            name: name.into(),
            target: Descriptor {
                digest: target.into(),
                ..Default::default()
            },
            manifest_digest: format!("{target}-m"),
            id: id.into(),
            config: Default::default(),
            chain_id: String::new(),
            size: 1,
            labels: Default::default(),
        })
    }

    fn records() -> Records {
        let mut r = Records::default();
        r.insert(info("localhost/a:1", "sha256:aa11", "sha256:t1"));
        r.insert(info("localhost/a@sha256:t1", "sha256:aa11", "sha256:t1"));
        r.insert(info("localhost/b:1", "sha256:aa22", "sha256:t2"));
        r
    }

    #[test]
    fn an_id_prefix_names_one_image_or_is_ambiguous() {
        let r = records();
        let hit = r.by_id_prefix("aa1").unwrap().unwrap();
        assert_eq!(hit.name, "localhost/a:1", "first record by name");
        assert!(r.by_id_prefix("ff").unwrap().is_none());
        assert!(matches!(
            r.by_id_prefix("aa"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn records_of_an_image_are_grouped_by_id() {
        let r = records();
        let names: Vec<String> = r
            .with_id("sha256:aa11")
            .iter()
            .map(|i| i.name.clone())
            .collect();
        assert_eq!(names, ["localhost/a:1", "localhost/a@sha256:t1"]);
        assert_eq!(r.described("sha256:t2").unwrap().id, "sha256:aa22");
        assert!(r.described("sha256:t3").is_none());
    }

    #[test]
    fn a_digest_reference_finds_a_record_of_its_repository() {
        let mut r = Records::default();
        r.insert(info("localhost/c:1", "sha256:cc", "sha256:t9"));
        assert_eq!(
            r.by_repo_digest("localhost/c", "sha256:t9").unwrap().name,
            "localhost/c:1"
        );
        assert_eq!(
            r.by_repo_digest("localhost/c", "sha256:t9-m").unwrap().name,
            "localhost/c:1",
            "the platform manifest's digest counts too"
        );
        assert!(r.by_repo_digest("localhost/d", "sha256:t9").is_none());
        assert!(r.remove("localhost/c:1"));
        assert!(!r.remove("localhost/c:1"));
        assert!(r.is_empty());
    }

    #[test]
    fn image_events_become_index_changes() {
        use containerd_client::services::v1::{ImageCreate, ImageDelete, ImageUpdate};
        let create = ImageCreate {
            name: "localhost/x:1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let update = ImageUpdate {
            name: "localhost/x:1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let delete = ImageDelete {
            name: "localhost/x:1".into(),
        }
        .encode_to_vec();
        assert_eq!(
            change_of(TOPIC_CREATE, &create),
            Some(Change::Refresh("localhost/x:1".into()))
        );
        assert_eq!(
            change_of(TOPIC_UPDATE, &update),
            Some(Change::Refresh("localhost/x:1".into()))
        );
        assert_eq!(
            change_of(TOPIC_DELETE, &delete),
            Some(Change::Forget("localhost/x:1".into()))
        );
        assert_eq!(change_of("/tasks/exit", &create), None);
        assert_eq!(change_of(TOPIC_CREATE, &[0xff, 0xff]), None);
        assert_eq!(
            change_of(TOPIC_DELETE, &ImageDelete::default().encode_to_vec()),
            None
        );
    }
}
