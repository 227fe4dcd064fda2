//! Docker-style image references, normalised the way kubelet and containerd expect
//! (`busybox` → `docker.io/library/busybox:latest`), parsed by the Go `distribution/reference`
//! grammar (`reference/regexp.go` and `normalize.go` in github.com/distribution/reference): a
//! registry is a host name or address with an optional port, so `..` or `/` can never appear
//! in one.
//!
//! Hand-written rather than oci-spec's `distribution::Reference`: that one matches the grammar
//! with one regex whose tag part (`[\w][\w.-]{0,127}`, Unicode `\w` in Rust's regex crate)
//! compiles to a ~7 MiB automaton kept for the life of the process, and its transient peak of
//! ~20 MiB left the allocator's arenas fragmented: together more than peapod's whole memory
//! budget, to parse a few hundred bytes per call. No other crate parses these references
//! without a regex of the same shape. Go's `\w` is ASCII, as it is here.

use crate::error::{Error, Result};

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// `NameTotalLengthMax`: the longest name (domain and path) the grammar allows.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository[:tag][@digest]`.
    pub fn whole(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// Parses and normalises a reference. A bare image id (`sha256:<hex>` or 64 hex characters)
/// is not a reference and is rejected here; callers check ids first.
pub fn parse(reference: &str) -> Result<Reference> {
    let r = reference.trim();
    if r.is_empty() {
        return Err(Error::invalid("image reference is empty"));
    }
    parse_normalized(r)
        .map_err(|why| Error::invalid(format!("invalid image reference {reference:?}: {why}")))
}

fn parse_normalized(r: &str) -> std::result::Result<Reference, &'static str> {
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    // A colon after the last slash starts the tag; one before it belongs to a port.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].find(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    if let Some(t) = tag {
        if !is_tag(t) {
            return Err("invalid tag format");
        }
    }
    if name.is_empty() {
        return Err("repository name must have at least one component");
    }
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("cannot specify 64-byte hexadecimal strings");
    }
    let (registry, repository) = split_domain(name);
    if !registry_matches(registry) {
        return Err("invalid reference format");
    }
    if !is_remote_name(repository) {
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("repository name must be lowercase");
        }
        return Err("invalid reference format");
    }
    let registry = if registry == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        registry
    };
    let repository = if registry == DEFAULT_DOMAIN && !repository.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{repository}")
    } else {
        repository.to_string()
    };
    let tag = match (tag, digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (t, _) => t.map(str::to_string),
    };
    Ok(Reference {
        registry: registry.to_string(),
        repository,
        tag,
        digest: digest.map(str::to_string),
    })
}

/// `splitDockerDomain`: the first component is a registry when it looks like a host (a dot,
/// a port, `localhost`, or upper case, which no repository may hold); else the name is on
/// Docker Hub.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

/// `domainAndPort`: a host name (or `[ipv6]`) with an optional `:port`.
fn registry_matches(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("[]", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = host == "[]" || (!host.is_empty() && host.split('.').all(is_domain_component));
    port_ok && host_ok
}

/// `domainNameComponent`: alphanumerics, with inner hyphens.
fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `remoteName`: path components separated by `/`.
fn is_remote_name(s: &str) -> bool {
    s.split('/').all(is_path_component)
}

/// `pathComponent`: lower-case alphanumerics separated by `.`, `_`, `__` or runs of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__`, or one or more `-`, between alphanumerics.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `tag`: `[\w][\w.-]{0,127}`, `\w` being ASCII letters, digits and `_`.
fn is_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `digestPat`, and a known algorithm with its hex length.
fn check_digest(d: &str) -> std::result::Result<(), &'static str> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err("invalid checksum digest format");
    };
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|c| {
        c.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && c.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid checksum digest format");
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
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
    fn follows_the_go_grammar_at_its_edges() {
        // Docker Hub names and ports that are really tags.
        assert_eq!(
            normalize("test.com:5000").unwrap(),
            "docker.io/library/test.com:5000"
        );
        assert_eq!(
            normalize("a__b-c---d/e.f_g").unwrap(),
            "docker.io/a__b-c---d/e.f_g:latest"
        );
        // A registry may hold upper case, a port, or be an IPv6 address.
        assert_eq!(normalize("Reg.IO/x").unwrap(), "Reg.IO/x:latest");
        assert_eq!(normalize("[::1]:5000/x:1").unwrap(), "[::1]:5000/x:1");
        assert_eq!(normalize("[fe80::1]/x").unwrap(), "[fe80::1]/x:latest");
        let r = parse(&format!("localhost/a/b@sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost", "a/b", None)
        );
        assert_eq!(
            normalize(&format!("x:{}", "t".repeat(128))).unwrap().len(),
            148
        );
        for bad in [
            format!("x:{}", "t".repeat(129)),
            format!("{}/x", "a".repeat(256)),
            "a".repeat(64),
            "x:.t".into(),
            "x:tä".into(),
            "a___b".into(),
            "a_.b".into(),
            "-a".into(),
            "a-".into(),
            "reg-.io/x".into(),
            "reg.io:/x".into(),
            "reg.io:50a/x".into(),
            "[::g]/x".into(),
            "[::1/x".into(),
            format!("x@md5:{}", "a".repeat(32)),
            format!("x@sha256:{}", "a".repeat(63)),
            format!("x@1sha:{}", "a".repeat(64)),
        ] {
            assert!(normalize(&bad).is_err(), "{bad:?} accepted");
        }
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
