//! The client's gRPC deadline (`grpc-timeout`), answered with DEADLINE_EXCEEDED.
//!
//! gRPC's contract is that a call whose deadline passes ends with DEADLINE_EXCEEDED
//! (<https://grpc.io/docs/guides/deadlines/>); tonic's own server-side timeout answers
//! CANCELLED instead (`tonic::transport::service::GrpcTimeout` → `TimeoutExpired` →
//! `Status::cancelled`), which is why peapod serves its routes on hyper itself with this
//! layer in front. The handler's future is dropped when the deadline passes, as it would
//! be if the client cancelled; every handler releases what it reserved on drop.

use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;

/// <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>: `grpc-timeout`.
const GRPC_TIMEOUT: &str = "grpc-timeout";

#[derive(Clone)]
pub struct Deadline<S>(pub S);

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_timeout);
        let fut = self.0.call(req);
        Box::pin(async move {
            let Some(limit) = limit else {
                return fut.await;
            };
            match tokio::time::timeout(limit, fut).await {
                Ok(res) => res,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the call's deadline ({limit:?}) passed before peapod finished it"
                ))
                .into_http()),
            }
        })
    }
}

/// `TimeoutValue TimeoutUnit`: at most 8 ASCII digits, then H, M, S, m, u or n.
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(
            parse_timeout("99999999S"),
            Some(Duration::from_secs(99_999_999))
        );
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_expired_deadline_answers_deadline_exceeded() {
        let slow = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let mut svc = Deadline(slow);
        let req = http::Request::builder()
            .header(GRPC_TIMEOUT, "10m")
            .body(())
            .unwrap();
        let res = tower::Service::call(&mut svc, req).await.unwrap();
        let status = tonic::Status::from_header_map(res.headers()).expect("a grpc status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }
}
