//! An outbound route in TCP mode (`[[outbound]] mode = "tcp"`): a plain TCP listener on
//! loopback for the local app; each connection the app opens gets an mTLS connection of its own
//! to the target gateway (ALPN `meshgate-tcp/1`, the expected SPIFFE ID required, not revoked),
//! and bytes are copied both ways. Nothing is pooled: a byte stream cannot share a connection.
//! When the peer gateway cannot be reached or is refused, the app's connection is reset, so the
//! app sees a failure rather than an empty answer. A tunnel is cut when the peer gateway's SVID
//! expires or is revoked, and when no byte has moved for the idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshgate_identity::tls::ALPN_TCP;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Route;
use crate::dial::{Dialed, Dialer};
use crate::error::Error;
use crate::listen::{Shared, accept_loop, revoked, until};
use crate::metrics::{DirectionLabels, OpenConnection};
use crate::tcp::splice;

const DIRECTION: &str = "outbound";

/// One TCP-mode route.
#[derive(Debug)]
pub(crate) struct TcpOutbound {
    dialer: Dialer,
}

impl TcpOutbound {
    pub(crate) fn new(shared: Arc<Shared>, route: Route) -> Result<Self, Error> {
        Ok(Self {
            dialer: Dialer::new(shared, route, ALPN_TCP)?,
        })
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    outbound: Arc<TcpOutbound>,
    stop: watch::Receiver<bool>,
) {
    let shared = outbound.dialer.shared().clone();
    accept_loop(listener, DIRECTION, shared, stop, move |tcp, addr| {
        connection(tcp, addr, outbound.clone())
    })
    .await;
}

async fn connection(app: TcpStream, addr: SocketAddr, outbound: Arc<TcpOutbound>) {
    let shared = outbound.dialer.shared();
    let route = outbound.dialer.route();
    let metrics = &shared.metrics;
    let _open = OpenConnection::new(metrics, DIRECTION);
    let start = Instant::now();
    let peer = route.expected_peer.as_str();
    let dialed = tokio::time::timeout(shared.limits.connect_timeout, outbound.dialer.dial()).await;
    let Dialed {
        tls,
        peer: info,
        mut revocations,
    } = match dialed {
        Ok(Ok(dialed)) => dialed,
        failed => {
            let why = match failed {
                Ok(Err(refusal)) => refusal.message().to_owned(),
                _ => "no connection within the connect timeout".to_owned(),
            };
            metrics
                .tcp_connect_failures
                .get_or_create(&DirectionLabels {
                    direction: DIRECTION,
                })
                .inc();
            tracing::warn!(route = %route.name, target = %route.target.authority, "resetting the app's TCP connection: the peer gateway was not reached: {why}");
            // A reset, not a clean close: the app must not take this for an empty answer.
            let _ = app.set_zero_linger();
            drop(app);
            log(route, addr, start, "peer_failed", 0, 0);
            return;
        }
    };
    metrics.tcp_connection(DIRECTION, peer, "none");
    let cut = async {
        tokio::select! {
            () = until(info.not_after) => "expired",
            () = revoked(&mut revocations, &info.serial) => "revoked",
        }
    };
    let spliced = splice(app, tls, shared.limits.idle_timeout, cut).await;
    metrics.tcp_bytes(DIRECTION, peer, spliced.from_client, spliced.to_client);
    if matches!(spliced.end, "expired" | "revoked") {
        tracing::info!(route = %route.name, peer, serial = %info.serial, "closed a TCP connection to the peer gateway: its SVID is {}", spliced.end);
    }
    log(
        route,
        addr,
        start,
        spliced.end,
        spliced.from_client,
        spliced.to_client,
    );
}

/// The access-log line of one connection.
fn log(
    route: &Route,
    app: SocketAddr,
    start: Instant,
    end: &str,
    from_client: u64,
    to_client: u64,
) {
    tracing::info!(
        target: "meshgate::access",
        direction = DIRECTION,
        route = %route.name,
        peer = %route.expected_peer,
        source = %app,
        decision = "-",
        rule = "-",
        bytes_from_client = from_client,
        bytes_to_client = to_client,
        end,
        duration_ms = crate::metrics::millis(start.elapsed()),
        "connection"
    );
}
