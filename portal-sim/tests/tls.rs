//! The control plane over TLS: a node's link to the portal with the portal serving its
//! certificate, trusted through a private CA (as `--ca-file` does), and refused, fatally, when
//! the certificate does not verify.

#![allow(clippy::unwrap_used, clippy::wildcard_enum_match_arm)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use node::runtime::{root_certificates, ControlLink as _, PortalConnector, WebSocketLink};
use node_core::engine::{ControlCommand, ControlInput};
use node_core::portal::ConnectionError;
use portal_sim::server::{system_clock, Server};
use portal_sim::{Portal, PortalConfig, SeedFile};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;

const EXAMPLE_SEED: &str = include_str!("../examples/seed.json");

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files in `dir`:
/// (ca, cert, key).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("zta-tls-{}-{name}", std::process::id()))
}

/// Serves the example portal over TLS on loopback; returns its port.
async fn serve_tls(cert: &Path, key: &Path) -> u16 {
    let acceptor = portal_sim::tls::acceptor(cert, key).unwrap();
    let seed = SeedFile::parse(EXAMPLE_SEED).unwrap();
    let server = Server::new(
        Portal::new(&seed, PortalConfig::new("s", 1)),
        system_clock(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::task::spawn_local(async move {
        let _ = server
            .serve_upgraded(listener, move |tcp| {
                let acceptor = acceptor.clone();
                async move { acceptor.accept(tcp).await }
            })
            .await;
    });
    port
}

/// Opens the link and waits for what it reports first.
async fn open(connector: PortalConnector, port: u16) -> ControlInput {
    let url = format!("wss://localhost:{port}/client/websocket?token=client-token-1");
    let mut link = WebSocketLink::new(connector, url);
    link.apply(ControlCommand::Open);
    tokio::time::timeout(Duration::from_secs(10), link.recv())
        .await
        .expect("the link reports within 10 s")
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_trusting_the_portal_ca_connects_over_tls() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let dir = temp_dir("trusted");
            let (ca, cert, key) = pki(&dir);
            let port = serve_tls(&cert, &key).await;
            let roots = root_certificates(Some(&ca)).unwrap();
            let connector =
                PortalConnector::tls(format!("127.0.0.1:{port}"), "localhost", roots).unwrap();
            assert_eq!(open(connector, port).await, ControlInput::Opened);
            std::fs::remove_dir_all(dir).unwrap();
        })
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_certificate_that_does_not_verify_is_fatal_not_retried() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let dir = temp_dir("untrusted");
            let (_, cert, key) = pki(&dir.join("portal"));
            // The node trusts another CA only.
            let (other_ca, _, _) = pki(&dir.join("other"));
            let port = serve_tls(&cert, &key).await;
            let roots = root_certificates(Some(&other_ca)).unwrap();
            let connector =
                PortalConnector::tls(format!("127.0.0.1:{port}"), "localhost", roots).unwrap();
            match open(connector, port).await {
                ControlInput::Closed(ConnectionError::InvalidPeerCertificate(reason)) => {
                    assert!(!reason.is_empty());
                }
                other => panic!("expected a certificate error, got {other:?}"),
            }
            std::fs::remove_dir_all(dir).unwrap();
        })
        .await;
}
