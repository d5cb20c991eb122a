//! A small stand-in for `meshgate ca serve`: HTTPS (TLS 1.3, identity's server config) on
//! 127.0.0.1:0, signing with a real `meshgate_ca::Authority` made at test time, and able to
//! misbehave in the ways the agent must refuse.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
#![allow(dead_code)] // each test file uses part of it

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshgate_ca::{Authority, KeyType};
use meshgate_identity::api::{
    BootstrapToken, EnrollRequest, ErrorCode, ErrorResponse, PATH_BUNDLE, PATH_ENROLL, PATH_RENEW,
    PATH_REVOCATIONS, RenewRequest, RevocationList, SvidResponse, TokenClaims,
};
use meshgate_identity::bundle::pem_encode;
use meshgate_identity::tls::{ALPN_HTTP11, Credentials, certified_key, server_config};
use meshgate_identity::verifier::{SharedBundles, SpiffeClientVerifier, peer_spiffe_id};
use meshgate_identity::{BundleSet, SpiffeId, TrustDomain};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub const TD: &str = "bank.example";
pub const ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";

/// Which certificate the server's TLS listener presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presents {
    /// `spiffe://<td>/meshgate/ca`, chain ending with the root: the real thing.
    CaSvid,
    /// A valid SVID of the same trust domain that is not the CA's.
    OtherId,
}

/// How the enroll endpoint answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// Answers with a leaf for another SPIFFE ID.
    WrongId,
    /// Answers with a leaf for the right ID but a key the CA made.
    WrongKey,
    /// Refuses with a message that repeats the token.
    EchoToken,
    /// Hands out another trust domain's roots: this PEM in enroll answers, this JWKS at
    /// /v1/bundle.
    ForeignBundle {
        pem: String,
        jwks: String,
    },
}

