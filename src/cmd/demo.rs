//! `meshgate demo`: a three-service bank on 127.0.0.1. An embedded CA mints the SVIDs, each
//! service listens for mTLS, and real calls between them are decided by the example bank
//! policies. Prints what was allowed and denied, by which rule, and checks each outcome.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meshgate_ca::{Authority, KeyType};
use meshgate_identity::tls::{Credentials, certified_key, client_config, server_config};
use meshgate_identity::verifier::{
    SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, peer_spiffe_id,
};
use meshgate_identity::{BundleSet, SpiffeId, TrustDomain};
use meshgate_policy::{Effect, PolicyFile, PolicySet, Request};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TRUST_DOMAIN: &str = "bank.example";
const SHOP: &str = "spiffe://bank.example/ns/shop/sa/checkout";
const SHOP_WEB: &str = "spiffe://bank.example/ns/shop/sa/web";
const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
const LEDGER: &str = "spiffe://bank.example/ns/ledger/sa/api";
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The example bank policies, compiled into the binary so the demo runs from any directory.
const POLICIES: [(&str, &str); 4] = [
    (
        "policies/examples/bank/mesh.toml",
        include_str!("../../policies/examples/bank/mesh.toml"),
    ),
    (
        "policies/examples/bank/shop.toml",
        include_str!("../../policies/examples/bank/shop.toml"),
    ),
    (
        "policies/examples/bank/payments.toml",
        include_str!("../../policies/examples/bank/payments.toml"),
    ),
    (
        "policies/examples/bank/ledger.toml",
        include_str!("../../policies/examples/bank/ledger.toml"),
    ),
];

pub fn run() -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo())
}

/// What a call should come to: the policy's effect, or a refused handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allow,
    Deny,
    DryRun,
    Refused,
}

struct Call {
    what: &'static str,
    from: &'static str,
    to: &'static str,
    request: &'static str,
    creds: Arc<CertifiedKey>,
    /// The address dialled; normally the `to` service's, an impostor's for one call.
    addr: SocketAddr,
    expect: Expect,
}

