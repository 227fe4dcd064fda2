//! Docker-style image references, normalised the way kubelet and containerd expect
//! (`busybox` → `docker.io/library/busybox:latest`), on oci-spec's distribution `Reference`
//! (the Go `distribution/reference` grammar): a registry is a host name or address with an
//! optional port, so `..` or `/` can never appear in one.

use oci_spec::distribution::Reference;

use crate::error::{Error, Result};

/// Parses and normalises a reference. A bare image id (`sha256:<hex>` or 64 hex characters)
/// is not a reference and is rejected here; callers check ids first.
pub fn parse(reference: &str) -> Result<Reference> {
    let r = reference.trim();
    if r.is_empty() {
        return Err(Error::invalid("image reference is empty"));
    }
    r.parse::<Reference>()
        .map_err(|e| Error::invalid(format!("invalid image reference {reference:?}: {e}")))
}

/// Normalises a reference to its fully qualified form (`registry/repository[:tag][@digest]`,
/// `:latest` when neither is given).
pub fn normalize(reference: &str) -> Result<String> {
    parse(reference).map(|r| r.whole())
}

/// The repository part of a normalised reference (no tag, no digest).
pub fn repository(normalized: &str) -> &str {
    let no_digest = normalized.split('@').next().unwrap_or(normalized);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("busybox:1.36").unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(normalize("foo/bar").unwrap(), "docker.io/foo/bar:latest");
        assert_eq!(
            normalize("docker.io/busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/x/y:v1").unwrap(),
            "127.0.0.1:5000/x/y:v1"
        );
        assert_eq!(
            normalize("localhost/pause").unwrap(),
            "localhost/pause:latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("busybox@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            repository("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause"
        );
        assert_eq!(repository("127.0.0.1:5000/x"), "127.0.0.1:5000/x");
        assert_eq!(
            normalize("index.docker.io/x/y").unwrap(),
            "docker.io/x/y:latest"
        );
        assert_eq!(
            normalize(&format!("r.io/a:1@{d}")).unwrap(),
            format!("r.io/a:1@{d}")
        );
        assert_eq!(
            normalize("localhost:5000/a/b:V1.2_x").unwrap(),
            "localhost:5000/a/b:V1.2_x"
        );
        let r = parse("127.0.0.1:5000/x/y:1").unwrap();
        assert_eq!((r.registry(), r.repository()), ("127.0.0.1:5000", "x/y"));
    }

    #[test]
    fn rejects_malformed() {
        for r in [
            "",
            "Busybox",
            "a b",
            "busybox@sha256:zz",
            "x:",
            "/x",
            "x//y",
            "x:t@t",
            // Path tricks as a registry or repository.
            "../x/y:1",
            "../../etc/x:1",
            "a/../b",
            "./x/y",
            "reg.io/../x",
            "..:5000/x",
            "reg.io%2F..%2F/x",
            "reg\\io/x",
        ] {
            assert!(normalize(r).is_err(), "{r:?} accepted");
        }
    }
}
