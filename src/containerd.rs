//! The connection to containerd: one lazily (re)connecting channel, and requests stamped with
//! peapod's namespace (and a lease where the caller holds one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as CtrRuntime;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient,
    introspection_client::IntrospectionClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient, PluginsRequest, SubscribeRequest,
};
use containerd_client::services::v1::{
    Container as CtrContainer, CreateContainerRequest, ListContainersRequest,
};
use containerd_client::types::{Envelope, Mount};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::config::Config;
use crate::containerd_caps::{self, Capabilities, Release};
use crate::error::{ctrd, Error, Result};
use crate::keys::{label, lease_id, type_url};

pub const NAMESPACE_HEADER: &str = "containerd-namespace";
pub const LEASE_HEADER: &str = "containerd-lease";

/// The channel every containerd client is built on: each call is timed and counted.
type ObservedChannel = Observed<Channel>;

#[derive(Clone)]
pub struct Containerd {
    channel: ObservedChannel,
    namespace: String,
    socket: PathBuf,
    /// What the containerd now answering can do, with the identity it was probed for.
    caps: Arc<tokio::sync::Mutex<Option<(String, Capabilities)>>>,
}

impl Containerd {
    /// Builds the channel without dialing: peapod must start (and report RuntimeReady=false)
    /// while containerd is down, and reconnect by itself when it comes back.
    pub fn connect_lazy(socket: &Path, namespace: &str) -> Self {
        let channel = crate::uds::endpoint(Duration::from_secs(5))
            .connect_with_connector_lazy(crate::uds::connector(socket.to_path_buf()));
        Containerd {
            channel: Observed(channel),
            namespace: namespace.to_string(),
            socket: socket.to_path_buf(),
            caps: Default::default(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A request in peapod's namespace.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            r.metadata_mut().insert(NAMESPACE_HEADER, v);
        }
        r
    }

    /// A request in peapod's namespace whose new resources are held by `lease`
    /// until the lease is deleted, so containerd's GC cannot collect them half-made.
    pub fn req_leased<T>(&self, msg: T, lease: &str) -> tonic::Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = MetadataValue::try_from(lease) {
            r.metadata_mut().insert(LEASE_HEADER, v);
        }
        r
    }

