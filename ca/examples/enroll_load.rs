//! Enrollment and renewal throughput of the CA server (not shipped), beside the raw ECDSA P-256
//! sign and verify rates of ring on the same machine, so the distance to the CPU bound shows.
//!
//!     cargo run --release -p meshgate-ca --example enroll_load -- \
//!         --clients N --enrollments N --renewals N [--key-type ecdsa-p256|ecdsa-p384|ed25519] \
//!         [--dir DIR] [--client-dir DIR]
//!
//! It makes a CA (`--key-type`, default ecdsa-p256, for the CA and the clients' keys) in a
//! temporary directory under `--dir` (default the cargo target directory: a real disk, so the
//! datastore's fsyncs cost what they cost), starts the server `ca serve` runs, in-process, on
//! 127.0.0.1:0 with its per-address rate limits and connection caps raised through their
//! settings, and creates one single-use token per enrollment through the CA's token API (each a
//! durable write, done before the clock starts). Then `--clients` concurrent clients enroll, each
//! enrollment with a new key, a CSR and its own token, over TLS 1.3 through the agent's own
//! client (`Agent::enroll`, what `gateway run` and `svid fetch` do: the answer's chain, ID and key
//! are checked), and then renew over mTLS with the SVIDs obtained (`Agent::renew`, a fresh key
//! each time). The agents' state directories go under `--client-dir` (default `/dev/shm` when it
//! exists): a real agent keeps its state on its own machine, so its fsyncs are not the CA's.
//!
//! Next, `--enrollments` more enrollments, with tokens of their own, go over kept-alive
//! connections: each client opens one TLS connection to the CA and sends its enrollments on it
//! one after another, each with a new key, a CSR and its own token, and checks each answer (see
//! `keep_alive`) without writing it anywhere. The keys and CSRs are made before the clock starts,
//! as the tokens are. That is the CA's issuance capacity without a TLS handshake per enrollment
//! on both sides (measured on its own as handshakes/s), without the agents' files, and without
//! the clients' key generation on the same cores.
//!
//! Then the same kept-alive clients enroll `--enrollments` times against the floor (`floor`
//! below): a server on the same stack that checks the CSR and signs, and does nothing durable.
//! Its rate bounds the CA's on this machine with these clients.
//!
//! Stdout gets exactly one JSON line:
//! `{"enroll_per_sec", "renew_per_sec", "enroll_kept_alive_per_sec",
//! "floor_enroll_kept_alive_per_sec", "enrollments", "renewals", "enrollments_kept_alive",
//! "errors", "clients", "ecdsa_p256_sign_per_sec", "ecdsa_p256_verify_per_sec"}`: rates count
//! successes only, over the wall time of their phase; a failed request is an error, never
//! throughput. The raw rates are ring's `ECDSA_P256_SHA256_ASN1` signing and verifying a
//! 300-byte message in a loop for about a second each, on one thread; the CA server (and the
//! clients, which share the machine) use every core, so the machine's bound is about these rates
//! times the number of cores. Progress and the process's CPU time per operation (clients and
//! server together) go to stderr.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshgate_ca::Authority;
use meshgate_ca::server::{ServeConfig, start};
use meshgate_gateway::Agent;
use meshgate_identity::api::BootstrapToken;
use meshgate_identity::{SpiffeId, TrustDomain};
use ring::rand::SystemRandom;
use ring::signature::{
    self, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
};
use time::OffsetDateTime;
use tokio::task::JoinSet;

type Error = Box<dyn std::error::Error + Send + Sync>;

// As in the `meshgate` binary that runs `ca serve` (for the CA it measured about the same as
// glibc's allocator: within 5%, slightly slower if anything).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: enroll_load --clients N --enrollments N --renewals N \
     [--key-type ecdsa-p256|ecdsa-p384|ed25519] [--dir DIR] [--client-dir DIR]";
const TRUST_DOMAIN: &str = "load.example";
/// Errors printed in full; the rest are only counted.
const SHOWN_ERRORS: usize = 5;

