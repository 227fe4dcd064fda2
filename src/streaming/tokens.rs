//! The streaming request cache: what an Exec/Attach/PortForward RPC asked for, kept under a
//! single-use random token until the client connects to the URL that names it.
//!
//! Mirrors kubelet's `pkg/cri/streaming/request_cache.go`: 8-character tokens (6 random bytes,
//! base64url), one minute to live, at most 1000 in flight. The cached request is the whole
//! truth for the stream: kubelet's proxy does not forward the query string.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;

use crate::cri;
use crate::error::{Error, Result};

/// `request_cache.go` `cacheTTL`.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// `request_cache.go` `maxInFlight`.
pub const MAX_IN_FLIGHT: usize = 1000;
/// `request_cache.go` `tokenLen` (bytes of randomness before encoding).
const TOKEN_BYTES: usize = 6;

/// A cached streaming request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Request {
    /// The URL path segment this kind is served under.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }
}

#[derive(Default)]
pub struct Tokens {
    live: Mutex<HashMap<String, (Instant, Request)>>,
}

impl Tokens {
    /// Caches `req` and returns its token. Expired entries are dropped first; with
    /// [`MAX_IN_FLIGHT`] live ones left, the answer is `ResourceExhausted`.
    pub fn insert(&self, req: Request) -> Result<String> {
        self.insert_at(req, Instant::now())
    }

    fn insert_at(&self, req: Request, now: Instant) -> Result<String> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, (at, _)| now.saturating_duration_since(*at) < TOKEN_TTL);
        if live.len() >= MAX_IN_FLIGHT {
            return Err(Error::ResourceExhausted(
                "maximum number of in-flight streaming requests exceeded".into(),
            ));
        }
        for _ in 0..10 {
            let mut raw = [0u8; TOKEN_BYTES];
            rand::thread_rng().fill_bytes(&mut raw);
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            if !live.contains_key(&token) {
                live.insert(token.clone(), (now, req));
                return Ok(token);
            }
        }
        Err(Error::internal(
            "could not generate a unique streaming token",
        ))
    }

    /// Takes the request of `token` for a URL of `kind`. Single use: the entry is gone
    /// afterwards whatever the outcome (expired, wrong kind).
    pub fn consume(&self, token: &str, kind: &str) -> Option<Request> {
        self.consume_at(token, kind, Instant::now())
    }

    fn consume_at(&self, token: &str, kind: &str, now: Instant) -> Option<Request> {
        let (at, req) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token)?;
        if now.saturating_duration_since(at) >= TOKEN_TTL || req.kind() != kind {
            return None;
        }
        Some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Request {
        Request::PortForward(cri::PortForwardRequest {
            pod_sandbox_id: "p".into(),
            port: vec![80],
        })
    }

    #[test]
    fn tokens_are_single_use_and_typed() {
        let t = Tokens::default();
        let tok = t.insert(pf()).unwrap();
        assert_eq!(tok.len(), 8);
        assert!(tok
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(t.consume(&tok, "portforward"), Some(pf()));
        assert_eq!(t.consume(&tok, "portforward"), None);
        let tok = t.insert(pf()).unwrap();
        // The wrong kind burns the token too.
        assert_eq!(t.consume(&tok, "exec"), None);
        assert_eq!(t.consume(&tok, "portforward"), None);
        assert_eq!(t.consume("nonsense", "exec"), None);
    }

    #[test]
    fn tokens_expire_after_a_minute() {
        let t = Tokens::default();
        let now = Instant::now();
        let tok = t.insert_at(pf(), now).unwrap();
        assert_eq!(t.consume_at(&tok, "portforward", now + TOKEN_TTL), None);
        let tok = t.insert_at(pf(), now).unwrap();
        assert!(t
            .consume_at(
                &tok,
                "portforward",
                now + TOKEN_TTL - Duration::from_secs(1)
            )
            .is_some());
    }

    #[test]
    fn at_most_1000_in_flight_until_they_expire() {
        let t = Tokens::default();
        let now = Instant::now();
        for _ in 0..MAX_IN_FLIGHT {
            t.insert_at(pf(), now).unwrap();
        }
        let e = t.insert_at(pf(), now).unwrap_err();
        assert!(matches!(e, Error::ResourceExhausted(_)), "{e:?}");
        let s: tonic::Status = e.into();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        // Expired entries make room again.
        assert!(t.insert_at(pf(), now + TOKEN_TTL).is_ok());
    }
}
