//! No secret in logs, audit records, exports, metrics or the datastore: one end-to-end run of the
//! real binary on 127.0.0.1 (`ca init`, `ca serve`, tokens, `svid fetch` twice with one token,
//! two gateways that enroll and proxy a request, `svid renew`, `ca revoke`, `ca token revoke`, a
//! forged token given to `svid fetch` and to `gateway run`, `audit export` in every format), all
//! at `MESHGATE_LOG=debug` with every output kept in a file. Then every file the run produced is
//! searched for every token (whole, its secret in base64url, standard base64, hex and raw bytes)
//! and for every private key the run created (its DER and a piece of its PEM body). Private key
//! files are found by their PEM header, must sit where keys belong, and must be mode 0600.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");
const SHOP: &str = "spiffe://bank.example/ns/shop/sa/checkout";
const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
const WEB: &str = "spiffe://bank.example/ns/shop/sa/web";

#[test]
fn no_token_or_private_key_reaches_a_log_an_audit_record_an_export_or_the_datastore() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = Run::new(tmp.path());
    let ca = tmp.path().join("ca");

    run.ok(
        "ca-init",
        &["ca", "init", "--dir"],
        &[&ca],
        &["--trust-domain", "bank.example"],
    );
    let server = run.serve(&ca);
    let url = format!("https://{}", server.addr);

    // A workload enrolls; the spent token is refused the second time.
    let shop_token = run.token(&ca, SHOP, &url);
    let shop = tmp.path().join("shop");
    let fetched = run.ok(
        "svid-fetch",
        &["svid", "fetch", "--token", &shop_token, "--out"],
        &[&shop],
        &[],
    );
    let serial = fetched
        .lines()
        .find_map(|l| l.strip_prefix("serial:"))
        .unwrap()
        .trim()
        .to_owned();
    let again = run.status(
        "svid-fetch-spent",
        &["svid", "fetch", "--token", &shop_token, "--out"],
        &[&tmp.path().join("shop2")],
        &[],
    );
    assert!(!again.success(), "a spent token enrolled again");

    // Two gateways enroll with tokens and proxy one request: web's outbound -> payments' inbound
    // -> the service.
    let service = service();
    let payments_token = run.token(&ca, PAYMENTS, &url);
    let web_token = run.token(&ca, WEB, &url);
    let payments_in = free_port();
    let payments_cfg = gateway_config(
        &tmp.path().join("gw-payments"),
        PAYMENTS,
        &url,
        &format!(
            "[inbound]\nlisten = \"{payments_in}\"\nupstream = \"http://{service}\"\npolicy = [\"policy.toml\"]\n"
        ),
        Some(&format!(
            "service = \"{PAYMENTS}\"\n[[allow]]\nname = \"web reads status\"\nfrom = [\"{WEB}\"]\nmethods = [\"GET\"]\npaths = [\"/status\"]\n"
        )),
    );
    let web_out = free_port();
    let web_cfg = gateway_config(
        &tmp.path().join("gw-web"),
        WEB,
        &url,
        &format!(
            "[[outbound]]\nname = \"payments\"\nlisten = \"{web_out}\"\ntarget = \"{payments_in}\"\nexpected_peer = \"{PAYMENTS}\"\n"
        ),
        None,
    );
    let payments = run.gateway("gw-payments", &payments_cfg, &payments_token, "text");
    let web = run.gateway("gw-web", &web_cfg, &web_token, "json");
    wait_ready(payments.admin);
    wait_ready(web.admin);
    let answer = http_get(web_out, "/status").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let denied = http_get(web_out, "/admin").unwrap();
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    for (name, gw) in [("gw-payments", &payments), ("gw-web", &web)] {
        for path in ["/metrics", "/v1/identity", "/readyz"] {
            run.save(
                &format!("{name}-admin{}", path.replace('/', "-")),
                &http_get(gw.admin, path).unwrap(),
            );
        }
    }
    payments.stop();
    web.stop();

    // Renewal replaces the key: the first one is searched for too.
    let first_key = fs::read_to_string(shop.join("key.pem")).unwrap();
    run.ok("svid-renew", &["svid", "renew", "--dir"], &[&shop], &[]);
    assert_ne!(fs::read_to_string(shop.join("key.pem")).unwrap(), first_key);
    run.ok(
        "ca-revoke",
        &[
            "ca", "revoke", "--serial", &serial, "--reason", "test", "--dir",
        ],
        &[&ca],
        &[],
    );
    run.ok("ca-list", &["ca", "list", "--json", "--dir"], &[&ca], &[]);

    // A token never used, revoked by its id.
    let unused = run.token(&ca, SHOP, &url);
    let list = run.ok(
        "token-list",
        &["ca", "token", "list", "--json", "--dir"],
        &[&ca],
        &[],
    );
    let tokens: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let id = tokens
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .max()
        .unwrap();
    run.ok(
        "token-revoke",
        &["ca", "token", "revoke", "--id", &id.to_string(), "--dir"],
        &[&ca],
        &[],
    );

    // A real, unused token with one character of its secret changed: refused by the CA.
    let real = run.token(&ca, SHOP, &url);
    let bad = forge(&real);
    let refused = run.status(
        "svid-fetch-bad",
        &["svid", "fetch", "--token", &bad, "--out"],
        &[&tmp.path().join("shop3")],
        &[],
    );
    assert!(!refused.success(), "a forged token enrolled");
    let bad_cfg = gateway_config(
        &tmp.path().join("gw-bad"),
        SHOP,
        &url,
        &format!(
            "[[outbound]]\nname = \"payments\"\nlisten = \"{}\"\ntarget = \"{payments_in}\"\nexpected_peer = \"{PAYMENTS}\"\n",
            free_port()
        ),
        None,
    );
    let refused = run.status(
        "gw-bad",
        &["gateway", "run", "--bootstrap-token", &bad, "--config"],
        &[&bad_cfg.file],
        &[],
    );
    assert!(!refused.success(), "a gateway enrolled with a forged token");

    run.save(
        "ca-admin-metrics",
        &http_get(server.admin, "/metrics").unwrap(),
    );
    run.save(
        "ca-admin-healthz",
        &http_get(server.admin, "/healthz").unwrap(),
    );
    server.stop();

    // Every audit log, exported in every format.
    let mut logs = audit_logs(&ca);
    logs.extend(audit_logs(&tmp.path().join("gw-payments")));
    logs.extend(audit_logs(&tmp.path().join("gw-web")));
    logs.extend(audit_logs(&tmp.path().join("gw-bad")));
    assert!(logs.len() >= 3, "{logs:?}");
    let exports = tmp.path().join("exports");
    fs::create_dir(&exports).unwrap();
    for format in ["jsonl", "csv", "ocsf"] {
        let mut args: Vec<PathBuf> = Vec::new();
        for log in &logs {
            args.push("--log".into());
            args.push(log.clone());
        }
        args.push("--out".into());
        args.push(exports.join(format!("audit.{format}")));
        let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
        run.ok(
            &format!("export-{format}"),
            &["audit", "export", "--format", format],
            &args,
            &[],
        );
    }

    // What must never appear, and where to look.
    let mut needles = Vec::new();
    for (name, token) in [
        ("shop token", &shop_token),
        ("payments token", &payments_token),
        ("web token", &web_token),
        ("unused token", &unused),
        ("token behind the forged one", &real),
        ("forged token", &bad),
    ] {
        needles.extend(token_forms(name, token));
    }
    needles.extend(key_forms("shop/key.pem before renewal", &first_key));
    let files = files_under(tmp.path());
    // Key files: a PEM private key in a CA's `keys/` or an agent's `key.pem`. Anything else that
    // holds a PEM private key is a leak in itself (and is searched like the rest).
    let mut found = Vec::new();
    let mut keys: Vec<&PathBuf> = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(tmp.path()).unwrap();
        if !fs::read(file)
            .unwrap()
            .windows(11)
            .any(|w| w == b"PRIVATE KEY")
        {
            continue;
        }
        let in_keys_dir = rel.parent().is_some_and(|p| p.ends_with("keys"));
        let is_key_file = rel.file_name().is_some_and(|n| n == "key.pem");
        if in_keys_dir || is_key_file {
            keys.push(file);
        } else {
            found.push(format!("a PEM private key in {}", rel.display()));
        }
    }
    for key in &keys {
        let rel = key.strip_prefix(tmp.path()).unwrap();
        let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", rel.display());
        needles.extend(key_forms(
            &rel.display().to_string(),
            &fs::read_to_string(key).unwrap(),
        ));
    }
    // CA keys (root, intermediate) and the SVID keys of shop and both gateways.
    let ca_keys = keys.iter().filter(|k| k.starts_with(&ca)).count();
    assert!(ca_keys >= 2, "CA keys: {keys:?}");
    for dir in ["shop", "gw-payments", "gw-web"] {
        assert!(
            keys.iter().any(|k| k.starts_with(tmp.path().join(dir))),
            "no key in {dir}: {keys:?}"
        );
    }
    for dir in ["ca", "ca/keys", "shop", "gw-payments/state", "gw-web/state"] {
        let mode = fs::metadata(tmp.path().join(dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{dir} has mode {mode:o}");
    }

    let mut searched = Vec::new();
    for file in files.iter().filter(|f| !keys.contains(f)) {
        let bytes = fs::read(file).unwrap();
        searched.push(file.strip_prefix(tmp.path()).unwrap().display().to_string());
        for (what, needle) in &needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                found.push(format!(
                    "{what} in {}",
                    file.strip_prefix(tmp.path()).unwrap().display()
                ));
            }
        }
    }
    // The run really produced what is searched: debug logs, audit logs, exports, ca.db.
    for expected in [
        "ca/ca.db",
        "ca/audit.jsonl",
        "gw-payments/audit.jsonl",
        "logs/ca-serve.stderr",
        "logs/gw-payments.stderr",
        "logs/gw-bad.stderr",
        "logs/svid-fetch-bad.stderr",
        "exports/audit.ocsf",
        "exports/audit.csv",
        "exports/audit.jsonl",
        "logs/ca-admin-metrics",
        "logs/gw-payments-admin-metrics",
    ] {
        assert!(
            searched.iter().any(|s| s == expected),
            "{expected} missing: {searched:?}"
        );
    }
    let debug = fs::read_to_string(tmp.path().join("logs/gw-payments.stderr")).unwrap();
    assert!(
        debug.contains("DEBUG"),
        "the gateway logged nothing at debug level"
    );
    assert!(found.is_empty(), "secrets found:\n{}", found.join("\n"));
}