fn main() -> Result<(), Error> {
    let args = Args::parse(std::env::args().skip(1))?;
    eprintln!(
        "enroll_load: {} clients, {} enrollments, {} renewals, {} keys",
        args.clients,
        args.enrollments,
        args.renewals,
        args.ca_key.name()
    );
    let (sign, verify) = raw_ecdsa_rates()?;
    eprintln!(
        "ring ECDSA P-256 on one thread: {sign:.0} signs/s, {verify:.0} verifies/s ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The server gets a runtime of its own, as under `ca serve`: the clients' work (the agents
    // write their state files synchronously) never holds up its tasks.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ca-server")
        .enable_all()
        .build()?;
    let load = rt.block_on(run(&args, server_rt.handle()))?;
    let line = serde_json::json!({
        "enroll_per_sec": round(load.enroll_per_sec),
        "renew_per_sec": round(load.renew_per_sec),
        "enroll_kept_alive_per_sec": round(load.kept_alive_per_sec),
        "floor_enroll_kept_alive_per_sec": round(load.floor_per_sec),
        "enrollments": load.enrollments,
        "renewals": load.renewals,
        "enrollments_kept_alive": load.kept_alive,
        "errors": load.errors,
        "clients": args.clients,
        "ecdsa_p256_sign_per_sec": round(sign),
        "ecdsa_p256_verify_per_sec": round(verify),
    });
    println!("{line}");
    Ok(())
}

struct Args {
    clients: usize,
    enrollments: usize,
    renewals: usize,
    ca_key: meshgate_ca::KeyType,
    agent_key: meshgate_gateway::KeyType,
    dir: PathBuf,
    client_dir: PathBuf,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, Error> {
        let (mut clients, mut enrollments, mut renewals) = (None, None, None);
        let mut key = "ecdsa-p256".to_owned();
        let mut dir = None;
        let mut client_dir = None;
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
            let count = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{flag} {value:?}: expected a whole number; {USAGE}"))
            };
            match flag.as_str() {
                "--clients" => clients = Some(count()?),
                "--enrollments" => enrollments = Some(count()?),
                "--renewals" => renewals = Some(count()?),
                "--key-type" => key = value,
                "--dir" => dir = Some(PathBuf::from(value)),
                "--client-dir" => client_dir = Some(PathBuf::from(value)),
                _ => return Err(format!("unknown argument {flag:?}; {USAGE}").into()),
            }
        }
        let (Some(clients), Some(enrollments), Some(renewals)) = (clients, enrollments, renewals)
        else {
            return Err(USAGE.into());
        };
        if clients == 0 || enrollments == 0 {
            return Err(format!("--clients and --enrollments must be at least 1; {USAGE}").into());
        }
        let bad_key = || format!("--key-type {key:?}: expected ecdsa-p256, ecdsa-p384 or ed25519");
        let ca_key = meshgate_ca::KeyType::parse(&key).ok_or_else(bad_key)?;
        let agent_key = meshgate_gateway::KeyType::parse(&key).ok_or_else(bad_key)?;
        let dir = dir.unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        });
        let shm = Path::new("/dev/shm");
        let client_dir = client_dir.unwrap_or_else(|| {
            if shm.is_dir() {
                shm.to_owned()
            } else {
                std::env::temp_dir()
            }
        });
        Ok(Self {
            clients,
            enrollments,
            renewals,
            ca_key,
            agent_key,
            dir,
            client_dir,
        })
    }
}

