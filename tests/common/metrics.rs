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