/// The commands of one run, each with its stdout and stderr kept under `logs/`.
struct Run {
    logs: PathBuf,
    count: usize,
}

impl Run {
    fn new(root: &Path) -> Self {
        let logs = root.join("logs");
        fs::create_dir(&logs).unwrap();
        Self { logs, count: 0 }
    }

    fn command(&self, args: &[&str], paths: &[&Path], more: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .args(paths)
            .args(more)
            .env("MESHGATE_LOG", "debug")
            .env_remove("MESHGATE_LOG_FORMAT")
            .env_remove("MESHGATE_BOOTSTRAP_TOKEN")
            .env("NO_COLOR", "1");
        cmd
    }

    fn files(&mut self, name: &str) -> (File, File, PathBuf) {
        self.count += 1;
        let out = self.logs.join(format!("{name}.stdout"));
        let err = self.logs.join(format!("{name}.stderr"));
        assert!(!out.exists(), "two steps named {name}");
        (File::create(&out).unwrap(), File::create(err).unwrap(), out)
    }

    /// Runs a command to its end: its exit status.
    fn status(&mut self, name: &str, args: &[&str], paths: &[&Path], more: &[&str]) -> ExitStatus {
        let (out, err, _) = self.files(name);
        self.command(args, paths, more)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .unwrap()
    }

