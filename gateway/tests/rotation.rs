//! Rotation under load: while apps keep calling shop → payments, both gateways' SVIDs are
//! renewed several times and the CA root goes prepare → activate; not one request fails, and at
//! the end both gateways present SVIDs that chain to the new root only.
//!
//! The CA issues 1 h leaves (`profile::LEAF_TTL`), so the agents' own schedule would renew after
//! half an hour and refresh the bundle every 5 minutes (the CA's hint). The test therefore drives
//! the same agent calls the run loop makes (`Agent::renew`, `Agent::fetch_bundle`) by hand, on a
//! compressed schedule; the gateways read the published credentials exactly as in production.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod harness;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::{PAYMENTS, Pair, SHOP, Steady, admin, h2_get, tls_as};
use hyper::StatusCode;
use meshgate_ca::{Authority, Phase};
use meshgate_gateway::Agent;
use meshgate_identity::svid::{check_leaf, verify_chain};
use meshgate_identity::tls::ALPN_H2;
use meshgate_identity::{BundleSet, TrustBundle, TrustDomain};
use rustls::pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

const LIMIT: Duration = Duration::from_secs(120);
/// The pause between two steps of the rotation: the whole run is about 20 s of load.
const STEP: Duration = Duration::from_millis(2500);
/// Apps calling through the shop's outbound listener.
const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_svids_renew_and_the_root_rotates() {
    tokio::time::timeout(LIMIT, async {
        let Pair {
            ca,
            echo: _echo,
            shop,
            payments,
            mut shop_agent,
            mut payments_agent,
        } = Pair::start("").await;
        let td = TrustDomain::parse("bank.example").unwrap();
        let old_roots = Authority::open(&ca.ca_dir)
            .unwrap()
            .bundle()
            .unwrap()
            .roots()
            .to_vec();
        let mut shop_serials = HashSet::from([shop_agent.svid().info.serial.clone()]);
        let mut payments_serials = HashSet::from([payments_agent.svid().info.serial.clone()]);

        // The load: apps through the shop's outbound route (one pooled h2 connection between the
        // gateways), and a peer that opens a new mTLS connection for every request with the
        // shop's current credentials, so that handshakes on both sides use each new SVID.
        let steady = Steady::start(shop.outbound_addr("payments").unwrap(), CLIENTS);
        let stop = Arc::new(AtomicBool::new(false));
        let tls = tls_as(&shop_agent, PAYMENTS, &[ALPN_H2]);
        let inbound = payments.inbound.unwrap();
        let fresh = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match h2_get(inbound, tls.clone(), "/v1/charges/ch_1").await {
                        Ok((a, _)) if a.status == StatusCode::OK => ok += 1,
                        Ok((a, _)) => failed.push(format!("{}: {:?}", a.status, a.body)),
                        Err(e) => failed.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, failed)
            })
        };

        // Two renewals of both SVIDs under the old root.
        for _ in 0..2 {
            tokio::time::sleep(STEP).await;
            renew(&mut shop_agent, &mut shop_serials).await;
            renew(&mut payments_agent, &mut payments_serials).await;
        }

        // prepare: the new root enters the bundle; both agents refresh and trust it.
        tokio::time::sleep(STEP).await;
        let prepared = Authority::open(&ca.ca_dir)
            .unwrap()
            .rotate_prepare(OffsetDateTime::now_utc())
            .unwrap();
        let new_root: CertificateDer<'static> = Authority::open(&ca.ca_dir)
            .unwrap()
            .bundle()
            .unwrap()
            .roots()
            .iter()
            .find(|r| !old_roots.contains(r))
            .unwrap()
            .clone();
        assert_eq!(
            prepared.sha256,
            hex::encode(meshgate_identity::svid::sha256_of(&new_root))
        );
        for agent in [&mut shop_agent, &mut payments_agent] {
            assert!(
                agent.fetch_bundle().await.unwrap(),
                "a new bundle after prepare"
            );
            assert_eq!(agent.bundle().roots().len(), 2);
        }

        // One more renewal while the new root is trusted but signs nothing.
        tokio::time::sleep(STEP).await;
        renew(&mut shop_agent, &mut shop_serials).await;
        renew(&mut payments_agent, &mut payments_serials).await;
        let only_old = bundle_of(&td, old_roots.clone());
        let only_new = bundle_of(&td, vec![new_root.clone()]);
        assert!(verify_chain(&shop_agent.svid().chain, &only_old, UnixTime::now()).is_ok());

        // activate: a new intermediate under the new root signs; both agents refresh, then renew
        // until the CA server has picked the change up (it looks every 2 s).
        tokio::time::sleep(STEP).await;
        let mut cli = Authority::open(&ca.ca_dir).unwrap();
        cli.rotate_activate(OffsetDateTime::now_utc()).unwrap();
        assert_eq!(cli.phase().unwrap(), Phase::Activated);
        let activated_sequence = cli.bundle().unwrap().sequence;
        for agent in [&mut shop_agent, &mut payments_agent] {
            assert!(
                agent.fetch_bundle().await.unwrap(),
                "a new bundle after activate"
            );
            assert_eq!(agent.bundle().sequence, activated_sequence);
        }
        for (agent, serials) in [
            (&mut shop_agent, &mut shop_serials),
            (&mut payments_agent, &mut payments_serials),
        ] {
            let mut tries = 0;
            loop {
                renew(agent, serials).await;
                if verify_chain(&agent.svid().chain, &only_new, UnixTime::now()).is_ok() {
                    break;
                }
                tries += 1;
                assert!(tries < 40, "the CA never signed under the new root");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }

        // And one more renewal under the new root, with the load still running.
        tokio::time::sleep(STEP).await;
        renew(&mut shop_agent, &mut shop_serials).await;
        renew(&mut payments_agent, &mut payments_serials).await;
        tokio::time::sleep(STEP).await;

        stop.store(true, Ordering::SeqCst);
        let (fresh_ok, fresh_failed) = fresh.await.unwrap();
        let (ok, failed) = steady.finish().await;
        println!(
            "{ok} app calls and {fresh_ok} fresh-connection calls; {} shop and {} payments SVIDs",
            shop_serials.len(),
            payments_serials.len()
        );
        assert!(
            failed.is_empty(),
            "{} of {} app calls failed: {failed:?}",
            failed.len(),
            ok + failed.len()
        );
        assert!(
            fresh_failed.is_empty(),
            "{} of {} fresh-connection calls failed: {fresh_failed:?}",
            fresh_failed.len(),
            fresh_ok + fresh_failed.len()
        );
        assert!(
            ok >= CLIENTS && fresh_ok >= 1,
            "the load ran: {ok} app calls, {fresh_ok} fresh"
        );
        assert!(shop_serials.len() >= 5, "{shop_serials:?}");
        assert!(payments_serials.len() >= 5, "{payments_serials:?}");

        // Both SVIDs now chain to the new root, and not to the old one.
        for agent in [&shop_agent, &payments_agent] {
            let chain = &agent.svid().chain;
            verify_chain(chain, &only_new, UnixTime::now()).unwrap();
            assert!(verify_chain(chain, &only_old, UnixTime::now()).is_err());
        }
        // On the wire: payments presents its newest SVID on a new connection, which sees the
        // shop's newest SVID in XFCC; both gateways report them on /v1/identity.
        let (answer, chain) = h2_get(
            inbound,
            tls_as(&shop_agent, PAYMENTS, &[ALPN_H2]),
            "/v1/charges/ch_1",
        )
        .await
        .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            check_leaf(&chain[0]).unwrap().serial,
            payments_agent.svid().info.serial
        );
        verify_chain(&chain, &only_new, UnixTime::now()).unwrap();
        let xfcc = answer.json()["headers"]["x-forwarded-client-cert"][0].clone();
        let hash = hex::encode(shop_agent.svid().info.sha256);
        assert_eq!(xfcc, format!("By={PAYMENTS};Hash={hash};URI={SHOP}"));
        for (gateway, agent) in [(&shop, &shop_agent), (&payments, &payments_agent)] {
            let (status, body) = admin(gateway.admin, "/v1/identity").await;
            assert_eq!(status, StatusCode::OK);
            let identity: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(identity["serial"], agent.svid().info.serial.to_string());
            assert_eq!(identity["bundle_sequence"], activated_sequence);
        }
    })
    .await
    .unwrap();
}

/// Renews `agent` and records the new serial, which must be new.
async fn renew(agent: &mut Agent, serials: &mut HashSet<meshgate_identity::Serial>) {
    agent.renew().await.unwrap();
    assert!(
        serials.insert(agent.svid().info.serial.clone()),
        "a renewal gives a new serial"
    );
}

fn bundle_of(td: &TrustDomain, roots: Vec<CertificateDer<'static>>) -> BundleSet {
    BundleSet::single(TrustBundle::new(td.clone(), roots).unwrap())
}
