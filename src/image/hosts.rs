//! Registry host configuration in containerd's `hosts.toml` layout, so an operator's existing
//! `/etc/containerd/certs.d` works unchanged.
//!
//! Semantics follow containerd's `remotes/docker/config/hosts.go`: `<dir>/<host>/hosts.toml`
//! (falling back to `<dir>/_default/hosts.toml`) lists `[host."<url>"]` mirrors, tried in file
//! order, then the top-level `server` (default `https://<host>`, `https://registry-1.docker.io`
//! for docker.io). `ca`, `client` and `skip_verify` may be set per host or at the top level
//! (which applies to `server`); relative paths are relative to the host directory.
//!
//! Hand-written on `toml` and `serde`: the layout is containerd's own, and no Rust crate
//! reads it (the registry crates take their mirrors and certificates from code).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// One endpoint a pull may talk to.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// URL path of the API root; `/v2` unless the file says otherwise.
    pub path: String,
    /// May resolve tags to digests (`resolve` capability).
    pub resolve: bool,
    /// May fetch content (`pull` capability).
    pub pull: bool,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    /// Client certificate and key pairs (key `None`: the key is in the certificate file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// True for the upstream registry itself, false for a mirror.
    pub is_server: bool,
    /// Extra request headers (`[host."...".header]`), e.g. a mirror's own Authorization.
    pub headers: Headers,
}

/// hosts.toml headers. Their values may be credentials, so Debug shows only the names.
#[derive(Clone, Default, PartialEq)]
pub struct Headers(pub Vec<(String, String)>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}: <redacted>")))
            .finish()
    }
}

impl RegistryHost {
    pub fn plain_http(&self) -> bool {
        self.scheme == "http"
    }
}

#[derive(Debug, Default, Deserialize)]
struct HostFileEntry {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<ClientCerts>,
    skip_verify: Option<bool>,
    override_path: Option<bool>,
    header: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
struct HostFile {
    server: Option<String>,
    #[serde(flatten)]
    top: HostFileEntry,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClientCerts {
    One(String),
    Pair(Vec<String>),
    Many(Vec<Vec<String>>),
}

/// The default upstream endpoint for `registry` when no file names one.
pub fn default_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://registry-1.docker.io".into()
    } else if is_loopback(registry) {
        // containerd falls back to plain HTTP for local registries; peapod goes there directly.
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Refuses a registry name that is not one plain path component of the hosts directory: the
/// reference grammar already excludes these, but this module is the one that joins the name
/// to a path, so it checks for itself.
pub fn check_registry(registry: &str) -> Result<()> {
    let ok = !registry.is_empty()
        && registry.len() <= 255
        && registry != "."
        && registry != ".."
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "registry {registry:?} is not a valid host name (with optional port)"
        )))
    }
}

/// The endpoints for `registry` (as it appears in the reference, e.g. `docker.io`,
/// `127.0.0.1:5000`), mirrors first, the upstream server last.
pub fn hosts_for(config_dir: &Path, registry: &str) -> Result<Vec<RegistryHost>> {
    check_registry(registry)?;
    let mut candidates = vec![config_dir.join(registry).join("hosts.toml")];
    if registry == "docker.io" {
        candidates.push(config_dir.join("registry-1.docker.io").join("hosts.toml"));
    }
    candidates.push(config_dir.join("_default").join("hosts.toml"));
    for file in candidates {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let dir = file.parent().unwrap_or(config_dir);
                let hosts = parse(&text, dir, registry)
                    .map_err(|e| Error::invalid(format!("{}: {e}", file.display())))?;
                tracing::debug!(file = %file.display(), ?hosts, "registry hosts");
                return Ok(hosts);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::internal(format!("read {}: {e}", file.display())));
            }
        }
    }
    parse("", config_dir, registry).map_err(Error::internal)
}

/// Parses one hosts.toml; `dir` resolves relative certificate paths.
pub fn parse(
    text: &str,
    dir: &Path,
    registry: &str,
) -> std::result::Result<Vec<RegistryHost>, String> {
    let file: HostFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (url, entry) in &file.host {
        let entry: HostFileEntry = entry
            .clone()
            .try_into()
            .map_err(|e| format!("host {url:?}: {e}"))?;
        out.push(host_from(url, &entry, dir, false)?);
    }
    let server = file
        .server
        .clone()
        .unwrap_or_else(|| default_server(registry));
    out.push(host_from(&server, &file.top, dir, true)?);
    Ok(out)
}

fn host_from(
    url: &str,
    e: &HostFileEntry,
    dir: &Path,
    is_server: bool,
) -> std::result::Result<RegistryHost, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("https".to_string(), url),
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("host {url:?}: scheme must be http or https"));
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(format!("host {url:?} has no host name"));
    }
    // containerd appends /v2 to the path unless override_path is set.
    let path = if e.override_path.unwrap_or(false) || path.ends_with("/v2") {
        path.to_string()
    } else {
        format!("{path}/v2")
    };
    let caps = e
        .capabilities
        .clone()
        .unwrap_or_else(|| vec!["pull".into(), "resolve".into(), "push".into()]);
    let abs = |p: &str| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    let ca = match &e.ca {
        None => vec![],
        Some(OneOrMany::One(s)) => vec![abs(s)],
        Some(OneOrMany::Many(v)) => v.iter().map(|s| abs(s)).collect(),
    };
    let client = match &e.client {
        None => vec![],
        Some(ClientCerts::One(s)) => vec![(abs(s), None)],
        Some(ClientCerts::Pair(v)) => pair(v, &abs)?.into_iter().collect(),
        Some(ClientCerts::Many(v)) => v
            .iter()
            .map(|p| pair(p, &abs))
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect(),
    };
    let mut headers = Vec::new();
    for (k, v) in e.header.iter().flatten() {
        let values = match v {
            toml::Value::String(s) => vec![s.clone()],
            toml::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("host {url:?}: header {k:?} must be strings"))?,
            _ => return Err(format!("host {url:?}: header {k:?} must be a string")),
        };
        headers.extend(values.into_iter().map(|v| (k.clone(), v)));
    }
    Ok(RegistryHost {
        headers: Headers(headers),
        scheme,
        host: host.to_string(),
        path,
        resolve: caps.iter().any(|c| c == "resolve"),
        pull: caps.iter().any(|c| c == "pull"),
        skip_verify: e.skip_verify.unwrap_or(false),
        ca,
        client,
        is_server,
    })
}