async fn demo() -> anyhow::Result<ExitCode> {
    let tmp = tempfile::Builder::new()
        .prefix("meshgate-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let tmp = tmp.path();
    let ca_dir = tmp.join("ca");
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    let now = OffsetDateTime::now_utc();
    let report = Authority::init(&ca_dir, td.clone(), KeyType::EcdsaP256, now)?;
    let mut ca = Authority::open(&ca_dir)?;
    let bundles = BundleSet::single(ca.bundle()?);
    println!(
        "meshgate demo: trust domain {td}, CA in {}",
        ca_dir.display()
    );
    println!("root SHA-256 {}\n", report.root_sha256);

    let policies = Arc::new(load_policies()?);
    let mut svid = |id: &str| mint(&mut ca, id, now, Duration::from_secs(3600));
    let shop = svid(SHOP)?;
    let shop_web = svid(SHOP_WEB)?;
    let payments = svid(PAYMENTS)?;
    let ledger = svid(LEDGER)?;
    // An expired SVID (issued two hours ago for one hour), and an attacker's CA that claims the
    // same trust domain name.
    let expired = mint(
        &mut ca,
        SHOP,
        now - Duration::from_secs(7200),
        Duration::from_secs(3600),
    )?;
    let rogue_dir = tmp.join("rogue-ca");
    Authority::init(&rogue_dir, td.clone(), KeyType::EcdsaP256, now)?;
    let rogue = mint(
        &mut Authority::open(&rogue_dir)?,
        PAYMENTS,
        now,
        Duration::from_secs(3600),
    )?;

    let payments_addr = serve(PAYMENTS, payments.clone(), &bundles, policies.clone()).await?;
    let ledger_addr = serve(LEDGER, ledger.clone(), &bundles, policies.clone()).await?;
    println!("payments listens on {payments_addr}, ledger on {ledger_addr} (mTLS, TLS 1.3)\n");

    let calls = [
        Call {
            what: "checkout charges a card",
            from: SHOP,
            to: PAYMENTS,
            request: "POST /v1/charges",
            creds: shop.clone(),
            addr: payments_addr,
            expect: Expect::Allow,
        },
        Call {
            what: "checkout asks for a refund",
            from: SHOP,
            to: PAYMENTS,
            request: "POST /v1/refunds/r-1",
            creds: shop.clone(),
            addr: payments_addr,
            expect: Expect::Deny,
        },
        Call {
            what: "storefront calls payments directly",
            from: SHOP_WEB,
            to: PAYMENTS,
            request: "POST /v1/charges",
            creds: shop_web,
            addr: payments_addr,
            expect: Expect::Deny,
        },
        Call {
            what: "payments posts a ledger entry",
            from: PAYMENTS,
            to: LEDGER,
            request: "POST /v1/entries",
            creds: payments.clone(),
            addr: ledger_addr,
            expect: Expect::Allow,
        },
        Call {
            what: "payments deletes entries (ledger is in dry-run)",
            from: PAYMENTS,
            to: LEDGER,
            request: "DELETE /v1/entries",
            creds: payments.clone(),
            addr: ledger_addr,
            expect: Expect::DryRun,
        },
        Call {
            what: "stolen shop identity reads the ledger",
            from: SHOP,
            to: LEDGER,
            request: "GET /v1/accounts/a-1/balance",
            creds: shop.clone(),
            addr: ledger_addr,
            expect: Expect::Deny,
        },
        Call {
            what: "expired shop SVID",
            from: SHOP,
            to: PAYMENTS,
            request: "POST /v1/charges",
            creds: expired,
            addr: payments_addr,
            expect: Expect::Refused,
        },
        Call {
            what: "rogue CA mints a payments SVID",
            from: PAYMENTS,
            to: LEDGER,
            request: "POST /v1/entries",
            creds: rogue,
            addr: ledger_addr,
            expect: Expect::Refused,
        },
        Call {
            what: "ledger poses as payments",
            from: SHOP,
            to: PAYMENTS,
            request: "POST /v1/charges",
            creds: shop,
            addr: ledger_addr,
            expect: Expect::Refused,
        },
    ];

    println!(
        "{:<3} {:<48} {:<14} {:<9} {:<30} {:<20} decided by",
        "#", "call", "from", "to", "request", "result"
    );
    let mut surprises = 0;
    for (i, call) in calls.iter().enumerate() {
        let outcome = make_call(call, &bundles).await;
        let (result, by) = outcome.describe();
        let ok = outcome.kind() == call.expect;
        if !ok {
            surprises += 1;
        }
        println!(
            "{:<3} {:<48} {:<14} {:<9} {:<30} {:<20} {}{}",
            i + 1,
            call.what,
            short(call.from),
            short(call.to),
            call.request,
            result,
            by,
            if ok { "" } else { "   <-- UNEXPECTED" }
        );
    }
    println!();
    if surprises == 0 {
        println!(
            "All {} calls ended as the policies and the identity rules say.",
            calls.len()
        );
        println!("A stolen shop identity reaches payments' checkout API and nothing else.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{surprises} call(s) ended unexpectedly.");
        Ok(ExitCode::from(crate::exit::FAILURE))
    }
}

/// How a call ended.
enum Outcome {
    Decided { effect: String, rule: String },
    Refused(String),
}

impl Outcome {
    fn kind(&self) -> Expect {
        match self {
            Self::Decided { effect, .. } if effect == "allow" => Expect::Allow,
            Self::Decided { effect, .. } if effect == "dry-run" => Expect::DryRun,
            Self::Decided { .. } => Expect::Deny,
            Self::Refused(_) => Expect::Refused,
        }
    }

    fn describe(&self) -> (String, String) {
        match self {
            Self::Decided { effect, rule } => {
                let result = match effect.as_str() {
                    "allow" => "allowed",
                    "dry-run" => "allowed (dry-run)",
                    _ => "denied (403)",
                };
                (result.to_owned(), rule.clone())
            }
            Self::Refused(why) => ("refused at TLS".to_owned(), why.clone()),
        }
    }
}

async fn make_call(call: &Call, bundles: &BundleSet) -> Outcome {
    match tokio::time::timeout(STEP_TIMEOUT * 2, dial(call, bundles)).await {
        Ok(Ok(line)) => {
            let (effect, rule) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            Outcome::Decided {
                effect: effect.to_owned(),
                rule: rule.to_owned(),
            }
        }
        Ok(Err(e)) => Outcome::Refused(tls_reason(&e)),
        Err(_) => Outcome::Refused("timed out".to_owned()),
    }
}

async fn dial(call: &Call, bundles: &BundleSet) -> anyhow::Result<String> {
    let expected = SpiffeId::parse(call.to)?;
    let verifier = Arc::new(SpiffeServerVerifier::new(
        Arc::new(SharedBundles::new(bundles.clone())),
        expected,
    ));
    let creds = Arc::new(Credentials::new(call.creds.clone()));
    let config = client_config(verifier, Some(creds), &[])?;
    let tcp = TcpStream::connect(call.addr).await?;
    let name = ServerName::try_from("127.0.0.1")?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(format!("{}\n", call.request).as_bytes())
        .await?;
    let mut answer = String::new();
    tls.take(1024).read_to_string(&mut answer).await?;
    Ok(answer.trim().to_owned())
}

/// A short reason for a refused handshake, from either side's error.
fn tls_reason(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    if text.contains("UnexpectedPeer") {
        return "client: server is not the expected SPIFFE ID".to_owned();
    }
    match text.split("received fatal alert: ").nth(1) {
        Some(alert) => format!(
            "server alert: {}",
            alert.split_whitespace().next().unwrap_or(alert)
        ),
        None => text,
    }
}

/// One service: accepts mTLS connections, reads `METHOD PATH`, and answers with the policy's
/// decision and the deciding rule.
async fn serve(
    own_id: &'static str,
    creds: Arc<CertifiedKey>,
    bundles: &BundleSet,
    policies: Arc<PolicySet>,
) -> anyhow::Result<SocketAddr> {
    let verifier = Arc::new(SpiffeClientVerifier::new(Arc::new(SharedBundles::new(
        bundles.clone(),
    ))));
    let config = server_config(Arc::new(Credentials::new(creds)), verifier, &[])?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let own = SpiffeId::parse(own_id)?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, policies, own) = (acceptor.clone(), policies.clone(), own.clone());
            tokio::spawn(async move {
                if let Err(e) =
                    tokio::time::timeout(STEP_TIMEOUT, answer(acceptor, tcp, &policies, &own)).await
                {
                    tracing::debug!("demo connection timed out: {e}");
                }
            });
        }
    });
    Ok(addr)
}