    pub fn containers(&self) -> ContainersClient<ObservedChannel> {
        // containerd echoes a created container (spec and CRI config included) back; it
        // takes requests up to 16 MiB by default, so its answers must be readable too.
        ContainersClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn tasks(&self) -> TasksClient<ObservedChannel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<ObservedChannel> {
        ImagesClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn content(&self) -> ContentClient<ObservedChannel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn snapshots(&self) -> SnapshotsClient<ObservedChannel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<ObservedChannel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<ObservedChannel> {
        LeasesClient::new(self.channel.clone())
    }
    pub fn events(&self) -> EventsClient<ObservedChannel> {
        EventsClient::new(self.channel.clone())
    }
    pub fn introspection(&self) -> IntrospectionClient<ObservedChannel> {
        IntrospectionClient::new(self.channel.clone())
    }
    pub fn version_client(&self) -> VersionClient<ObservedChannel> {
        VersionClient::new(self.channel.clone())
    }

    /// containerd's events on `topic` in peapod's namespace, as a stream that ends (or
    /// fails) when the connection breaks; the caller subscribes again.
    pub async fn subscribe(&self, topic: &str) -> Result<tonic::Streaming<Envelope>> {
        let filter = format!("topic==\"{topic}\",namespace==\"{}\"", self.namespace);
        Ok(self
            .events()
            .subscribe(tonic::Request::new(SubscribeRequest {
                filters: vec![filter],
            }))
            .await
            .map_err(ctrd(format!("subscribe to {topic} events")))?
            .into_inner())
    }

    /// Creates the lease that holds an object's snapshot and records while they are made.
    pub async fn create_lease(&self, object_id: &str) -> Result<()> {
        use containerd_client::services::v1::CreateRequest;
        self.leases()
            .create(self.req(CreateRequest {
                id: lease_id(object_id),
                labels: Default::default(),
            }))
            .await
            .map_err(ctrd(format!("create lease for {object_id}")))?;
        Ok(())
    }

    /// Deletes an object's lease; an absent one is fine (removal is idempotent).
    pub async fn delete_lease(&self, object_id: &str) -> Result<()> {
        use containerd_client::services::v1::DeleteRequest;
        let r = self
            .leases()
            .delete(self.req(DeleteRequest {
                id: lease_id(object_id),
                sync: false,
            }))
            .await;
        absent_ok(r, || format!("delete lease of {object_id}"))
    }

    /// The ids of the leases in peapod's namespace.
    pub async fn lease_ids(&self) -> Result<Vec<String>> {
        use containerd_client::services::v1::ListRequest;
        Ok(self
            .leases()
            .list(self.req(ListRequest { filters: vec![] }))
            .await
            .map_err(ctrd("list leases"))?
            .into_inner()
            .leases
            .into_iter()
            .map(|l| l.id)
            .collect())
    }

    /// Deletes a lease by its own id; an absent one is fine.
    pub async fn delete_lease_id(&self, lease: &str) -> Result<()> {
        use containerd_client::services::v1::DeleteRequest;
        let r = self
            .leases()
            .delete(self.req(DeleteRequest {
                id: lease.to_string(),
                sync: false,
            }))
            .await;
        absent_ok(r, || format!("delete lease {lease}"))
    }

    /// Deletes a containerd container record; an absent one is fine.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        use containerd_client::services::v1::DeleteContainerRequest;
        let r = self
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await;
        absent_ok(r, || format!("delete container {id}"))
    }

    /// Removes a snapshot; an absent one is fine.
    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<()> {
        use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
        let r = self
            .snapshots()
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            }))
            .await;
        absent_ok(r, || format!("remove snapshot {key}"))
    }

    /// A container record and its OCI spec, as JSON (what `ctr containers info` shows).
    pub async fn container_with_spec(
        &self,
        id: &str,
    ) -> Result<(
        containerd_client::services::v1::Container,
        serde_json::Value,
    )> {
        use containerd_client::services::v1::GetContainerRequest;
        let ctr = self
            .containers()
            .get(self.req(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(ctrd(format!("get container {id}")))?
            .into_inner()
            .container
            .ok_or_else(|| Error::internal(format!("containerd returned no container {id}")))?;
        let spec = ctr.spec.as_ref().ok_or_else(|| {
            Error::internal(format!("container {id} has no OCI spec in containerd"))
        })?;
        let value = serde_json::from_slice(&spec.value)
            .map_err(|e| Error::internal(format!("container {id}: OCI spec is not JSON: {e}")))?;
        Ok((ctr, value))
    }

    /// What containerd's CRI plugin shows from a container's record in verbose status info
    /// (`runtimeSpec`, `snapshotKey`, `snapshotter`, `runtimeType`, `runtimeOptions`, and
    /// with `image` the image the record names), written into the JSON object `info`.
    pub async fn fill_verbose_info(
        &self,
        id: &str,
        info: &mut serde_json::Value,
        image: bool,
    ) -> Result<()> {
        use serde_json::json;
        let (record, spec) = self.container_with_spec(id).await?;
        info["runtimeSpec"] = spec;
        info["snapshotKey"] = json!(record.snapshot_key);
        info["snapshotter"] = json!(record.snapshotter);
        if image {
            info["image"] = json!(record.image);
        }
        if let Some(r) = record.runtime {
            info["runtimeType"] = json!(r.name);
            info["runtimeOptions"] = r
                .options
                .as_ref()
                .map_or(serde_json::Value::Null, runtime_options_json);
        }
        Ok(())
    }

    /// containerd's version, which doubles as the health check behind RuntimeReady.
    pub async fn version(&self) -> Result<String> {
        Ok(self.version_and_revision().await?.0)
    }

    async fn version_and_revision(&self) -> Result<(String, String)> {
        let mut client = self.version_client();
        match tokio::time::timeout(Duration::from_secs(5), client.version(())).await {
            Ok(Ok(v)) => {
                let v = v.into_inner();
                Ok((v.version, v.revision))
            }
            Ok(Err(s)) => Err(Error::Unavailable(format!(
                "containerd at {} is not reachable: {}",
                self.socket.display(),
                s.message()
            ))),
            Err(_) => Err(Error::Unavailable(format!(
                "containerd at {} did not answer within 5s",
                self.socket.display()
            ))),
        }
    }

    /// What the containerd now answering is and can do (see `containerd_caps`). Probed on
    /// the first call and again when containerd's identity changes (another version, or a
    /// restart: a new pid on 1.7+), so an upgrade under a running peapod is seen.
    pub async fn capabilities(&self) -> Result<Capabilities> {
        let (version, revision) = self.version_and_revision().await?;
        // Identity: version plus the daemon's uuid and pid (1.6 reports no pid).
        let server = tokio::time::timeout(
            Duration::from_secs(5),
            self.introspection().server(tonic::Request::new(())),
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|r| r.into_inner());
        let identity = format!(
            "{version} {revision} {}",
            server
                .as_ref()
                .map(|s| format!("{} {}", s.uuid, s.pid))
                .unwrap_or_default()
        );
        let mut cached = self.caps.lock().await;
        if let Some((id, caps)) = cached.as_ref() {
            if *id == identity {
                return Ok(caps.clone());
            }
        }
        let release = Release::parse(&version);
        let cri_plugins: Vec<String> = containerd_caps::builtin_cri_plugins(release)
            .iter()
            .map(|p| p.to_string())
            .collect();
        // containerd answered its version, so it is up: a failed probe is reported, not
        // cached, and tried again at the next call.
        let (cri_plugins_loaded, complete) = match self.loaded_plugins(&cri_plugins).await {
            Ok(l) => (l, server.is_some()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containerd's plugins");
                (Vec::new(), false)
            }
        };
        let deprecations = if containerd_caps::reports_deprecations(release) {
            server
                .map(|s| {
                    s.deprecations
                        .into_iter()
                        .map(|d| (d.id, d.message))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Default::default()
        };
        let caps = Capabilities {
            release: release.map(|r| r.to_string()),
            version,
            revision,
            cri_plugins,
            cri_plugins_loaded,
            deprecations,
        };
        tracing::debug!(%identity, ?caps, complete, "probed containerd");
        if complete {
            *cached = Some((identity, caps.clone()));
        }
        Ok(caps)
    }

    /// Which of the plugins `ids` (`type.id`) are loaded without an init error.
    async fn loaded_plugins(&self, ids: &[String]) -> Result<Vec<String>> {
        let resp = self
            .introspection()
            .plugins(tonic::Request::new(PluginsRequest {
                filters: Vec::new(),
            }))
            .await
            .map_err(ctrd("introspection plugins"))?
            .into_inner();
        Ok(ids
            .iter()
            .filter(|id| {
                resp.plugins.iter().any(|p| {
                    p.init_err.is_none() && format!("{}.{}", p.r#type, p.id) == id.as_str()
                })
            })
            .cloned()
            .collect())
    }
}

/// A containerd channel whose calls are recorded in [`crate::metrics`]: latency to the
/// response headers (the whole of a unary call; the opening of a stream), and the gRPC code,
/// which containerd sends in the headers when a call fails (trailers-only) and which is
/// `Unavailable` when containerd could not be reached.
#[derive(Clone)]
pub struct Observed<S>(S);

impl<S> tower::Service<http::Request<tonic::body::Body>> for Observed<S>
where
    S: tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
    >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::result::Result<S::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        let start = std::time::Instant::now();
        let fut = self.0.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => crate::metrics::header_code(r.headers()),
                Err(_) => tonic::Code::Unavailable,
            };
            crate::metrics::containerd_call(&path, code, start.elapsed());
            res
        })
    }
}