impl Args {
    fn agent_key_algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.ca_key {
            meshgate_ca::KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            meshgate_ca::KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            _ => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

struct Load {
    enroll_per_sec: f64,
    renew_per_sec: f64,
    kept_alive_per_sec: f64,
    kept_alive: usize,
    floor_per_sec: f64,
    enrollments: usize,
    renewals: usize,
    errors: usize,
}

async fn run(args: &Args, server_rt: &tokio::runtime::Handle) -> Result<Load, Error> {
    std::fs::create_dir_all(&args.dir)?;
    let work = tempfile::tempdir_in(&args.dir)?;
    let states = tempfile::tempdir_in(&args.client_dir)?;
    let ca_dir = work.path().join("ca");
    let td = TrustDomain::parse(TRUST_DOMAIN)?;
    Authority::init(&ca_dir, td, args.ca_key, OffsetDateTime::now_utc())?;

    let unlimited = NonZeroU32::MAX;
    let cfg = ServeConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin: ([127, 0, 0, 1], 0).into(),
        // Every client is on 127.0.0.1: the per-address limits are raised for the run, through
        // the settings `ca serve --enroll-rate/--enroll-burst/--sign-rate/--sign-burst
        // --max-connections/--max-connections-per-ip` set.
        // A connection keeps its slot until the server sees it close, a moment after the client
        // moved on: room for several per client.
        max_connections: (args.clients * 4).max(1024),
        max_connections_per_ip: (args.clients * 4).max(1024),
        enroll_per_second: unlimited,
        enroll_burst: unlimited,
        sign_per_second: unlimited,
        sign_burst: unlimited,
        ..ServeConfig::default()
    };
    let server = {
        let ca_dir = ca_dir.clone();
        server_rt
            .spawn(async move { start(&ca_dir, cfg).await })
            .await??
    };
    let url = format!("https://{}", server.addr);
    // Printed so the CLI (`meshgate ca revoke --dir`, `ca token revoke --dir`) can be run against
    // the CA while it is under load; the directory is removed when the run ends.
    eprintln!(
        "CA serving on {url} from {}; creating {} tokens",
        ca_dir.display(),
        args.enrollments
    );

    // As `ca token create` does: another handle on the same datastore, one durable write each.
    let tokens = {
        let (ca_dir, n) = (ca_dir.clone(), args.enrollments);
        tokio::task::spawn_blocking(move || create_tokens(&ca_dir, &url, n)).await??
    };
    let tokens = Arc::new(tokens);

    eprintln!("enrolling");
    let cpu = cpu_seconds();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for client in 0..args.clients {
        let (tokens, next) = (tokens.clone(), next.clone());
        let (base, key) = (states.path().to_owned(), args.agent_key);
        tasks.spawn(async move {
            let mut agents = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(i) else { break };
                match Agent::enroll(token, &base.join(format!("c{client}-e{i}")), key).await {
                    Ok(agent) if agent.spiffe_id() == &token.claims().spiffe_id => {
                        agents.push(agent);
                    }
                    Ok(agent) => errors.push(format!(
                        "enrollment {i}: an SVID for {}, not {}",
                        agent.spiffe_id(),
                        token.claims().spiffe_id
                    )),
                    Err(e) => errors.push(format!("enrollment {i}: {e}")),
                }
            }
            (agents, errors)
        });
    }
    let mut per_client = Vec::new();
    let mut errors = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (agents, errs) = done?;
        per_client.push(agents);
        errors.extend(errs);
    }
    let enroll_secs = started.elapsed().as_secs_f64();
    let enroll_cpu = cpu_seconds() - cpu;
    let enrolled: usize = per_client.iter().map(Vec::len).sum();
    report("enrollments", enrolled, enroll_secs, enroll_cpu, &errors);

    eprintln!("renewing");
    let renew_errors_before = errors.len();
    let cpu = cpu_seconds();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for mut agents in per_client.into_iter().filter(|a| !a.is_empty()) {
        let (next, total) = (next.clone(), args.renewals);
        tasks.spawn(async move {
            let (mut renewed, mut errors) = (0usize, Vec::new());
            let mut k = 0usize;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= total {
                    break;
                }
                let count = agents.len();
                let Some(agent) = agents.get_mut(k % count) else {
                    break;
                };
                k += 1;
                let before = agent.svid().info.serial.clone();
                match agent.renew().await {
                    Ok(()) if agent.svid().info.serial != before => renewed += 1,
                    Ok(()) => errors.push(format!("renewal {j}: the serial did not change")),
                    Err(e) => errors.push(format!("renewal {j}: {e}")),
                }
            }
            (renewed, errors)
        });
    }
    let mut renewed = 0;
    while let Some(done) = tasks.join_next().await {
        let (n, errs) = done?;
        renewed += n;
        errors.extend(errs);
    }
    let renew_secs = started.elapsed().as_secs_f64();
    let renew_cpu = cpu_seconds() - cpu;
    let renew_errors = errors.get(renew_errors_before..).unwrap_or_default();
    report("renewals", renewed, renew_secs, renew_cpu, renew_errors);
    // Renewals were asked for but no enrollment succeeded: each counts as an error.
    let unattempted = if enrolled == 0 { args.renewals } else { 0 };

    let tokens = {
        let (ca_dir, n) = (ca_dir.clone(), args.enrollments);
        let url = format!("https://{}", server.addr);
        tokio::task::spawn_blocking(move || create_tokens(&ca_dir, &url, n)).await??
    };
    eprintln!("enrolling over kept-alive connections");
    let kept = keep_alive::run(server.addr, Arc::new(tokens), args).await;
    report(
        "enrollments (kept-alive connections)",
        kept.ok,
        kept.secs,
        kept.cpu,
        &kept.errors,
    );

    server_rt
        .spawn(async move { server.shutdown().await })
        .await?;

    let (n, key) = (args.enrollments, args.ca_key);
    let mut floor = server_rt
        .spawn(async move { floor::start(n, key).await })
        .await??;
    eprintln!(
        "enrolling over kept-alive connections against the floor (no token lookup, no datastore, no audit)"
    );
    let tokens = Arc::new(std::mem::take(&mut floor.tokens));
    let at_floor = keep_alive::run(floor.addr, tokens, args).await;
    floor.stop();
    report(
        "floor (kept-alive connections)",
        at_floor.ok,
        at_floor.secs,
        at_floor.cpu,
        &at_floor.errors,
    );
    Ok(Load {
        enroll_per_sec: rate(enrolled, enroll_secs),
        renew_per_sec: rate(renewed, renew_secs),
        kept_alive_per_sec: rate(kept.ok, kept.secs),
        kept_alive: kept.ok,
        floor_per_sec: rate(at_floor.ok, at_floor.secs),
        enrollments: enrolled,
        renewals: renewed,
        errors: errors.len() + unattempted + kept.errors.len() + at_floor.errors.len(),
    })
}

