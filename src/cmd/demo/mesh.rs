//! The demo's bank on 127.0.0.1: an embedded CA server (SQLite in a temp dir) and three
//! services, each an echo service behind its own gateway, enrolled with a bootstrap token and
//! configured by a gateway.toml the way an operator would write it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use meshgate_audit::{Action, AuditEvent, Component, Outcome};
use meshgate_ca::server::{RunningServer, ServeConfig};
use meshgate_ca::{Authority, KeyType as CaKeyType};
use meshgate_gateway::{Agent, Config, KeyType, RunningGateway};
use meshgate_identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::net;

pub const TRUST_DOMAIN: &str = "bank.example";
pub const SHOP: &str = "spiffe://bank.example/ns/shop/sa/checkout";
pub const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
pub const LEDGER: &str = "spiffe://bank.example/ns/ledger/sa/api";
/// Who the demo says it is in the CA's audit log.
const OPERATOR: &str = "operator:demo";

/// The example bank policies, compiled into the binary so the demo runs from any directory.
pub const POLICIES: [(&str, &str); 4] = [
    (
        "mesh.toml",
        include_str!("../../../policies/examples/bank/mesh.toml"),
    ),
    (
        "shop.toml",
        include_str!("../../../policies/examples/bank/shop.toml"),
    ),
    (
        "payments.toml",
        include_str!("../../../policies/examples/bank/payments.toml"),
    ),
    (
        "ledger.toml",
        include_str!("../../../policies/examples/bank/ledger.toml"),
    ),
];

/// The running bank.
pub struct Bank {
    pub dir: tempfile::TempDir,
    pub ca_dir: PathBuf,
    pub ca: RunningServer,
    pub ca_url: String,
    pub root_sha256: String,
    pub shop: Service,
    pub payments: Service,
    pub ledger: Service,
    stop_agents: watch::Sender<bool>,
}

/// One service: its echo app behind its gateway, whose agent runs (refreshing the bundle and
/// the revocation list, renewing at half-life) until the demo ends.
pub struct Service {
    pub name: &'static str,
    pub id: SpiffeId,
    pub config: Config,
    pub gateway: RunningGateway,
    pub serial: String,
    agent: JoinHandle<Result<(), meshgate_gateway::Error>>,
}

/// An outbound route of a gateway: name, target gateway's inbound address, expected peer.
type RouteSpec<'a> = (&'a str, SocketAddr, &'a str);

impl Bank {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("meshgate-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let ca_dir = dir.path().join("ca");
        let td = TrustDomain::parse(TRUST_DOMAIN)?;
        let report = Authority::init(&ca_dir, td.clone(), CaKeyType::EcdsaP256, now())?;
        operator_audit(&ca_dir, Action::CaInit, td.id().as_str(), |e| {
            e.with_detail("root_sha256", report.root_sha256.clone())
        })?;
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let ca = meshgate_ca::server::start(
            &ca_dir,
            ServeConfig {
                listen: local,
                admin: local,
                ..ServeConfig::default()
            },
        )
        .await
        .context("cannot start the CA server")?;
        let ca_url = format!("https://{}", ca.addr);

        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir)?;
        for (name, text) in POLICIES {
            std::fs::write(policy_dir.join(name), text)?;
        }

        let (stop_agents, stop) = watch::channel(false);
        let ctx = Ctx {
            root: dir.path(),
            ca_dir: &ca_dir,
            ca_url: &ca_url,
            stop,
        };
        let ledger = ctx.service("ledger", LEDGER, &[]).await?;
        let ledger_in = inbound(&ledger)?;
        let payments = ctx
            .service("payments", PAYMENTS, &[("ledger", ledger_in, LEDGER)])
            .await?;
        let payments_in = inbound(&payments)?;
        let shop = ctx
            .service(
                "shop",
                SHOP,
                &[
                    ("payments", payments_in, PAYMENTS),
                    ("ledger", ledger_in, LEDGER),
                    // Someone pointed the shop's payments route at the ledger (a bad DNS record,
                    // say): the shop gateway must refuse to talk to anyone but payments.
                    ("payments-misrouted", ledger_in, PAYMENTS),
                ],
            )
            .await?;
        Ok(Self {
            root_sha256: report.root_sha256,
            dir,
            ca_dir,
            ca,
            ca_url,
            shop,
            payments,
            ledger,
            stop_agents,
        })
    }

    pub fn services(&self) -> [&Service; 3] {
        [&self.shop, &self.payments, &self.ledger]
    }

    /// Stops the gateways, their agents and the CA server, so that every log is complete.
    pub async fn shutdown(self) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
        let _ = self.stop_agents.send(true);
        for service in [self.shop, self.payments, self.ledger] {
            service.gateway.shutdown().await;
            service
                .agent
                .await
                .context("an agent task failed")?
                .with_context(|| format!("the {} agent failed", service.name))?;
        }
        self.ca.shutdown().await;
        Ok((self.dir, self.ca_dir))
    }
}

