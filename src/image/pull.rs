//! PullImage, done by peapod itself so one code path serves containerd 1.6, 1.7 and 2.x:
//! resolve through the registry (`registry.rs`) using the hosts.toml endpoints, stream the blobs
//! into containerd's content store under a lease with GC reference labels, unpack the layers
//! into snapshots by chain id, then create the image records and drop the lease.
//!
//! Concurrent pulls of one reference (with the same credentials) share one download; a pull
//! that transfers nothing for `image_pull_progress_timeout_secs` fails and its lease is deleted
//! synchronously, so nothing half-written survives it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use containerd_client::services::v1::{
    snapshots::{
        CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    },
    ApplyRequest, CreateImageRequest, Image, UpdateImageRequest,
};
use containerd_client::types::Descriptor;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::containerd::Containerd;
use crate::cri;
use crate::error::{ctrd, Error, Result};
use crate::image::auth::{self, Credentials};
use crate::image::content::{self, Writer};
use crate::image::hosts;
use crate::image::reference;
use crate::image::registry::{Registry, RegistryError};
use crate::image::store::{self, chain_id, ImageStore};
use crate::keys;

/// Layers downloaded at once per pull.
const PARALLEL_LAYERS: usize = 3;

const ACCEPT: &[&str] = &[
    store::MT_OCI_INDEX,
    store::MT_DOCKER_LIST,
    store::MT_OCI_MANIFEST,
    store::MT_DOCKER_MANIFEST,
];

/// Runs at most one job per key at a time; callers asking for a running key wait for its
/// result. Jobs run as tasks of their own, so a caller that goes away (kubelet's deadline)
/// does not abort the download others wait for, and a later retry joins or restarts it.
pub struct Dedup<T: Clone> {
    running: Arc<StdMutex<HashMap<String, SharedJob<T>>>>,
}

type SharedJob<T> = Shared<BoxFuture<'static, std::result::Result<T, SharedError>>>;

#[derive(Clone, Debug)]
pub struct SharedError(Arc<Error>);

