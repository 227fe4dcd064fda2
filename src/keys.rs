//! Every name peapod shares with containerd, its runc shim and other clients of the same
//! namespace: labels, container extensions and their type URLs, OCI annotations, lease ids
//! and the content store's garbage-collection labels. Recovery and `ctr` read back what
//! creation wrote, so each key is written down once, here.

/// Labels on the containerd containers peapod creates.
pub mod label {
    /// What peapod made a container for: [`KIND_SANDBOX`] or [`KIND_CONTAINER`].
    pub const KIND: &str = "io.peapod.kind";
    pub const KIND_SANDBOX: &str = "sandbox";
    pub const KIND_CONTAINER: &str = "container";
    /// The reserved name, so recovery restores it without the sandbox's record.
    pub const NAME: &str = "io.peapod.name";
    /// A workload container's sandbox id (indexable with a containerd filter).
    pub const SANDBOX_ID: &str = "io.peapod.sandbox-id";
}

/// Container extensions (`Container.extensions`) holding what CRI asked for, and the type URLs
/// of the `Any` each is stored as.
pub mod extension {
    /// The PodSandboxConfig (protobuf).
    pub const SANDBOX_CONFIG: &str = "io.peapod.sandbox.config";
    pub const SANDBOX_CONFIG_TYPE: &str = "type.peapod.io/runtime.v1.PodSandboxConfig";
    /// The CRI ContainerConfig (protobuf).
    pub const CONTAINER_CONFIG: &str = "io.peapod.container.config";
    pub const CONTAINER_CONFIG_TYPE: &str = "type.peapod.io/runtime.v1.ContainerConfig";
    /// What peapod fixed at create (`store::ContainerMeta`, JSON).
    pub const CONTAINER_META: &str = "io.peapod.container.meta";
    pub const CONTAINER_META_TYPE: &str = "type.peapod.io/ContainerMeta";
}

/// containerd's type URLs of the OCI types its API carries as `Any`.
pub mod type_url {
    /// `Container.spec`.
    pub const SPEC: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
    /// `ExecProcessRequest.spec`.
    pub const PROCESS: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
    /// `UpdateTaskRequest.resources`.
    pub const LINUX_RESOURCES: &str =
        "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
    /// `Container.runtime.options` of the runc shim (`containerd.runc.v1.Options`). The shim
    /// decodes them at its start even when they are empty. 1.6 resolves an `Any` through
    /// gogo's registry, which knows the bare message name only:
    /// `types.googleapis.com/containerd.runc.v1.Options` fails every task create there
    /// ("failed to start shim: ... type with url ...: not found"); 1.7 and 2.x take both.
    pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
}

/// OCI annotations containerd's CRI plugin puts on every spec; the runc shim groups a pod's
/// containers into one shim process by [`SANDBOX_ID`], and monitoring tools read the rest.
pub mod annotation {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// Labels on images, as containerd's CRI plugin sets and reads them.
pub mod image {
    /// Marks the images a CRI runtime manages; peapod sets it as containerd's CRI plugin does.
    pub const MANAGED: &str = "io.cri-containerd.image";
    /// Marks an image kubelet's garbage collector must keep.
    pub const PINNED: &str = "io.cri-containerd.pinned";
}

/// Labels containerd's garbage collector follows in the content store, and the labels of
/// the leases that hold a pull's content.
pub mod gc {
    /// A layer blob's uncompressed digest (its diff id).
    pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
    /// A manifest's reference to its config.
    pub const REF_CONFIG: &str = "containerd.io/gc.ref.content.config";
    /// When a lease expires by itself (RFC 3339).
    pub const EXPIRE: &str = "containerd.io/gc.expire";
    /// Marks peapod's pull leases.
    pub const PULL_LEASE: &str = "io.peapod/pull";

    /// An index's reference to its `i`th manifest.
    pub fn ref_manifest(i: usize) -> String {
        format!("containerd.io/gc.ref.content.m.{i}")
    }

    /// A manifest's reference to its `i`th layer.
    pub fn ref_layer(i: usize) -> String {
        format!("containerd.io/gc.ref.content.l.{i}")
    }

    /// A config's reference to its unpacked snapshot in `snapshotter`.
    pub fn ref_snapshot(snapshotter: &str) -> String {
        format!("containerd.io/gc.ref.snapshot.{snapshotter}")
    }

    /// The registry a blob was pulled from (containerd's distribution source label).
    pub fn distribution_source(registry: &str) -> String {
        format!("containerd.io/distribution.source.{registry}")
    }
}

/// The prefix of every lease peapod makes.
const LEASE_PREFIX: &str = "peapod-";
/// The prefix of a pull's lease (and ingest references), after [`LEASE_PREFIX`].
const PULL: &str = "pull-";

/// The lease that holds a sandbox's or container's snapshot and records while they exist.
pub fn lease_id(object_id: &str) -> String {
    format!("{LEASE_PREFIX}{object_id}")
}

/// The lease (and ingest reference) of one pull, named after what it holds.
pub fn pull_lease_id(unique: &str) -> String {
    format!("{LEASE_PREFIX}{PULL}{unique}")
}

/// What one of peapod's leases holds.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseOwner<'a> {
    /// A pull's content.
    Pull,
    /// The sandbox or container with this id.
    Object(&'a str),
}

/// Whose lease `lease` is; None for a lease peapod did not make.
pub fn lease_owner(lease: &str) -> Option<LeaseOwner<'_>> {
    let rest = lease.strip_prefix(LEASE_PREFIX)?;
    if rest.starts_with(PULL) {
        return Some(LeaseOwner::Pull);
    }
    (rest.len() == 64 && crate::id::is_valid_ref(rest)).then_some(LeaseOwner::Object(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_keep_the_names_existing_leases_have() {
        // Recovery and removal find leases made by earlier peapods by these names.
        assert_eq!(lease_id("abc"), "peapod-abc");
        assert_eq!(pull_lease_id("sha256:x"), "peapod-pull-sha256:x");
        assert_eq!(gc::ref_layer(1), "containerd.io/gc.ref.content.l.1");
        let id = "ab".repeat(32);
        assert_eq!(lease_owner(&lease_id(&id)), Some(LeaseOwner::Object(&id)));
        assert_eq!(lease_owner(&pull_lease_id("x")), Some(LeaseOwner::Pull));
        assert_eq!(lease_owner("peapod-short"), None);
        assert_eq!(lease_owner("other-lease"), None);
    }
}
