//! The snapshotter's disk usage, per snapshot, gathered in the background: ImageFsInfo and the
//! writable layer of the stats RPCs answer from this cache instead of asking containerd for
//! every snapshot on every call (on overlayfs each Usage of an active snapshot walks its
//! upper directory).
//!
//! As containerd's CRI plugin does (its snapshot syncer, `stats_collect_period`): every
//! [`PERIOD`] the snapshots are listed and the usage of each active one read again; a
//! committed snapshot (an image layer) cannot change, so its usage is read once. peapod's own
//! pulls and removals mark the cache stale, and the next ImageFsInfo lists again (reading
//! only snapshots it has not seen), so what kubelet sees after a pull or an image removal is
//! already current. A container's writable layer not yet in the cache is read when first
//! asked for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::snapshots::{Info, Kind, ListSnapshotsRequest, UsageRequest};
use containerd_client::services::v1::PluginsRequest;
use tokio_stream::StreamExt;

use crate::containerd::Containerd;
use crate::error::{ctrd, Error, Result};

/// How often the usage of active snapshots is read again (containerd's default
/// `stats_collect_period` is 10 s, as is kubelet's housekeeping interval).
pub const PERIOD: Duration = Duration::from_secs(10);

/// The usage of one snapshot at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
    /// When it was read, in nanoseconds since the epoch.
    pub at_ns: i64,
}

#[derive(Debug, Clone)]
struct Entry {
    usage: Usage,
    active: bool,
    /// The snapshot's `updated` time when it was read: a committed snapshot whose time is
    /// unchanged need not be read again.
    updated: Option<(i64, i32)>,
}

#[derive(Default)]
struct Table {
    by_key: HashMap<String, Entry>,
    /// Snapshots were added or removed by peapod since the last listing.
    stale: bool,
}

pub struct SnapshotUsage {
    ctrd: Containerd,
    snapshotter: String,
    table: Mutex<Table>,
    /// One listing at a time.
    listing: tokio::sync::Mutex<()>,
    /// The snapshotter's root directory, found once.
    root: Mutex<Option<String>>,
}

