//! The HTTP side of the streaming upgrades, shared by SPDY and WebSocket: subprotocol
//! negotiation (apimachinery's `httpstream.Handshake`), header lists, and the plain answers a
//! refused upgrade gets.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The header a SPDY client lists its subprotocols in, one value per line
/// (`httpstream.HeaderProtocolVersion`).
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// Sent with a 403 when no offered protocol is supported
/// (`httpstream.HeaderAcceptedProtocolVersions`).
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";
/// `portforward/constants.go` `ProtocolV1Name`.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

pub type Body = Full<Bytes>;

pub fn plain(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// True if any `name` header contains `needle`, ignoring case.
pub fn header_contains(h: &HeaderMap, name: &str, needle: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.to_ascii_lowercase().contains(needle))
            .unwrap_or(false)
    })
}

/// Every value of a list header, split on commas (one header line per value is what Go sends,
/// comma lists are accepted too), in the client's order.
pub fn header_list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first protocol the client offers that the server supports (the client's order wins),
/// or the response to send instead (`httpstream.Handshake`).
pub fn negotiate(h: &HeaderMap, supported: &[&'static str]) -> Result<String, Box<Response<Body>>> {
    let offered = header_list(h, PROTOCOL_HEADER);
    if offered.is_empty() {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {PROTOCOL_HEADER} is required"),
        )));
    }
    if let Some(p) = offered.iter().find(|p| supported.contains(&p.as_str())) {
        return Ok(p.clone());
    }
    let mut r = plain(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
        ),
    );
    for p in supported {
        r.headers_mut()
            .append(ACCEPTED_PROTOCOLS_HEADER, HeaderValue::from_static(p));
    }
    Err(Box::new(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::remotecommand::SPDY_PROTOCOLS;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_clients_first_supported_protocol_wins() {
        // client-go's SPDY executor offers v5 first, one header line each.
        let h = headers(&[
            (PROTOCOL_HEADER, "v5.channel.k8s.io"),
            (PROTOCOL_HEADER, "v4.channel.k8s.io"),
            (PROTOCOL_HEADER, "v3.channel.k8s.io"),
        ]);
        assert_eq!(negotiate(&h, SPDY_PROTOCOLS).unwrap(), "v4.channel.k8s.io");
        let h = headers(&[(PROTOCOL_HEADER, "v2.channel.k8s.io, v4.channel.k8s.io")]);
        assert_eq!(negotiate(&h, SPDY_PROTOCOLS).unwrap(), "v2.channel.k8s.io");
    }

    #[test]
    fn no_protocol_is_400_and_no_match_is_403_with_the_accepted_list() {
        let r = negotiate(&HeaderMap::new(), SPDY_PROTOCOLS).unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let h = headers(&[(PROTOCOL_HEADER, "v9.channel.k8s.io")]);
        let r = negotiate(&h, &[PORT_FORWARD_PROTOCOL]).unwrap_err();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let accepted: Vec<_> = r
            .headers()
            .get_all(ACCEPTED_PROTOCOLS_HEADER)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(accepted, vec![PORT_FORWARD_PROTOCOL]);
    }

    #[test]
    fn upgrade_header_checks_ignore_case() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "SPDY/3.1"),
        ]);
        assert!(header_contains(&h, "connection", "upgrade"));
        assert!(header_contains(&h, "upgrade", "spdy/3.1"));
        assert!(!header_contains(&h, "upgrade", "websocket"));
    }
}
