//! Writing into containerd's content store (the streaming Write API), the GC reference labels
//! containerd's collector follows, and pull leases.

use std::collections::HashMap;

use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, CreateRequest, DeleteRequest, InfoRequest, Resource,
    UpdateRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::containerd::Containerd;
use crate::error::{ctrd as ctrd_err, Error, Result};
use crate::keys::gc;

/// Bytes sent to containerd per Write message.
const CHUNK: usize = 1 << 20;

/// `containerd.io/gc.ref.content.m.<i>` for each manifest of an index.
pub fn index_labels(manifest_digests: &[String]) -> HashMap<String, String> {
    manifest_digests
        .iter()
        .enumerate()
        .map(|(i, d)| (gc::ref_manifest(i), d.clone()))
        .collect()
}

/// Config and layer references of a manifest.
pub fn manifest_labels(config: &str, layers: &[String]) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = layers
        .iter()
        .enumerate()
        .map(|(i, d)| (gc::ref_layer(i), d.clone()))
        .collect();
    l.insert(gc::REF_CONFIG.into(), config.to_string());
    l
}

/// The config keeps the unpacked snapshot (by top chain id) alive for `snapshotter`.
pub fn config_labels(snapshotter: &str, chain_id: &str) -> HashMap<String, String> {
    let mut l = HashMap::new();
    if !chain_id.is_empty() {
        l.insert(gc::ref_snapshot(snapshotter), chain_id.to_string());
    }
    l
}

pub fn layer_labels(diff_id: &str) -> HashMap<String, String> {
    HashMap::from([(gc::UNCOMPRESSED.to_string(), diff_id.to_string())])
}

/// Creates a lease that expires by itself after a day, should peapod die mid-pull.
pub async fn create_lease(ctrd: &Containerd, id: &str) -> Result<()> {
    let expire =
        rfc3339_seconds(std::time::SystemTime::now() + std::time::Duration::from_secs(86400));
    ctrd.leases()
        .create(ctrd.req(CreateRequest {
            id: id.to_string(),
            labels: HashMap::from([
                (gc::EXPIRE.to_string(), expire),
                (gc::PULL_LEASE.to_string(), "true".to_string()),
            ]),
        }))
        .await
        .map_err(ctrd_err(format!("create lease {id}")))?;
    Ok(())
}