impl<T: Clone> Default for Dedup<T> {
    fn default() -> Self {
        Dedup {
            running: Arc::default(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Dedup<T> {
    pub async fn run<F>(&self, key: &str, job: impl FnOnce() -> F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let fut = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.get(key) {
                Some(f) => {
                    tracing::info!("joining a pull already in progress");
                    f.clone()
                }
                None => {
                    let map = self.running.clone();
                    let k = key.to_string();
                    let job = job();
                    // The job deregisters itself; it cannot run before we insert it, as it
                    // needs the lock we hold.
                    let handle = tokio::spawn(async move {
                        let r = job.await;
                        map.lock().unwrap_or_else(|e| e.into_inner()).remove(&k);
                        r
                    });
                    let fut = async move {
                        match handle.await {
                            Ok(r) => r.map_err(|e| SharedError(Arc::new(e))),
                            Err(j) => Err(SharedError(Arc::new(Error::internal(format!(
                                "pull task failed: {j}"
                            ))))),
                        }
                    }
                    .boxed()
                    .shared();
                    running.insert(key.to_string(), fut.clone());
                    fut
                }
            }
        };
        fut.await.map_err(|e| clone_error(&e.0))
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::AlreadyExists(m) => Error::AlreadyExists(m.clone()),
        Error::FailedPrecondition(m) => Error::FailedPrecondition(m.clone()),
        Error::DeadlineExceeded(m) => Error::DeadlineExceeded(m.clone()),
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
        Error::ResourceExhausted(m) => Error::ResourceExhausted(m.clone()),
        Error::Unimplemented(m) => Error::Unimplemented(m),
        Error::Internal(m) => Error::Internal(m.clone()),
        Error::Containerd { what, status } => Error::Containerd {
            what: what.clone(),
            status: tonic::Status::new(status.code(), status.message()),
        },
    }
}

/// Settings and shared state of the image puller.
pub struct Puller {
    ctrd: Containerd,
    /// Told of every record a pull writes, so the image shows in the index on return.
    images: ImageStore,
    snapshotter: String,
    hosts_dir: PathBuf,
    credentials_file: Option<PathBuf>,
    progress_timeout: Duration,
    running: Dedup<String>,
    /// One writer per blob digest at a time across all pulls.
    blob_locks: Arc<StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Puller {
    pub fn new(images: &ImageStore, config: &Config) -> Self {
        Puller {
            ctrd: images.ctrd().clone(),
            images: images.clone(),
            snapshotter: config.snapshotter.clone(),
            hosts_dir: config.registry_config_dir.clone(),
            credentials_file: config.registry_credentials_file.clone(),
            progress_timeout: config.pull_progress_timeout(),
            running: Dedup::default(),
            blob_locks: Arc::default(),
        }
    }

    /// Pulls `image` and returns its id (config digest).
    pub async fn pull(&self, image: &str, auth: Option<&cri::AuthConfig>) -> Result<String> {
        let name = reference::normalize(image)?;
        let parsed = Parsed::new(&name)?;
        let creds = PullCredentials {
            auth: auth.cloned(),
            file: self.credentials_file.clone(),
        };
        // Fail early on a malformed AuthConfig or credentials file.
        creds.for_registry(&parsed.registry)?;
        // Pulls with different credentials do not share: one must not ride on another's
        // secret. The key is never logged.
        let key = format!("{name}|{:x}", creds.fingerprint());
        let job = self.job(name, parsed, creds);
        self.running.run(&key, move || job.run()).await
    }

    fn job(&self, name: String, parsed: Parsed, creds: PullCredentials) -> PullJob {
        PullJob {
            ctrd: self.ctrd.clone(),
            images: self.images.clone(),
            snapshotter: self.snapshotter.clone(),
            hosts_dir: self.hosts_dir.clone(),
            progress_timeout: self.progress_timeout,
            blob_locks: self.blob_locks.clone(),
            name,
            parsed,
            creds,
        }
    }

    /// Resolves `image` at its registry (mirrors first, as a pull would) without pulling it:
    /// the host that answered and the manifest digest. `peapod check` asks this of the
    /// sandbox image.
    pub async fn resolve(&self, image: &str) -> Result<(String, String)> {
        let name = reference::normalize(image)?;
        let parsed = Parsed::new(&name)?;
        let creds = PullCredentials {
            auth: None,
            file: self.credentials_file.clone(),
        };
        let job = self.job(name, parsed, creds);
        let (_, host, _, digest) = job.resolve(&Progress::new()).await?;
        Ok((host, digest))
    }
}

/// Where a pull's credentials come from. Each endpoint gets only what was given for it: the
/// image's registry the AuthConfig (when it names no other server) or its credentials-file
/// entry; a mirror only an AuthConfig whose `server_address` names it, its own
/// credentials-file entry, or the headers its hosts.toml sets. The registry's credential
/// never reaches a mirror.
#[derive(Clone)]
struct PullCredentials {
    auth: Option<cri::AuthConfig>,
    file: Option<PathBuf>,
}

impl PullCredentials {
    fn lookup(&self, host: &str, is_registry: bool) -> Result<Option<Credentials>> {
        if let Some(a) = &self.auth {
            if let Some(c) = auth::from_auth_config(a, host, is_registry)? {
                return Ok(Some(c));
            }
        }
        match &self.file {
            Some(f) => auth::from_docker_config(f, host),
            None => Ok(None),
        }
    }

    fn for_registry(&self, registry: &str) -> Result<Option<Credentials>> {
        self.lookup(registry, true)
    }

    /// For one endpoint of `registry`: the upstream server is the registry itself.
    fn for_host(&self, registry: &str, h: &hosts::RegistryHost) -> Result<Option<Credentials>> {
        if h.is_server {
            self.for_registry(registry)
        } else {
            self.lookup(&h.host, false)
        }
    }

    /// Tells credentials apart for sharing pulls; stays in memory.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if let Some(a) = &self.auth {
            (
                &a.username,
                &a.password,
                &a.auth,
                &a.server_address,
                &a.identity_token,
                &a.registry_token,
            )
                .hash(&mut h);
        }
        self.file.hash(&mut h);
        h.finish()
    }
}

/// A normalised reference split into its parts.
#[derive(Debug, Clone)]
struct Parsed {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Parsed {
    fn new(name: &str) -> Result<Parsed> {
        let r = reference::parse(name)?;
        Ok(Parsed {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().filter(|t| !t.is_empty()).map(str::to_string),
            digest: r.digest().map(str::to_string),
        })
    }

    /// What to ask the registry for: the digest when there is one (a tag beside it is only
    /// a name for the record), else the tag.
    fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// Bytes received and the time of the last one, shared by a pull's downloads.
struct Progress {
    start: Instant,
    bytes: AtomicU64,
    total: AtomicU64,
    last_ms: AtomicU64,
    /// Set once every byte is in: unpacking is local work the timeout must not cut short.
    downloaded: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            start: Instant::now(),
            bytes: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            downloaded: std::sync::atomic::AtomicBool::new(false),
        }
    }
    fn tick(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One pull: everything it needs, owned, so it can run as its own task.
struct PullJob {
    ctrd: Containerd,
    images: ImageStore,
    snapshotter: String,
    hosts_dir: PathBuf,
    progress_timeout: Duration,
    blob_locks: Arc<StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    name: String,
    parsed: Parsed,
    creds: PullCredentials,
}

/// State of one attempt, for cleanup.
#[derive(Default)]
struct Ingests(StdMutex<HashSet<String>>);

impl PullJob {
    async fn run(self) -> Result<String> {
        let lease = keys::pull_lease_id(&crate::id::generate());
        content::create_lease(&self.ctrd, &lease).await?;
        let progress = Arc::new(Progress::new());
        let ingests = Ingests::default();
        tracing::info!(image = %self.name, "pulling image");
        let result = tokio::select! {
            r = self.pull(&lease, &progress, &ingests) => r,
            e = self.watchdog(&progress) => Err(e),
        };
        crate::metrics::image_pull(
            result.is_ok(),
            progress.bytes.load(Ordering::Relaxed),
            progress.start.elapsed(),
        );
        match result {
            Ok(id) => {
                // The image records now hold everything; the lease's references can go.
                if let Err(e) = content::delete_lease(&self.ctrd, &lease, false).await {
                    tracing::warn!(lease = %lease, error = %e, "delete pull lease");
                }
                tracing::info!(
                    image = %self.name,
                    id = %id,
                    bytes = progress.bytes.load(Ordering::Relaxed),
                    secs = progress.start.elapsed().as_secs_f32(),
                    "pulled image"
                );
                Ok(id)
            }
            Err(e) => {
                let refs: Vec<String> = ingests
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain()
                    .collect();
                for r in refs {
                    content::abort(&self.ctrd, &r).await;
                }
                // Synchronous: when the error reaches kubelet, the half-pulled content is gone.
                if let Err(le) = content::delete_lease(&self.ctrd, &lease, true).await {
                    tracing::warn!(lease = %lease, error = %le, "delete pull lease");
                }
                tracing::warn!(image = %self.name, error = %e, "pull failed");
                Err(e)
            }
        }
    }

    async fn watchdog(&self, progress: &Progress) -> Error {
        let mut last_log = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if progress.idle() >= self.progress_timeout
                && !progress.downloaded.load(Ordering::Relaxed)
            {
                return Error::DeadlineExceeded(format!(
                    "pull of {} made no progress for {}s (received {} of {} bytes); \
                     the registry stalled or is unreachable (see image_pull_progress_timeout_secs)",
                    self.name,
                    self.progress_timeout.as_secs(),
                    progress.bytes.load(Ordering::Relaxed),
                    progress.total.load(Ordering::Relaxed),
                ));
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(
                    image = %self.name,
                    received = progress.bytes.load(Ordering::Relaxed),
                    total = progress.total.load(Ordering::Relaxed),
                    "pull in progress"
                );
            }
        }
    }

    /// The pull proper, under `lease`.
    async fn pull(&self, lease: &str, progress: &Progress, ingests: &Ingests) -> Result<String> {
        let (client, host, top_bytes, top_digest) = self.resolve(progress).await?;
        progress.tick(top_bytes.len() as u64);
        let mut top_media = media_type_of(&top_bytes);
        let mut manifest_bytes = top_bytes.clone();
        let mut manifest_digest = top_digest.clone();
        let mut index_children = Vec::new();
        if is_index(&top_media, &top_bytes) {
            let idx = ImageIndex::from_reader(&top_bytes[..])
                .map_err(|e| Error::internal(format!("{}: bad index: {e}", self.name)))?;
            index_children = idx
                .manifests()
                .iter()
                .map(|m| m.digest().to_string())
                .collect();
            let (d, _) = store::pick_platform(&idx).ok_or_else(|| {
                Error::not_found(format!(
                    "image {} has no manifest for linux/{}",
                    self.name,
                    store::host_arch()
                ))
            })?;
            let (b, _) = client
                .manifest(&d, ACCEPT)
                .await
                .map_err(|e| registry_error(e, &host, &self.name))?;
            verify(&b, &d)?;
            progress.tick(b.len() as u64);
            manifest_bytes = b;
            manifest_digest = d;
        } else if top_media.is_empty() {
            top_media = store::MT_OCI_MANIFEST.into();
        }
        let manifest_media = match media_type_of(&manifest_bytes) {
            m if m.is_empty() => store::MT_OCI_MANIFEST.to_string(),
            m => m,
        };
        let manifest = ImageManifest::from_reader(&manifest_bytes[..]).map_err(|e| {
            Error::invalid(format!(
                "{}: unsupported manifest {manifest_digest} (schema 2 / OCI required): {e}",
                self.name
            ))
        })?;
        let layers = manifest.layers().clone();
        let total = manifest.config().size() + layers.iter().map(|l| l.size()).sum::<u64>();
        progress.total.store(total, Ordering::Relaxed);

        // Config: small, read whole, needed for the diff ids.
        let config_desc = manifest.config().clone();
        let config_digest = config_desc.digest().to_string();
        let mut config_bytes = Vec::new();
        let mut stream = client
            .blob(&config_digest)
            .await
            .map_err(|e| registry_error(e, &host, &self.name))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| registry_error(e, &host, &self.name))?;
            config_bytes.extend_from_slice(&chunk);
            if config_bytes.len() as u64 > config_desc.size().max(1 << 20) {
                return Err(Error::internal(format!(
                    "pull {}: config {config_digest} from {host} is larger than the manifest says",
                    self.name
                )));
            }
        }
        verify(&config_bytes, &config_digest)?;
        progress.tick(config_bytes.len() as u64);
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .map_err(|e| Error::invalid(format!("{}: bad image config: {e}", self.name)))?;
        let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
        if diff_ids.len() != layers.len() {
            return Err(Error::invalid(format!(
                "{}: config lists {} layers, manifest {}",
                self.name,
                diff_ids.len(),
                layers.len()
            )));
        }
        let top_chain = chain_id(&diff_ids);
        let source = HashMap::from([(
            keys::gc::distribution_source(&self.parsed.registry),
            self.parsed.repository.clone(),
        )]);
        let with_source = |mut l: HashMap<String, String>| {
            l.extend(source.clone());
            l
        };
        self.put_small(
            lease,
            ingests,
            &config_digest,
            &config_bytes,
            with_source(content::config_labels(&self.snapshotter, &top_chain)),
        )
        .await?;

        // Layers, in parallel, streamed.
        let (client_ref, host_ref, layers_ref) = (&client, &host, &layers);
        let diff_ref = &diff_ids;
        let with_source_ref = &with_source;
        futures::stream::iter(0..layers.len())
            .map(move |i| async move {
                let labels = with_source_ref(content::layer_labels(&diff_ref[i]));
                self.fetch_layer(
                    client_ref,
                    host_ref,
                    &layers_ref[i],
                    labels,
                    lease,
                    progress,
                    ingests,
                )
                .await
            })
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect::<Vec<()>>()
            .await?;

        let layer_digests: Vec<String> = layers.iter().map(|l| l.digest().to_string()).collect();
        self.put_small(
            lease,
            ingests,
            &manifest_digest,
            &manifest_bytes,
            with_source(content::manifest_labels(&config_digest, &layer_digests)),
        )
        .await?;
        if !index_children.is_empty() {
            self.put_small(
                lease,
                ingests,
                &top_digest,
                &top_bytes,
                with_source(content::index_labels(&index_children)),
            )
            .await?;
        }

        progress.downloaded.store(true, Ordering::Relaxed);
        self.unpack(lease, &layers, &diff_ids).await?;

        let target = Descriptor {
            media_type: if index_children.is_empty() {
                manifest_media
            } else {
                top_media
            },
            digest: top_digest.clone(),
            size: top_bytes.len() as i64,
            annotations: HashMap::new(),
        };
        let repo = format!("{}/{}", self.parsed.registry, self.parsed.repository);
        let mut names = vec![format!("{repo}@{top_digest}")];
        if let Some(t) = &self.parsed.tag {
            names.insert(0, format!("{repo}:{t}"));
        }
        for name in names {
            let labels = self.put_image(&name, &target).await?;
            self.images
                .record(store::ImageInfo {
                    name,
                    target: target.clone(),
                    manifest_digest: manifest_digest.clone(),
                    id: config_digest.clone(),
                    config: config.clone(),
                    chain_id: top_chain.clone(),
                    size: total,
                    labels,
                })
                .await;
        }
        Ok(config_digest)
    }

    /// Finds the first endpoint that resolves the reference; returns its client, its name,
    /// and the top-level manifest (or index) with digest.
    async fn resolve(
        &self,
        progress: &Progress,
    ) -> Result<(Registry, String, bytes::Bytes, String)> {
        let hosts = hosts::hosts_for(&self.hosts_dir, &self.parsed.registry)?;
        let by_digest = self.parsed.digest.is_some();
        let mut last_err = None;
        for h in hosts {
            if !(h.pull && (h.resolve || by_digest)) {
                continue;
            }
            let creds = self.creds.for_host(&self.parsed.registry, &h)?;
            let client = match Registry::new(
                &h,
                &self.parsed.repository,
                creds,
                self.progress_timeout.min(Duration::from_secs(30)),
            ) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(host = %h.host, error = %e, "registry host unusable");
                    last_err = Some(e);
                    continue;
                }
            };
            progress.tick(0);
            let res = client
                .manifest(self.parsed.reference(), ACCEPT)
                .await
                .map_err(|e| registry_error(e, &h.host, &self.name));
            match res {
                Ok((bytes, reported)) => {
                    // A digest reference is what the bytes must hash to; for a tag, the
                    // registry's Docker-Content-Digest is checked, or the bytes define it.
                    let digest = match (&self.parsed.digest, reported) {
                        (Some(d), _) => d.clone(),
                        (None, Some(r)) => r,
                        (None, None) => format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
                    };
                    verify(&bytes, &digest)?;
                    tracing::info!(image = %self.name, host = %h.host, digest = %digest, "resolved");
                    return Ok((client, h.host.clone(), bytes, digest));
                }
                Err(e) => {
                    if !h.is_server {
                        tracing::warn!(image = %self.name, mirror = %h.host, error = %e, "mirror failed; trying the next host");
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            Error::Unavailable(format!(
                "no registry host can resolve {} (check the hosts.toml capabilities)",
                self.name
            ))
        }))
    }