/// `n` single-use tokens for distinct workload IDs, each written durably.
fn create_tokens(ca_dir: &Path, url: &str, n: usize) -> Result<Vec<BootstrapToken>, Error> {
    let mut ca = Authority::open(ca_dir)?;
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/ns/load/sa/w{i}"))?;
        let now = OffsetDateTime::now_utc();
        let ttl = Duration::from_secs(3600);
        let (token, _) = ca.create_token(&id, ttl, 1, "enroll_load", url, now)?;
        out.push(token);
    }
    eprintln!("{n} tokens in {:.2} s", started.elapsed().as_secs_f64());
    Ok(out)
}

fn report(what: &str, ok: usize, secs: f64, cpu: f64, errors: &[String]) {
    eprintln!(
        "{what}: {ok} in {secs:.2} s = {:.0}/s; {} errors; process CPU {:.0} µs each ({:.2} cores busy)",
        rate(ok, secs),
        errors.len(),
        if ok == 0 { 0.0 } else { cpu * 1e6 / ok as f64 },
        if secs > 0.0 { cpu / secs } else { 0.0 },
    );
    for e in errors.iter().take(SHOWN_ERRORS) {
        eprintln!("  error: {e}");
    }
}

/// ring's raw ECDSA P-256 rates on this thread: signs and verifies per second of a 300-byte
/// message, each measured for about a second.
fn raw_ecdsa_rates() -> Result<(f64, f64), Error> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "ring could not generate a P-256 key")?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "ring could not load its own P-256 key")?;
    let message = [0x5a_u8; 300];
    let sig = key
        .sign(&rng, &message)
        .map_err(|_| "ring could not sign")?;
    let public = signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key());

    let sign = per_second(|| key.sign(&rng, &message).is_ok())?;
    let verify = per_second(|| public.verify(&message, sig.as_ref()).is_ok())?;
    Ok((sign, verify))
}

