//! TCP mode end to end on 127.0.0.1 with real TLS and SVIDs minted by the CA server: app →
//! outbound TCP route → mTLS (ALPN meshgate-tcp/1) → inbound in TCP mode → policy at connect →
//! a TCP echo service, with and without a PROXY protocol v2 header; refusals at the handshake,
//! by policy and by ALPN; live tunnels cut by revocation and by a policy reload.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod kit;
mod mesh;
mod tcpkit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kit::{CHECKOUT, Kit, PAYMENTS, SUPPORT, audit_records};
use mesh::{eventually, metric};
use meshgate_ca::{Authority, KeyType as CaKeyType};
use meshgate_gateway::config::{AuditLog, Limits, Mode, ProxyProtocol, Target};
use meshgate_gateway::proxy_header::{PP2_TYPE_PEER_CERT_SHA256, PP2_TYPE_SPIFFE_ID};
use meshgate_identity::tls::{ALPN_H2, ALPN_TCP, Credentials, certified_key};
use meshgate_identity::{SpiffeId, TrustDomain};
use ppp::v2::{Addresses, Header};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tcpkit::{TCP_POLICY, Upstream, client, closed, direct, echo_round_trip, metrics, payments};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn bytes_round_trip_through_two_tcp_gateways() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Upstream::start(false).await;
        let payments = payments(&kit, upstream.addr, None, None).await;
        let (shop, _) = client(&kit, CHECKOUT, payments.gateway.inbound.unwrap(), Mode::Tcp).await;
        let route = shop.outbound_addr("payments").unwrap();

        // Enough bytes to fill the socket buffers both ways, every byte value.
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let mut app = TcpStream::connect(route).await.unwrap();
        assert_eq!(echo_round_trip(&mut app, &data).await, data);
        // Half-close: the service sees the end of the app's bytes and ends its side too.
        app.shutdown().await.unwrap();
        assert!(closed(&mut app).await);

        // One mTLS connection per app connection: a second one is a second upstream connection.
        // This app sends and half-closes at once, and still gets its answer.
        let mut again = TcpStream::connect(route).await.unwrap();
        again.write_all(b"again").await.unwrap();
        again.shutdown().await.unwrap();
        let mut back = Vec::new();
        again.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"again");
        assert_eq!(upstream.accepted(), 2);

        let gateway = &payments.gateway;
        eventually("both connections to be counted with their bytes", || async {
            let m = metrics(gateway).await;
            let allowed = format!(
                "meshgate_gateway_tcp_connections_total{{direction=\"inbound\",peer=\"{CHECKOUT}\",decision=\"allow\"}}"
            );
            let up = format!(
                "meshgate_gateway_tcp_bytes_total{{direction=\"inbound\",peer=\"{CHECKOUT}\",flow=\"client_to_server\"}}"
            );
            metric(&m, &allowed) == 2.0 && metric(&m, &up) == (data.len() + 5) as f64
        })
        .await;
        let m = metrics(&shop).await;
        let out = format!(
            "meshgate_gateway_tcp_connections_total{{direction=\"outbound\",peer=\"{PAYMENTS}\",decision=\"none\"}}"
        );
        assert_eq!(metric(&m, &out), 2.0, "{m}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_proxy_v2_header_carries_the_peer_address_and_spiffe_id_before_the_data() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let mut upstream = Upstream::start(true).await;
        let payments = payments(&kit, upstream.addr, Some(ProxyProtocol::V2), None).await;
        let inbound = payments.gateway.inbound.unwrap();
        let shop = kit.enroll(CHECKOUT).await;
        let certs = shop.credentials() as Arc<dyn ResolvesClientCert>;
        let (source, tls) = direct(&shop, inbound, Some(certs), &[ALPN_TCP]).await;
        let mut tls = tls.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        // The service echoes only what came after the header: the data followed it intact.
        assert_eq!(&back, b"ping");

        let raw = upstream.headers.recv().await.unwrap();
        let header = Header::try_from(raw.as_slice()).unwrap();
        assert_eq!(header.len(), raw.len());
        let Addresses::IPv4(a) = header.addresses else {
            panic!("not IPv4: {:?}", header.addresses)
        };
        assert_eq!(SocketAddr::from((a.source_address, a.source_port)), source);
        assert_eq!(
            SocketAddr::from((a.destination_address, a.destination_port)),
            inbound
        );
        let tlvs: Vec<_> = header.tlvs().map(Result::unwrap).collect();
        let tlv = |kind: u8| {
            tlvs.iter()
                .find(|t| t.kind == kind)
                .map(|t| t.value.to_vec())
                .unwrap_or_else(|| panic!("no TLV {kind:#x}"))
        };
        assert_eq!(tlv(PP2_TYPE_SPIFFE_ID), CHECKOUT.as_bytes());
        assert_eq!(tlv(PP2_TYPE_PEER_CERT_SHA256), shop.svid().info.sha256);
        let ssl = tlv(0x20);
        assert_eq!(ssl[0], 0x07, "TLS, with a client certificate");
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
        assert!(ssl.ends_with(b"TLSv1.3"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_denied_peer_is_closed_and_the_service_never_sees_it() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Upstream::start(false).await;
        let log = kit.dir.path().join("payments-audit.jsonl");
        let payments = payments(&kit, upstream.addr, None, Some(AuditLog::at(&log))).await;
        // Support's only allow names a method: it is an HTTP rule and cannot allow a connection.
        let (support, _) =
            client(&kit, SUPPORT, payments.gateway.inbound.unwrap(), Mode::Tcp).await;
        let mut app = TcpStream::connect(support.outbound_addr("payments").unwrap())
            .await
            .unwrap();
        let _ = app.write_all(b"hello").await;
        assert!(closed(&mut app).await, "the denied tunnel stayed open");
        assert_eq!(upstream.accepted(), 0);

        let m = metrics(&payments.gateway).await;
        let denied = format!(
            "meshgate_gateway_tcp_connections_total{{direction=\"inbound\",peer=\"{SUPPORT}\",decision=\"deny\"}}"
        );
        assert_eq!(metric(&m, &denied), 1.0, "{m}");
        payments.gateway.flush_audit().await.unwrap();
        let records = audit_records(&log);
        let deny = records
            .iter()
            .find(|r| r["action"] == "connection_deny")
            .unwrap_or_else(|| panic!("{records:?}"));
        assert_eq!(deny["actor"], SUPPORT);
        assert_eq!(deny["outcome"], "denied");
        assert_eq!(deny["reason"], "policy");
        assert_eq!(deny["subject"], format!("{PAYMENTS} tcp"));
        // The default deny decided: no rule is named.
        assert!(deny["details"].get("rule").is_none(), "{deny}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn clients_without_an_svid_of_our_ca_are_refused_at_the_handshake() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Upstream::start(false).await;
        let payments = payments(&kit, upstream.addr, None, None).await;
        let inbound = payments.gateway.inbound.unwrap();

        let (_, tls) = direct(&payments.agent, inbound, None, &[ALPN_TCP]).await;
        if let Some(mut tls) = tls {
            let _ = tls.write_all(b"x").await;
            assert!(closed(&mut tls).await);
        }

        // A foreign CA that calls its trust domain bank.example too.
        let foreign_dir = kit.dir.path().join("foreign-ca");
        let now = OffsetDateTime::now_utc();
        let td = TrustDomain::parse("bank.example").unwrap();
        Authority::init(&foreign_dir, td, CaKeyType::EcdsaP256, now).unwrap();
        let (issued, key) = Authority::open(&foreign_dir)
            .unwrap()
            .issue_with_new_key(
                &SpiffeId::parse(CHECKOUT).unwrap(),
                &[],
                Duration::from_secs(600),
                now,
            )
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let creds = Arc::new(Credentials::new(certified_key(issued.chain, key).unwrap()));
        let (_, tls) = direct(&payments.agent, inbound, Some(creds), &[ALPN_TCP]).await;
        if let Some(mut tls) = tls {
            let _ = tls.write_all(b"x").await;
            assert!(closed(&mut tls).await);
        }

        assert_eq!(upstream.accepted(), 0);
        let m = metrics(&payments.gateway).await;
        for reason in ["no_certificate", "untrusted"] {
            let sample = format!(
                "meshgate_gateway_handshake_failures_total{{direction=\"inbound\",reason=\"{reason}\"}}"
            );
            assert_eq!(metric(&m, &sample), 1.0, "{m}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_http_mode_client_fails_the_handshake_with_a_tcp_inbound() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Upstream::start(false).await;
        let payments = payments(&kit, upstream.addr, None, None).await;
        let inbound = payments.gateway.inbound.unwrap();
        let shop = kit.enroll(CHECKOUT).await;
        let certs = || Some(shop.credentials() as Arc<dyn ResolvesClientCert>);

        // An HTTP-mode client (ALPN h2) with a good SVID: the TCP inbound has no common protocol.
        let (_, tls) = direct(&shop, inbound, certs(), &[ALPN_H2]).await;
        assert!(
            tls.is_none(),
            "the handshake completed without a common ALPN"
        );
        // A TLS client that offers no ALPN completes the handshake and is closed at once.
        let (_, tls) = direct(&shop, inbound, certs(), &[]).await;
        let mut tls = tls.unwrap();
        let _ = tls.write_all(b"x").await;
        assert!(closed(&mut tls).await);
        assert_eq!(upstream.accepted(), 0);
        let m = metrics(&payments.gateway).await;
        let alpn =
            "meshgate_gateway_handshake_failures_total{direction=\"inbound\",reason=\"alpn\"}";
        assert_eq!(metric(&m, alpn), 2.0, "{m}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tcp_route_to_an_http_inbound_fails_the_handshake_and_resets_the_app() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let http_upstream = Target::parse(&kit::websocket_echo().await.to_string()).unwrap();
        let http = kit.payments(http_upstream, Limits::default(), None).await;
        let (web, _) = client(&kit, kit::WEB, http.gateway.inbound.unwrap(), Mode::Tcp).await;
        let mut app = TcpStream::connect(web.outbound_addr("payments").unwrap())
            .await
            .unwrap();
        assert!(closed(&mut app).await);
        let m = metrics(&web).await;
        let alpn =
            "meshgate_gateway_handshake_failures_total{direction=\"outbound\",reason=\"alpn\"}";
        assert_eq!(metric(&m, alpn), 1.0, "{m}");
        assert_eq!(
            metric(
                &m,
                "meshgate_gateway_tcp_connect_failures_total{direction=\"outbound\"}"
            ),
            1.0
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn revoking_the_peer_closes_a_live_tunnel() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Upstream::start(false).await;
        let mut payments = payments(&kit, upstream.addr, None, None).await;
        let (shop, shop_agent) =
            client(&kit, CHECKOUT, payments.gateway.inbound.unwrap(), Mode::Tcp).await;
        let route = shop.outbound_addr("payments").unwrap();
        let mut app = TcpStream::connect(route).await.unwrap();
        assert_eq!(echo_round_trip(&mut app, b"before").await, b"before");

        Authority::open(&kit.ca_dir)
            .unwrap()
            .revoke_serial(
                &shop_agent.svid().info.serial,
                Some("test"),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        // Payments learns of it (as its agent's refresh would) and cuts the live tunnel.
        assert!(payments.agent.fetch_revocations().await.unwrap());
        assert!(closed(&mut app).await, "the tunnel outlived the revocation");
        let m = metrics(&payments.gateway).await;
        let cut = "meshgate_gateway_peer_connections_closed_total{outcome=\"revoked\"}";
        assert_eq!(metric(&m, cut), 1.0, "{m}");
        // A new connection is refused at the handshake.
        let mut again = TcpStream::connect(route).await.unwrap();
        let _ = again.write_all(b"after").await;
        assert!(closed(&mut again).await);
        assert_eq!(upstream.accepted(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_policy_reload_that_denies_the_peer_closes_its_live_tunnel() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Upstream::start(false).await;
        let log = kit.dir.path().join("payments-audit.jsonl");
        let payments = payments(&kit, upstream.addr, None, Some(AuditLog::at(&log))).await;
        let (shop, _) = client(&kit, CHECKOUT, payments.gateway.inbound.unwrap(), Mode::Tcp).await;
        let mut app = TcpStream::connect(shop.outbound_addr("payments").unwrap())
            .await
            .unwrap();
        assert_eq!(echo_round_trip(&mut app, b"before").await, b"before");

        std::fs::write(
            &payments.policy,
            TCP_POLICY.replace(
                "spiffe://bank.example/ns/shop/**",
                "spiffe://bank.example/ns/other/**",
            ),
        )
        .unwrap();
        payments.gateway.reload_policies();
        assert!(closed(&mut app).await, "the tunnel outlived the policy");
        let m = metrics(&payments.gateway).await;
        let cut = "meshgate_gateway_peer_connections_closed_total{outcome=\"policy\"}";
        assert_eq!(metric(&m, cut), 1.0, "{m}");
        payments.gateway.flush_audit().await.unwrap();
        let records = audit_records(&log);
        assert!(
            records
                .iter()
                .any(|r| r["action"] == "connection_deny" && r["reason"] == "policy_reload"),
            "{records:?}"
        );
    })
    .await
    .unwrap();
}