    fn blob_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.blob_locks.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, v| Arc::strong_count(v) > 1);
        m.entry(digest.to_string()).or_default().clone()
    }

    /// Stores a small blob held in memory.
    async fn put_small(
        &self,
        lease: &str,
        ingests: &Ingests,
        digest: &str,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let lock = self.blob_lock(digest);
        let _g = lock.lock().await;
        if content::adopt_existing(&self.ctrd, lease, digest, &labels).await? {
            return Ok(());
        }
        let r = ingest_ref(digest);
        ingests
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.clone());
        let mut w = Writer::open(&self.ctrd, lease, &r).await?;
        w.write(data).await?;
        w.commit(data.len() as i64, digest, labels).await?;
        ingests
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&r);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_layer(
        &self,
        client: &Registry,
        host: &str,
        layer: &oci_spec::image::Descriptor,
        labels: HashMap<String, String>,
        lease: &str,
        progress: &Progress,
        ingests: &Ingests,
    ) -> Result<()> {
        let digest = layer.digest().to_string();
        let lock = self.blob_lock(&digest);
        let _g = lock.lock().await;
        if content::adopt_existing(&self.ctrd, lease, &digest, &labels).await? {
            progress.tick(layer.size());
            tracing::debug!(layer = %digest, "layer already present");
            return Ok(());
        }
        let r = ingest_ref(&digest);
        ingests
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.clone());
        let mut w = Writer::open(&self.ctrd, lease, &r).await?;
        let mut stream = client
            .blob(&digest)
            .await
            .map_err(|e| registry_error(e, host, &self.name))?;
        let mut n = 0u64;
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Error::Unavailable(format!(
                    "pull {}: reading layer {digest} from {host}: {e}",
                    self.name
                ))
            })?;
            n += chunk.len() as u64;
            progress.tick(chunk.len() as u64);
            hasher.update(&chunk);
            w.write(&chunk).await?;
        }
        // Checked here rather than left to containerd's commit, so the error names the
        // registry that sent the bad bytes.
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if digest.starts_with("sha256:") && got != digest {
            return Err(Error::internal(format!(
                "pull {}: layer {digest} from {host} does not match its digest (got {got}, {n} bytes)",
                self.name
            )));
        }
        w.commit(n as i64, &digest, labels).await.map_err(|e| {
            if n != layer.size() {
                Error::internal(format!(
                    "pull {}: layer {digest} from {host} is {n} bytes, the manifest says {}",
                    self.name,
                    layer.size()
                ))
            } else {
                e
            }
        })?;
        ingests
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&r);
        tracing::debug!(layer = %digest, bytes = n, "layer stored");
        Ok(())
    }

    /// Applies each layer onto its parent's snapshot and commits it under its chain id;
    /// layers whose chain id already exists are skipped.
    async fn unpack(
        &self,
        lease: &str,
        layers: &[oci_spec::image::Descriptor],
        diff_ids: &[String],
    ) -> Result<()> {
        let mut parent = String::new();
        for (i, layer) in layers.iter().enumerate() {
            let chain = chain_id(&diff_ids[..=i]);
            if self.snapshot_exists(&chain).await? {
                parent = chain;
                continue;
            }
            let key = format!("extract-{} {chain}", crate::id::generate());
            let mounts = self
                .ctrd
                .snapshots()
                .prepare(self.ctrd.req_leased(
                    PrepareSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
                .map_err(ctrd(format!(
                    "prepare snapshot for layer {}",
                    layer.digest()
                )))?
                .into_inner()
                .mounts;
            let res = async {
                let applied = self
                    .ctrd
                    .diff()
                    .apply(self.ctrd.req_leased(
                        ApplyRequest {
                            diff: Some(Descriptor {
                                media_type: layer.media_type().to_string(),
                                digest: layer.digest().to_string(),
                                size: layer.size() as i64,
                                annotations: HashMap::new(),
                            }),
                            mounts,
                            payloads: HashMap::new(),
                            sync_fs: false,
                        },
                        lease,
                    ))
                    .await
                    .map_err(ctrd(format!("apply layer {}", layer.digest())))?
                    .into_inner()
                    .applied;
                if let Some(a) = applied {
                    if a.digest != diff_ids[i] {
                        return Err(Error::internal(format!(
                            "layer {} unpacks to {}, the config says {}",
                            layer.digest(),
                            a.digest,
                            diff_ids[i]
                        )));
                    }
                }
                match self
                    .ctrd
                    .snapshots()
                    .commit(self.ctrd.req_leased(
                        CommitSnapshotRequest {
                            snapshotter: self.snapshotter.clone(),
                            name: chain.clone(),
                            key: key.clone(),
                            labels: HashMap::new(),
                        },
                        lease,
                    ))
                    .await
                {
                    Ok(_) => Ok(false),
                    // Another pull committed the same chain first.
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(true),
                    Err(s) => Err(ctrd(format!("commit snapshot {chain}"))(s)),
                }
            }
            .await;
            if !matches!(res, Ok(false)) {
                let _ = self
                    .ctrd
                    .snapshots()
                    .remove(self.ctrd.req(RemoveSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        key: key.clone(),
                    }))
                    .await;
            }
            res?;
            tracing::debug!(layer = %layer.digest(), chain = %chain, "layer unpacked");
            parent = chain;
        }
        Ok(())
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match self
            .ctrd
            .snapshots()
            .stat(self.ctrd.req(StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(ctrd(format!("stat snapshot {key}"))(s)),
        }
    }

    /// Creates or updates the image record `name`; returns the labels the record has.
    async fn put_image(&self, name: &str, target: &Descriptor) -> Result<HashMap<String, String>> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::from([(keys::image::MANAGED.to_string(), "managed".to_string())]),
            target: Some(target.clone()),
            created_at: None,
            updated_at: None,
        };
        match self
            .ctrd
            .images()
            .create(self.ctrd.req(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(r) => Ok(r
                .into_inner()
                .image
                .map(|i| i.labels)
                .unwrap_or(image.labels)),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let updated = self
                    .ctrd
                    .images()
                    .update(self.ctrd.req(UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec![
                                "target".into(),
                                format!("labels.{}", keys::image::MANAGED),
                            ],
                        }),
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(ctrd(format!("update image {name}")))?;
                Ok(updated
                    .into_inner()
                    .image
                    .map(|i| i.labels)
                    .unwrap_or_default())
            }
            Err(s) => Err(ctrd(format!("create image {name}"))(s)),
        }
    }
}