type CertPair = (PathBuf, Option<PathBuf>);

fn pair(
    v: &[String],
    abs: &impl Fn(&str) -> PathBuf,
) -> std::result::Result<Option<CertPair>, String> {
    match v {
        [] => Ok(None),
        [c] => Ok(Some((abs(c), None))),
        [c, k] => Ok(Some((abs(c), Some(abs(k))))),
        _ => Err(format!(
            "client certificate entry {v:?} has more than two paths"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_the_default_server() {
        let dir = tempfile::tempdir().unwrap();
        let h = hosts_for(dir.path(), "docker.io").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].scheme, "https");
        assert_eq!(h[0].host, "registry-1.docker.io");
        assert!(h[0].resolve && h[0].pull && h[0].is_server);
        let h = hosts_for(dir.path(), "127.0.0.1:5000").unwrap();
        assert!(h[0].plain_http());
        let h = hosts_for(dir.path(), "quay.io").unwrap();
        assert_eq!(
            (h[0].scheme.as_str(), h[0].host.as_str()),
            ("https", "quay.io")
        );
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("registry.k8s.io");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            r#"
server = "https://registry.k8s.io"
ca = "root.pem"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example:8443"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["/etc/ca1.pem", "ca2.pem"]
  client = [["/c.pem", "/k.pem"], ["both.pem"]]

[host."https://a.example"]
  client = "/only.pem"
"#,
        )
        .unwrap();
        let h = hosts_for(dir.path(), "registry.k8s.io").unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h[0].host, "127.0.0.1:5000");
        assert!(h[0].plain_http() && h[0].resolve && h[0].pull && !h[0].is_server);
        assert_eq!(h[0].path, "/v2");
        assert_eq!(h[1].host, "mirror.example:8443");
        assert!(!h[1].resolve && h[1].pull && h[1].skip_verify);
        assert_eq!(
            h[1].ca,
            vec![PathBuf::from("/etc/ca1.pem"), d.join("ca2.pem")]
        );
        assert_eq!(
            h[1].client,
            vec![
                (PathBuf::from("/c.pem"), Some(PathBuf::from("/k.pem"))),
                (d.join("both.pem"), None)
            ]
        );
        assert_eq!(h[2].client, vec![(PathBuf::from("/only.pem"), None)]);
        assert_eq!(h[3].host, "registry.k8s.io");
        assert!(h[3].is_server);
        assert_eq!(h[3].ca, vec![d.join("root.pem")]);
    }

    #[test]
    fn default_dir_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("_default");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            "[host.\"https://m.example/prefix\"]\n[host.\"https://n.example/x/v2\"]\noverride_path = true\n",
        )
        .unwrap();
        let h = hosts_for(dir.path(), "ghcr.io").unwrap();
        assert_eq!(h[0].path, "/prefix/v2");
        assert_eq!(h[1].path, "/x/v2");
        assert_eq!(h[2].host, "ghcr.io");
    }

    #[test]
    fn bad_files_are_errors_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("x.io");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hosts.toml"), "server = [").unwrap();
        assert!(hosts_for(dir.path(), "x.io").is_err());
        std::fs::write(d.join("hosts.toml"), "[host.\"ftp://m\"]\n").unwrap();
        assert!(hosts_for(dir.path(), "x.io").is_err());
    }

    #[test]
    fn registry_names_cannot_leave_the_hosts_directory() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("certs.d");
        std::fs::create_dir_all(&inner).unwrap();
        // A hosts.toml one level up that a `..` registry would read.
        std::fs::write(
            dir.path().join("hosts.toml"),
            "server = \"http://evil.example\"\n",
        )
        .unwrap();
        for bad in ["..", ".", "../x", "a/b", "", "x\0y", "a\\b"] {
            let e = hosts_for(&inner, bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        }
        for good in [
            "docker.io",
            "127.0.0.1:5000",
            "[::1]:5000",
            "my-reg.example_x",
        ] {
            assert!(hosts_for(&inner, good).is_ok(), "{good}");
        }
    }

    #[test]
    fn headers_are_read_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("r.io");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            "[host.\"http://m.example\"]\n  [host.\"http://m.example\".header]\n    Authorization = \"Basic c2VjcmV0\"\n    X-Multi = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let h = hosts_for(dir.path(), "r.io").unwrap();
        assert_eq!(
            h[0].headers.0,
            vec![
                ("Authorization".to_string(), "Basic c2VjcmV0".to_string()),
                ("X-Multi".to_string(), "a".to_string()),
                ("X-Multi".to_string(), "b".to_string()),
            ]
        );
        let shown = format!("{:?}", h);
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(h[1].headers.0.is_empty());
    }
}
