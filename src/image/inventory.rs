//! The CRI image inventory over containerd's image store: ImageStatus, ListImages,
//! RemoveImage and ImageFsInfo. One CRI image is every image record sharing a config digest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use containerd_client::services::v1::DeleteImageRequest;

use crate::containerd::Containerd;
use crate::cri;
use crate::error::{ctrd, Result};
use crate::image::reference;
use crate::image::store::{ImageInfo, ImageStore};
use crate::keys;

pub struct Inventory<'a> {
    pub ctrd: &'a Containerd,
    pub store: &'a ImageStore,
    pub snapshotter: &'a str,
    /// The sandbox (pause) image, always reported pinned.
    pub sandbox_image: &'a str,
}

/// The records of one image, grouped by id.
pub struct Group {
    pub records: Vec<Arc<ImageInfo>>,
}

impl Inventory<'_> {
    /// Finds the image `r` names (tag, digest reference or id) with all its records, from
    /// the index.
    pub async fn find(&self, r: &str) -> Result<Option<Group>> {
        let hit = match self.store.lookup(r).await? {
            Some(h) => Some(h),
            None => self.find_by_repo_digest(r).await?,
        };
        let Some(hit) = hit else { return Ok(None) };
        let mut records = self.store.records_of(&hit.id);
        if records.is_empty() {
            records.push(hit);
        }
        Ok(Some(Group { records }))
    }

    /// `repo@digest` for an image whose digest record is missing (e.g. imported by ctr).
    async fn find_by_repo_digest(&self, r: &str) -> Result<Option<Arc<ImageInfo>>> {
        if !r.contains('@') || r.starts_with("sha256:") {
            return Ok(None);
        }
        let name = reference::normalize(r)?;
        let (repo, digest) = name.split_once('@').unwrap_or((&name, ""));
        self.store
            .by_repo_digest(reference::repository(repo), digest)
            .await
    }

    pub async fn list(&self, filter: Option<&str>) -> Result<Vec<cri::Image>> {
        if let Some(f) = filter.filter(|f| !f.is_empty()) {
            return Ok(self
                .find(f)
                .await?
                .map(|g| self.to_cri(&g))
                .into_iter()
                .collect());
        }
        let mut by_id: BTreeMap<String, Vec<Arc<ImageInfo>>> = BTreeMap::new();
        for i in self.store.list().await? {
            by_id.entry(i.id.clone()).or_default().push(i);
        }
        Ok(by_id
            .into_values()
            .map(|mut records| {
                records.sort_by(|a, b| a.name.cmp(&b.name));
                self.to_cri(&Group { records })
            })
            .collect())
    }

    pub fn to_cri(&self, g: &Group) -> cri::Image {
        let first = &g.records[0];
        let mut tags = BTreeSet::new();
        let mut digests = BTreeSet::new();
        let sandbox = reference::normalize(self.sandbox_image).unwrap_or_default();
        let mut pinned = false;
        for r in &g.records {
            if r.labels.get(keys::image::PINNED).map(String::as_str) == Some("pinned") {
                pinned = true;
            }
            if r.name.starts_with("sha256:") {
                continue;
            }
            if r.name.contains('@') {
                digests.insert(r.name.clone());
            } else {
                tags.insert(r.name.clone());
                if r.name == sandbox {
                    pinned = true;
                }
                digests.insert(format!(
                    "{}@{}",
                    reference::repository(&r.name),
                    r.target.digest
                ));
            }
        }
        let (uid, username) = image_user(first);
        cri::Image {
            id: first.id.clone(),
            repo_tags: tags.into_iter().collect(),
            repo_digests: digests.into_iter().collect(),
            size: first.size,
            uid,
            username,
            spec: Some(cri::ImageSpec {
                image: first.id.clone(),
                ..Default::default()
            }),
            pinned,
        }
    }

    /// ImageStatus' `info` in verbose mode: the image config and where it came from.
    pub fn verbose_info(&self, g: &Group) -> HashMap<String, String> {
        let i = &g.records[0];
        let v = serde_json::json!({
            "id": i.id,
            "chainID": i.chain_id,
            "manifestDigest": i.manifest_digest,
            "target": {"mediaType": i.target.media_type, "digest": i.target.digest, "size": i.target.size},
            "records": g.records.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "imageSpec": i.config,
        });
        HashMap::from([("info".to_string(), v.to_string())])
    }

    /// Deletes every record of the image `r` names; the last deletion waits for containerd's
    /// GC so its content and snapshots are gone when this returns. Absent: nothing to do.
    pub async fn remove(&self, r: &str) -> Result<()> {
        let Some(g) = self.find(r).await? else {
            return Ok(());
        };
        let n = g.records.len();
        for (i, rec) in g.records.iter().enumerate() {
            let res = self
                .ctrd
                .images()
                .delete(self.ctrd.req(DeleteImageRequest {
                    name: rec.name.clone(),
                    sync: i + 1 == n,
                    target: None,
                }))
                .await;
            match res {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(ctrd(format!("delete image {}", rec.name))(s)),
            }
            // Now, not when the event comes: the next ImageStatus must not find it.
            self.store.forget(&rec.name).await;
        }
        tracing::info!(image = %g.records[0].id, records = n, "image removed");
        Ok(())
    }

    /// The snapshotter's usage in peapod's namespace (from the usage cache), and its root
    /// directory.
    pub async fn fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        let cache = self.store.usage();
        let mountpoint = cache.root().await.unwrap_or_default();
        let total = cache.total().await?;
        let usage = cri::FilesystemUsage {
            timestamp: total.at_ns,
            fs_id: Some(cri::FilesystemIdentifier { mountpoint }),
            used_bytes: Some(cri::UInt64Value { value: total.bytes }),
            inodes_used: Some(cri::UInt64Value {
                value: total.inodes,
            }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        })
    }

    /// The snapshotter's root directory on the host.
    pub async fn snapshotter_root(&self) -> Result<String> {
        self.store.usage().root().await
    }
}

/// The image's user: a numeric uid (before any `:group`) or a user name.
pub fn image_user(i: &ImageInfo) -> (Option<cri::Int64Value>, String) {
    let user = i
        .config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    parse_user(&user)
}

pub fn parse_user(user: &str) -> (Option<cri::Int64Value>, String) {
    let u = user.split(':').next().unwrap_or_default();
    if u.is_empty() {
        return (None, String::new());
    }
    match u.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, u.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(parse_user(""), (None, String::new()));
        assert_eq!(
            parse_user("1000"),
            (Some(cri::Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(
            parse_user("0:0"),
            (Some(cri::Int64Value { value: 0 }), String::new())
        );
        assert_eq!(parse_user("nobody:nogroup"), (None, "nobody".to_string()));
    }
}