impl SnapshotUsage {
    pub fn new(ctrd: Containerd, snapshotter: &str) -> Self {
        SnapshotUsage {
            ctrd,
            snapshotter: snapshotter.to_string(),
            table: Mutex::new(Table {
                stale: true,
                ..Default::default()
            }),
            listing: tokio::sync::Mutex::new(()),
            root: Mutex::new(None),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Each change is one map operation: a poisoned table is still whole.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Snapshots were added or removed (a pull, an image removal): the next ImageFsInfo
    /// lists them again.
    pub fn mark_stale(&self) {
        self.table().stale = true;
    }

    /// Drops the entry of a removed snapshot (a removed container's writable layer).
    pub fn forget(&self, key: &str) {
        let mut t = self.table();
        t.by_key.remove(key);
        // A listing under way may still have it.
        t.stale = true;
    }

    /// Refreshes the cache every [`PERIOD`] for as long as peapod runs.
    pub fn spawn(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.refresh(true).await {
                    tracing::debug!(error = %e, "snapshot usage not refreshed");
                }
            }
        });
    }

    /// Lists the snapshots: new ones are read, gone ones dropped, and with `reread_active`
    /// active ones read again.
    async fn refresh(&self, reread_active: bool) -> Result<()> {
        let _one = self.listing.lock().await;
        // Cleared before listing: a change made while we list marks it stale again.
        self.table().stale = false;
        let infos = match self.list().await {
            Ok(i) => i,
            Err(e) => {
                self.table().stale = true;
                return Err(e);
            }
        };
        let mut next = HashMap::with_capacity(infos.len());
        for info in infos {
            let active = info.kind == Kind::Active as i32;
            let updated = info.updated_at.as_ref().map(|t| (t.seconds, t.nanos));
            let known = self.table().by_key.get(&info.name).cloned();
            let keep = known.filter(|k| {
                k.active == active && k.updated == updated && !(active && reread_active)
            });
            let entry = match keep {
                Some(k) => k,
                None => match self.read(&info.name).await {
                    Ok(Some(usage)) => Entry {
                        usage,
                        active,
                        updated,
                    },
                    // Removed between the listing and the read.
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(snapshot = %info.name, error = %e, "snapshot usage");
                        continue;
                    }
                },
            };
            next.insert(info.name, entry);
        }
        self.table().by_key = next;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Info>> {
        let mut stream = self
            .ctrd
            .snapshots()
            .list(self.ctrd.req(ListSnapshotsRequest {
                snapshotter: self.snapshotter.clone(),
                filters: vec![],
            }))
            .await
            .map_err(ctrd("list snapshots"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            out.extend(batch.map_err(ctrd("list snapshots"))?.info);
        }
        Ok(out)
    }

    /// One snapshot's usage from containerd; None when it is gone.
    async fn read(&self, key: &str) -> Result<Option<Usage>> {
        let at_ns = now_ns();
        match self
            .ctrd
            .snapshots()
            .usage(self.ctrd.req(UsageRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(u) => {
                let u = u.into_inner();
                Ok(Some(Usage {
                    bytes: u.size.max(0) as u64,
                    inodes: u.inodes.max(0) as u64,
                    at_ns,
                }))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(ctrd(format!("snapshot usage {key}"))(s)),
        }
    }

    /// The usage of snapshot `key` (a container's writable layer), from the cache; read
    /// now when the cache has none yet, or when `fresh` asks for this moment's figure.
    /// None when the snapshot is gone.
    pub async fn of(&self, key: &str, fresh: bool) -> Result<Option<Usage>> {
        if !fresh {
            if let Some(e) = self.table().by_key.get(key) {
                return Ok(Some(e.usage));
            }
        }
        let Some(usage) = self.read(key).await? else {
            self.table().by_key.remove(key);
            return Ok(None);
        };
        let mut t = self.table();
        match t.by_key.get_mut(key) {
            Some(e) => e.usage = usage,
            None => {
                // Listed at the next refresh, which fills in its kind and time.
                t.by_key.insert(
                    key.to_string(),
                    Entry {
                        usage,
                        active: true,
                        updated: None,
                    },
                );
            }
        }
        Ok(Some(usage))
    }

    /// The sum over every snapshot, listed again first if peapod changed them meanwhile.
    pub async fn total(&self) -> Result<Usage> {
        if self.table().stale {
            self.refresh(false).await?;
        }
        let t = self.table();
        Ok(sum(t.by_key.values().map(|e| e.usage)))
    }

    /// The snapshotter's root directory on the host (found once).
    pub async fn root(&self) -> Result<String> {
        if let Some(r) = self.root.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(r);
        }
        let resp = self
            .ctrd
            .introspection()
            .plugins(tonic::Request::new(PluginsRequest {
                filters: vec![format!(
                    "type==io.containerd.snapshotter.v1,id=={}",
                    self.snapshotter
                )],
            }))
            .await
            .map_err(ctrd("introspection plugins"))?
            .into_inner();
        let root = resp
            .plugins
            .into_iter()
            .find_map(|p| p.exports.get("root").cloned())
            .ok_or_else(|| Error::not_found(format!("snapshotter {} root", self.snapshotter)))?;
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) = Some(root.clone());
        Ok(root)
    }
}

/// The sum of several usages, timed by the oldest reading in it.
fn sum(usages: impl Iterator<Item = Usage>) -> Usage {
    let mut total = Usage {
        bytes: 0,
        inodes: 0,
        at_ns: 0,
    };
    for u in usages {
        total.bytes += u.bytes;
        total.inodes += u.inodes;
        if total.at_ns == 0 || u.at_ns < total.at_ns {
            total.at_ns = u.at_ns;
        }
    }
    if total.at_ns == 0 {
        total.at_ns = now_ns();
    }
    total
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_is_as_old_as_its_oldest_reading() {
        let u = |bytes, at_ns| Usage {
            bytes,
            inodes: 1,
            at_ns,
        };
        let s = sum([u(10, 300), u(5, 100), u(1, 200)].into_iter());
        assert_eq!((s.bytes, s.inodes, s.at_ns), (16, 3, 100));
        let empty = sum(std::iter::empty());
        assert_eq!((empty.bytes, empty.inodes), (0, 0));
        assert!(empty.at_ns > 0, "an empty sum is timed now");
    }

    #[tokio::test]
    async fn an_unreachable_containerd_leaves_the_cache_stale() {
        let dir = tempfile::tempdir().unwrap();
        let ctrd = Containerd::connect_lazy(&dir.path().join("absent.sock"), "k8s.io");
        let u = SnapshotUsage::new(ctrd, "overlayfs");
        assert!(u.total().await.is_err());
        assert!(u.table().stale, "retried at the next ImageFsInfo");
        u.table().by_key.insert(
            "c1".into(),
            Entry {
                usage: Usage {
                    bytes: 7,
                    inodes: 1,
                    at_ns: 5,
                },
                active: true,
                updated: None,
            },
        );
        // A cached writable layer answers without containerd.
        assert_eq!(u.of("c1", false).await.unwrap().unwrap().bytes, 7);
        assert!(
            u.of("c1", true).await.is_err(),
            "a fresh reading asks containerd"
        );
        u.forget("c1");
        assert!(u.table().by_key.is_empty());
    }
}
