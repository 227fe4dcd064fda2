//! Registry credentials: the pull request's AuthConfig first, else the configured
//! docker-style credentials file (`{"auths": {"<host>": {"auth": "<base64 user:pass>"}}}`).

use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use crate::cri;
use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// A registry token, sent as a bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

/// Decodes `auth` (base64 of `user:password`).
pub fn decode_auth(auth: &str) -> Result<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| Error::invalid(format!("registry auth is not valid base64: {e}")))?;
    let s =
        String::from_utf8(raw).map_err(|_| Error::invalid("registry auth is not valid UTF-8"))?;
    let (u, p) = s
        .split_once(':')
        .ok_or_else(|| Error::invalid("registry auth must encode \"username:password\""))?;
    Ok((u.to_string(), p.to_string()))
}

/// Host part of a docker-config key or server address (`https://index.docker.io/v1/` →
/// `docker.io`). All Docker Hub aliases become `docker.io`.
pub fn normalize_host(addr: &str) -> String {
    let a = addr.trim();
    let a = a.split_once("://").map(|(_, r)| r).unwrap_or(a);
    let a = a.split('/').next().unwrap_or(a).to_ascii_lowercase();
    match a.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => a,
    }
}

fn from_fields(
    username: &str,
    password: &str,
    auth: &str,
    identity_token: &str,
    registry_token: &str,
) -> Result<Option<Credentials>> {
    if !registry_token.is_empty() {
        return Ok(Some(Credentials::Bearer(registry_token.to_string())));
    }
    if !identity_token.is_empty() {
        // An identity token is an OAuth2 refresh token; registries that issue one (ACR, Docker
        // Hub with SSO) also accept it as the password of the "<token>" user at their token
        // endpoint, which is what the registry client's basic token flow sends.
        let user = if username.is_empty() {
            "<token>"
        } else {
            username
        };
        return Ok(Some(Credentials::Basic {
            username: user.to_string(),
            password: identity_token.to_string(),
        }));
    }
    if !username.is_empty() || !password.is_empty() {
        return Ok(Some(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    if !auth.is_empty() {
        let (username, password) = decode_auth(auth)?;
        return Ok(Some(Credentials::Basic { username, password }));
    }
    Ok(None)
}

/// Credentials of a CRI AuthConfig for a request to `host`. A credential goes only to the
/// host it was given for: the AuthConfig's `server_address` when it names one, else the
/// image's own registry (`host_is_registry`), never one of its mirrors.
pub fn from_auth_config(
    a: &cri::AuthConfig,
    host: &str,
    host_is_registry: bool,
) -> Result<Option<Credentials>> {
    let given_for_host = if a.server_address.is_empty() {
        host_is_registry
    } else {
        normalize_host(&a.server_address) == normalize_host(host)
    };
    if !given_for_host {
        return Ok(None);
    }
    from_fields(
        &a.username,
        &a.password,
        &a.auth,
        &a.identity_token,
        &a.registry_token,
    )
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::HashMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DockerAuth {
    auth: String,
    username: String,
    password: String,
    identitytoken: String,
    registrytoken: String,
}

/// Credentials for `registry` from a docker config.json. A missing file means none.
pub fn from_docker_config(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), "registry credentials file does not exist");
            return Ok(None);
        }
        Err(e) => return Err(Error::internal(format!("read {}: {e}", path.display()))),
    };
    let cfg: DockerConfig = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("credentials file {}: {e}", path.display())))?;
    let want = normalize_host(registry);
    for (key, a) in &cfg.auths {
        if normalize_host(key) == want {
            return from_fields(
                &a.username,
                &a.password,
                &a.auth,
                &a.identitytoken,
                &a.registrytoken,
            )
            .map_err(|e| Error::invalid(format!("credentials file {}: {e}", path.display())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64_user_pass() {
        assert_eq!(
            decode_auth("dXNlcjpwYXNzOndvcmQ=").unwrap(),
            ("user".to_string(), "pass:word".to_string())
        );
        assert!(decode_auth("!!!").is_err());
        assert!(decode_auth("bm9jb2xvbg==").is_err()); // "nocolon"
    }

    #[test]
    fn auth_config_precedence_and_server_address() {
        let mut a = cri::AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        assert_eq!(
            from_auth_config(&a, "r.io", true).unwrap(),
            Some(Credentials::Basic {
                username: "user".into(),
                password: "pass".into()
            })
        );
        a.username = "u2".into();
        a.password = "p2".into();
        assert_eq!(
            from_auth_config(&a, "r.io", true).unwrap(),
            Some(Credentials::Basic {
                username: "u2".into(),
                password: "p2".into()
            })
        );
        a.registry_token = "tok".into();
        assert_eq!(
            from_auth_config(&a, "r.io", true).unwrap(),
            Some(Credentials::Bearer("tok".into()))
        );
        a.server_address = "https://other.io".into();
        assert_eq!(from_auth_config(&a, "r.io", true).unwrap(), None);
        a.server_address = "https://index.docker.io/v1/".into();
        assert!(from_auth_config(&a, "docker.io", true).unwrap().is_some());
        assert_eq!(
            from_auth_config(&cri::AuthConfig::default(), "r.io", true).unwrap(),
            None
        );
    }

    #[test]
    fn docker_config_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "127.0.0.1:5000": {"username": "a", "password": "b"},
                "id.example": {"identitytoken": "refresh"}
            }}"#,
        )
        .unwrap();
        assert_eq!(
            from_docker_config(&f, "docker.io").unwrap(),
            Some(Credentials::Basic {
                username: "hub".into(),
                password: "secret".into()
            })
        );
        assert_eq!(
            from_docker_config(&f, "127.0.0.1:5000").unwrap(),
            Some(Credentials::Basic {
                username: "a".into(),
                password: "b".into()
            })
        );
        assert_eq!(
            from_docker_config(&f, "id.example").unwrap(),
            Some(Credentials::Basic {
                username: "<token>".into(),
                password: "refresh".into()
            })
        );
        assert_eq!(from_docker_config(&f, "quay.io").unwrap(), None);
        assert_eq!(
            from_docker_config(&dir.path().join("none.json"), "quay.io").unwrap(),
            None
        );
    }

    #[test]
    fn credentials_never_go_to_a_host_they_were_not_given_for() {
        let a = cri::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        // No server_address: the registry only, not a mirror (even one on the same host).
        assert!(from_auth_config(&a, "r.io", true).unwrap().is_some());
        assert_eq!(from_auth_config(&a, "mirror.io", false).unwrap(), None);
        // A server_address naming the mirror: that mirror only.
        let m = cri::AuthConfig {
            server_address: "https://mirror.io".into(),
            ..a.clone()
        };
        assert!(from_auth_config(&m, "mirror.io", false).unwrap().is_some());
        assert_eq!(from_auth_config(&m, "r.io", true).unwrap(), None);
        assert_eq!(from_auth_config(&m, "other.io", false).unwrap(), None);
    }
}
