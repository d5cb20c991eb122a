//! The enrollment API's routes. Every failure goes through `ApiError`, the one place that turns
//! an error into a status and a stable code; token failures all look alike from outside.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use meshgate_identity::api::{
    BootstrapToken, EnrollRequest, ErrorCode, ErrorResponse, MAX_BODY_BYTES, PATH_BUNDLE,
    PATH_BUNDLE_PEM, PATH_ENROLL, PATH_RENEW, PATH_REVOCATIONS, RenewRequest, SvidResponse,
};
use meshgate_identity::{BundleSet, Serial, SpiffeId};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use super::State;
use crate::authority::{IssuanceView, IssuedSvid, state_version};
use crate::error::CaError;
use crate::revocation::{PendingRenew, finish_renew};
use crate::sqlite::SqliteStore;
use crate::store::{EnrollOutcome, IssuanceOutcome, Store as _};
use crate::tokens::{EnrollError, finish_enroll, start_enroll_in};

/// Who is on the other end of a connection: its address and, after mTLS, its SVID as the
/// handshake verified it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    pub svid: Option<PeerSvid>,
}

#[derive(Debug, Clone)]
pub(crate) struct PeerSvid {
    pub id: SpiffeId,
    pub serial: Serial,
    /// The chain it presented, verified again at renewal time.
    pub chain: Vec<CertificateDer<'static>>,
}

/// An error answer: status from the code, and a message that names no secret.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn invalid_token() -> Self {
        Self::new(ErrorCode::InvalidToken, "the bootstrap token is not valid")
    }

    fn internal() -> Self {
        Self::new(ErrorCode::Internal, "the CA failed to process the request")
    }

    /// The one mapping from CA errors to the wire.
    fn from_ca(e: &CaError) -> Self {
        match e {
            CaError::BadCsr { .. } => Self::new(ErrorCode::CsrRejected, e.to_string()),
            CaError::Revoked(_) => Self::new(ErrorCode::Forbidden, e.to_string()),
            CaError::Overloaded { .. } | CaError::Reloading => {
                Self::new(ErrorCode::Unavailable, e.to_string())
            }
            CaError::PeerRejected(_) => Self::new(ErrorCode::Unauthenticated, e.to_string()),
            CaError::ReservedId(_) | CaError::ForeignTrustDomain(..) | CaError::InvalidId(_) => {
                Self::new(ErrorCode::Forbidden, e.to_string())
            }
            other => {
                tracing::error!("CA failure: {other}");
                Self::internal()
            }
        }
    }
}

pub(crate) async fn handle(
    state: Arc<State>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let result = route(&state, &peer, req).await;
    let response = result.unwrap_or_else(|e| error_response(&e));
    let label = match path.as_str() {
        PATH_ENROLL | PATH_RENEW | PATH_BUNDLE | PATH_BUNDLE_PEM | PATH_REVOCATIONS => {
            path.as_str()
        }
        _ => "other",
    };
    state.metrics.request(label, response.status().as_u16());
    Ok(response)
}

async fn route(
    state: &Arc<State>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let method = req.method().clone();
    match (req.uri().path(), method) {
        (PATH_ENROLL, Method::POST) => enroll(state, peer, req).await,
        (PATH_RENEW, Method::POST) => renew(state, peer, req).await,
        // Served from the encoded copy the maintenance task keeps current (it looks for CLI
        // changes every maintenance interval).
        (PATH_BUNDLE, Method::GET) => Ok(bytes_body(
            "application/json",
            state.served_bundle().jwks.clone(),
        )),
        (PATH_BUNDLE_PEM, Method::GET) => Ok(bytes_body(
            "application/x-pem-file",
            state.served_bundle().pem.clone(),
        )),
        (PATH_REVOCATIONS, Method::GET) => {
            let _ = require_svid(peer)?;
            let list = with_ca(state, |ca| ca.revocation_list()).await?.api()?;
            json(&list)
        }
        (PATH_ENROLL | PATH_RENEW | PATH_BUNDLE | PATH_BUNDLE_PEM | PATH_REVOCATIONS, _) => {
            Err(ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this path",
            ))
        }
        _ => Err(ApiError::new(ErrorCode::NotFound, "no such endpoint")),
    }
}

