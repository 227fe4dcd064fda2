//! The pull half of the OCI distribution API, on reqwest.
//!
//! peapod talks to registries itself rather than through `oci-client` because that crate
//! builds its own HTTP client and offers no way to present a TLS client certificate, which
//! containerd-style `hosts.toml` files (`client = [["cert.pem", "key.pem"]]`) require. What a
//! pull needs is small: manifests, blobs as streams, and the bearer/basic token dance.

use std::path::PathBuf;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;

use crate::error::{Error, Result};
use crate::image::auth::Credentials;
use crate::image::hosts::RegistryHost;

/// The largest manifest or index accepted; distribution refuses to store larger ones.
const MAX_MANIFEST: usize = 4 << 20;

/// Why a registry request failed, kept structured so the puller can pick the CRI code.
#[derive(Debug)]
pub enum RegistryError {
    /// The registry answered with an error status; `codes` are the distribution error codes
    /// of its JSON body (`MANIFEST_UNKNOWN`, `DENIED`, ...).
    Status {
        status: u16,
        url: String,
        codes: Vec<String>,
        message: String,
    },
    /// The registry wants credentials we do not have, or refused the ones we sent.
    Unauthorized { url: String, detail: String },
    /// No HTTP answer at all: connection, TLS handshake, or the body broke off.
    Transport { url: String, error: reqwest::Error },
    /// An answer peapod cannot use.
    Protocol(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Status {
                status,
                url,
                codes,
                message,
            } => {
                write!(f, "GET {url}: HTTP {status}")?;
                if !codes.is_empty() {
                    write!(f, " {}", codes.join(","))?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            RegistryError::Unauthorized { url, detail } => {
                write!(f, "GET {url}: unauthorized: {detail}")
            }
            RegistryError::Transport { url, error } => {
                write!(f, "GET {url}: {}", error_chain(error))
            }
            RegistryError::Protocol(m) => f.write_str(m),
        }
    }
}

/// An error and all its sources on one line: reqwest's own message ("error sending request")
/// says nothing; the TLS or socket cause is further down.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        src = s.source();
    }
    msg
}

/// The TLS side of one hosts.toml entry, with its files read.
#[derive(Debug, Default)]
pub struct TlsSettings {
    /// Extra trusted roots, each file's PEM bundle.
    pub roots: Vec<(PathBuf, Vec<u8>)>,
    /// Client certificate chain and private key, PEM, concatenated.
    pub identity: Option<(PathBuf, Vec<u8>)>,
    pub skip_verify: bool,
}

impl TlsSettings {
    /// Reads the `ca` and `client` files of `h`. Only the first client pair is used: reqwest
    /// presents one identity, whereas Go's TLS picks among several by the server's CA list.
    pub fn for_host(h: &RegistryHost) -> Result<TlsSettings> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| {
                Error::invalid(format!(
                    "{what} {} for registry {}: {e}",
                    p.display(),
                    h.host
                ))
            })
        };
        let mut roots = Vec::new();
        for ca in &h.ca {
            roots.push((ca.clone(), read(ca, "CA file")?));
        }
        let identity = match h.client.first() {
            None => None,
            Some((cert, key)) => {
                let mut pem = read(cert, "client certificate")?;
                if let Some(k) = key {
                    pem.push(b'\n');
                    pem.extend(read(k, "client key")?);
                }
                Some((cert.clone(), pem))
            }
        };
        if h.client.len() > 1 {
            tracing::warn!(
                host = %h.host,
                "several client certificates configured; only the first is presented"
            );
        }
        Ok(TlsSettings {
            roots,
            identity,
            skip_verify: h.skip_verify,
        })
    }

    /// A reqwest client presenting these settings.
    pub fn client(&self, host: &str, connect_timeout: Duration) -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("peapod/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .tls_danger_accept_invalid_certs(self.skip_verify);
        let mut roots = Vec::new();
        for (path, pem) in &self.roots {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "CA file {} for registry {host} holds no PEM certificate",
                        path.display()
                    ))
                })?;
            roots.extend(certs);
        }
        if !roots.is_empty() {
            b = b.tls_certs_merge(roots);
        }
        if let Some((path, pem)) = &self.identity {
            let id = reqwest::Identity::from_pem(pem).map_err(|e| {
                Error::invalid(format!(
                    "client certificate {} for registry {host} (PEM certificate and private key \
                     expected): {}",
                    path.display(),
                    error_chain(&e)
                ))
            })?;
            b = b.identity(id);
        }
        b.build().map_err(|e| {
            Error::invalid(format!(
                "TLS settings for registry {host}: {}",
                error_chain(&e)
            ))
        })
    }
}

/// One repository on one registry endpoint, with the authorization it earned.
pub struct Registry {
    http: reqwest::Client,
    /// `<scheme>://<host><path>`, the path ending in `/v2`.
    base: String,
    repo: String,
    creds: Option<Credentials>,
    /// The Authorization header that last worked (or is worth trying first).
    auth: StdMutex<Option<HeaderValue>>,
    /// The endpoint's hosts.toml headers, sent with every request to it.
    headers: HeaderMap,
}