fn ingest_ref(digest: &str) -> String {
    keys::pull_lease_id(digest)
}

fn verify(data: &[u8], digest: &str) -> Result<()> {
    let Some(hex_want) = digest.strip_prefix("sha256:") else {
        return Err(Error::invalid(format!(
            "unsupported digest algorithm in {digest}"
        )));
    };
    let got = hex::encode(Sha256::digest(data));
    if got != hex_want {
        return Err(Error::internal(format!(
            "content does not match its digest: expected {digest}, got sha256:{got}"
        )));
    }
    Ok(())
}

fn media_type_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(String::from)
        })
        .unwrap_or_default()
}

fn is_index(media: &str, bytes: &[u8]) -> bool {
    media == store::MT_OCI_INDEX
        || media == store::MT_DOCKER_LIST
        || (media.is_empty()
            && serde_json::from_slice::<serde_json::Value>(bytes)
                .map(|v| v.get("manifests").is_some())
                .unwrap_or(false))
}

/// Maps a registry client error to what kubelet should see, naming the host and saying
/// which hosts.toml setting is likely at fault.
fn registry_error(e: RegistryError, host: &str, name: &str) -> Error {
    match &e {
        RegistryError::Unauthorized { .. } => Error::PermissionDenied(format!(
            "pull {name}: registry {host} refused access (unauthorized): check the pull \
             credentials (AuthConfig or registry_credentials_file): {e}"
        )),
        RegistryError::Status { status, codes, .. } => {
            let codes = codes.join(",").to_ascii_lowercase();
            if matches!(status, 401 | 403)
                || codes.contains("unauthorized")
                || codes.contains("denied")
            {
                Error::PermissionDenied(format!(
                    "pull {name}: registry {host} denied access: check the pull credentials: {e}"
                ))
            } else if *status == 404 || codes.contains("unknown") {
                Error::not_found(format!("pull {name}: not found at {host}: {e}"))
            } else {
                Error::Unavailable(format!("pull {name}: registry {host}: {e}"))
            }
        }
        RegistryError::Transport { .. } => {
            let msg = e.to_string();
            let lower = msg.to_ascii_lowercase();
            if lower.contains("certificaterequired")
                || lower.contains("certificate required")
                || lower.contains("badcertificate")
                || lower.contains("bad certificate")
            {
                Error::Unavailable(format!(
                    "pull {name}: TLS handshake with registry {host} failed: it requires a \
                     client certificate it accepts (hosts.toml `client`): {msg}"
                ))
            } else if lower.contains("invalid peer certificate")
                || lower.contains("unknownissuer")
                || lower.contains("certificate verif")
            {
                Error::Unavailable(format!(
                    "pull {name}: certificate verification of registry {host} failed: trust its \
                     CA with hosts.toml `ca` (or set `skip_verify = true`): {msg}"
                ))
            } else {
                Error::Unavailable(format!(
                    "pull {name}: registry {host} is unreachable: {msg}"
                ))
            }
        }
        RegistryError::Protocol(_) => {
            Error::Unavailable(format!("pull {name}: registry {host}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_jobs_for_one_key_run_once() {
        let d: Arc<Dedup<String>> = Arc::new(Dedup::default());
        let runs = Arc::new(AtomicU64::new(0));
        let mut joins = Vec::new();
        for _ in 0..10 {
            let d = d.clone();
            let runs = runs.clone();
            joins.push(tokio::spawn(async move {
                d.run("k", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok("id".to_string())
                })
                .await
            }));
        }
        for j in joins {
            assert_eq!(j.await.unwrap().unwrap(), "id");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Finished jobs are forgotten: the next call runs again, and its failure is shared.
        let r = d
            .run("k", || async { Err::<String, _>(Error::not_found("gone")) })
            .await;
        assert!(matches!(r, Err(Error::NotFound(_))));
        assert_eq!(
            d.run("k", || async { Ok("again".to_string()) })
                .await
                .unwrap(),
            "again"
        );
    }

    #[tokio::test]
    async fn a_cancelled_caller_does_not_cancel_the_job() {
        let d: Arc<Dedup<String>> = Arc::new(Dedup::default());
        let runs = Arc::new(AtomicU64::new(0));
        let r2 = runs.clone();
        let first = d.run("k", move || async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            r2.fetch_add(1, Ordering::SeqCst);
            Ok("done".to_string())
        });
        assert!(tokio::time::timeout(Duration::from_millis(20), first)
            .await
            .is_err());
        let second = d.run("k", || async { Ok("not run".to_string()) }).await;
        assert_eq!(second.unwrap(), "done");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn splits_references() {
        let p = Parsed::new("docker.io/library/busybox:1.36").unwrap();
        assert_eq!(
            (p.registry.as_str(), p.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(p.tag.as_deref(), Some("1.36"));
        assert!(p.digest.is_none());
        let d = format!("sha256:{}", "a".repeat(64));
        let p = Parsed::new(&format!("127.0.0.1:5000/x/y@{d}")).unwrap();
        assert_eq!(p.registry, "127.0.0.1:5000");
        assert_eq!(p.repository, "x/y");
        assert_eq!(p.tag, None);
        assert_eq!(p.digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn digest_verification() {
        let d = format!("sha256:{}", hex::encode(Sha256::digest(b"abc")));
        assert!(verify(b"abc", &d).is_ok());
        assert!(verify(b"abd", &d).is_err());
    }

    #[test]
    fn errors_map_to_clear_codes() {
        let e = registry_error(
            RegistryError::Unauthorized {
                url: "u".into(),
                detail: "d".into(),
            },
            "r.io",
            "r.io/x:1",
        );
        assert!(matches!(e, Error::PermissionDenied(ref m) if m.contains("r.io")));
        let status = |status, codes: &[&str]| RegistryError::Status {
            status,
            url: "u".into(),
            codes: codes.iter().map(|c| c.to_string()).collect(),
            message: "m".into(),
        };
        let e = registry_error(status(404, &["MANIFEST_UNKNOWN"]), "r.io", "r.io/x:1");
        assert!(matches!(e, Error::NotFound(ref m) if m.contains("r.io/x:1")));
        let e = registry_error(status(400, &["NAME_UNKNOWN"]), "r.io", "r.io/x:1");
        assert!(matches!(e, Error::NotFound(_)));
        let e = registry_error(status(403, &["DENIED"]), "r.io", "r.io/x:1");
        assert!(matches!(e, Error::PermissionDenied(_)));
        let e = registry_error(status(503, &[]), "r.io", "r.io/x:1");
        assert!(matches!(e, Error::Unavailable(_)));
    }

    #[test]
    fn references_ask_for_the_digest_first() {
        let d = format!("sha256:{}", "b".repeat(64));
        let p = Parsed::new(&format!("r.io/a:1@{d}")).unwrap();
        assert_eq!(p.reference(), d);
        assert_eq!(Parsed::new("r.io/a:1").unwrap().reference(), "1");
    }
}
