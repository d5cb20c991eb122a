//! Starting and stopping a gateway: every listener of the config bound first (so a bad address
//! starts nothing), then served on tasks that read the agent's credentials as it renews them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use meshgate_identity::api::BootstrapToken;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::agent::{Agent, CaUrl, KeyType};
use crate::audit::Audit;
use crate::config::{Config, Mode};
use crate::error::Error;
use crate::inbound::{self, Inbound};
use crate::inbound_tcp::{self, TcpInbound};
use crate::listen::Shared;
use crate::metrics::Metrics;
use crate::outbound::{self, Outbound};
use crate::outbound_tcp::{self, TcpOutbound};
use crate::policy::{self, PolicyStore};
use crate::ratelimit::{self, RateLimits};

/// A gateway whose listeners are serving.
#[derive(Debug)]
pub struct RunningGateway {
    /// Where the inbound (mTLS) listener is, if the config has one.
    pub inbound: Option<SocketAddr>,
    /// Each outbound route's name and listening address, in config order.
    pub outbound: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    policies: Option<Arc<PolicyStore>>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<Audit>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// The listening address of the outbound route `name`.
    pub fn outbound_addr(&self, name: &str) -> Option<SocketAddr> {
        self.outbound
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Reads the policy files again now, as SIGHUP does. On error the policy in force stays.
    pub fn reload_policies(&self) {
        if let Some(store) = &self.policies {
            store.reload_logged(&self.metrics, self.audit.as_deref(), "request");
        }
    }

    /// Waits until every audit event recorded so far is on disk (nothing to do without
    /// `[audit]`). Requests never wait for the audit log; this is for shutdown and tests.
    pub async fn flush_audit(&self) -> Result<(), Error> {
        match &self.audit {
            Some(audit) => audit.flush().await,
            None => Ok(()),
        }
    }

    /// Stops accepting, waits for the listeners' loops to end, and flushes the audit log; open
    /// connections finish on their own tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(audit) = &self.audit
            && let Err(e) = audit.flush().await
        {
            tracing::error!("the audit log could not be flushed at shutdown: {e}");
        }
    }
}

/// Binds and serves every listener of `config` with the credentials of `agent`, which the
/// caller keeps running (`Agent::run`) so that renewals and revocations reach the listeners.
pub async fn start(config: &Config, agent: &Agent) -> Result<RunningGateway, Error> {
    if agent.spiffe_id() != &config.spiffe_id {
        return Err(Error::StoredIdMismatch {
            stored: agent.spiffe_id().to_string(),
            config: config.spiffe_id.to_string(),
        });
    }
    let metrics = Arc::new(Metrics::default());
    let audit = match &config.audit_path {
        Some(log) => Some(Arc::new(Audit::open(
            log,
            &config.spiffe_id,
            agent.credentials(),
            metrics.clone(),
        )?)),
        None => None,
    };
    let shared = Arc::new(Shared {
        own_id: config.spiffe_id.clone(),
        limits: config.limits.clone(),
        metrics: metrics.clone(),
        credentials: agent.credentials(),
        bundles: agent.shared_bundles(),
        svid: agent.subscribe(),
        revocations: agent.subscribe_revocations(),
        audit: audit.clone(),
    });
    let (shutdown, stop) = watch::channel(false);
    let mut tasks = Vec::new();

    let admin_listener = bind(config.admin, "admin").await?;
    let admin_addr = local_addr(&admin_listener, config.admin, "admin")?;

    let mut inbound_addr = None;
    let mut policies = None;
    let mut inbound_task = None;
    let mut rate_limits = None;
    if let Some(ib) = &config.inbound {
        let store = Arc::new(PolicyStore::load(ib.policy.clone())?);
        let inbound = match ib.mode {
            Mode::Tcp => InboundKind::Tcp(Arc::new(TcpInbound::new(
                shared.clone(),
                ib,
                store.clone(),
            )?)),
            _ => {
                let inbound = Arc::new(Inbound::new(shared.clone(), ib, store.clone())?);
                rate_limits = Some(inbound.rate_limits()).filter(|r| !r.is_empty());
                InboundKind::Http(inbound)
            }
        };
        let listener = bind(ib.listen, "inbound").await?;
        inbound_addr = Some(local_addr(&listener, ib.listen, "inbound")?);
        inbound_task = Some((listener, inbound));
        policies = Some(store);
    }
    let mut routes = Vec::new();
    let mut outbound_addrs = Vec::new();
    for route in &config.outbound {
        let what = format!("outbound {}", route.name);
        let listener = bind(route.listen, &what).await?;
        outbound_addrs.push((
            route.name.clone(),
            local_addr(&listener, route.listen, &what)?,
        ));
        let route = match route.mode {
            Mode::Tcp => RouteKind::Tcp(Arc::new(TcpOutbound::new(shared.clone(), route.clone())?)),
            _ => RouteKind::Http(Arc::new(Outbound::new(shared.clone(), route.clone())?)),
        };
        routes.push((listener, route));
    }

    tasks.push(tokio::spawn(admin::serve(
        admin_listener,
        shared.clone(),
        stop.clone(),
    )));
    match inbound_task {
        Some((listener, InboundKind::Http(inbound))) => {
            tasks.push(tokio::spawn(inbound::serve(
                listener,
                inbound,
                stop.clone(),
            )));
        }
        Some((listener, InboundKind::Tcp(inbound))) => {
            tasks.push(tokio::spawn(inbound_tcp::serve(
                listener,
                inbound,
                stop.clone(),
            )));
        }
        None => {}
    }
    if let Some(store) = &policies {
        tasks.push(tokio::spawn(policy::watch_files(
            store.clone(),
            metrics.clone(),
            audit.clone(),
            stop.clone(),
        )));
    }
    if let Some(limits) = rate_limits {
        tasks.push(tokio::spawn(sweep_rate_limits(limits, stop.clone())));
    }
    for (listener, route) in routes {
        tasks.push(match route {
            RouteKind::Http(r) => tokio::spawn(outbound::serve(listener, r, stop.clone())),
            RouteKind::Tcp(r) => tokio::spawn(outbound_tcp::serve(listener, r, stop.clone())),
        });
    }
    tracing::info!(
        spiffe_id = %config.spiffe_id,
        inbound = ?inbound_addr,
        outbound = ?outbound_addrs,
        admin = %admin_addr,
        "gateway listening"
    );
    Ok(RunningGateway {
        inbound: inbound_addr,
        outbound: outbound_addrs,
        admin: admin_addr,
        policies,
        metrics,
        audit,
        shutdown,
        tasks,
    })
}