/// Runtime options as containerd's CRI plugin shows them: the runc shim's decoded, with the
/// proto field names and zero fields left out as Go's JSON does (`{"systemd_cgroup":true}`);
/// options of another type as their type URL, which is all peapod can say of them.
fn runtime_options_json(any: &prost_types::Any) -> serde_json::Value {
    use prost::Message;
    if any.type_url.trim_start_matches("types.googleapis.com/")
        == crate::keys::type_url::RUNC_OPTIONS
    {
        if let Ok(o) = crate::cgroup::driver::RuncOptions::decode(any.value.as_slice()) {
            let mut v = serde_json::Map::new();
            if o.systemd_cgroup {
                v.insert("systemd_cgroup".into(), true.into());
            }
            return serde_json::Value::Object(v);
        }
    }
    serde_json::json!({"@type": any.type_url})
}

fn absent_ok<T>(
    r: std::result::Result<T, tonic::Status>,
    what: impl FnOnce() -> String,
) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(ctrd(what())(s)),
    }
}

/// A pause or workload container's record in containerd, as peapod creates it.
pub struct ContainerRecord<'a> {
    pub id: &'a str,
    /// The image it is made from, by name.
    pub image: &'a str,
    pub labels: HashMap<String, String>,
    pub extensions: HashMap<String, prost_types::Any>,
    /// The OCI runtime spec, as JSON.
    pub spec: Vec<u8>,
    pub created_at: prost_types::Timestamp,
}

