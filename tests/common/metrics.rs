//! Reading peapod's Prometheus endpoint in the end-to-end tests.

use std::io::{Read, Write};
use std::time::Duration;

/// `GET path` over HTTP/1.0 on 127.0.0.1:port: (status code, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of the sample `name{labels}` (labels exactly as written), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The body of a scrape of `/metrics`, which must answer 200.
pub fn scrape(port: u16) -> String {
    let (code, body) = http_get(port, "/metrics").expect("scrape /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The cumulative bucket counts of `method`'s CRI latency histogram, in `le` order.
pub fn cri_buckets(text: &str, method: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| {
            l.starts_with("peapod_cri_request_duration_seconds_bucket{")
                && l.contains(&format!("grpc_method=\"{method}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// The series of CRI RuntimeService calls to `method` answered with `code` (grpc-go's name).
pub fn cri(method: &str, code: &str) -> String {
    format!(
        "peapod_cri_requests_total{{grpc_service=\"runtime.v1.RuntimeService\",\
         grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
    )
}

/// Asserts that `method` was answered once, OK, and that its latency histogram holds that
/// one call: count 1, cumulative buckets non-decreasing and ending at 1.
pub fn assert_answered_once(text: &str, method: &str) {
    assert_eq!(
        sample(text, &cri(method, "OK")),
        Some(1.0),
        "{method} OK count in\n{text}"
    );
    let hist = format!(r#"grpc_service="runtime.v1.RuntimeService",grpc_method="{method}""#);
    assert_eq!(
        sample(
            text,
            &format!("peapod_cri_request_duration_seconds_count{{{hist}}}")
        ),
        Some(1.0),
        "{method} latency count"
    );
    let buckets = cri_buckets(text, method);
    assert!(buckets.len() > 10, "{method} buckets: {buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&1.0), "{method} +Inf bucket");
}
