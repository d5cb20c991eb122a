//! `ca serve`: the enrollment API over HTTPS (hyper, tokio-rustls, TLS 1.3) and the admin
//! listener (`/healthz`, `/metrics`) bound to loopback. The CA serves with an SVID of its own,
//! `spiffe://<td>/meshgate/ca`, renewed at half-life; a maintenance task picks up CLI changes
//! (rotation, revocation) and renews the intermediate.

mod admin;
mod handler;
mod metrics;
mod readers;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshgate_audit::{Action, AuditEvent, Outcome};
use meshgate_identity::svid::check_leaf;
use meshgate_identity::tls::{ALPN_HTTP11, Credentials, certified_key, server_config};
use meshgate_identity::verifier::{SharedBundles, SpiffeClientVerifier};
use meshgate_identity::{BundleSet, TrustBundle};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::audit_log::CaAudit;
use crate::authority::{Authority, IssuanceView, IssuedSvid};
use crate::error::CaError;
use crate::group_commit::{self, GroupCommit};
use crate::sqlite::{DB_FILE, SqliteStore};
use crate::store::{IssuedCert, TokenRecord};
use handler::{Peer, PeerSvid};
use metrics::Metrics;

/// Settings of `ca serve`. The defaults follow SPIRE's: enrollment 1/s with a burst of 10 per
/// client address, signing 500/s.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub max_connections: usize,
    /// Connections one client address (or IPv6 /64) may hold at once.
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive once the headers are in.
    pub body_timeout: Duration,
    /// A connection is closed after this long, whatever it does.
    pub max_connection_age: Duration,
    pub enroll_per_second: NonZeroU32,
    pub enroll_burst: NonZeroU32,
    pub sign_per_second: NonZeroU32,
    pub sign_burst: NonZeroU32,
    /// How often the server looks for CLI changes and renewals due.
    pub maintenance_interval: Duration,
    /// Lifetime of the SVIDs the server mints on enrollment and renewal.
    pub svid_ttl: Duration,
    /// When the audit log's file is rotated.
    pub audit_rotation: meshgate_audit::Rotation,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9443)),
            max_connections: 1024,
            max_connections_per_ip: 32,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(300),
            enroll_per_second: NonZeroU32::MIN,
            enroll_burst: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            sign_per_second: NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN),
            sign_burst: NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN),
            maintenance_interval: Duration::from_secs(2),
            svid_ttl: crate::profile::LEAF_TTL,
            audit_rotation: meshgate_audit::Rotation::never(),
        }
    }
}

/// A running CA server.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, and waits for the listeners to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Shared by every connection.
pub(crate) struct State {
    authority: Arc<Mutex<Authority>>,
    /// Where enrollments and renewals commit: one transaction, one sync, for all in flight.
    commit: GroupCommit,
    audit: Arc<CaAudit>,
    metrics: Metrics,
    enroll_limiter: DefaultKeyedRateLimiter<IpAddr>,
    sign_limiter: DefaultKeyedRateLimiter<IpAddr>,
    trust_domain: String,
    body_timeout: Duration,
    /// Where enrollments and renewals start, without the CA's lock: published at start and by
    /// every maintenance tick; `None` while the bundle lacks the signer's root.
    issuance: RwLock<Option<Arc<IssuanceView>>>,
    /// Connections for the reads that start them.
    readers: readers::Readers,
    /// The bundle as `GET /v1/bundle` and `/v1/bundle.pem` serve it, encoded once per change:
    /// anonymous reads never take the CA's lock or touch the datastore.
    served_bundle: RwLock<Arc<ServedBundle>>,
}

/// The current bundle, encoded for both bundle endpoints.
#[derive(Debug)]
pub(crate) struct ServedBundle {
    pub(crate) jwks: bytes::Bytes,
    pub(crate) pem: bytes::Bytes,
}

impl ServedBundle {
    fn of(bundle: &TrustBundle) -> Result<Self, CaError> {
        let jwks = bundle.to_jwks().map_err(|e| CaError::BadCaCert {
            what: "bundle".into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            jwks: jwks.into(),
            pem: bundle.to_pem().into(),
        })
    }
}