async fn enroll(
    state: &Arc<State>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state
        .enroll_limiter
        .check_key(&super::rate_key(peer.addr.ip()))
        .is_err()
    {
        super::metrics::Metrics::outcome(&state.metrics.rate_limited, "enroll");
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many enrollments from this address",
        ));
    }
    let request: EnrollRequest = read_json(req, state.body_timeout).await?;
    // Every token failure, malformed text included, is the same answer; the text is never echoed.
    let Ok(token) = BootstrapToken::parse(&request.token) else {
        super::metrics::Metrics::outcome(&state.metrics.enrollments, "invalid_token");
        let (st, p) = (state.clone(), peer.clone());
        blocking(move || st.audit_token_reject(&p, "malformed")).await?;
        return Err(ApiError::invalid_token());
    };
    let csr = csr_der(&request.csr);
    // Said to the client instead of the DER parser's complaint about no bytes at all.
    let not_pem = csr.as_ref().err().map(|e| e.message.clone());
    let now = OffsetDateTime::now_utc();
    let result = enroll_svid(state, peer, token, csr, now).await?;
    let (st, p) = (state.clone(), peer.clone());
    match result {
        Ok((issued, view)) => {
            super::metrics::Metrics::outcome(&state.metrics.enrollments, "issued");
            svid_response(&issued, &view)
        }
        Err(EnrollError::Token(rejection)) => {
            super::metrics::Metrics::outcome(&state.metrics.enrollments, "invalid_token");
            blocking(move || st.audit_token_reject(&p, rejection.as_str())).await?;
            Err(ApiError::invalid_token())
        }
        Err(EnrollError::Spent(spent)) => {
            super::metrics::Metrics::outcome(&state.metrics.enrollments, "rejected");
            let api = match (not_pem, &spent.1) {
                (Some(message), CaError::BadCsr { .. }) => {
                    ApiError::new(ErrorCode::CsrRejected, message)
                }
                _ => ApiError::from_ca(&spent.1),
            };
            blocking(move || st.audit_token_spent(&p, &spent.0, &spent.1)).await?;
            Err(api)
        }
        Err(EnrollError::Ca(e)) => {
            super::metrics::Metrics::outcome(&state.metrics.enrollments, "failed");
            Err(ApiError::from_ca(&e))
        }
    }
}

async fn renew(
    state: &Arc<State>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let svid = require_svid(peer)?;
    if state
        .sign_limiter
        .check_key(&super::rate_key(peer.addr.ip()))
        .is_err()
    {
        super::metrics::Metrics::outcome(&state.metrics.rate_limited, "renew");
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many signing requests from this address",
        ));
    }
    let request: RenewRequest = read_json(req, state.body_timeout).await?;
    let csr = csr_der(&request.csr)?;
    let now = OffsetDateTime::now_utc();
    let result = renew_svid(state, peer, &svid, csr, now).await?;
    match result {
        Ok((issued, view)) => {
            super::metrics::Metrics::outcome(&state.metrics.renewals, "issued");
            svid_response(&issued, &view)
        }
        // Committed, but its audit record could not be written: not handed out, and not a
        // refusal of the caller either (the log that would say so is failing).
        Err(e @ CaError::Audit(_)) => {
            super::metrics::Metrics::outcome(&state.metrics.renewals, "failed");
            Err(ApiError::from_ca(&e))
        }
        Err(e) => {
            super::metrics::Metrics::outcome(&state.metrics.renewals, "rejected");
            let api = ApiError::from_ca(&e);
            let (st, p) = (state.clone(), peer.clone());
            blocking(move || st.audit_renew_rejected(&p, &svid.id, &svid.serial, &e)).await?;
            Err(api)
        }
    }
}

