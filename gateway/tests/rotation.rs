//! Rotation under load: while apps keep calling shop → payments, both gateways' agents run their
//! own loops against a CA that mints 12-second SVIDs, so each renews every ~6 s and refreshes the
//! bundle every 5 s (the CA's hint, bounded below by the agent); meanwhile the CA root goes
//! prepare → activate. Not one request fails, and at the end both gateways present SVIDs that
//! chain to the new root only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod harness;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{Ca, PAYMENTS, Pair, SHOP, Steady, admin, eventually, h2_get, tls_as};
use hyper::StatusCode;
use meshgate_ca::{Authority, Phase};
use meshgate_identity::bundle::certs_from_pem;
use meshgate_identity::svid::{check_leaf, verify_chain};
use meshgate_identity::tls::ALPN_H2;
use meshgate_identity::{BundleSet, TrustBundle, TrustDomain};
use rustls::pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

const LIMIT: Duration = Duration::from_secs(150);
const SVID_TTL: Duration = Duration::from_secs(12);
/// Apps calling through the shop's outbound listener.
const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_svids_renew_and_the_root_rotates() {
    tokio::time::timeout(LIMIT, async {
        let ca = Ca::start_with_svid_ttl(SVID_TTL).await;
        let state = ca.dir.path().to_owned();
        let Pair {
            ca,
            echo: _echo,
            shop,
            payments,
            shop_agent,
            payments_agent,
        } = Pair::start_on(ca, "").await;
        let td = TrustDomain::parse("bank.example").unwrap();
        let old_roots = Authority::open(&ca.ca_dir)
            .unwrap()
            .bundle()
            .unwrap()
            .roots()
            .to_vec();
        // A peer that opens a new mTLS connection for every request with the shop's current
        // credentials, so that handshakes on both sides use each new SVID.
        let tls = tls_as(&shop_agent, PAYMENTS, &[ALPN_H2]);

        // The agents' own loops: renewal at half-life, bundle and revocation refresh.
        let (stop_agents, agents_stopped) = tokio::sync::watch::channel(false);
        let mut agents = Vec::new();
        for agent in [shop_agent, payments_agent] {
            let mut stopped = agents_stopped.clone();
            agents.push(tokio::spawn(agent.run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })));
        }

        // Every serial each gateway reports, sampled twice a second.
        let serials = Arc::new(Mutex::new([HashSet::new(), HashSet::new()]));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (serials, stop) = (serials.clone(), stop.clone());
            let admins = [shop.admin, payments.admin];
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    for (i, addr) in admins.iter().enumerate() {
                        let (_, body) = admin(*addr, "/v1/identity").await;
                        let id: serde_json::Value = serde_json::from_str(&body).unwrap();
                        let serial = id["serial"].as_str().unwrap().to_owned();
                        serials.lock().unwrap()[i].insert(serial);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };

        // The load: apps through the shop's outbound route (one pooled h2 connection between
        // the gateways) and the fresh-connection peer.
        let steady = Steady::start(shop.outbound_addr("payments").unwrap(), CLIENTS);
        let inbound = payments.inbound.unwrap();
        let fresh = {
            let (stop, tls) = (stop.clone(), tls.clone());
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

        // prepare: the new root enters the bundle; both gateways pick it up by refreshing.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let prepared = Authority::open(&ca.ca_dir)
            .unwrap()
            .rotate_prepare(OffsetDateTime::now_utc())
            .unwrap();
        let bundle = Authority::open(&ca.ca_dir).unwrap().bundle().unwrap();
        let new_root: CertificateDer<'static> = bundle
            .roots()
            .iter()
            .find(|r| !old_roots.contains(r))
            .unwrap()
            .clone();
        assert_eq!(
            prepared.sha256,
            hex::encode(meshgate_identity::svid::sha256_of(&new_root))
        );
        let prepared_sequence = bundle.sequence;
        for gateway in [&shop, &payments] {
            eventually("the gateways refresh to the prepared bundle", || async {
                bundle_sequence(gateway.admin).await >= prepared_sequence
            })
            .await;
        }

        // activate: a new intermediate under the new root signs; the next renewals chain to it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut cli = Authority::open(&ca.ca_dir).unwrap();
        cli.rotate_activate(OffsetDateTime::now_utc()).unwrap();
        assert_eq!(cli.phase().unwrap(), Phase::Activated);
        let activated_sequence = cli.bundle().unwrap().sequence;
        let only_old = bundle_of(&td, old_roots.clone());
        let only_new = bundle_of(&td, vec![new_root.clone()]);
        for dir in [state.join("shop"), state.join("payments")] {
            eventually("both SVIDs chain to the new root", || async {
                verify_chain(&svid_on_disk(&dir), &only_new, UnixTime::now()).is_ok()
            })
            .await;
        }
        for gateway in [&shop, &payments] {
            eventually("the gateways refresh to the activated bundle", || async {
                bundle_sequence(gateway.admin).await >= activated_sequence
            })
            .await;
        }
        // One more renewal under the new root, with the load still running.
        tokio::time::sleep(SVID_TTL / 2 + Duration::from_secs(1)).await;

        stop.store(true, Ordering::SeqCst);
        let (fresh_ok, fresh_failed) = fresh.await.unwrap();
        let (ok, failed) = steady.finish().await;
        sampler.await.unwrap();
        let [shop_serials, payments_serials] = serials.lock().unwrap().clone();
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
        // Several renewals each, done by the agents' own schedule.
        assert!(shop_serials.len() >= 3, "{shop_serials:?}");
        assert!(payments_serials.len() >= 3, "{payments_serials:?}");

        // On the wire: payments presents an SVID under the new root only, and sees the shop's
        // current SVID (XFCC hash) on a new connection.
        let (answer, chain) = h2_get(inbound, tls, "/v1/charges/ch_1").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        verify_chain(&chain, &only_new, UnixTime::now()).unwrap();
        assert!(verify_chain(&chain, &only_old, UnixTime::now()).is_err());
        let shop_chain = svid_on_disk(&state.join("shop"));
        verify_chain(&shop_chain, &only_new, UnixTime::now()).unwrap();
        assert!(verify_chain(&shop_chain, &only_old, UnixTime::now()).is_err());
        let xfcc = answer.json()["headers"]["x-forwarded-client-cert"][0].clone();
        assert!(
            xfcc.as_str()
                .unwrap()
                .starts_with(&format!("By={PAYMENTS};Hash=")),
            "{xfcc}"
        );
        assert!(
            xfcc.as_str().unwrap().ends_with(&format!(";URI={SHOP}")),
            "{xfcc}"
        );
        let leaf = check_leaf(&chain[0]).unwrap();
        assert!(leaf.not_after - leaf.not_before <= SVID_TTL.as_secs() + 2);

        stop_agents.send(true).unwrap();
        for agent in agents {
            agent.await.unwrap().unwrap();
        }
    })
    .await
    .unwrap();
}

async fn bundle_sequence(admin_addr: std::net::SocketAddr) -> u64 {
    let (_, body) = admin(admin_addr, "/v1/identity").await;
    let id: serde_json::Value = serde_json::from_str(&body).unwrap();
    id["bundle_sequence"].as_u64().unwrap()
}

/// The SVID chain an agent last wrote to its state directory.
fn svid_on_disk(dir: &Path) -> Vec<CertificateDer<'static>> {
    certs_from_pem(&std::fs::read(dir.join("svid.pem")).unwrap()).unwrap()
}

fn bundle_of(td: &TrustDomain, roots: Vec<CertificateDer<'static>>) -> BundleSet {
    BundleSet::single(TrustBundle::new(td.clone(), roots).unwrap())
}
