#![allow(dead_code)]
//! Registries for the image tests, all on 127.0.0.1: Debian's docker-registry (distribution
//! 2.8) with a generated config and optional htpasswd auth, a push helper speaking the
//! registry HTTP API, and fake registries that stall or lie, for the robustness tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// `http` or, with TLS, `https`.
    pub scheme: &'static str,
    /// Client for pushes: trusts the test CA and presents the client certificate.
    http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub auth: Option<(String, String)>,
    child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway PKI: a CA, a server certificate for 127.0.0.1 and a client certificate,
/// as PEM files in `dir`.
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    pub fn generate(dir: &std::path::Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "peapod test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = |sans: Vec<String>, cn: &str, usage: rcgen::ExtendedKeyUsagePurpose| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            (
                p.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into()],
            "127.0.0.1",
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec![],
            "peapod test client",
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server),
            ("server.key", server_key),
            ("client.pem", client),
            ("client.key", client_key),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        TestPki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

impl Registry {
    /// Starts a registry; with `auth`, every request needs that user and password.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        Registry::start_with(auth, None)
    }

    /// Starts a registry; with `tls`, it serves HTTPS with the PKI's server certificate and
    /// requires a client certificate signed by its CA.
    pub fn start_with(auth: Option<(&str, &str)>, tls: Option<&TestPki>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("peapod-registry-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: peapod-test\n",
            dir.path().join("data").display()
        );
        if let Some(pki) = tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
                pki.path("server.pem").display(),
                pki.path("server.key").display(),
                pki.path("ca.pem").display()
            ));
        }
        if let Some((u, p)) = auth {
            let hash = bcrypt::hash_with_result(p, 5)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{u}:{hash}\n")).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: peapod-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.path().join("registry.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "registry did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let http = match tls {
            None => reqwest::Client::new(),
            Some(pki) => {
                let mut id = pki.read("client.pem");
                id.extend(pki.read("client.key"));
                reqwest::Client::builder()
                    .tls_certs_only(
                        reqwest::Certificate::from_pem_bundle(&pki.read("ca.pem")).unwrap(),
                    )
                    .identity(reqwest::Identity::from_pem(&id).unwrap())
                    .build()
                    .unwrap()
            }
        };
        Registry {
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            http,
            dir,
            log,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            child,
        }
    }

    fn req(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((u, p)) => b.basic_auth(u, Some(p)),
            None => b,
        }
    }

    /// Uploads one blob (monolithic POST+PUT).
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = crate::common::oci::sha256(data);
        let c = &self.http;
        let r = self
            .req(c.post(format!(
                "{}://{}/v2/{repo}/blobs/uploads/",
                self.scheme, self.addr
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            202,
            "start upload: {:?}",
            r.text().await
        );
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}://{}{loc}", self.scheme, self.addr)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(c.put(format!("{loc}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "put blob: {:?}", r.text().await);
        digest
    }

    /// Uploads a manifest (or index) under `reference` (a tag or digest); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let c = &self.http;
        let r = self
            .req(c.put(format!(
                "{}://{}/v2/{repo}/manifests/{reference}",
                self.scheme, self.addr
            )))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "put manifest: {:?}",
            r.text().await
        );
        crate::common::oci::sha256(body)
    }

    /// Pushes a built test image as `repo:tag`; with `index`, wrapped in an OCI index that
    /// also lists a foreign-platform manifest. Returns the digest the tag points at.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        img: &crate::common::oci::BuiltImage,
        index: bool,
    ) -> String {
        self.push_blob(repo, &img.layer).await;
        self.push_blob(repo, &img.config).await;
        let mdigest = self
            .push_manifest(
                repo,
                &img.manifest_digest,
                "application/vnd.oci.image.manifest.v1+json",
                &img.manifest,
            )
            .await;
        if !index {
            return self
                .push_manifest(
                    repo,
                    tag,
                    "application/vnd.oci.image.manifest.v1+json",
                    &img.manifest,
                )
                .await;
        }
        let idx = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": mdigest, "size": img.manifest.len(),
                 "platform": {"architecture": "s390x", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": mdigest, "size": img.manifest.len(),
                 "platform": {"architecture": peapod::image::store::host_arch(), "os": "linux"}},
            ],
        }))
        .unwrap();
        self.push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &idx)
            .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many GETs of blob `digest` the registry served (from its access log).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| {
                l.contains("\"GET /v2/")
                    && (l.contains(&format!("/blobs/{digest} "))
                        || l.contains(&format!("/blobs/{digest}?")))
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a fake registry misbehaves.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Fault {
    /// Accepts connections and never answers.
    Silent,
    /// Answers /v2/, the manifest and the config, then sends part of the layer and stalls.
    StallLayer,
    /// Serves a layer whose bytes do not match its digest.
    CorruptLayer,
}

/// A fake registry on 127.0.0.1 serving one image (`<repo>:<tag>` for any repo/tag).
pub struct FakeRegistry {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    pub async fn start(fault: Fault, img: &crate::common::oci::BuiltImage) -> FakeRegistry {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let manifest = img.manifest.clone();
        let config = img.config.clone();
        let layer = img.layer.clone();
        let (mdig, cdig) = (img.manifest_digest.clone(), img.config_digest.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let (manifest, config, layer, mdig, cdig) = (
                    manifest.clone(),
                    config.clone(),
                    layer.clone(),
                    mdig.clone(),
                    cdig.clone(),
                );
                tokio::spawn(async move {
                    if fault == Fault::Silent {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let mut buf = Vec::new();
                    loop {
                        // Read one request head.
                        let mut chunk = [0u8; 4096];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end);
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        let path = path.split('?').next().unwrap_or("").to_string();
                        let is_head = head.starts_with("HEAD");
                        let (ctype, body, digest): (&str, Vec<u8>, String) = if path == "/v2/" {
                            ("application/json", b"{}".to_vec(), String::new())
                        } else if path.contains("/manifests/") {
                            (
                                "application/vnd.oci.image.manifest.v1+json",
                                manifest.clone(),
                                mdig.clone(),
                            )
                        } else if path.ends_with(&cdig) {
                            ("application/octet-stream", config.clone(), cdig.clone())
                        } else if path.contains("/blobs/") {
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                                layer.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                            if fault == Fault::StallLayer {
                                let _ = s.write_all(&layer[..layer.len() / 4]).await;
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            let mut bad = layer.clone();
                            let mid = bad.len() / 2;
                            bad[mid] ^= 0xff;
                            let _ = s.write_all(&bad).await;
                            continue;
                        } else {
                            let _ = s
                                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                                .await;
                            continue;
                        };
                        let mut resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nDocker-Distribution-Api-Version: registry/2.0\r\n",
                            body.len()
                        );
                        if !digest.is_empty() {
                            resp.push_str(&format!("Docker-Content-Digest: {digest}\r\n"));
                        }
                        resp.push_str("\r\n");
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        if !is_head && s.write_all(&body).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeRegistry { addr, task }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `<certs.d>/<host>/hosts.toml`.
pub fn write_hosts_toml(certs_d: &std::path::Path, host: &str, text: &str) {
    let d = certs_d.join(host);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hosts.toml"), text).unwrap();
}

/// The headers of one request.
pub type Headers = Vec<(String, String)>;

/// An HTTP endpoint that records the headers of every request and answers each with a
/// `401` Basic challenge: a mirror that asks for credentials, to see which ones it is sent.
pub struct RecordingMirror {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Headers>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingMirror {
    pub async fn start() -> RecordingMirror {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let headers = text
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    seen.lock().unwrap().push(headers);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"mirror\"\r\n\
                              Content-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        RecordingMirror {
            addr,
            requests,
            task,
        }
    }

    /// The headers of each request so far (names lower-cased).
    pub fn requests(&self) -> Vec<Headers> {
        self.requests.lock().unwrap().clone()
    }

    /// The Authorization headers it was sent.
    pub fn authorizations(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k == "authorization")
            .map(|(_, v)| v)
            .collect()
    }
}

impl Drop for RecordingMirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}