pub struct FakeCa {
    pub url: String,
    pub root_sha256: String,
    /// The roots, PEM and SPIFFE JWKS.
    pub bundle_pem: String,
    pub bundle_jwks: String,
    pub shared: Arc<Shared>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

pub struct Shared {
    authority: Mutex<Authority>,
    pub mode: Mutex<Mode>,
    /// Every HTTP request that reached the handler.
    pub requests: AtomicUsize,
    /// Token texts that enroll accepts.
    pub valid_tokens: Mutex<Vec<String>>,
    pub revocations: Mutex<RevocationList>,
}

impl FakeCa {
    pub async fn start(presents: Presents) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let now = OffsetDateTime::now_utc();
        let report = Authority::init(
            &ca_dir,
            TrustDomain::parse(TD).unwrap(),
            KeyType::EcdsaP256,
            now,
        )
        .unwrap();
        let mut authority = Authority::open(&ca_dir).unwrap();
        let bundle = authority.bundle().unwrap();
        let (bundle_pem, bundle_jwks) = (bundle.to_pem(), bundle.to_jwks().unwrap());
        let (chain, key) = match presents {
            Presents::CaSvid => {
                let (issued, key) = authority.own_svid(now).unwrap();
                (issued.chain, key)
            }
            Presents::OtherId => {
                let id = SpiffeId::parse("spiffe://bank.example/ns/evil/sa/impostor").unwrap();
                let (mut issued, key) = authority
                    .issue_with_new_key(&id, &[], Duration::from_secs(3600), now)
                    .unwrap();
                issued.chain.push(bundle.roots()[0].clone());
                (issued.chain, key)
            }
        };
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let creds = Arc::new(Credentials::new(certified_key(chain, key).unwrap()));
        let clients = Arc::new(SpiffeClientVerifier::optional(Arc::new(
            SharedBundles::new(BundleSet::single(bundle)),
        )));
        let config = Arc::new(server_config(creds, clients, &[ALPN_HTTP11]).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            authority: Mutex::new(authority),
            mode: Mutex::new(Mode::Honest),
            requests: AtomicUsize::new(0),
            valid_tokens: Mutex::new(Vec::new()),
            revocations: Mutex::new(RevocationList::default()),
        });
        let task = tokio::spawn(serve(listener, TlsAcceptor::from(config), shared.clone()));
        Self {
            url,
            root_sha256: report.root_sha256,
            bundle_pem,
            bundle_jwks,
            shared,
            task,
            _dir: dir,
        }
    }

    /// A token for `id` that this CA accepts, pinning this CA's root.
    pub fn token(&self, id: &str) -> BootstrapToken {
        self.token_with(id, &self.root_sha256.clone(), 900)
    }

    /// A token with any pin and lifetime (seconds from now, may be negative); accepted by enroll.
    pub fn token_with(&self, id: &str, pin: &str, ttl: i64) -> BootstrapToken {
        let mut tokens = self.shared.valid_tokens.lock().unwrap();
        let secret = [u8::try_from(tokens.len() + 1).unwrap(); 32];
        let token = BootstrapToken::new(
            TokenClaims {
                ca_url: self.url.clone(),
                root_sha256: pin.to_owned(),
                spiffe_id: SpiffeId::parse(id).unwrap(),
                expires_at: OffsetDateTime::now_utc().unix_timestamp() + ttl,
            },
            secret,
        );
        tokens.push(token.reveal());
        token
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn revoke(&self, list: RevocationList) {
        *self.shared.revocations.lock().unwrap() = list;
    }
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>());
            let svc = service_fn(move |req| {
                let (shared, peer) = (shared.clone(), peer.clone());
                async move { Ok::<_, Infallible>(handle(&shared, peer.as_deref(), req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

async fn handle(
    shared: &Shared,
    peer: Option<&[CertificateDer<'static>]>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let now = OffsetDateTime::now_utc();
    let mut ca = shared.authority.lock().unwrap();
    match (method, path.as_str()) {
        (Method::POST, PATH_ENROLL) => {
            let req: EnrollRequest = serde_json::from_slice(&body).unwrap();
            let mode = shared.mode.lock().unwrap().clone();
            if mode == Mode::EchoToken {
                let msg = format!("token {} is not welcome", req.token);
                return error(ErrorCode::InvalidToken, &msg);
            }
            if !shared.valid_tokens.lock().unwrap().contains(&req.token) {
                return error(ErrorCode::InvalidToken, "the token is not valid");
            }
            let claims = BootstrapToken::parse(&req.token).unwrap().claims().clone();
            let issued = match mode {
                Mode::WrongId => {
                    let other = SpiffeId::parse("spiffe://bank.example/ns/bank/sa/vault").unwrap();
                    ca.issue_with_new_key(&other, &[], hour(), now).unwrap().0
                }
                Mode::WrongKey => {
                    ca.issue_with_new_key(&claims.spiffe_id, &[], hour(), now)
                        .unwrap()
                        .0
                }
                _ => ca
                    .sign_csr(&csr_der(&req.csr), &claims.spiffe_id, &[], hour(), now)
                    .unwrap(),
            };
            let bundle = match mode {
                Mode::ForeignBundle { pem, .. } => pem,
                _ => ca.bundle().unwrap().to_pem(),
            };
            svid_answer(&issued.chain, bundle)
        }
        (Method::POST, PATH_RENEW) => {
            let Ok(id) = peer_spiffe_id(peer) else {
                return error(ErrorCode::Unauthenticated, "renewal needs a client SVID");
            };
            let req: RenewRequest = serde_json::from_slice(&body).unwrap();
            let issued = ca
                .sign_csr(&csr_der(&req.csr), &id, &[], hour(), now)
                .unwrap();
            svid_answer(&issued.chain, ca.bundle().unwrap().to_pem())
        }
        (Method::GET, PATH_BUNDLE) => match shared.mode.lock().unwrap().clone() {
            Mode::ForeignBundle { jwks, .. } => ok(jwks),
            _ => ok(ca.bundle().unwrap().to_jwks().unwrap()),
        },
        (Method::GET, PATH_REVOCATIONS) => {
            if peer.is_none() {
                return error(ErrorCode::Unauthenticated, "revocations need a client SVID");
            }
            ok(serde_json::to_string(&*shared.revocations.lock().unwrap()).unwrap())
        }
        _ => error(ErrorCode::NotFound, "no such endpoint"),
    }
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

fn csr_der(pem: &str) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn svid_answer(chain: &[CertificateDer<'static>], bundle: String) -> Response<Full<Bytes>> {
    let info = meshgate_identity::svid::check_leaf(&chain[0]).unwrap();
    let answer = SvidResponse {
        svid: chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect(),
        bundle,
        expires_at: i64::try_from(info.not_after).unwrap(),
    };
    ok(serde_json::to_string(&answer).unwrap())
}

fn ok(body: String) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(body)))
}

fn error(code: ErrorCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_string(&ErrorResponse {
        error: code,
        message: message.to_owned(),
    })
    .unwrap();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(code.status()).unwrap();
    resp
}

/// True when no file under `dir` (recursively) contains `needle`.
pub fn no_file_contains(dir: &Path, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    entries.flatten().all(|e| {
        let path = e.path();
        if path.is_dir() {
            no_file_contains(&path, needle)
        } else {
            !String::from_utf8_lossy(&std::fs::read(&path).unwrap()).contains(needle)
        }
    })
}