/// Runs `op` in a loop for about a second; operations per second. Every run must succeed.
fn per_second(mut op: impl FnMut() -> bool) -> Result<f64, Error> {
    const CHUNK: u32 = 64;
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..CHUNK {
            if !op() {
                return Err("a raw ECDSA operation failed".into());
            }
        }
        done += u64::from(CHUNK);
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// CPU time (user + system) of this process so far, in seconds; 0 where /proc is missing.
fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(after_name) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the name, the state is field 3: utime (14) and stime (15) are at 11 and 12.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Enrollments over kept-alive connections: each client opens one TLS 1.3 connection to the CA
/// (verified as the agent verifies it: the token's pinned root, the CA's SPIFFE ID) and sends
/// its enrollments on it one after another, each with a new key, a CSR and its own token (the
/// keys and CSRs made before the clock starts, one per token). Each answer is checked, inside
/// the timed window, as the agent checks it (the bundle that comes with it holds the root the
/// token pins, the chain verifies to that bundle as an X.509-SVID, for the token's ID, with the
/// key the client made); nothing is written to disk. A client does the whole check the first
/// time, and again whenever the answer's bundle or intermediate differ from the ones it
/// checked; otherwise, with both byte for byte the same, it verifies what is new in the answer:
/// the leaf's signature with the intermediate's key, its issuer name, its X.509-SVID profile
/// and validity, its ID and its key.
mod keep_alive {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::header::{CONTENT_TYPE, HOST};
    use hyper::{Method, Request};
    use hyper_util::rt::TokioIo;
    use meshgate_identity::api::{
        BootstrapToken, CA_ID_PATH, EnrollRequest, PATH_ENROLL, SvidResponse,
    };
    use meshgate_identity::bundle::certs_from_pem;
    use meshgate_identity::svid::{check_leaf, parse_cert, sha256_of, verify_chain};
    use meshgate_identity::tls::{ALPN_HTTP11, client_config};
    use meshgate_identity::verifier::SpiffeServerVerifier;
    use meshgate_identity::{BundleSet, SpiffeId, TrustBundle};
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
    use rustls::pki_types::{ServerName, UnixTime};
    use tokio::net::TcpStream;
    use tokio::task::JoinSet;
    use tokio_rustls::TlsConnector;

    use super::{Args, Error, cpu_seconds};

    pub struct Outcome {
        pub ok: usize,
        pub secs: f64,
        pub cpu: f64,
        pub errors: Vec<String>,
    }

    pub async fn run(addr: SocketAddr, tokens: Arc<Vec<BootstrapToken>>, args: &Args) -> Outcome {
        // Each enrollment's key and CSR are made before the clock starts, as its token was: the
        // clients' key generation is not the CA's work. Every enrollment still has a new key of
        // its own, and every answer is still checked inside the timed window.
        let requests = match prepare(&tokens, args.agent_key_algorithm()) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                return Outcome {
                    ok: 0,
                    secs: 0.0,
                    cpu: 0.0,
                    errors: vec![format!("making the keys and CSRs: {e}")],
                };
            }
        };
        let cpu = cpu_seconds();
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..args.clients {
            let (tokens, requests, next) = (tokens.clone(), requests.clone(), next.clone());
            tasks.spawn(async move {
                let mut ok = 0usize;
                let mut errors = Vec::new();
                let mut conn = None;
                let mut known = Known::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let (Some(token), Some((key, csr))) = (tokens.get(i), requests.get(i)) else {
                        break;
                    };
                    let sender = match &mut conn {
                        Some(sender) => sender,
                        None => match connect(addr, token).await {
                            Ok(sender) => conn.insert(sender),
                            Err(e) => {
                                errors.push(format!("enrollment {i}: connecting: {e}"));
                                continue;
                            }
                        },
                    };
                    match enroll(sender, token, key, csr, &mut known).await {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            errors.push(format!("enrollment {i}: {e}"));
                            // The connection may be what failed: the next one gets a new one.
                            conn = None;
                        }
                    }
                }
                (ok, errors)
            });
        }
        let (mut ok, mut errors) = (0, Vec::new());
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((n, errs)) => {
                    ok += n;
                    errors.extend(errs);
                }
                Err(e) => errors.push(format!("a client task failed: {e}")),
            }
        }
        Outcome {
            ok,
            secs: started.elapsed().as_secs_f64(),
            cpu: cpu_seconds() - cpu,
            errors,
        }
    }

    type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

    /// What this client has checked in full: an answer's bundle (PEM, holding the pinned root)
    /// and the intermediate (DER) that verified to it.
    #[derive(Default)]
    struct Known {
        bundle_pem: String,
        intermediate: Vec<u8>,
    }

    /// A TLS 1.3 connection to the CA the token names, verified against the root it pins.
    async fn connect(addr: SocketAddr, token: &BootstrapToken) -> Result<Sender, Error> {
        let claims = token.claims();
        let mut pin = [0u8; 32];
        hex::decode_to_slice(&claims.root_sha256, &mut pin)?;
        let td = claims.spiffe_id.trust_domain();
        let ca = SpiffeId::parse(&format!("spiffe://{td}{CA_ID_PATH}"))?;
        let verifier = SpiffeServerVerifier::pinned_root(pin, ca);
        let config = client_config(Arc::new(verifier), None, &[ALPN_HTTP11])?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// A new key and a CSR for each token's ID.
    fn prepare(
        tokens: &[BootstrapToken],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Result<Vec<(KeyPair, String)>, Error> {
        tokens
            .iter()
            .map(|token| {
                let id = &token.claims().spiffe_id;
                let key = KeyPair::generate_for(alg)?;
                let mut params = CertificateParams::default();
                params.distinguished_name = DistinguishedName::new();
                params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
                let csr = params.serialize_request(&key)?.pem()?;
                Ok((key, csr))
            })
            .collect()
    }

    async fn enroll(
        sender: &mut Sender,
        token: &BootstrapToken,
        key: &KeyPair,
        csr: &str,
        known: &mut Known,
    ) -> Result<(), Error> {
        let id = &token.claims().spiffe_id;
        let body = serde_json::to_vec(&EnrollRequest {
            token: token.reveal(),
            csr: csr.to_owned(),
        })?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(PATH_ENROLL)
            .header(HOST, "ca")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)).into());
        }
        let answer: SvidResponse = serde_json::from_slice(&body)?;
        let chain = certs_from_pem(answer.svid.as_bytes())?;
        let [leaf_der, intermediate] = chain.as_slice() else {
            return Err(format!("{} certificates in the answer, not 2", chain.len()).into());
        };
        let info = if known.bundle_pem == answer.bundle
            && known.intermediate.as_slice() == intermediate.as_ref()
        {
            // The same bundle and intermediate as checked before: the intermediate's chain to
            // the pinned root holds; the leaf is this answer's own.
            let issuer = parse_cert(intermediate)?;
            let leaf = parse_cert(leaf_der)?;
            if leaf.issuer() != issuer.subject() {
                return Err("the leaf's issuer is not the intermediate".into());
            }
            leaf.verify_signature(Some(issuer.public_key()))
                .map_err(|e| format!("the leaf's signature does not verify: {e}"))?;
            let info = check_leaf(leaf_der)?;
            let now = UnixTime::now().as_secs();
            if !(info.not_before..info.not_after).contains(&now) {
                return Err("the leaf is not valid now".into());
            }
            info
        } else {
            let claims = token.claims();
            let mut pin = [0u8; 32];
            hex::decode_to_slice(&claims.root_sha256, &mut pin)?;
            let bundle = TrustBundle::from_pem(id.trust_domain(), answer.bundle.as_bytes())?;
            if !bundle.roots().iter().any(|r| sha256_of(r) == pin) {
                return Err("the answer's bundle lacks the root the token pins".into());
            }
            let verified = verify_chain(&chain, &BundleSet::single(bundle), UnixTime::now())?;
            known.bundle_pem = answer.bundle.clone();
            known.intermediate = intermediate.to_vec();
            verified.info
        };
        if &info.spiffe_id != id {
            return Err(format!("an SVID for {}, not {id}", info.spiffe_id).into());
        }
        let leaf = parse_cert(leaf_der)?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err("the SVID does not hold the key the CSR was made with".into());
        }
        Ok(())
    }
}