/// `gateway run`: reuses the SVID in the state directory or enrolls with `token`, serves, and
/// renews until `shutdown` completes. Ends with `Error::SvidExpired` if renewal never succeeds.
pub async fn run(
    config: Config,
    token: Option<BootstrapToken>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    if let Some(token) = &token {
        let claims = token.claims();
        if claims.spiffe_id != config.spiffe_id {
            return Err(Error::TokenIdMismatch {
                token: claims.spiffe_id.to_string(),
                config: config.spiffe_id.to_string(),
            });
        }
        if let Some(url) = &config.ca_url
            && CaUrl::parse(&claims.ca_url)? != *url
        {
            return Err(Error::TokenCaMismatch {
                token: claims.ca_url.clone(),
                config: url.authority(),
            });
        }
    }
    // The policy files are checked before enrolling: a mistake in one must not spend a
    // single-use token, nor hide behind "no state, give a token".
    if let Some(ib) = &config.inbound {
        PolicyStore::load(ib.policy.clone())?;
    }
    let agent =
        Agent::load_or_enroll(&config.state_dir, token.as_ref(), KeyType::default()).await?;
    let gateway = start(&config, &agent).await?;
    let result = agent.run(shutdown).await;
    gateway.shutdown().await;
    result
}

/// The inbound listener of either mode.
enum InboundKind {
    Http(Arc<Inbound>),
    Tcp(Arc<TcpInbound>),
}

/// An outbound route of either mode.
enum RouteKind {
    Http(Arc<Outbound>),
    Tcp(Arc<TcpOutbound>),
}

/// Drops the buckets of quiet peers now and then, until `stop`.
async fn sweep_rate_limits(limits: Arc<RateLimits>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(ratelimit::SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => limits.sweep(),
            _ = stop.changed() => return,
        }
    }
}

async fn bind(addr: SocketAddr, listener: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            listener: listener.to_owned(),
            addr,
            source,
        })
}

fn local_addr(l: &TcpListener, addr: SocketAddr, listener: &str) -> Result<SocketAddr, Error> {
    l.local_addr().map_err(|source| Error::Listen {
        listener: listener.to_owned(),
        addr,
        source,
    })
}