/// An enrollment in three steps: a read (is the token usable? which intermediate signs, and the
/// bundle that goes with it), the CSR check and the signature, and the write that spends the
/// token and records the certificate, committed with the others in flight. The token is
/// checked again inside that transaction, so of two uses of a single-use token exactly one
/// gets a certificate, in one batch or in two.
async fn enroll_svid(
    state: &Arc<State>,
    peer: &Peer,
    token: BootstrapToken,
    csr: Result<Vec<u8>, ApiError>,
    now: OffsetDateTime,
) -> Result<Result<(IssuedSvid, Arc<IssuanceView>), EnrollError>, ApiError> {
    let started = start_issuance(
        state,
        token,
        // A datastore failure of the reader sends the request the slow way.
        |store, view, token| match start_enroll_in(store, view.minter.clone(), token, now) {
            Err(EnrollError::Ca(e)) => Err(e),
            started => Ok(started),
        },
        move |ca, token| ca.start_enroll(&token, now),
    )
    .await?;
    let (pending, view) = match started {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    // Checked and signed here, on the runtime's thread: about the CPU of one TLS handshake,
    // which runs here too. A trip to the blocking pool and back cost more in thread switches
    // than it spared the runtime. A CSR that is not even PEM still spends a valid token, like
    // any other bad CSR.
    let (write, minted) = pending.mint(&csr.unwrap_or_default());
    // Durable before the answer: an SVID a client holds always has its audit record.
    let (st, p) = (state.clone(), peer.clone());
    let audit = Box::new(move |outcome: &IssuanceOutcome| match outcome {
        IssuanceOutcome::Enroll(EnrollOutcome::Issued(token, cert)) => {
            st.enrolled_events(&p, token, cert)
        }
        _ => Vec::new(),
    });
    Ok(match state.commit.commit_audited(write, audit).await {
        Ok(outcome) => finish_enroll(outcome, minted).map(|(_, issued)| (issued, view)),
        Err(e) => Err(EnrollError::Ca(e)),
    })
}

/// A renewal in the same three steps. The read refuses a revoked caller before any signing
/// work; the write checks revocation again, in the transaction that records the renewal.
async fn renew_svid(
    state: &Arc<State>,
    peer: &Peer,
    svid: &PeerSvid,
    csr: Vec<u8>,
    now: OffsetDateTime,
) -> Result<Result<(IssuedSvid, Arc<IssuanceView>), CaError>, ApiError> {
    // The serial the handshake read from the same leaf the renewal verifies again below.
    let serial = svid.serial.clone();
    let started = start_issuance(
        state,
        serial,
        |store, view, serial| {
            if store.is_revoked(serial)? {
                return Ok(Err(CaError::Revoked(serial.to_string())));
            }
            let bundles = BundleSet::single(view.bundle.clone());
            Ok(Ok(PendingRenew::new(bundles, view.minter.clone())))
        },
        |ca, serial| {
            if ca.is_revoked(&serial)? {
                return Err(CaError::Revoked(serial.to_string()));
            }
            ca.start_renew()
        },
    )
    .await?;
    let minted = started.and_then(|(pending, view)| {
        let peer = pending.verify_peer(&svid.chain, now)?;
        let (write, minted) = pending.mint(&svid.chain, &peer, &csr, now)?;
        Ok((write, minted, peer.serial, view))
    });
    let (write, minted, from, view) = match minted {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let (st, p, cert) = (state.clone(), peer.clone(), minted.record.clone());
    let audit = Box::new(move |outcome: &IssuanceOutcome| match outcome {
        IssuanceOutcome::Renew { recorded: true } => st.renewed_events(&p, &cert),
        _ => Vec::new(),
    });
    Ok(match state.commit.commit_audited(write, audit).await {
        Ok(outcome) => finish_renew(outcome, minted, &from).map(|i| (i, view)),
        Err(e) => Err(e),
    })
}

/// The first step of an issuance (of `request`: the token, or the serial that renews), a read:
/// `fast` through a reader connection and the published view while the datastore is still at
/// the view's version; otherwise `slow` under the CA's lock on the blocking pool, with a view
/// made there (the signing state changed since the view was published and the maintenance task
/// has not published a new one yet, or the reader failed: `fast`'s outer error is the
/// datastore's, its inner one the request's own).
async fn start_issuance<C, T, E, F, S>(
    state: &Arc<State>,
    request: C,
    fast: F,
    slow: S,
) -> Result<Result<(T, Arc<IssuanceView>), E>, ApiError>
where
    C: Send + 'static,
    T: Send + 'static,
    E: From<CaError> + Send + 'static,
    F: FnOnce(&SqliteStore, &IssuanceView, &C) -> Result<Result<T, E>, CaError>,
    S: FnOnce(&crate::Authority, C) -> Result<T, E> + Send + 'static,
{
    let started = state
        .readers
        .with(|store| {
            let Some(view) = current_view(state, store)? else {
                return Ok(None);
            };
            Ok(Some(fast(store, &view, &request)?.map(|t| (t, view))))
        })
        .await;
    match started {
        Ok(Some(started)) => Ok(started),
        Ok(None) | Err(_) => {
            if let Err(e) = started {
                tracing::debug!("datastore reader failed, taking the CA's lock instead: {e}");
            }
            let (ca, st) = (state.authority.clone(), state.clone());
            blocking(move || {
                let ca = ca.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let started = slow(&ca, request)?;
                let view = Arc::new(ca.issuance_view()?.ok_or(CaError::Reloading)?);
                st.publish_newer_issuance_view(&view);
                Ok((started, view))
            })
            .await
        }
    }
}

/// The published view of issuance, if the datastore (read through `store`) is still at its
/// version; `None` sends the request the slow way.
fn current_view(state: &State, store: &SqliteStore) -> Result<Option<Arc<IssuanceView>>, CaError> {
    let Some(view) = state.issuance_view() else {
        return Ok(None);
    };
    Ok((state_version(store)? == view.version).then_some(view))
}

fn svid_response(
    issued: &IssuedSvid,
    view: &IssuanceView,
) -> Result<Response<Full<Bytes>>, ApiError> {
    json(&SvidResponse {
        svid: view.chain_pem(&issued.chain),
        bundle: view.bundle_pem.clone(),
        expires_at: issued.record.not_after,
    })
}

fn require_svid(peer: &Peer) -> Result<PeerSvid, ApiError> {
    peer.svid.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "this call needs mTLS with a current SVID",
        )
    })
}