impl State {
    pub(crate) fn issuance_view(&self) -> Option<Arc<IssuanceView>> {
        self.issuance
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Publishes a view the slow path made, unless the one published is as new: the requests
    /// after it take the fast path again without waiting for the next maintenance tick.
    pub(crate) fn publish_newer_issuance_view(&self, view: &Arc<IssuanceView>) {
        let mut published = self
            .issuance
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if published.as_ref().is_none_or(|p| p.version < view.version) {
            *published = Some(Arc::clone(view));
        }
    }

    fn publish_issuance_view(&self, view: Option<IssuanceView>) {
        *self
            .issuance
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = view.map(Arc::new);
    }

    pub(crate) fn served_bundle(&self) -> Arc<ServedBundle> {
        self.served_bundle
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Opens the CA in `dir` and starts both listeners.
pub async fn start(dir: &Path, cfg: ServeConfig) -> Result<RunningServer, CaError> {
    let mut ca = Authority::open(dir)?;
    ca.set_leaf_ttl(cfg.svid_ttl)?;
    let trust_domain = ca.trust_domain().to_string();
    let now = OffsetDateTime::now_utc();
    let renewed = ca.renew_intermediate_if_due(now)?;
    let (own, own_key) = ca.own_svid(now)?;
    let creds = Arc::new(Credentials::new(to_certified(&own, &own_key)?));
    // The audit log's checkpoints are signed with the same SVID as the listener.
    let audit = CaAudit::open(dir, creds.clone(), cfg.audit_rotation)?;
    if renewed {
        audit.record(event(
            Action::IntermediateRenew,
            "ca",
            "intermediate",
            Outcome::Success,
        ));
    }
    let bundles = Arc::new(SharedBundles::new(BundleSet::single(ca.bundle()?)));
    let verifier = Arc::new(SpiffeClientVerifier::optional(bundles.clone()));
    let tls = server_config(creds.clone(), verifier, &[ALPN_HTTP11])?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let served_bundle = RwLock::new(Arc::new(ServedBundle::of(&ca.bundle()?)?));
    let metrics = Metrics::default();
    // Issuance writes go through their own connection and thread (group commit); the
    // authority's connection keeps the reads and the maintenance writes.
    let (commits, writes) = (
        metrics.store_commits.clone(),
        metrics.store_commit_writes.clone(),
    );
    let audit = Arc::new(audit);
    let commit = GroupCommit::spawn_audited(
        SqliteStore::open(&dir.join(DB_FILE))?,
        group_commit::QUEUE,
        group_commit::MAX_BATCH,
        Box::new(move |n| {
            commits.inc();
            writes.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }),
        audit.clone(),
    )?;
    metrics.own_svid_expiry.set(own.record.not_after);
    metrics
        .bundle_sequence
        .set(i64::try_from(ca.bundle()?.sequence).unwrap_or(i64::MAX));
    let issuance = RwLock::new(ca.issuance_view()?.map(Arc::new));
    // One per thread that may read at once: the runtime's workers.
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let readers = readers::Readers::open(dir.join(DB_FILE), workers)?;
    let state = Arc::new(State {
        issuance,
        readers,
        authority: Arc::new(Mutex::new(ca)),
        commit,
        audit,
        metrics,
        enroll_limiter: RateLimiter::keyed(
            Quota::per_second(cfg.enroll_per_second).allow_burst(cfg.enroll_burst),
        ),
        sign_limiter: RateLimiter::keyed(
            Quota::per_second(cfg.sign_per_second).allow_burst(cfg.sign_burst),
        ),
        trust_domain,
        body_timeout: cfg.body_timeout,
        served_bundle,
    });

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(CaError::io(cfg.listen.to_string()))?;
    let admin = TcpListener::bind(cfg.admin)
        .await
        .map_err(CaError::io(cfg.admin.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(CaError::io(cfg.listen.to_string()))?;
    let admin_addr = admin
        .local_addr()
        .map_err(CaError::io(cfg.admin.to_string()))?;
    let (shutdown, stop) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            state.clone(),
            cfg.clone(),
            stop.clone(),
        )),
        tokio::spawn(admin::serve(admin, state.clone(), stop.clone())),
        tokio::spawn(maintenance(
            state,
            creds,
            bundles,
            own.record.not_before,
            own.record.not_after,
            cfg,
            stop,
        )),
    ];
    tracing::info!(%addr, %admin_addr, "CA listening");
    Ok(RunningServer {
        addr,
        admin_addr,
        shutdown,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    cfg: ServeConfig,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            state.metrics.refused_connections.inc();
            drop(tcp);
            continue;
        };
        // A per-address share of the slots, so one host cannot hold them all (a connection that
        // never finishes its handshake or its body holds a slot until its timeout).
        let Some(per_ip) =
            PerIpSlot::take(&per_ip, rate_key(addr.ip()), cfg.max_connections_per_ip)
        else {
            state.metrics.refused_connections.inc();
            drop(tcp);
            continue;
        };
        // Answers go out as soon as they are written, not when the client's delayed ACK for
        // the last one arrives (Nagle).
        let _ = tcp.set_nodelay(true);
        let (acceptor, state, cfg) = (acceptor.clone(), state.clone(), cfg.clone());
        tokio::spawn(async move {
            state.metrics.open_connections.inc();
            let age = cfg.max_connection_age;
            let _ = tokio::time::timeout(age, connection(tcp, addr, acceptor, state.clone(), &cfg))
                .await;
            state.metrics.open_connections.dec();
            drop(per_ip);
            drop(permit);
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    cfg: &ServeConfig,
) {
    let tls = match tokio::time::timeout(cfg.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake_reason(&e);
            state
                .metrics
                .handshake_failures
                .get_or_create(&metrics::ReasonLabels {
                    reason: reason.into(),
                })
                .inc();
            tracing::debug!(%addr, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            state
                .metrics
                .handshake_failures
                .get_or_create(&metrics::ReasonLabels {
                    reason: "timeout".into(),
                })
                .inc();
            return;
        }
    };
    // The verifier already checked the chain; this reads the ID and serial and keeps the chain
    // for the renewal-time re-check.
    let svid = tls.get_ref().1.peer_certificates().and_then(|certs| {
        let info = check_leaf(certs.first()?).ok()?;
        Some(PeerSvid {
            id: info.spiffe_id,
            serial: info.serial,
            chain: certs.iter().map(|c| c.clone().into_owned()).collect(),
        })
    });
    let peer = Peer { addr, svid };
    let service = service_fn(move |req| handler::handle(state.clone(), peer.clone(), req));
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(%addr, "connection ended: {e}");
    }
}

/// The key that rate limits and per-address connection caps count by: the IPv4 address, or the
/// IPv6 /64 (one host usually holds a whole /64).
pub(crate) fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One connection counted against its address's share; released on drop.
struct PerIpSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl PerIpSlot {
    fn take(map: &Arc<Mutex<HashMap<IpAddr, usize>>>, key: IpAddr, max: usize) -> Option<Self> {
        let mut m = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            map: map.clone(),
            key,
        })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

fn handshake_reason(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("Expired") {
        "expired"
    } else if text.contains("Chain") || text.contains("UnknownIssuer") {
        "untrusted_chain"
    } else if text.contains("Svid") {
        "invalid_svid"
    } else {
        "other"
    }
}

/// Every `maintenance_interval`: picks up CLI changes (rotation, revocations are read per
/// request), renews the intermediate at half-life and the CA's own SVID at half-life, and
/// publishes new credentials and bundles to new handshakes.
async fn maintenance(
    state: Arc<State>,
    creds: Arc<Credentials>,
    bundles: Arc<SharedBundles>,
    mut own_not_before: i64,
    mut own_not_after: i64,
    cfg: ServeConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(cfg.maintenance_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        state.enroll_limiter.retain_recent();
        state.sign_limiter.retain_recent();
        let ca = state.authority.clone();
        let due_own = OffsetDateTime::now_utc().unix_timestamp()
            >= own_not_before + (own_not_after - own_not_before) / 2;
        let result = tokio::task::spawn_blocking(move || {
            let mut ca = ca.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = OffsetDateTime::now_utc();
            let changed = ca.reload_if_changed()?;
            let renewed = ca.renew_intermediate_if_due(now)?;
            let own = if due_own || changed || renewed {
                Some(ca.own_svid(now)?)
            } else {
                None
            };
            let view = ca.issuance_view()?;
            Ok::<_, CaError>((
                renewed,
                own,
                ca.bundle()?,
                ca.signer.intermediate.not_after,
                view,
            ))
        })
        .await;
        match result {
            Ok(Ok((renewed, own, bundle, inter_not_after, view))) => {
                state.publish_issuance_view(view);
                if renewed {
                    // `record` waits while the audit queue is full: not on a runtime thread.
                    let audit = state.audit.clone();
                    tokio::task::spawn_blocking(move || {
                        audit.record(event(
                            Action::IntermediateRenew,
                            "ca",
                            "intermediate",
                            Outcome::Success,
                        ));
                    });
                }
                if let Some((svid, key)) = own {
                    match to_certified(&svid, &key) {
                        Ok(k) => {
                            creds.replace(k);
                            own_not_before = svid.record.not_before;
                            own_not_after = svid.record.not_after;
                            state.metrics.own_svid_expiry.set(own_not_after);
                        }
                        Err(e) => tracing::error!("new CA SVID unusable: {e}"),
                    }
                }
                state
                    .metrics
                    .bundle_sequence
                    .set(i64::try_from(bundle.sequence).unwrap_or(i64::MAX));
                state.metrics.intermediate_expiry.set(inter_not_after);
                match ServedBundle::of(&bundle) {
                    Ok(served) => {
                        *state
                            .served_bundle
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(served);
                    }
                    Err(e) => tracing::error!("the new bundle cannot be served: {e}"),
                }
                bundles.replace(BundleSet::single(bundle));
            }
            Ok(Err(e)) => tracing::error!("CA maintenance failed: {e}"),
            Err(e) => tracing::error!("CA maintenance task failed: {e}"),
        }
    }
}

fn to_certified(
    svid: &IssuedSvid,
    key: &rcgen::KeyPair,
) -> Result<Arc<rustls::sign::CertifiedKey>, CaError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    certified_key(svid.chain.clone(), key).map_err(|e| CaError::BadCaCert {
        what: "own SVID".into(),
        reason: e.to_string(),
    })
}

fn event(action: Action, actor: &str, subject: &str, outcome: Outcome) -> AuditEvent {
    AuditEvent::new(
        meshgate_audit::Component::Ca,
        actor,
        action,
        subject,
        outcome,
    )
}

/// Audit events of the API. Issuance events are written durably before the answer is sent;
/// the token text never appears, only the token's id.
impl State {
    fn base(
        &self,
        peer: &Peer,
        action: Action,
        actor: &str,
        subject: &str,
        outcome: Outcome,
    ) -> AuditEvent {
        event(action, actor, subject, outcome)
            .with_source(peer.addr.to_string())
            .with_trust_domain(self.trust_domain.clone())
    }

    fn audit_token_reject(&self, peer: &Peer, reason: &str) {
        let ev = self
            .base(
                peer,
                Action::TokenReject,
                "anonymous",
                "token",
                Outcome::Denied,
            )
            .with_reason(reason);
        self.audit.record(ev);
    }

    fn audit_token_spent(&self, peer: &Peer, token: &TokenRecord, e: &CaError) {
        let ev = self
            .base(
                peer,
                Action::TokenUse,
                "anonymous",
                token.spiffe_id.as_str(),
                Outcome::Failure,
            )
            .with_reason(e.to_string())
            .with_detail("token_id", token.id);
        self.audit.record(ev);
    }

    /// The token's use and the issuance, in that order: written with the commit that records
    /// them (see [`GroupCommit::commit_audited`]), on disk before the answer.
    fn enrolled_events(
        &self,
        peer: &Peer,
        token: &TokenRecord,
        issued: &IssuedCert,
    ) -> Vec<AuditEvent> {
        let id = issued.spiffe_id.as_str();
        let used = self
            .base(peer, Action::TokenUse, "anonymous", id, Outcome::Success)
            .with_detail("token_id", token.id)
            .with_detail("uses_left", token.uses_left);
        let ev = self
            .base(peer, Action::SvidIssue, id, id, Outcome::Success)
            .with_detail("serial", issued.serial.to_string())
            .with_detail("not_after", issued.not_after)
            .with_detail("token_id", token.id);
        vec![used, ev]
    }

    /// The renewal, written as the enrollment's events are.
    fn renewed_events(&self, peer: &Peer, issued: &IssuedCert) -> Vec<AuditEvent> {
        let id = issued.spiffe_id.as_str();
        let ev = self
            .base(peer, Action::SvidRenew, id, id, Outcome::Success)
            .with_detail("serial", issued.serial.to_string())
            .with_detail("not_after", issued.not_after);
        vec![ev]
    }

    fn audit_renew_rejected(
        &self,
        peer: &Peer,
        id: &meshgate_identity::SpiffeId,
        serial: &meshgate_identity::Serial,
        e: &CaError,
    ) {
        let ev = self
            .base(
                peer,
                Action::RenewReject,
                id.as_str(),
                id.as_str(),
                Outcome::Denied,
            )
            .with_reason(e.to_string())
            .with_detail("serial", serial.to_string());
        self.audit.record(ev);
    }
}