/// Which of an object's containerd parts a create has made so far.
#[derive(Debug, Default)]
pub struct Made {
    pub lease: bool,
    pub snapshot: bool,
    pub container: bool,
}

/// The containerd objects behind each sandbox and container peapod makes: a lease named
/// after it, a writable snapshot keyed by its id and held by that lease, and its container
/// record (the same for pause and workload containers, told apart by the kind label).
impl Containerd {
    /// Prepares the object's writable snapshot on `parent` (the image's chain id), held by
    /// its lease. `what` names the object in errors.
    pub async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        id: &str,
        parent: &str,
        what: &str,
    ) -> Result<Vec<Mount>> {
        Ok(self
            .snapshots()
            .prepare(self.req_leased(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: id.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                &lease_id(id),
            ))
            .await
            .map_err(ctrd(format!("prepare snapshot for {what} from {parent}")))?
            .into_inner()
            .mounts)
    }

    /// Creates the container record, held by the object's lease, on the runtime (shim) and
    /// snapshotter of peapod's configuration. `what` names it in errors.
    pub async fn create_container(
        &self,
        config: &Config,
        new: ContainerRecord<'_>,
        what: &str,
    ) -> Result<()> {
        let container = CtrContainer {
            id: new.id.to_string(),
            labels: new.labels,
            image: new.image.to_string(),
            runtime: Some(CtrRuntime {
                name: config.runtime.clone(),
                options: config.cgroup_driver.runc_options(&config.runtime),
            }),
            spec: Some(prost_types::Any {
                type_url: type_url::SPEC.to_string(),
                value: new.spec,
            }),
            snapshotter: config.snapshotter.clone(),
            snapshot_key: new.id.to_string(),
            created_at: Some(new.created_at),
            updated_at: None,
            extensions: new.extensions,
            sandbox: String::new(),
        };
        self.containers()
            .create(self.req_leased(
                CreateContainerRequest {
                    container: Some(container),
                },
                &lease_id(new.id),
            ))
            .await
            .map_err(ctrd(format!("create containerd container for {what}")))?;
        Ok(())
    }

    /// The container records peapod made of one kind (`keys::label::KIND_*`).
    pub async fn list_containers(&self, kind: &str) -> Result<Vec<CtrContainer>> {
        Ok(self
            .containers()
            .list(self.req(ListContainersRequest {
                filters: vec![format!("labels.\"{}\"=={kind}", label::KIND)],
            }))
            .await
            .map_err(ctrd(format!("list the {kind} records")))?
            .into_inner()
            .containers)
    }

    /// Undoes a create cut short: deletes the parts `made` names, record, snapshot, then
    /// lease, going on past a failure (logged with `kind`, e.g. "sandbox"): the caller's
    /// own error is the one reported, and what is left is swept at the next start.
    pub async fn undo_object(&self, snapshotter: &str, id: &str, kind: &str, made: &Made) {
        if made.container {
            if let Err(e) = self.delete_container(id).await {
                tracing::warn!(id, kind, error = %e, "undo: container record");
            }
        }
        if made.snapshot {
            if let Err(e) = self.remove_snapshot(snapshotter, id).await {
                tracing::warn!(id, kind, error = %e, "undo: snapshot");
            }
        }
        if made.lease {
            if let Err(e) = self.delete_lease(id).await {
                tracing::warn!(id, kind, error = %e, "undo: lease");
            }
        }
    }

    /// Deletes the object's container record, snapshot and lease, in that order (its task
    /// must be gone). What is absent already is fine: removal is idempotent.
    pub async fn delete_object(&self, snapshotter: &str, id: &str) -> Result<()> {
        self.delete_container(id).await?;
        self.remove_snapshot(snapshotter, id).await?;
        self.delete_lease(id).await
    }
}

#[cfg(test)]
mod verbose_tests {
    use super::*;

    #[test]
    fn runc_options_show_as_containerd_shows_them() {
        let any = crate::cgroup::Driver::Systemd
            .runc_options("io.containerd.runc.v2")
            .expect("runc options for the systemd driver");
        assert_eq!(
            runtime_options_json(&any),
            serde_json::json!({"systemd_cgroup": true})
        );
        let other = prost_types::Any {
            type_url: "example.com/Other".into(),
            value: vec![1, 2],
        };
        assert_eq!(
            runtime_options_json(&other),
            serde_json::json!({"@type": "example.com/Other"})
        );
    }
}