/// The floor: the same kept-alive clients against a server that does only what no CA on this
/// stack can skip. It speaks TLS 1.3 (the CA's own server config: the meshgate identity
/// module, ring) and HTTP/1.1 (hyper), reads the JSON request, parses the token, checks the
/// CSR (`check_csr`: parsed, its signature verified, its SPIFFE ID) and signs a leaf with the
/// CA's profile (`profile::leaf_params`) under an intermediate of its own, and answers with
/// the chain and the bundle. It does not look the token up, spend it, record the certificate,
/// write an audit event or sync anything to disk; it has no rate limits, metrics or timeouts,
/// and it signs on the runtime's threads. Its PKI (root, intermediate, its own SVID as
/// `spiffe://<td>/meshgate/ca`) is made at start, and so are the tokens, which pin its root:
/// the clients check its answers exactly as they check the CA's.
///
/// What the clients reach against it bounds what the CA can reach on this machine with these
/// clients: the CA does all of this and more.
mod floor {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, Limited};
    use hyper::body::Incoming;
    use hyper::header::CONTENT_TYPE;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use meshgate_ca::csr::check_csr;
    use meshgate_ca::profile::{
        INTERMEDIATE_TTL, LEAF_TTL, ROOT_TTL, add_subject_key_identifier, intermediate_params,
        leaf_params, root_params,
    };
    use meshgate_identity::api::{
        BootstrapToken, CA_ID_PATH, EnrollRequest, PATH_ENROLL, SvidResponse, TOKEN_SECRET_BYTES,
        TokenClaims,
    };
    use meshgate_identity::bundle::pem_encode;
    use meshgate_identity::svid::sha256_of;
    use meshgate_identity::tls::{ALPN_HTTP11, Credentials, certified_key, server_config};
    use meshgate_identity::verifier::{SharedBundles, SpiffeClientVerifier};
    use meshgate_identity::{BundleSet, SpiffeId, TrustBundle, TrustDomain};
    use rcgen::{Issuer, KeyPair, SubjectPublicKeyInfo};
    use ring::rand::SecureRandom as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use time::OffsetDateTime;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::{Error, TRUST_DOMAIN};

    /// The largest request body read (a token and a CSR are well under 4 KiB).
    const MAX_BODY: usize = 64 * 1024;

    pub struct Floor {
        pub addr: SocketAddr,
        pub tokens: Vec<BootstrapToken>,
        accept: tokio::task::JoinHandle<()>,
    }

    impl Floor {
        pub fn stop(&self) {
            self.accept.abort();
        }
    }

    /// What every request needs: the signing intermediate, and the PEM that goes with each
    /// answer.
    struct Signing {
        intermediate: Issuer<'static, KeyPair>,
        intermediate_pem: String,
        bundle_pem: String,
        cap: OffsetDateTime,
    }

    /// Makes the PKI and `n` tokens for it, and serves on 127.0.0.1 (a free port).
    pub async fn start(n: usize, key_type: meshgate_ca::KeyType) -> Result<Floor, Error> {
        let td = TrustDomain::parse(TRUST_DOMAIN)?;
        let now = OffsetDateTime::now_utc();
        let root_key = key_type.generate()?;
        let root_params = root_params(&td, now, ROOT_TTL)?;
        let cap = root_params.not_after;
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, root_key);
        let intermediate_key = key_type.generate()?;
        let params = intermediate_params(&td, now, INTERMEDIATE_TTL, cap)?;
        let cap = params.not_after;
        let intermediate = params.signed_by(&intermediate_key, &root_issuer)?;
        let intermediate_issuer = Issuer::new(params, intermediate_key);

        // Its own SVID, for the CA's ID, as the clients expect of the CA.
        let own_key = key_type.generate()?;
        let ca_id = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}{CA_ID_PATH}"))?;
        let mut own = leaf_params(&ca_id, &[], now, LEAF_TTL, cap)?;
        add_subject_key_identifier(&mut own, &own_key);
        let own = own.signed_by(&own_key, &intermediate_issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(own_key.serialize_der()));
        // Root included, as the CA sends it: a client without a bundle checks it against its pin.
        let chain = vec![
            own.der().clone(),
            intermediate.der().clone(),
            root.der().clone(),
        ];
        let creds = Arc::new(Credentials::new(certified_key(chain, key)?));
        let bundle = TrustBundle::new(td, vec![root.der().clone()])?;
        let bundles = Arc::new(SharedBundles::new(BundleSet::single(bundle.clone())));
        let verifier = Arc::new(SpiffeClientVerifier::optional(bundles));
        let tls = server_config(creds, verifier, &[ALPN_HTTP11])?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let pin = hex::encode(sha256_of(root.der()));
        let expires_at = (now + Duration::from_secs(3600)).unix_timestamp();
        let rng = ring::rand::SystemRandom::new();
        let mut tokens = Vec::with_capacity(n);
        for i in 0..n {
            let mut secret = [0u8; TOKEN_SECRET_BYTES];
            rng.fill(&mut secret).map_err(|_| "no random bytes")?;
            let claims = TokenClaims {
                ca_url: format!("https://{addr}"),
                root_sha256: pin.clone(),
                spiffe_id: SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/ns/floor/sa/w{i}"))?,
                expires_at,
            };
            tokens.push(BootstrapToken::new(claims, secret));
        }
        let signing = Arc::new(Signing {
            intermediate: intermediate_issuer,
            intermediate_pem: pem_encode("CERTIFICATE", intermediate.der()),
            bundle_pem: bundle.to_pem(),
            cap,
        });
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, signing) = (acceptor.clone(), signing.clone());
                tokio::spawn(async move {
                    if tcp.set_nodelay(true).is_err() {
                        return;
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let signing = signing.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&signing, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Floor {
            addr,
            tokens,
            accept,
        })
    }

    async fn answer(signing: &Signing, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST || req.uri().path() != PATH_ENROLL {
            return reply(StatusCode::NOT_FOUND, "no such endpoint".into());
        }
        match enroll(signing, req).await {
            Ok(body) => {
                let mut response = reply(StatusCode::OK, body);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }

    async fn enroll(signing: &Signing, req: Request<Incoming>) -> Result<String, Error> {
        let body = Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await?
            .to_bytes();
        let request: EnrollRequest = serde_json::from_slice(&body)?;
        let token = BootstrapToken::parse(&request.token)?;
        let id = &token.claims().spiffe_id;
        let csr = CertificateSigningRequestDer::from_pem_slice(request.csr.as_bytes())?;
        let checked = check_csr(csr.as_ref(), id)?;
        let public_key = SubjectPublicKeyInfo::from_der(&checked.spki_der)?;
        let now = OffsetDateTime::now_utc();
        let mut params = leaf_params(id, &[], now, LEAF_TTL, signing.cap)?;
        add_subject_key_identifier(&mut params, &public_key);
        let expires_at = params.not_after.unix_timestamp();
        let leaf = params.signed_by(&public_key, &signing.intermediate)?;
        let mut svid = pem_encode("CERTIFICATE", leaf.der());
        svid.push_str(&signing.intermediate_pem);
        Ok(serde_json::to_string(&SvidResponse {
            svid,
            bundle: signing.bundle_pem.clone(),
            expires_at,
        })?)
    }

    fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    }
}