pub fn inbound(service: &Service) -> anyhow::Result<SocketAddr> {
    service
        .gateway
        .inbound
        .with_context(|| format!("the {} gateway has no inbound listener", service.name))
}

struct Ctx<'a> {
    root: &'a Path,
    ca_dir: &'a Path,
    ca_url: &'a str,
    stop: watch::Receiver<bool>,
}

impl Ctx<'_> {
    /// Writes the service's gateway.toml, starts its echo app, enrolls its agent with a fresh
    /// one-use token, and starts its gateway.
    async fn service(
        &self,
        name: &'static str,
        id: &str,
        routes: &[RouteSpec<'_>],
    ) -> anyhow::Result<Service> {
        let id = SpiffeId::parse(id)?;
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir)?;
        let app = net::echo(name).await?;
        let mut toml = format!(
            "spiffe_id = \"{id}\"\n\
             state_dir = \"state\"\n\n\
             [inbound]\n\
             listen = \"127.0.0.1:0\"\n\
             upstream = \"http://{app}\"\n\
             policy = [\"../policies/mesh.toml\", \"../policies/{name}.toml\"]\n\n\
             [admin]\n\
             listen = \"127.0.0.1:0\"\n\n\
             [audit]\n\
             path = \"audit.jsonl\"\n"
        );
        for (route, target, peer) in routes {
            // A fixed port, as an operator writes it for the local app (the config check takes
            // two listeners on 127.0.0.1:0 for the same address).
            let listen = free_port()?;
            toml.push_str(&format!(
                "\n[[outbound]]\n\
                 name = \"{route}\"\n\
                 listen = \"{listen}\"\n\
                 target = \"{target}\"\n\
                 expected_peer = \"{peer}\"\n"
            ));
        }
        let file = dir.join("gateway.toml");
        std::fs::write(&file, toml)?;
        let config = Config::load(&file).with_context(|| format!("{}", file.display()))?;

        let mut ca = Authority::open(self.ca_dir)?;
        let (token, record) = ca.create_token(
            &id,
            Duration::from_secs(15 * 60),
            1,
            OPERATOR,
            self.ca_url,
            now(),
        )?;
        operator_audit(self.ca_dir, Action::TokenCreate, id.as_str(), |e| {
            e.with_detail("token_id", record.id)
                .with_detail("uses", 1)
                .with_detail("expires_at", record.expires_at)
        })?;
        let agent = Agent::load_or_enroll(&config.state_dir, Some(&token), KeyType::default())
            .await
            .with_context(|| format!("{name} could not enroll"))?;
        let serial = agent.svid().info.serial.to_string();
        let gateway = meshgate_gateway::start(&config, &agent)
            .await
            .with_context(|| format!("the {name} gateway could not start"))?;
        let mut stop = self.stop.clone();
        let agent = tokio::spawn(agent.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        Ok(Service {
            name,
            id,
            config,
            gateway,
            serial,
            agent,
        })
    }
}

/// What `meshgate ca ...` appends for an operator action.
fn operator_audit(
    ca_dir: &Path,
    action: Action,
    subject: &str,
    extra: impl FnOnce(AuditEvent) -> AuditEvent,
) -> anyhow::Result<()> {
    let event = AuditEvent::new(Component::Cli, OPERATOR, action, subject, Outcome::Success)
        .with_trust_domain(TRUST_DOMAIN);
    meshgate_ca::audit_log::append_once(ca_dir, extra(event))?;
    Ok(())
}

/// A port on 127.0.0.1 that is free now.
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