impl Registry {
    pub fn new(
        h: &RegistryHost,
        repo: &str,
        creds: Option<Credentials>,
        connect_timeout: Duration,
    ) -> Result<Registry> {
        let http = TlsSettings::for_host(h)?.client(&h.host, connect_timeout)?;
        let mut headers = HeaderMap::new();
        let mut configured_auth = None;
        for (k, v) in &h.headers.0 {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                Error::invalid(format!(
                    "hosts.toml header {k:?} of {} is not a header name",
                    h.host
                ))
            })?;
            // The value is never shown: it may be a credential.
            let value = HeaderValue::from_str(v).map_err(|_| {
                Error::invalid(format!(
                    "hosts.toml header {k:?} of {} has an invalid value",
                    h.host
                ))
            })?;
            if name == AUTHORIZATION {
                configured_auth = Some(value);
            } else {
                headers.append(name, value);
            }
        }
        // A registry token is sent as is; there is no challenge to answer first. An
        // Authorization header configured for this endpoint is its own credential.
        let auth = match &creds {
            Some(Credentials::Bearer(t)) => HeaderValue::from_str(&format!("Bearer {t}")).ok(),
            _ => configured_auth,
        };
        Ok(Registry {
            http,
            base: format!("{}://{}{}", h.scheme, h.host, h.path),
            repo: repo.to_string(),
            creds,
            auth: StdMutex::new(auth),
            headers,
        })
    }

    /// The manifest or index `reference` (tag or digest) names, and the digest the registry
    /// reports for it, if any.
    pub async fn manifest(
        &self,
        reference: &str,
        accept: &[&str],
    ) -> std::result::Result<(Bytes, Option<String>), RegistryError> {
        let url = format!("{}/{}/manifests/{reference}", self.base, self.repo);
        let resp = self.get(&url, Some(&accept.join(", "))).await?;
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| RegistryError::Transport {
                url: url.clone(),
                error,
            })?;
            body.extend_from_slice(&chunk);
            // Manifests are held in memory whole; a registry must not make that unbounded.
            if body.len() > MAX_MANIFEST {
                return Err(RegistryError::Protocol(format!(
                    "GET {url}: manifest larger than {MAX_MANIFEST} bytes"
                )));
            }
        }
        Ok((Bytes::from(body), digest))
    }

    /// The blob `digest` as a byte stream (redirects to blob storage followed). The caller
    /// verifies the digest.
    pub async fn blob(
        &self,
        digest: &str,
    ) -> std::result::Result<
        BoxStream<'static, std::result::Result<Bytes, RegistryError>>,
        RegistryError,
    > {
        let url = format!("{}/{}/blobs/{digest}", self.base, self.repo);
        let resp = self.get(&url, None).await?;
        Ok(resp
            .bytes_stream()
            .map_err(move |error| RegistryError::Transport {
                url: url.clone(),
                error,
            })
            .boxed())
    }

    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
    ) -> std::result::Result<reqwest::Response, RegistryError> {
        let mut answered_challenge = false;
        loop {
            let mut req = self.http.get(url).headers(self.headers.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            let sent_auth = self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(a) = &sent_auth {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let resp = req.send().await.map_err(|error| RegistryError::Transport {
                url: url.to_string(),
                error,
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                if resp.status().is_success() {
                    return Ok(resp);
                }
                return Err(status_error(url, resp).await);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            // Another request of this pull may have earned a fresh token meanwhile.
            let current = self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if current.is_some() && current != sent_auth {
                continue;
            }
            if answered_challenge {
                return Err(RegistryError::Unauthorized {
                    url: url.to_string(),
                    detail: "the registry refused the credentials".into(),
                });
            }
            answered_challenge = true;
            let header = self.answer(url, &challenge).await?;
            *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Some(header);
        }
    }

    /// The Authorization header answering a `WWW-Authenticate` challenge.
    async fn answer(
        &self,
        url: &str,
        challenge: &str,
    ) -> std::result::Result<HeaderValue, RegistryError> {
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            url: url.to_string(),
            detail,
        };
        let (scheme, params) = parse_challenge(challenge);
        match (scheme.as_str(), &self.creds) {
            ("basic", Some(Credentials::Basic { username, password })) => {
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                HeaderValue::from_str(&format!("Basic {b64}"))
                    .map_err(|e| unauthorized(format!("credentials unusable in a header: {e}")))
            }
            ("basic", _) => Err(unauthorized(
                "the registry requires basic authentication and no username and password were \
                 given"
                    .into(),
            )),
            ("bearer", Some(Credentials::Bearer(_))) => Err(unauthorized(
                "the registry refused the registry token".into(),
            )),
            ("bearer", _) => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        RegistryError::Protocol(format!(
                            "GET {url}: bearer challenge without a realm: {challenge:?}"
                        ))
                    })?;
                let mut query: Vec<(String, String)> = params
                    .iter()
                    .filter(|(k, _)| k == "service")
                    .cloned()
                    .collect();
                query.push(("scope".into(), format!("repository:{}:pull", self.repo)));
                let mut req = self.http.get(&realm).query(&query);
                if let Some(Credentials::Basic { username, password }) = &self.creds {
                    req = req.basic_auth(username, Some(password));
                }
                let resp = req.send().await.map_err(|error| RegistryError::Transport {
                    url: realm.clone(),
                    error,
                })?;
                match resp.status() {
                    s if s.is_success() => {}
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(unauthorized(format!(
                            "the token service {realm} refused access (HTTP {})",
                            resp.status().as_u16()
                        )))
                    }
                    _ => return Err(status_error(&realm, resp).await),
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = resp.json().await.map_err(|e| {
                    RegistryError::Protocol(format!("token from {realm}: {}", error_chain(&e)))
                })?;
                let token = t
                    .token
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        RegistryError::Protocol(format!("token service {realm} sent no token"))
                    })?;
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| {
                    RegistryError::Protocol(format!("token from {realm} is not a header: {e}"))
                })
            }
            _ => Err(unauthorized(format!(
                "unsupported authentication challenge {challenge:?}"
            ))),
        }
    }
}

