//! The access log as an operator gets it: `meshgate --log-format json gateway run` enrolls with a
//! token from a real CA server, takes a request through its own outbound route and inbound
//! listener (mTLS on 127.0.0.1), and writes one JSON object per request on stderr with the fields
//! a log pipeline reads.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod support;

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::ca_client::CaHarness;
use support::plain::{free_port, get, ok_service as service};

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");
const ID: &str = "spiffe://bank.example/ns/payments/sa/api";

/// Kills the gateway if the test fails half-way.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_writes_json_access_log_lines() {
    let mut ca = CaHarness::start().await;
    let token = ca.token(ID);
    let dir = ca.scratch("gw");
    std::fs::create_dir_all(&dir).unwrap();
    let service = service().await;
    let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("self.toml"),
        format!(
            "service = \"{ID}\"\n[[allow]]\nname = \"self-test reads status\"\nfrom = [\"{ID}\"]\nmethods = [\"GET\"]\npaths = [\"/status\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            r#"spiffe_id = "{ID}"
state_dir = "state"
[ca]
url = "{url}"
[inbound]
listen = "{inbound}"
upstream = "http://{service}"
policy = ["self.toml"]
[[outbound]]
name = "self"
listen = "{outbound}"
target = "{inbound}"
expected_peer = "{ID}"
[admin]
listen = "{admin}"
"#,
            url = ca.url()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["--log-format", "json", "gateway", "run", "--config"])
        .arg(dir.join("gateway.toml"))
        .arg("--bootstrap-token")
        .arg(token.reveal())
        .env_remove("MESHGATE_LOG")
        .env_remove("MESHGATE_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gateway = Gateway(child);

    let mut ready = false;
    for _ in 0..150 {
        if get(admin, "/readyz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the gateway never became ready");
    let answer = get(outbound, "/status").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let denied = get(outbound, "/admin").await.unwrap();
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");

    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    let mut stderr = String::new();
    gateway
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = |direction: &str, path: &str| {
        lines
            .iter()
            .find(|l| {
                l["target"] == "meshgate::access"
                    && l["direction"] == direction
                    && l["path"] == path
            })
            .unwrap_or_else(|| panic!("no {direction} access line for {path}: {stderr}"))
    };
    let allowed = access("inbound", "/status");
    assert_eq!(allowed["level"], "INFO");
    assert_eq!(allowed["peer"], ID);
    assert_eq!(allowed["method"], "GET");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["rule"], "self-test reads status");
    assert!(allowed["duration_ms"].as_f64().unwrap() >= 0.0, "{allowed}");
    assert!(allowed["timestamp"].is_string(), "{allowed}");
    let denied = access("inbound", "/admin");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["decision"], "deny");
    let out = access("outbound", "/status");
    assert_eq!(out["status"], 200);
    // The token is in no log line.
    assert!(!stderr.contains(&token.reveal()));
}
