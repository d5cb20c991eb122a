//! Real mTLS handshakes on 127.0.0.1 through tokio-rustls, between SVIDs minted by the CA at
//! test time, using the identity crate's verifiers and config builder.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod support;

use std::sync::Arc;
use std::time::Duration;

use meshgate_identity::tls::{Credentials, client_config, server_config};
use meshgate_identity::verifier::{
    SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, peer_spiffe_id,
};
use meshgate_identity::{BundleSet, SpiffeId};
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use support::TestCa;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SERVER_ID: &str = "spiffe://bank.example/ns/payments/sa/api";
const CLIENT_ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";

/// Starts a server for one connection. It answers with the client's SPIFFE ID as the server
/// learned it, and reports the handshake result.
async fn serve_once(
    creds: Arc<CertifiedKey>,
    bundles: BundleSet,
) -> (std::net::SocketAddr, JoinHandle<Result<SpiffeId, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = Arc::new(SpiffeClientVerifier::new(Arc::new(SharedBundles::new(
        bundles,
    ))));
    let config = server_config(Arc::new(Credentials::new(creds)), verifier, &[b"h2"]).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer =
            peer_spiffe_id(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())?;
        tls.write_all(peer.as_str().as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(peer)
    });
    (addr, task)
}

/// Connects as a client expecting `expected` and returns what the server wrote back.
async fn connect(
    addr: std::net::SocketAddr,
    creds: Option<Arc<CertifiedKey>>,
    bundles: BundleSet,
    expected: &str,
) -> Result<String, String> {
    let verifier = Arc::new(SpiffeServerVerifier::new(
        Arc::new(SharedBundles::new(bundles)),
        SpiffeId::parse(expected).unwrap(),
    ));
    let resolver = creds.map(|c| Arc::new(Credentials::new(c)) as _);
    let config = client_config(verifier, resolver, &[b"h2"]).unwrap();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    // In TLS 1.3 the server judges the client certificate after the client finished; a rejection
    // arrives as an alert on the first read.
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step timed out")
}

#[tokio::test]
async fn server_learns_client_spiffe_id() {
    let mut ca = TestCa::new("bank.example");
    let (addr, server) = serve_once(ca.svid(SERVER_ID), ca.bundles()).await;
    let answer = with_timeout(connect(
        addr,
        Some(ca.svid(CLIENT_ID)),
        ca.bundles(),
        SERVER_ID,
    ))
    .await;
    assert_eq!(answer.unwrap(), CLIENT_ID);
    let peer = with_timeout(server).await.unwrap().unwrap();
    assert_eq!(peer.as_str(), CLIENT_ID);
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let mut ca = TestCa::new("bank.example");
    let (addr, server) = serve_once(ca.svid(SERVER_ID), ca.bundles()).await;
    let answer = with_timeout(connect(addr, None, ca.bundles(), SERVER_ID)).await;
    assert!(answer.is_err(), "client without certificate got {answer:?}");
    let err = with_timeout(server).await.unwrap().unwrap_err();
    assert!(err.contains("certificate"), "server error: {err}");
}

#[tokio::test]
async fn client_from_foreign_ca_is_refused() {
    let mut ca = TestCa::new("bank.example");
    // Another CA that claims the same trust domain name: its chain must not verify.
    let mut foreign = TestCa::new("bank.example");
    let (addr, server) = serve_once(ca.svid(SERVER_ID), ca.bundles()).await;
    let answer = with_timeout(connect(
        addr,
        Some(foreign.svid(CLIENT_ID)),
        ca.bundles(),
        SERVER_ID,
    ))
    .await;
    assert!(answer.is_err(), "foreign client got {answer:?}");
    let err = with_timeout(server).await.unwrap().unwrap_err();
    // rustls shows verifier errors with Debug: the variant names the rule that failed.
    assert!(
        err.contains("Chain {"),
        "server error should name the chain rule: {err}"
    );
}

#[tokio::test]
async fn client_from_foreign_trust_domain_is_refused() {
    let mut ca = TestCa::new("bank.example");
    let mut other = TestCa::new("other.example");
    // The server trusts both trust domains, each with its own bundle; the client's SVID is from
    // other.example but claims a bank.example ID: impossible, so it claims its own. It must be
    // checked against other.example's bundle only, and a server that knows only bank.example
    // refuses it.
    let (addr, server) = serve_once(ca.svid(SERVER_ID), ca.bundles()).await;
    let client = other.svid("spiffe://other.example/ns/shop/sa/checkout");
    let answer = with_timeout(connect(addr, Some(client), ca.bundles(), SERVER_ID)).await;
    assert!(
        answer.is_err(),
        "foreign trust domain client got {answer:?}"
    );
    let err = with_timeout(server).await.unwrap().unwrap_err();
    assert!(
        err.contains("other.example"),
        "server error should name the trust domain: {err}"
    );
}

#[tokio::test]
async fn expired_client_svid_is_refused() {
    let mut ca = TestCa::new("bank.example");
    let two_hours_ago = OffsetDateTime::now_utc() - Duration::from_secs(7200);
    let expired = ca.svid_at(CLIENT_ID, two_hours_ago, Duration::from_secs(3600));
    let (addr, server) = serve_once(ca.svid(SERVER_ID), ca.bundles()).await;
    let answer = with_timeout(connect(addr, Some(expired), ca.bundles(), SERVER_ID)).await;
    assert!(answer.is_err(), "expired client got {answer:?}");
    let err = with_timeout(server).await.unwrap().unwrap_err();
    assert!(
        err.to_lowercase().contains("expired"),
        "server error: {err}"
    );
}

#[tokio::test]
async fn client_refuses_server_with_unexpected_spiffe_id() {
    let mut ca = TestCa::new("bank.example");
    let ledger = ca.svid("spiffe://bank.example/ns/ledger/sa/api");
    let (addr, server) = serve_once(ledger, ca.bundles()).await;
    let answer = with_timeout(connect(
        addr,
        Some(ca.svid(CLIENT_ID)),
        ca.bundles(),
        SERVER_ID,
    ))
    .await;
    let err = answer.unwrap_err();
    assert!(
        err.contains("UnexpectedPeer") && err.contains("spiffe://bank.example/ns/payments/sa/api"),
        "client error should name the expected ID: {err}"
    );
    assert!(with_timeout(server).await.unwrap().is_err());
}

#[tokio::test]
async fn resumption_is_off_so_every_connection_is_a_full_handshake() {
    // Two connections with the same client config: the second must present and verify the
    // certificate again (the server learns the ID both times; no ticket was issued).
    let mut ca = TestCa::new("bank.example");
    for _ in 0..2 {
        let (addr, server) = serve_once(ca.svid(SERVER_ID), ca.bundles()).await;
        let answer = with_timeout(connect(
            addr,
            Some(ca.svid(CLIENT_ID)),
            ca.bundles(),
            SERVER_ID,
        ))
        .await;
        assert_eq!(answer.unwrap(), CLIENT_ID);
        assert_eq!(
            with_timeout(server).await.unwrap().unwrap().as_str(),
            CLIENT_ID
        );
    }
}
