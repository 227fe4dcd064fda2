//! How the end of an exec or attach is reported on the error stream/channel.
//!
//! v4 protocols (`v4.channel.k8s.io`, v5, and their WebSocket forms) always write a
//! `metav1.Status` as JSON, success included; older ones write the failure's message as plain
//! text and nothing on success. The shapes mirror kubelet's `pkg/cri/streaming/remotecommand`
//! (`exec.go`, `attach.go`, `httpstream.go` `v4WriteStatusFunc`) and apimachinery's
//! `pkg/api/errors` (`NewInternalError`) and `pkg/util/remotecommand/constants.go`.

use serde_json::{json, Value};

/// `remotecommand/constants.go` `NonZeroExitCodeReason`.
pub const NON_ZERO_EXIT_CODE_REASON: &str = "NonZeroExitCode";
/// `remotecommand/constants.go` `ExitCodeCauseType`.
pub const EXIT_CODE_CAUSE: &str = "ExitCode";

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code (0 is success).
    Exited(u32),
    /// The command could not be run or followed to its end (the message says why).
    Failed(String),
}

impl Outcome {
    /// The `metav1.Status` kubectl and crictl decode (client-go `errorDecoderV4`): an exit code
    /// must parse as a `uint8`, so codes above 255 are reported as 255.
    pub fn status_json(&self) -> Value {
        match self {
            Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => {
                let code = (*code).min(255);
                json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("command terminated with non-zero exit code: exit status {code}"),
                    "reason": NON_ZERO_EXIT_CODE_REASON,
                    "details": {"causes": [{"reason": EXIT_CODE_CAUSE, "message": code.to_string()}]},
                })
            }
            Outcome::Failed(msg) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {msg}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": msg}]},
                "code": 500,
            }),
        }
    }

    /// What a v4-style protocol writes on the error stream.
    pub fn v4_bytes(&self) -> Vec<u8> {
        // Serialising a json! value cannot fail.
        serde_json::to_vec(&self.status_json()).unwrap_or_default()
    }

    /// What v1-v3 write: the failure's message, nothing on success.
    pub fn text_bytes(&self) -> Vec<u8> {
        match self.status_json().get("message").and_then(Value::as_str) {
            Some(m) if !matches!(self, Outcome::Exited(0)) => m.as_bytes().to_vec(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_the_bare_status() {
        assert_eq!(
            String::from_utf8(Outcome::Exited(0).v4_bytes()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert!(Outcome::Exited(0).text_bytes().is_empty());
    }

    #[test]
    fn exit_code_is_a_cause_kubectl_parses() {
        let v = Outcome::Exited(3).status_json();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(
            Outcome::Exited(300).status_json()["details"]["causes"][0]["message"],
            "255"
        );
        assert!(String::from_utf8(Outcome::Exited(3).text_bytes())
            .unwrap()
            .contains("non-zero exit code"));
    }

    #[test]
    fn failures_are_internal_errors() {
        let o = Outcome::Failed("error executing command in container: boom".into());
        let v = o.status_json();
        assert_eq!(v["code"], 500);
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(
            v["message"],
            "Internal error occurred: error executing command in container: boom"
        );
        assert_eq!(
            o.text_bytes(),
            b"Internal error occurred: error executing command in container: boom"
        );
    }
}