async fn status_error(url: &str, resp: reqwest::Response) -> RegistryError {
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let (codes, message) = match serde_json::from_slice::<Envelope>(&body) {
        Ok(env) => (
            env.errors.iter().map(|e| e.code.clone()).collect(),
            env.errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Err(_) => (
            vec![],
            String::from_utf8_lossy(&body[..body.len().min(200)]).to_string(),
        ),
    };
    RegistryError::Status {
        status,
        url: url.to_string(),
        codes,
        message,
    }
}

/// Splits `Bearer realm="r",service="s"` into the lower-cased scheme and its parameters;
/// quoted values may hold commas (scopes do).
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        params.push((key, value));
    }
    (scheme.to_ascii_lowercase(), params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::hosts;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "reg".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let (s, p) = parse_challenge("Basic realm=peapod-test");
        assert_eq!(s, "basic");
        assert_eq!(p, vec![("realm".into(), "peapod-test".into())]);
        assert_eq!(parse_challenge("").0, "");
    }

    struct Pki {
        ca: String,
        cert: String,
        key: String,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Pki {
            ca: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    #[test]
    fn hosts_toml_maps_to_tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("reg.example");
        std::fs::create_dir_all(&d).unwrap();
        let p = pki();
        std::fs::write(d.join("ca.pem"), &p.ca).unwrap();
        std::fs::write(d.join("client.pem"), &p.cert).unwrap();
        std::fs::write(d.join("client.key"), &p.key).unwrap();
        std::fs::write(d.join("both.pem"), format!("{}{}", p.cert, p.key)).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            r#"
server = "https://reg.example"
ca = "ca.pem"
client = [["client.pem", "client.key"]]

[host."https://mirror.example"]
  skip_verify = true
  client = "both.pem"

[host."https://plain.example"]
"#,
        )
        .unwrap();
        let h = hosts::hosts_for(dir.path(), "reg.example").unwrap();
        let t = Duration::from_secs(5);

        let mirror = TlsSettings::for_host(&h[0]).unwrap();
        assert!(mirror.skip_verify && mirror.roots.is_empty());
        assert_eq!(mirror.identity.as_ref().unwrap().0, d.join("both.pem"));
        mirror.client(&h[0].host, t).expect("key in the cert file");

        let plain = TlsSettings::for_host(&h[1]).unwrap();
        assert!(!plain.skip_verify && plain.roots.is_empty() && plain.identity.is_none());

        let server = TlsSettings::for_host(&h[2]).unwrap();
        assert!(!server.skip_verify);
        assert_eq!(server.roots.len(), 1);
        assert_eq!(server.roots[0].0, d.join("ca.pem"));
        let (path, pem) = server.identity.as_ref().unwrap();
        assert_eq!(path, &d.join("client.pem"));
        assert!(String::from_utf8_lossy(pem).contains("PRIVATE KEY"));
        server.client(&h[2].host, t).expect("cert + key pair");

        // Broken or missing files are errors naming the file and the host.
        std::fs::write(d.join("ca.pem"), "not a certificate").unwrap();
        let e = TlsSettings::for_host(&h[2])
            .unwrap()
            .client(&h[2].host, t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.pem") && e.contains("reg.example"), "{e}");
        std::fs::write(d.join("ca.pem"), &p.ca).unwrap();
        std::fs::write(d.join("client.key"), "").unwrap();
        let e = TlsSettings::for_host(&h[2])
            .unwrap()
            .client(&h[2].host, t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("client.pem") && e.contains("reg.example"), "{e}");
        std::fs::remove_file(d.join("client.key")).unwrap();
        let e = TlsSettings::for_host(&h[2]).unwrap_err().to_string();
        assert!(e.contains("client.key") && e.contains("reg.example"), "{e}");
    }
}