fn csr_der(pem: &str) -> Result<Vec<u8>, ApiError> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| {
            ApiError::new(
                ErrorCode::CsrRejected,
                "csr is not a PEM CERTIFICATE REQUEST",
            )
        })
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    body_timeout: std::time::Duration,
) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let collect = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    // The header timeout does not cover the body: bound it too, so a slow sender cannot hold a
    // connection slot.
    let bytes = tokio::time::timeout(body_timeout, collect)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                "the request body took too long to arrive",
            )
        })?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::new(ErrorCode::BadRequest, "could not read the request body")
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde's own message can quote the offending value (a token, say): name only where.
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "request body is not the expected JSON object (error at line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

/// Runs a blocking closure (audit writes wait for fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal())
}

/// Runs `f` on the authority in the blocking pool (SQLite and signing are synchronous).
async fn with_ca<T, F>(state: &Arc<State>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut crate::Authority) -> T + Send + 'static,
{
    let ca = state.authority.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = ca.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    })
    .await
    .map_err(|_| ApiError::internal())
}

trait IntoApi<T> {
    fn api(self) -> Result<T, ApiError>;
}

fn json<T: serde::Serialize>(value: &T) -> Result<Response<Full<Bytes>>, ApiError> {
    let text = serde_json::to_string(value).map_err(|_| ApiError::internal())?;
    Ok(body(StatusCode::OK, "application/json", text))
}

fn bytes_body(content_type: &'static str, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(bytes));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn body(status: StatusCode, content_type: &'static str, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let text = serde_json::to_string(&ErrorResponse {
        error: e.code,
        message: e.message.clone(),
    })
    .unwrap_or_default();
    body(status, "application/json", text)
}

impl<T> IntoApi<T> for Result<T, CaError> {
    fn api(self) -> Result<T, ApiError> {
        self.map_err(|e| ApiError::from_ca(&e))
    }
}