    /// Runs a command that must succeed: its stdout.
    fn ok(&mut self, name: &str, args: &[&str], paths: &[&Path], more: &[&str]) -> String {
        let status = self.status(name, args, paths, more);
        let stdout = fs::read_to_string(self.logs.join(format!("{name}.stdout"))).unwrap();
        let stderr = fs::read_to_string(self.logs.join(format!("{name}.stderr"))).unwrap();
        assert!(status.success(), "{name} failed: {stderr}");
        stdout
    }

    /// `ca token create`: the token. Its stdout is the token by design, so it is kept in memory
    /// only; its stderr (the debug log) is kept and searched.
    fn token(&mut self, ca: &Path, id: &str, url: &str) -> String {
        self.count += 1;
        let err = File::create(
            self.logs
                .join(format!("token-create-{}.stderr", self.count)),
        )
        .unwrap();
        let out = self
            .command(
                &[
                    "ca",
                    "token",
                    "create",
                    "--spiffe-id",
                    id,
                    "--ca-url",
                    url,
                    "--dir",
                ],
                &[ca],
                &[],
            )
            .stderr(err)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn serve(&mut self, ca: &Path) -> Server {
        let (_, err, out_path) = self.files("ca-serve");
        let mut child = self
            .command(
                &[
                    "ca",
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--admin",
                    "127.0.0.1:0",
                    "--dir",
                ],
                &[ca],
                &[],
            )
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let mut out = File::create(out_path).unwrap();
        out.write_all(line.as_bytes()).unwrap();
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut out));
        // "meshgate CA serving https://ADDR (admin http://ADDR)"
        let addr = |prefix: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {line:?}"))
                .trim_end_matches(')')
                .parse()
                .unwrap()
        };
        Server {
            addr: addr("https://"),
            admin: addr("http://"),
            child: Some(child),
        }
    }

    /// `gateway run`, its logs as `text` or `json` lines.
    fn gateway(&mut self, name: &str, cfg: &GatewayConfig, token: &str, logs: &str) -> Server {
        let (out, err, _) = self.files(name);
        let child = self
            .command(
                &["gateway", "run", "--bootstrap-token", token, "--config"],
                &[&cfg.file],
                &[],
            )
            .env("MESHGATE_LOG_FORMAT", logs)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Server {
            addr: cfg.admin,
            admin: cfg.admin,
            child: Some(child),
        }
    }

    /// Keeps what an endpoint answered, to be searched with the rest.
    fn save(&self, name: &str, text: &str) {
        fs::write(self.logs.join(name), text).unwrap();
    }
}

