//! What the Exec, Attach and PortForward RPCs use: the streaming server's address, and the
//! checks and token cache that turn a request into a URL on it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::tokens::{Request, Tokens};
use crate::cri;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::store::Phase;

/// The streaming server's address and its request cache. Shared by the RPC layer (which caches
/// requests) and the HTTP server (which consumes them).
pub struct Streaming {
    pub tokens: Tokens,
    /// `http://IP:PORT`, with the port the listener really got.
    base_url: String,
}

impl Streaming {
    /// Binds `address:port` (port 0 picks a free one). The URLs name the bound address; an
    /// unspecified one (0.0.0.0, ::) is named as loopback, since the clients (crictl, kubelet's
    /// proxy) run on the node itself.
    pub async fn bind(
        address: &str,
        port: u16,
    ) -> Result<(Arc<Streaming>, tokio::net::TcpListener)> {
        let ip: std::net::IpAddr = address.parse().map_err(|e| {
            Error::invalid(format!(
                "stream_address {address:?} is not an IP address: {e}"
            ))
        })?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .map_err(|e| {
                Error::internal(format!(
                    "bind the streaming server on {address}:{port}: {e}"
                ))
            })?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::internal(format!("streaming server address: {e}")))?;
        Ok((
            Arc::new(Streaming {
                tokens: Tokens::default(),
                base_url: base_url(local),
            }),
            listener,
        ))
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, req: Request) -> Result<String> {
        let kind = req.kind();
        let token = self.tokens.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Exec: validates the request against the container and caches it.
    pub fn exec_url(&self, rt: &Runtime, mut req: cri::ExecRequest) -> Result<String> {
        if req.cmd.is_empty() {
            return Err(Error::invalid("Exec: cmd must not be empty"));
        }
        check_streams("Exec", req.tty, req.stdin, req.stdout, req.stderr)?;
        req.container_id = running_container(rt, &req.container_id, "exec in")?;
        self.url(Request::Exec(req))
    }

    pub fn attach_url(&self, rt: &Runtime, mut req: cri::AttachRequest) -> Result<String> {
        check_streams("Attach", req.tty, req.stdin, req.stdout, req.stderr)?;
        req.container_id = running_container(rt, &req.container_id, "attach to")?;
        self.url(Request::Attach(req))
    }

    pub fn port_forward_url(&self, rt: &Runtime, req: cri::PortForwardRequest) -> Result<String> {
        for &p in &req.port {
            if !(1..=65535).contains(&p) {
                return Err(Error::invalid(format!(
                    "PortForward: port {p} is outside 1-65535"
                )));
            }
        }
        let sb = rt.sandboxes.get(&req.pod_sandbox_id)?;
        if !sb.is_ready() {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready; cannot forward ports to it",
                sb.id
            )));
        }
        // The full id: a prefix the user typed could become ambiguous before the client connects.
        let req = cri::PortForwardRequest {
            pod_sandbox_id: sb.id.clone(),
            ..req
        };
        self.url(Request::PortForward(req))
    }
}

fn base_url(local: SocketAddr) -> String {
    let ip = match local.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, local.port()))
}

/// kubelet's `server.go` checks: a terminal merges stderr into stdout, and a stream with no
/// stdio at all is pointless.
fn check_streams(rpc: &str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<()> {
    if tty && stderr {
        return Err(Error::invalid(format!(
            "{rpc}: tty and stderr cannot both be true (a terminal merges stderr into stdout)"
        )));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::invalid(format!(
            "{rpc}: one of stdin, stdout and stderr must be true"
        )));
    }
    Ok(())
}

/// The full id of a running container (the request may name a unique prefix).
fn running_container(rt: &Runtime, id: &str, what: &str) -> Result<String> {
    if id.is_empty() {
        return Err(Error::invalid("container_id must not be empty"));
    }
    let c = rt.containers.get(id)?;
    let phase = c.state().phase;
    if phase != Phase::Running {
        return Err(Error::FailedPrecondition(format!(
            "container {} is not running ({phase:?}); cannot {what} it",
            c.id
        )));
    }
    Ok(c.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_reachable_address() {
        assert_eq!(
            base_url("127.0.0.1:4000".parse().unwrap()),
            "http://127.0.0.1:4000"
        );
        assert_eq!(
            base_url("0.0.0.0:4000".parse().unwrap()),
            "http://127.0.0.1:4000"
        );
        assert_eq!(base_url("[::]:4000".parse().unwrap()), "http://[::1]:4000");
        assert_eq!(base_url("10.1.2.3:5".parse().unwrap()), "http://10.1.2.3:5");
    }

    #[test]
    fn stream_flags_are_checked_as_kubelet_does() {
        assert!(check_streams("Exec", true, true, true, true).is_err());
        assert!(check_streams("Exec", false, false, false, false).is_err());
        assert!(check_streams("Exec", true, true, true, false).is_ok());
        assert!(check_streams("Attach", false, true, false, false).is_ok());
    }
}
