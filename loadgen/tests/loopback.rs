//! The load generator against an in-process mTLS server built like a gateway inbound, with
//! SVIDs minted by the CA crate at test time. Counts only; tests never assert on time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshgate_ca::{Authority, KeyType};
use meshgate_identity::tls::{ALPN_HTTP11, Credentials, certified_key_from_pem, server_config};
use meshgate_identity::verifier::{SharedBundles, SpiffeClientVerifier};
use meshgate_identity::{BundleSet, SpiffeId, TrustDomain};
use meshgate_loadgen::{Target, hold_idle, run_handshakes};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;

const SERVER: &str = "spiffe://bench.example/ns/payments/sa/api";
const CLIENT: &str = "spiffe://bench.example/ns/shop/sa/checkout";

/// Writes svid.pem and key.pem for `id` under `dir/name`, and returns the CA's bundle PEM.
fn mint(ca: &mut Authority, dir: &Path, name: &str, id: &str) -> String {
    let (issued, key) = ca
        .issue_with_new_key(
            &SpiffeId::parse(id).unwrap(),
            &[],
            Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let chain: String = issued
        .chain
        .iter()
        .map(|c| meshgate_identity::bundle::pem_encode("CERTIFICATE", c))
        .collect();
    std::fs::write(out.join("svid.pem"), chain).unwrap();
    std::fs::write(out.join("key.pem"), key.serialize_pem()).unwrap();
    ca.bundle().unwrap().to_pem()
}

fn new_ca(dir: &Path, name: &str) -> Authority {
    let path = dir.join(name);
    Authority::init(
        &path,
        TrustDomain::parse("bench.example").unwrap(),
        KeyType::EcdsaP256,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    Authority::open(&path).unwrap()
}

/// A server that requires a client SVID of the bundle's trust domain, then reads until EOF.
async fn server(dir: &Path, bundle_pem: &str) -> std::net::SocketAddr {
    let key = certified_key_from_pem(
        &std::fs::read(dir.join("server/svid.pem")).unwrap(),
        &std::fs::read(dir.join("server/key.pem")).unwrap(),
    )
    .unwrap();
    let td = TrustDomain::parse("bench.example").unwrap();
    let bundle = meshgate_identity::TrustBundle::from_pem(td, bundle_pem.as_bytes()).unwrap();
    let verifier = Arc::new(SpiffeClientVerifier::new(Arc::new(SharedBundles::new(
        BundleSet::single(bundle),
    ))));
    let config = server_config(Arc::new(Credentials::new(key)), verifier, &[ALPN_HTTP11]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 64];
                    while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}

fn target(dir: &Path, addr: std::net::SocketAddr, client: &str, bundle: &str) -> Target {
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    Target::from_files(
        addr,
        &dir.join(client).join("svid.pem"),
        &dir.join(client).join("key.pem"),
        &dir.join("bundle.pem"),
        SpiffeId::parse(SERVER).unwrap(),
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn handshakes_complete_when_the_server_accepts_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(dir.path(), "ca");
    let bundle = mint(&mut ca, dir.path(), "server", SERVER);
    mint(&mut ca, dir.path(), "client", CLIENT);
    let addr = server(dir.path(), &bundle).await;
    let target = target(dir.path(), addr, "client", &bundle);
    let report = run_handshakes(&target, 2, Duration::from_millis(300)).await;
    assert!(report.handshakes > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    let json = report.to_json();
    assert!(json["handshakes_per_sec"].as_f64().unwrap() > 0.0, "{json}");
}

#[tokio::test]
async fn a_client_the_server_rejects_counts_as_errors_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(dir.path(), "ca");
    let bundle = mint(&mut ca, dir.path(), "server", SERVER);
    // Same trust domain name, another CA: the server must refuse this client.
    let mut rogue = new_ca(dir.path(), "rogue");
    mint(&mut rogue, dir.path(), "stranger", CLIENT);
    let addr = server(dir.path(), &bundle).await;
    let target = target(dir.path(), addr, "stranger", &bundle);
    let report = run_handshakes(&target, 2, Duration::from_millis(200)).await;
    assert_eq!(report.handshakes, 0, "{report:?}");
    assert!(report.errors > 0, "{report:?}");
    assert!(report.first_error.is_some());
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(dir.path(), "ca");
    let bundle = mint(&mut ca, dir.path(), "client", CLIENT);
    let mut rogue = new_ca(dir.path(), "rogue");
    let rogue_bundle = mint(&mut rogue, dir.path(), "server", SERVER);
    let addr = server(dir.path(), &rogue_bundle).await;
    let target = target(dir.path(), addr, "client", &bundle);
    let report = run_handshakes(&target, 1, Duration::from_millis(100)).await;
    assert_eq!(report.handshakes, 0, "{report:?}");
    assert!(report.errors > 0, "{report:?}");
}

#[tokio::test]
async fn idle_connections_are_opened_reported_and_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(dir.path(), "ca");
    let bundle = mint(&mut ca, dir.path(), "server", SERVER);
    mint(&mut ca, dir.path(), "client", CLIENT);
    let addr = server(dir.path(), &bundle).await;
    let target = target(dir.path(), addr, "client", &bundle);
    let mut seen = None;
    let report = hold_idle(&target, 20, 4, Duration::from_millis(50), |n| {
        seen = Some(n);
    })
    .await;
    assert_eq!(seen, Some(20));
    assert_eq!(report.opened, 20, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.closed_by_peer, 0, "{report:?}");
}