/// A running `ca serve` or `gateway run`, stopped with SIGTERM (so that logs are flushed), or
/// killed if the test fails before.
struct Server {
    addr: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
}

impl Server {
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let status = child.wait().unwrap();
        assert!(status.success(), "exit after SIGTERM: {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct GatewayConfig {
    file: PathBuf,
    admin: SocketAddr,
}

/// A gateway's directory with its config (state and audit log inside it) and policy.
fn gateway_config(
    dir: &Path,
    id: &str,
    ca_url: &str,
    listeners: &str,
    policy: Option<&str>,
) -> GatewayConfig {
    fs::create_dir(dir).unwrap();
    if let Some(policy) = policy {
        fs::write(dir.join("policy.toml"), policy).unwrap();
    }
    let admin = free_port();
    let file = dir.join("gateway.toml");
    fs::write(
        &file,
        format!(
            "spiffe_id = \"{id}\"\nstate_dir = \"state\"\n[ca]\nurl = \"{ca_url}\"\n[admin]\nlisten = \"{admin}\"\n[audit]\npath = \"audit.jsonl\"\nlog_allows = true\n{listeners}"
        ),
    )
    .unwrap();
    GatewayConfig { file, admin }
}

/// `audit.jsonl` in `dir` and its rotated files, `audit.jsonl.<seq>`.
fn audit_logs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut logs: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == "audit.jsonl" || (n.starts_with("audit.jsonl.") && !n.ends_with(".lock"))
            })
        })
        .collect();
    logs.sort();
    logs
}

/// A token with the first character of its secret changed.
fn forge(token: &str) -> String {
    let dot = token.rfind('.').unwrap();
    let mut forged = token.to_owned();
    let c = if token.as_bytes()[dot + 1] == b'A' {
        "B"
    } else {
        "A"
    };
    forged.replace_range(dot + 1..dot + 2, c);
    assert_ne!(forged, token);
    forged
}

/// The token whole, and its secret as written, in standard base64, hex and raw.
fn token_forms(name: &str, token: &str) -> Vec<(String, Vec<u8>)> {
    let secret = &token[token.rfind('.').unwrap() + 1..];
    let raw = URL_SAFE_NO_PAD.decode(secret).unwrap();
    assert_eq!(raw.len(), 32, "{name}: secret of {} bytes", raw.len());
    vec![
        (format!("{name} (whole)"), token.as_bytes().to_vec()),
        (format!("{name} (secret)"), secret.as_bytes().to_vec()),
        (
            format!("{name} (secret, base64)"),
            STANDARD.encode(&raw).into_bytes(),
        ),
        (
            format!("{name} (secret, base64 unpadded)"),
            STANDARD_NO_PAD.encode(&raw).into_bytes(),
        ),
        (
            format!("{name} (secret, base64url padded)"),
            URL_SAFE.encode(&raw).into_bytes(),
        ),
        (
            format!("{name} (secret, hex)"),
            hex::encode(&raw).into_bytes(),
        ),
        (
            format!("{name} (secret, HEX)"),
            hex::encode_upper(&raw).into_bytes(),
        ),
        (format!("{name} (secret, raw)"), raw),
    ]
}

/// A private key's DER and a 40-character piece of its PEM body from the second line: for the
/// PKCS#8 keys written here that piece is inside the private scalar, where no other key, no
/// certificate and no public key can match it.
fn key_forms(name: &str, pem: &str) -> Vec<(String, Vec<u8>)> {
    let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body.len() >= 2, "{name}: {} body lines", body.len());
    let der = STANDARD.decode(body.concat()).unwrap();
    vec![
        (
            format!("private key {name} (PEM body)"),
            body[1].as_bytes()[..40].to_vec(),
        ),
        (format!("private key {name} (DER)"), der),
    ]
}

/// Every file under `root`, recursively.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Polls `/readyz` until the gateway holds its SVID.
fn wait_ready(admin: SocketAddr) {
    for _ in 0..300 {
        if http_get(admin, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the gateway at {admin} never became ready");
}

/// One HTTP/1.1 GET on a new connection: the whole answer, or None if nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).ok()?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// The local service: `200 ok` to anything.
fn service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}