/// Deletes a lease; `sync` waits for containerd's GC to collect what only it held.
pub async fn delete_lease(ctrd: &Containerd, id: &str, sync: bool) -> Result<()> {
    match ctrd
        .leases()
        .delete(ctrd.req(DeleteRequest {
            id: id.to_string(),
            sync,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(ctrd_err(format!("delete lease {id}"))(s)),
    }
}

/// `t` in RFC 3339 to the second, as containerd's `gc.expire` label wants it.
fn rfc3339_seconds(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.max(std::time::UNIX_EPOCH)).to_string()
}

/// If `digest` is already in the store: adds it to `lease` (so GC cannot take it mid-pull),
/// sets `labels` on it and returns true.
pub async fn adopt_existing(
    ctrd: &Containerd,
    lease: &str,
    digest: &str,
    labels: &HashMap<String, String>,
) -> Result<bool> {
    let info = match ctrd
        .content()
        .info(ctrd.req(InfoRequest {
            digest: digest.to_string(),
        }))
        .await
    {
        Ok(r) => r.into_inner().info,
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(false),
        Err(s) => return Err(ctrd_err(format!("content info {digest}"))(s)),
    };
    let Some(mut info) = info else {
        return Ok(false);
    };
    ctrd.leases()
        .add_resource(ctrd.req(AddResourceRequest {
            id: lease.to_string(),
            resource: Some(Resource {
                id: digest.to_string(),
                r#type: "content".into(),
            }),
        }))
        .await
        .map_err(ctrd_err(format!("add {digest} to lease {lease}")))?;
    if !labels.is_empty() {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        info.labels = labels.clone();
        ctrd.content()
            .update(ctrd.req(UpdateRequest {
                info: Some(info),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(ctrd_err(format!("label content {digest}")))?;
    }
    Ok(true)
}

/// Aborts an ingest (a half-written blob); absent is fine.
pub async fn abort(ctrd: &Containerd, ingest_ref: &str) {
    if let Err(s) = ctrd
        .content()
        .abort(ctrd.req(AbortRequest {
            r#ref: ingest_ref.to_string(),
        }))
        .await
    {
        if s.code() != tonic::Code::NotFound {
            tracing::debug!(ingest = %ingest_ref, error = %s.message(), "abort ingest");
        }
    }
}

/// One streaming write into the content store, in lockstep (one response per message).
pub struct Writer {
    tx: mpsc::Sender<WriteContentRequest>,
    rx: tonic::Streaming<WriteContentResponse>,
    ingest_ref: String,
    offset: i64,
    buf: Vec<u8>,
}

impl Writer {
    /// Opens the ingest `ingest_ref` under `lease`, discarding any earlier partial write.
    pub async fn open(ctrd: &Containerd, lease: &str, ingest_ref: &str) -> Result<Writer> {
        abort(ctrd, ingest_ref).await;
        let (tx, rx) = mpsc::channel(2);
        tx.send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: ingest_ref.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|_| Error::internal("content writer closed"))?;
        let mut stream = ctrd
            .content()
            .write(ctrd.req_leased(ReceiverStream::new(rx), lease))
            .await
            .map_err(ctrd_err(format!("open content write {ingest_ref}")))?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(ctrd_err(format!("content write {ingest_ref}")))?
            .ok_or_else(|| Error::internal(format!("content write {ingest_ref}: no status")))?;
        Ok(Writer {
            tx,
            rx: stream,
            ingest_ref: ingest_ref.to_string(),
            offset: first.offset,
            buf: Vec::with_capacity(CHUNK),
        })
    }

    async fn roundtrip(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse> {
        let what = format!("content write {}", self.ingest_ref);
        if self.tx.send(req).await.is_err() {
            // The server ended the stream; its status says why.
            return match self.rx.message().await {
                Err(s) => Err(ctrd_err(what)(s)),
                Ok(_) => Err(Error::internal(format!("{what}: stream closed"))),
            };
        }
        self.rx
            .message()
            .await
            .map_err(ctrd_err(what.clone()))?
            .ok_or_else(|| Error::internal(format!("{what}: stream closed")))
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let n = data.len() as i64;
        let resp = self
            .roundtrip(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: self.ingest_ref.clone(),
                offset: self.offset,
                data,
                ..Default::default()
            })
            .await?;
        self.offset += n;
        if resp.offset != self.offset {
            return Err(Error::internal(format!(
                "content write {}: containerd at offset {}, expected {}",
                self.ingest_ref, resp.offset, self.offset
            )));
        }
        Ok(())
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    /// Commits the blob: containerd checks `size` and `digest` and refuses a mismatch.
    /// Content that another writer committed first counts as committed.
    pub async fn commit(
        mut self,
        size: i64,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.flush().await?;
        let r = self
            .roundtrip(WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: self.ingest_ref.clone(),
                offset: self.offset,
                total: size,
                expected: digest.to_string(),
                labels,
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_label_sets() {
        let l = manifest_labels("sha256:c", &["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(l.len(), 3);
        assert_eq!(l["containerd.io/gc.ref.content.config"], "sha256:c");
        assert_eq!(l["containerd.io/gc.ref.content.l.0"], "sha256:a");
        assert_eq!(l["containerd.io/gc.ref.content.l.1"], "sha256:b");
        let l = index_labels(&["sha256:m0".into(), "sha256:m1".into()]);
        assert_eq!(l["containerd.io/gc.ref.content.m.1"], "sha256:m1");
        let l = config_labels("overlayfs", "sha256:chain");
        assert_eq!(l["containerd.io/gc.ref.snapshot.overlayfs"], "sha256:chain");
        assert!(config_labels("overlayfs", "").is_empty());
        assert_eq!(layer_labels("sha256:d")[gc::UNCOMPRESSED], "sha256:d");
    }

    #[test]
    fn rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339_seconds(t), "2023-11-14T22:13:20Z");
    }
}