async fn answer(acceptor: TlsAcceptor, tcp: TcpStream, policies: &PolicySet, own: &SpiffeId) {
    let mut tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::info!("handshake refused: {e}");
            return;
        }
    };
    let Ok(peer) = peer_spiffe_id(tls.get_ref().1.peer_certificates()) else {
        return;
    };
    let mut line = String::new();
    if BufReader::new(&mut tls)
        .take(1024)
        .read_line(&mut line)
        .await
        .is_err()
    {
        return;
    }
    let (method, path) = line.trim().split_once(' ').unwrap_or(("", ""));
    let decision = policies.evaluate(&Request::http(&peer, own, method, path));
    let effect = match (decision.effect, decision.dry_run) {
        (Effect::Allow, true) => "dry-run",
        (Effect::Allow, false) => "allow",
        _ => "deny",
    };
    let rule = match (decision.rule_name(), decision.file) {
        (Some(rule), Some(file)) => format!("{rule:?} ({})", short_file(file)),
        (Some(rule), None) => format!("{rule:?}"),
        (None, Some(file)) => format!("default deny ({})", short_file(file)),
        (None, None) => "default deny".to_owned(),
    };
    let _ = tls.write_all(format!("{effect} {rule}\n").as_bytes()).await;
    let _ = tls.shutdown().await;
}

fn load_policies() -> anyhow::Result<PolicySet> {
    let files = POLICIES
        .iter()
        .map(|(name, text)| PolicyFile::parse(name, text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("example policies: {e}"))?;
    PolicySet::compile(files).map_err(|e| anyhow::anyhow!("example policies: {e}"))
}

fn mint(
    ca: &mut Authority,
    id: &str,
    now: OffsetDateTime,
    ttl: Duration,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let id = SpiffeId::parse(id)?;
    let (issued, key) = ca.issue_with_new_key(&id, &[], ttl, now)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(certified_key(issued.chain, key)?)
}

/// `spiffe://bank.example/ns/shop/sa/checkout` → `shop/checkout`.
fn short(id: &str) -> String {
    let path = id.trim_start_matches("spiffe://bank.example/ns/");
    path.replace("/sa/", "/").replace("/api", "")
}

fn short_file(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}
