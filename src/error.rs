//! Domain errors, mapped to gRPC statuses in exactly one place (`From<Error> for Status`).

use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unavailable(String),
    /// The caller's credentials were refused (e.g. by a registry).
    #[error("{0}")]
    PermissionDenied(String),
    /// A bounded resource is full (e.g. streaming tokens in flight).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0} is not implemented by peapod")]
    Unimplemented(&'static str),
    #[error("{0}")]
    Internal(String),
    /// A call to containerd failed; `what` says which call on which object.
    #[error("containerd {what}: {status}")]
    Containerd { what: String, status: Status },
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// True when containerd answered NotFound: callers that are idempotent treat that as done.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound(_) => true,
            Error::Containerd { status, .. } => status.code() == Code::NotFound,
            _ => false,
        }
    }

    pub fn is_already_exists(&self) -> bool {
        match self {
            Error::AlreadyExists(_) => true,
            Error::Containerd { status, .. } => status.code() == Code::AlreadyExists,
            _ => false,
        }
    }
}

/// A gRPC code as grpc-go spells it (`codes.Code.String()`): what crictl prints, and what
/// dashboards written for go-grpc-prometheus and containerd match on.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// An OCI spec builder's refusal: peapod built something the spec does not allow.
pub fn oci_err(e: oci_spec::OciSpecError) -> Error {
    Error::internal(format!("building OCI spec: {e}"))
}

/// Wraps a containerd status with the call it came from.
pub fn ctrd(what: impl Into<String>) -> impl FnOnce(Status) -> Error {
    let what = what.into();
    move |status| Error::Containerd { what, status }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

/// The longest status message sent: messages quote request fields, which may be huge, and
/// the message travels as an HTTP/2 header (`grpc-message`); clients refuse header lists past
/// 16 KiB by default and drop the whole connection when they see one.
pub const MAX_STATUS_MESSAGE: usize = 4096;

fn bounded(mut msg: String) -> String {
    if msg.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str("... (truncated)");
    }
    msg
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = bounded(e.to_string());
        match e {
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::ResourceExhausted(_) => Status::resource_exhausted(msg),
            Error::Unimplemented(_) => Status::unimplemented(msg),
            Error::Internal(_) => Status::internal(msg),
            Error::Containerd { status, .. } => {
                // A transport failure means containerd is down or restarting: kubelet should retry.
                let code = match status.code() {
                    Code::Unavailable | Code::Unknown if is_transport(&status) => Code::Unavailable,
                    Code::Unknown => Code::Internal,
                    c => c,
                };
                Status::new(code, msg)
            }
        }
    }
}

fn is_transport(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || status.message().contains("transport error")
        || status.message().contains("connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_not_found_is_not_found() {
        let e = ctrd("get container abc")(Status::not_found("container abc: not found"));
        assert!(e.is_not_found());
        let s: Status = e.into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("get container abc"));
    }

    #[test]
    fn transport_failure_is_unavailable() {
        let e = ctrd("version")(Status::unknown("transport error: connection refused"));
        let s: Status = e.into();
        assert_eq!(s.code(), Code::Unavailable);
    }

    #[test]
    fn unimplemented_names_the_rpc() {
        let s: Status = Error::Unimplemented("Attach").into();
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().contains("Attach"));
    }

    #[test]
    fn huge_messages_are_bounded_on_a_char_boundary() {
        let e = Error::invalid(format!("bad name {:?}", "é".repeat(40_000)));
        let s: Status = e.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().len() <= MAX_STATUS_MESSAGE + 20);
        assert!(s.message().ends_with("(truncated)"));
        let short: Status = Error::invalid("short").into();
        assert_eq!(short.message(), "short");
    }
}
