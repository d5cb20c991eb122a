//! Crash safety of `meshgate ca serve`: the process is killed with SIGKILL while 200
//! enrollments are in flight, then restarted. Every SVID a client received must be in the
//! datastore, no token may pay for two SVIDs, and the audit chain must verify after the restarted
//! writer repaired a torn tail (if the kill left one).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshgate_ca::Authority;
use meshgate_gateway::{Agent, KeyType};
use meshgate_identity::SpiffeId;
use meshgate_identity::api::BootstrapToken;
use time::OffsetDateTime;

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");
const CLIENTS: usize = 200;

/// Starts `ca serve` on an ephemeral port and returns the child and its address.
fn serve(dir: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["ca", "serve", "--dir", dir.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--enroll-rate", "100000", "--enroll-burst", "100000"])
        .args(["--max-connections-per-ip", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ca serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("https://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (child, addr)
}

fn workload(n: usize) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://bank.example/ns/load/sa/w{n}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_200_enrollments_loses_nothing_and_spends_no_token_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let init = Command::new(BIN)
        .args([
            "ca",
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--trust-domain",
            "bank.example",
        ])
        .output()
        .unwrap();
    assert!(init.status.success());
    let (mut child, addr) = serve(&dir);

    // One single-use token per workload, each for its own SPIFFE ID.
    let mut ca = Authority::open(&dir).unwrap();
    let url = format!("https://{addr}");
    let tokens: Vec<BootstrapToken> = (0..CLIENTS)
        .map(|n| {
            let ttl = Duration::from_secs(900);
            ca.create_token(
                &workload(n),
                ttl,
                1,
                "test",
                &url,
                OffsetDateTime::now_utc(),
            )
            .unwrap()
            .0
        })
        .collect();
    drop(ca);

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for (n, token) in tokens.iter().cloned().enumerate() {
        let state = tmp.path().join(format!("w{n}"));
        let done = done_tx.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(
                Duration::from_secs(30),
                Agent::enroll(&token, &state, KeyType::EcdsaP256),
            )
            .await;
            let serial = match result {
                Ok(Ok(agent)) => Some(agent.svid().info.serial.to_string()),
                _ => None,
            };
            let _ = done.send((n, serial));
        });
    }
    drop(done_tx);

    // Kill the CA once some enrollments have been answered, with the rest still in flight.
    let mut received: HashMap<usize, String> = HashMap::new();
    let mut finished = 0;
    while let Some((n, serial)) = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
        .await
        .unwrap()
    {
        finished += 1;
        if let Some(s) = serial {
            received.insert(n, s);
        }
        if received.len() >= 20 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    while let Some((n, serial)) = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
        .await
        .unwrap()
    {
        finished += 1;
        if let Some(s) = serial {
            received.insert(n, s);
        }
    }
    assert_eq!(finished, CLIENTS);
    assert!(
        received.len() >= 20 && received.len() < CLIENTS,
        "the kill landed mid-run: {}",
        received.len()
    );

    // Restart: the audit writer repairs a torn tail, and the server serves again.
    let (mut child, _addr) = serve(&dir);
    let ca = Authority::open(&dir).unwrap();
    let issued = ca.list().unwrap();
    let serials: HashSet<String> = issued.iter().map(|c| c.serial.to_string()).collect();
    for (n, serial) in &received {
        assert!(
            serials.contains(serial),
            "workload {n} got serial {serial}, which `ca list` does not have"
        );
    }
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    // The CA's own TLS SVIDs (one per start) are not paid for by tokens.
    let issued: Vec<_> = issued
        .into_iter()
        .filter(|c| c.spiffe_id.path() != "/meshgate/ca")
        .collect();
    for c in &issued {
        *per_id.entry(c.spiffe_id.as_str()).or_default() += 1;
    }
    assert!(
        per_id.values().all(|n| *n == 1),
        "a token paid for two SVIDs: {per_id:?}"
    );
    // Every issued SVID spent its workload's token (a spent token may also belong to a client
    // whose CSR failed, so `>=`).
    let tokens_left = ca.list_tokens().unwrap();
    for c in &issued {
        let t = tokens_left
            .iter()
            .find(|t| t.spiffe_id == c.spiffe_id)
            .unwrap();
        assert_eq!(
            t.uses_left, 0,
            "{} was issued but its token is unspent",
            c.spiffe_id
        );
    }

    // The audit chain verifies; every SVID a client received has its issue record.
    let summary = meshgate_audit::verify_file(dir.join("audit.jsonl")).unwrap();
    assert!(summary.records as usize >= received.len());
    let issue_records: HashSet<String> = meshgate_audit::read_records(dir.join("audit.jsonl"))
        .unwrap()
        .map(|r| r.unwrap())
        .filter(|r| r.event.action == meshgate_audit::Action::SvidIssue)
        .filter_map(|r| {
            r.event
                .details
                .get("serial")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .collect();
    for serial in received.values() {
        assert!(
            issue_records.contains(serial),
            "serial {serial} was handed out without an audit record"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
