//! kubectl exec and port-forward as a cluster runs them: the real kubelet (standalone,
//! `../shared/bin/kubelet.xz`) serves `/exec/{namespace}/{pod}/{container}` and
//! `/portForward/{namespace}/{pod}` on its own HTTPS port, asks peapod for a streaming URL
//! over the CRI, and proxies the upgraded connection to it byte for byte. The client here is
//! peapod's own SPDY client, speaking to kubelet's port over TLS.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kubelet::Kubelet;
use common::{Rig, BUSYBOX};
use peapod::streaming::client;
use serde_json::json;

/// Kubelet's serving certificate is self-signed: this test checks the streams, not TLS.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A SPDY connection to kubelet's `path`, through TLS.
async fn kubelet_spdy(
    port: u16,
    path: &str,
    protocols: &[&str],
) -> std::io::Result<(peapod::streaming::spdy::Connection, String)> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    client::handshake(tls, &format!("127.0.0.1:{port}"), path, protocols).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_proxies_exec_and_port_forward_to_peapod() {
    const TEST: &str = "kubelet_proxies_exec_and_port_forward_to_peapod";
    if !common::require_root() {
        common::bins::missing(TEST, "needs root");
        return;
    }
    let bin = match common::bins::real_binary("kubelet") {
        Ok(b) => b,
        Err(e) => {
            common::bins::missing(TEST, &e);
            return;
        }
    };
    let rig = Rig::start().await;
    let kubelet = Kubelet::start(&rig, &bin)
        .await
        .unwrap_or_else(|e| panic!("kubelet did not start on peapod: {e}"));
    let name = "streams";
    kubelet.write_pod(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": kubelet.namespace},
        "spec": {
            "containers": [{
                "name": "echo",
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["nc", "-ll", "-p", "7000", "-e", "cat"],
            }],
        },
    }));
    let pod_name = kubelet.pod_name(name);
    let start = Instant::now();
    loop {
        let running = kubelet
            .pod(name)
            .await
            .is_some_and(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object());
        if running {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "pod never ran: {:?}\nkubelet log:\n{}",
            kubelet.pod(name).await,
            kubelet.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ns = &kubelet.namespace;

    // kubectl exec: the query says what to run; kubelet turns it into the CRI request.
    let exec = |cmd: &str| {
        let mut q: Vec<String> = ["sh", "-c", cmd]
            .iter()
            .map(|c| format!("command={}", urlencode(c)))
            .collect();
        q.extend(["output=1".into(), "error=1".into()]);
        format!("/exec/{ns}/{pod_name}/echo?{}", q.join("&"))
    };
    let (conn, proto) = kubelet_spdy(
        kubelet.port,
        &exec("echo via-kubelet; echo oops >&2"),
        &["v4.channel.k8s.io", "v3.channel.k8s.io"],
    )
    .await
    .unwrap_or_else(|e| panic!("exec through kubelet: {e}\n{}", kubelet.log_tail(30)));
    assert_eq!(proto, "v4.channel.k8s.io");
    let r = client::run_command(&conn, None, true).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "via-kubelet\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "oops\n");
    assert_eq!(
        r.exit_code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.status)
    );

    let (conn, _) = kubelet_spdy(kubelet.port, &exec("exit 3"), &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let r = client::run_command(&conn, None, true).await.unwrap();
    assert_eq!(
        r.exit_code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&r.status)
    );

    // kubectl port-forward: ports travel in the stream headers.
    let (conn, proto) = kubelet_spdy(
        kubelet.port,
        &format!("/portForward/{ns}/{pod_name}"),
        &["portforward.k8s.io"],
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "port-forward through kubelet: {e}\n{}",
            kubelet.log_tail(30)
        )
    });
    assert_eq!(proto, "portforward.k8s.io");
    for rid in 0..2u32 {
        let (_err, mut data) = client::forward(&conn, 7000, rid).await.unwrap();
        let payload = format!("through kubelet {rid}\n").repeat(2000);
        data.writer
            .write(Bytes::from(payload.clone()))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < payload.len() {
            match tokio::time::timeout(Duration::from_secs(10), data.reader.recv()).await {
                Ok(Some(b)) => got.extend_from_slice(&b),
                other => panic!("connection {rid}: {other:?} after {} bytes", got.len()),
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), payload);
        data.writer.close().await;
    }
    conn.close().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
