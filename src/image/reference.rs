//! Docker-style image references, normalised the way kubelet and containerd expect
//! (`busybox` → `docker.io/library/busybox:latest`).

use crate::error::{Error, Result};

/// Normalises a reference to its fully qualified form. A bare image id (`sha256:<hex>` or
/// 64 hex characters) is not a reference and is rejected here; callers check ids first.
pub fn normalize(reference: &str) -> Result<String> {
    let r = reference.trim();
    if r.is_empty() {
        return Err(Error::invalid("image reference is empty"));
    }
    if r.chars()
        .any(|c| c.is_whitespace() || c.is_ascii_uppercase() && !r.contains('@'))
    {
        // Repository names are lowercase; only a tag may hold upper case.
        let (name, _) = split_name(r);
        if name
            .chars()
            .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
        {
            return Err(Error::invalid(format!(
                "invalid image reference {reference:?}"
            )));
        }
    }
    let (name, suffix) = split_name(r);
    if name.is_empty() || name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Err(Error::invalid(format!(
            "invalid image reference {reference:?}"
        )));
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || "._-/:".contains(c);
    if !name.chars().all(valid) {
        return Err(Error::invalid(format!(
            "invalid image reference {reference:?}"
        )));
    }
    let mut parts = name.splitn(2, '/');
    let first = parts.next().unwrap_or_default();
    let rest = parts.next();
    let full = match rest {
        Some(rest) if first.contains('.') || first.contains(':') || first == "localhost" => {
            format!("{first}/{rest}")
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    let full = match full.strip_prefix("docker.io/") {
        Some(rest) if !rest.contains('/') => format!("docker.io/library/{rest}"),
        _ => full,
    };
    match suffix {
        Suffix::None => Ok(format!("{full}:latest")),
        Suffix::Tag(t) => {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(Error::invalid(format!(
                    "invalid tag in image reference {reference:?}"
                )));
            }
            Ok(format!("{full}:{t}"))
        }
        Suffix::Digest(tag, d) => {
            if !is_digest(d) {
                return Err(Error::invalid(format!(
                    "invalid digest in image reference {reference:?}"
                )));
            }
            match tag {
                Some(t) => Ok(format!("{full}:{t}@{d}")),
                None => Ok(format!("{full}@{d}")),
            }
        }
    }
}

/// The repository part of a normalised reference (no tag, no digest).
pub fn repository(normalized: &str) -> &str {
    let no_digest = normalized.split('@').next().unwrap_or(normalized);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

pub fn is_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        Some((alg, hex)) => !alg.is_empty() && !hex.is_empty(),
        None => false,
    }
}

enum Suffix<'a> {
    None,
    Tag(&'a str),
    Digest(Option<&'a str>, &'a str),
}

fn split_name(r: &str) -> (&str, Suffix<'_>) {
    let (main, digest) = match r.split_once('@') {
        Some((m, d)) => (m, Some(d)),
        None => (r, None),
    };
    // A ':' after the last '/' separates the tag; one before it belongs to a registry port.
    let tag_at = main.rfind(':').filter(|&i| !main[i..].contains('/'));
    let (name, tag) = match tag_at {
        Some(i) => (&main[..i], Some(&main[i + 1..])),
        None => (main, None),
    };
    match (tag, digest) {
        (t, Some(d)) => (name, Suffix::Digest(t, d)),
        (Some(t), None) => (name, Suffix::Tag(t)),
        (None, None) => (name, Suffix::None),
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
        ] {
            assert!(normalize(r).is_err(), "{r:?} accepted");
        }
    }
}
