//! The rustls configs of `tls`: TLS 1.3 only, no resumption and no 0-RTT, SPIFFE verification on
//! both sides. Handshakes run in memory (no sockets) between configs built from minted SVIDs.

// Test helpers are test code too; clippy.toml's in-tests allowances only reach #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;

use meshgate_identity::bundle::pem_encode;
use meshgate_identity::tls::{self, Credentials};
use meshgate_identity::verifier::{
    PeerError, SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, peer_spiffe_id,
};
use meshgate_identity::{Error, SpiffeId, SvidError};
use rustls::pki_types::ServerName;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, ConnectionCommon, HandshakeKind,
    ProtocolVersion, ServerConfig, ServerConnection,
};
use support::{Leaf, Pki};
use time::{Duration, OffsetDateTime};

const TD: &str = "a.example";
const SERVER: &str = "spiffe://a.example/server";
const CLIENT: &str = "spiffe://a.example/client";

struct World {
    pki: Pki,
    bundles: Arc<SharedBundles>,
}

impl World {
    fn new() -> Self {
        let pki = Pki::new(TD);
        let bundles = Arc::new(SharedBundles::new(pki.bundles()));
        Self { pki, bundles }
    }

    fn credentials(&self, spec: &Leaf) -> Arc<Credentials> {
        let (leaf, key_pem) = self.pki.intermediate.leaf_with_key(spec);
        let chain_pem = pem_encode("CERTIFICATE", &leaf)
            + &pem_encode("CERTIFICATE", &self.pki.intermediate.der);
        let key = tls::certified_key_from_pem(chain_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        Arc::new(Credentials::new(key))
    }

    fn server(&self, verifier: SpiffeClientVerifier) -> ServerConfig {
        let creds = self.credentials(&Leaf::new(SERVER));
        tls::server_config(creds, Arc::new(verifier), &[tls::ALPN_H2]).unwrap()
    }

    fn client(&self, expected: &str, creds: Option<Arc<Credentials>>) -> ClientConfig {
        let expected = SpiffeId::parse(expected).unwrap();
        let verifier = Arc::new(SpiffeServerVerifier::new(self.bundles.clone(), expected));
        let creds = creds.map(|c| c as Arc<dyn rustls::client::ResolvesClientCert>);
        tls::client_config(verifier, creds, &[tls::ALPN_H2]).unwrap()
    }

    fn mandatory(&self) -> SpiffeClientVerifier {
        SpiffeClientVerifier::new(self.bundles.clone())
    }
}

/// Which side's `process_new_packets` failed, and with what.
#[derive(Debug)]
enum Failed {
    Client(rustls::Error),
    Server(rustls::Error),
}

fn transfer<A, B>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

fn handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), Failed> {
    // The name is not checked: the server verifier matches the SPIFFE ID instead.
    let name = ServerName::try_from("not-checked.invalid").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    for _ in 0..8 {
        transfer(&mut c, &mut s).map_err(Failed::Server)?;
        transfer(&mut s, &mut c).map_err(Failed::Client)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            // One more flight, so that session tickets (if any were sent) reach the client.
            transfer(&mut s, &mut c).map_err(Failed::Client)?;
            return Ok((c, s));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn configs_disable_tickets_and_early_data() {
    let world = World::new();
    let server = world.server(world.mandatory());
    assert_eq!(server.send_tls13_tickets, 0);
    assert_eq!(server.max_early_data_size, 0);
    assert!(!server.session_storage.can_cache());
    assert_eq!(server.alpn_protocols, [b"h2".to_vec()]);
    let client = world.client(SERVER, None);
    assert!(!client.enable_early_data);
    assert_eq!(client.alpn_protocols, [b"h2".to_vec()]);
}

#[test]
fn mutual_handshake_is_tls13_and_identifies_both_peers() {
    let world = World::new();
    let client = Arc::new(world.client(SERVER, Some(world.credentials(&Leaf::new(CLIENT)))));
    let server = Arc::new(world.server(world.mandatory()));
    let (c, s) = handshake(&client, &server).unwrap();
    assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        peer_spiffe_id(s.peer_certificates()).unwrap().as_str(),
        CLIENT
    );
    assert_eq!(
        peer_spiffe_id(c.peer_certificates()).unwrap().as_str(),
        SERVER
    );
}

#[test]
fn a_second_connection_is_a_full_handshake_again() {
    // A resumed session would skip the SVID checks, so every connection must do them.
    let world = World::new();
    let client = Arc::new(world.client(SERVER, Some(world.credentials(&Leaf::new(CLIENT)))));
    let server = Arc::new(world.server(world.mandatory()));
    for _ in 0..2 {
        let (c, s) = handshake(&client, &server).unwrap();
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        assert_eq!(s.handshake_kind(), Some(HandshakeKind::Full));
    }
}

#[test]
fn client_rejects_a_server_with_another_spiffe_id() {
    let world = World::new();
    let client = Arc::new(world.client("spiffe://a.example/someone-else", None));
    let server = Arc::new(world.server(SpiffeClientVerifier::optional(world.bundles.clone())));
    let err = handshake(&client, &server).unwrap_err();
    let Failed::Client(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = &err
    else {
        panic!("expected the client to reject the certificate, got {err:?}");
    };
    let peer = other.0.downcast_ref::<PeerError>().unwrap();
    assert!(
        matches!(peer, PeerError::UnexpectedPeer { got, .. } if got.as_str() == SERVER),
        "{peer:?}"
    );
}

#[test]
fn server_requires_a_client_certificate_unless_optional() {
    let world = World::new();
    let client = Arc::new(world.client(SERVER, None));
    let err = handshake(&client, &Arc::new(world.server(world.mandatory()))).unwrap_err();
    assert!(
        matches!(err, Failed::Server(rustls::Error::NoCertificatesPresented)),
        "{err:?}"
    );

    let optional = SpiffeClientVerifier::optional(world.bundles.clone());
    let (_, s) = handshake(&client, &Arc::new(world.server(optional))).unwrap();
    assert_eq!(
        peer_spiffe_id(s.peer_certificates()).unwrap_err(),
        SvidError::NoCertificate
    );
}

#[test]
fn server_rejects_a_client_svid_that_breaks_a_rule() {
    let world = World::new();
    let bad = Leaf {
        is_ca: true,
        ..Leaf::new(CLIENT)
    };
    let client = Arc::new(world.client(SERVER, Some(world.credentials(&bad))));
    let err = handshake(&client, &Arc::new(world.server(world.mandatory()))).unwrap_err();
    let Failed::Server(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = &err
    else {
        panic!("expected the server to reject the certificate, got {err:?}");
    };
    let peer = other.0.downcast_ref::<PeerError>().unwrap();
    assert!(
        matches!(peer, PeerError::Svid(SvidError::LeafIsCa)),
        "{peer:?}"
    );
}

#[test]
fn expired_client_svid_gets_the_standard_expired_error() {
    let world = World::new();
    let past = OffsetDateTime::now_utc() - Duration::hours(3);
    let expired = Leaf {
        not_before: past,
        not_after: past + Duration::hours(1),
        ..Leaf::new(CLIENT)
    };
    let client = Arc::new(world.client(SERVER, Some(world.credentials(&expired))));
    let err = handshake(&client, &Arc::new(world.server(world.mandatory()))).unwrap_err();
    assert!(
        matches!(
            err,
            Failed::Server(rustls::Error::InvalidCertificate(CertificateError::Expired))
        ),
        "{err:?}"
    );
}

#[test]
fn replaced_bundles_apply_to_the_next_handshake() {
    let world = World::new();
    let client = Arc::new(world.client(SERVER, Some(world.credentials(&Leaf::new(CLIENT)))));
    let server = Arc::new(world.server(world.mandatory()));
    handshake(&client, &server).unwrap();
    // Same trust domain, new root: the client's SVID no longer chains.
    world.bundles.replace(Pki::new(TD).bundles());
    assert!(handshake(&client, &server).is_err());
}

#[test]
fn certified_key_from_pem_rejects_bad_input_without_panicking() {
    let world = World::new();
    let (leaf, key_pem) = world.pki.intermediate.leaf_with_key(&Leaf::new(CLIENT));
    let chain_pem = pem_encode("CERTIFICATE", &leaf);
    tls::certified_key_from_pem(chain_pem.as_bytes(), key_pem.as_bytes()).unwrap();

    let (_, other_key_pem) = world.pki.intermediate.leaf_with_key(&Leaf::new(CLIENT));
    let garbage = b"-----BEGIN GARBAGE-----\nAAAA\n-----END GARBAGE-----\n".as_slice();
    for (chain, key) in [
        (&b"garbage"[..], key_pem.as_bytes()),
        (garbage, key_pem.as_bytes()),
        (chain_pem.as_bytes(), b"garbage".as_slice()),
        (chain_pem.as_bytes(), chain_pem.as_bytes()),
        (chain_pem.as_bytes(), other_key_pem.as_bytes()),
    ] {
        let err = tls::certified_key_from_pem(chain, key).unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err:?}");
    }
}

#[test]
fn tcp_mode_and_http_mode_never_complete_a_handshake_with_each_other() {
    let world = World::new();
    let creds = || Some(world.credentials(&Leaf::new(CLIENT)));
    let server = |alpn: &[&[u8]]| {
        let creds = world.credentials(&Leaf::new(SERVER));
        Arc::new(tls::server_config(creds, Arc::new(world.mandatory()), alpn).unwrap())
    };
    let client = |alpn: &[&[u8]], creds: Option<Arc<Credentials>>| {
        let mut config = world.client(SERVER, creds);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    let http: &[&[u8]] = &[tls::ALPN_H2, tls::ALPN_HTTP11];
    let tcp: &[&[u8]] = &[tls::ALPN_TCP];

    let (c, _) = handshake(&client(tcp, creds()), &server(tcp)).unwrap();
    assert_eq!(c.alpn_protocol(), Some(tls::ALPN_TCP));
    // Either way round, the server finds no common protocol and says so.
    for (c, s) in [(tcp, http), (http, tcp), (&[tls::ALPN_H2][..], tcp)] {
        match handshake(&client(c, creds()), &server(s)) {
            Err(Failed::Server(rustls::Error::NoApplicationProtocol)) => {}
            other => panic!("{c:?} against {s:?}: {:?}", other.map(|_| ())),
        }
    }
}
