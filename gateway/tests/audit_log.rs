//! The gateway's audit log end to end: denied requests, handshake refusals and policy reloads
//! reach `[audit] path` as a hash-chained log that verifies; allowed requests only when
//! `log_allows` says so; never a header value, a query or a body.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod kit;
mod mesh;

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use kit::{CHECKOUT, Kit, PAYMENTS, SUPPORT, audit_file, audit_records};
use mesh::call;
use meshgate_gateway::config::{AuditLog, Limits, Target};
use meshgate_identity::SpiffeId;
use meshgate_identity::tls::{ALPN_H2, client_config};
use meshgate_identity::verifier::SpiffeServerVerifier;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(60);

fn with_action<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["action"] == action).collect()
}

#[tokio::test]
async fn denials_refusals_and_reloads_are_audited_in_a_chain_that_verifies() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&kit::websocket_echo().await.to_string()).unwrap();
        let path = audit_file(&kit);
        let payments = kit
            .payments(upstream, Limits::default(), Some(AuditLog::at(&path)))
            .await;
        let checkout = kit.client(CHECKOUT, &payments).await;

        let denied = call(
            checkout.to_payments(),
            "GET",
            "/private/x?token=query-secret",
            &[("x-secret", "header-secret")],
        )
        .await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        let allowed = call(checkout.to_payments(), "GET", "/v1/charges", &[]).await;
        assert_eq!(allowed.status, StatusCode::OK);

        // A client without a certificate is refused at the handshake.
        let verifier = SpiffeServerVerifier::new(
            payments.agent.shared_bundles(),
            SpiffeId::parse(PAYMENTS).unwrap(),
        );
        let tls = client_config(Arc::new(verifier), None, &[ALPN_H2]).unwrap();
        let tcp = TcpStream::connect(payments.gateway.inbound.unwrap())
            .await
            .unwrap();
        let name = ServerName::try_from("payments.bank.example").unwrap();
        if let Ok(mut tls) = TlsConnector::from(Arc::new(tls)).connect(name, tcp).await {
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
        }

        // A broken policy file is refused and the old policy stays; the fix is taken.
        std::fs::write(&payments.policy, "service = ").unwrap();
        payments.gateway.reload_policies();
        std::fs::write(&payments.policy, kit::POLICY).unwrap();
        payments.gateway.reload_policies();

        mesh::eventually("the handshake refusal in the audit log", || async {
            payments.gateway.flush_audit().await.unwrap();
            !with_action(&audit_records(&path), "peer_reject").is_empty()
        })
        .await;

        let summary = meshgate_audit::verify_file(&path).unwrap();
        let records = audit_records(&path);
        assert_eq!(summary.records, records.len() as u64);
        assert!(records.iter().all(|r| r["component"] == "gateway"));

        // Signed with the gateway's own SVID from the first record on: the log verifies with
        // the CA's bundle alone, and so does the CA's own log, signed with its SVID.
        assert_eq!(records[0]["action"], "checkpoint");
        assert_eq!(records[0]["actor"], PAYMENTS);
        let bundle = meshgate_ca::authority::Authority::open(&kit.ca_dir)
            .unwrap()
            .bundle()
            .unwrap()
            .to_pem();
        let roots = meshgate_audit::trust_roots_from_pem(&[bundle.as_bytes()]).unwrap();
        let options = meshgate_audit::VerifyOptions::new().with_bundles(roots);
        let report = meshgate_audit::verify_log(&[&path], &options).unwrap();
        assert_eq!(report.damage, None);
        assert_eq!(report.signer.unwrap().as_str(), PAYMENTS);
        let ca_log = kit.ca_dir.join("audit.jsonl");
        let report = meshgate_audit::verify_log(&[&ca_log], &options).unwrap();
        assert_eq!(report.damage, None, "the CA's log");
        assert_eq!(
            report.signer.unwrap().as_str(),
            "spiffe://bank.example/meshgate/ca"
        );

        let denials = with_action(&records, "request_deny");
        assert_eq!(denials.len(), 1, "{records:#?}");
        let deny = denials[0];
        assert_eq!(deny["actor"], CHECKOUT);
        assert_eq!(deny["outcome"], "denied");
        assert_eq!(deny["subject"], format!("{PAYMENTS} GET /private/x"));
        assert_eq!(deny["reason"], "policy");
        assert_eq!(deny["trust_domain"], "bank.example");
        assert!(
            deny["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{deny}"
        );
        assert_eq!(deny["details"]["rule"], "nobody reads private");
        assert_eq!(deny["details"]["status"], 403);
        // Allows are not asked for.
        assert!(
            with_action(&records, "request_allow").is_empty(),
            "{records:#?}"
        );

        let rejects = with_action(&records, "peer_reject");
        assert_eq!(rejects.len(), 1, "{records:#?}");
        assert_eq!(rejects[0]["actor"], "anonymous");
        assert_eq!(rejects[0]["reason"], "no_certificate");
        assert_eq!(rejects[0]["subject"], PAYMENTS);

        let reloads = with_action(&records, "policy_reload");
        let outcomes: Vec<&Value> = reloads.iter().map(|r| &r["outcome"]).collect();
        assert_eq!(outcomes, ["failure", "success"], "{records:#?}");
        assert!(
            reloads[0]["reason"]
                .as_str()
                .unwrap()
                .contains("payments-policy.toml"),
            "{}",
            reloads[0]
        );

        let text = std::fs::read_to_string(&path).unwrap();
        for secret in ["header-secret", "query-secret", "x-secret"] {
            assert!(!text.contains(secret), "{secret} leaked into the audit log");
        }
        assert_eq!(
            with_action(&records, "gap").len(),
            0,
            "nothing was dropped at this rate"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn allows_are_audited_when_the_config_asks_for_them() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&kit::websocket_echo().await.to_string()).unwrap();
        let path = audit_file(&kit);
        let log = AuditLog {
            log_allows: true,
            ..AuditLog::at(path.clone())
        };
        let payments = kit.payments(upstream, Limits::default(), Some(log)).await;
        let support = kit.client(SUPPORT, &payments).await;
        let a = call(support.to_payments(), "POST", "/v1/refunds/r1", &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        payments.gateway.flush_audit().await.unwrap();

        meshgate_audit::verify_file(&path).unwrap();
        let records = audit_records(&path);
        let allows = with_action(&records, "request_allow");
        assert_eq!(allows.len(), 1, "{records:#?}");
        assert_eq!(allows[0]["actor"], SUPPORT);
        assert_eq!(allows[0]["outcome"], "success");
        assert_eq!(
            allows[0]["subject"],
            format!("{PAYMENTS} POST /v1/refunds/r1")
        );
        assert_eq!(
            allows[0]["details"]["rule"],
            "shop and support call payments"
        );
        assert_eq!(allows[0]["details"]["status"], 200);
        assert!(with_action(&records, "request_deny").is_empty());
    })
    .await
    .unwrap();
}
