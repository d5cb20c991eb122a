//! A restarted gateway (`gateway run`, i.e. `meshgate_gateway::run`) reuses the key and SVID in
//! its state directory: started again without a token it serves with the same SVID, and the CA
//! saw one enrollment. Without a stored SVID and without a token it refuses to start.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::{
    Ca, Echo, PAYMENTS, SHOP, bank_policies, eventually, free_addr, metric, payments_config,
    shop_config, try_call,
};
use hyper::StatusCode;
use meshgate_ca::Authority;
use meshgate_gateway::{Config, Error};
use meshgate_identity::api::BootstrapToken;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_restarted_gateway_reuses_its_svid_without_a_token() {
    tokio::time::timeout(LIMIT, async {
        let ca = Ca::start().await;
        let root = ca.dir.path().to_owned();
        let payments_agent = ca.enroll(PAYMENTS, &root.join("payments")).await;
        let echo = Echo::start().await;
        let policy = bank_policies(&root.join("policies"));
        let config = payments_config(&root.join("payments"), echo.addr, &policy, "");
        let payments = meshgate_gateway::start(&config, &payments_agent)
            .await
            .unwrap();

        // `gateway run` binds the addresses of its file, so they are picked before it starts.
        let (listen, admin) = (free_addr(), free_addr());
        let shop = shop_config(&root.join("shop"), listen, payments.inbound.unwrap(), admin);

        let first = Running::start(shop.clone(), Some(ca.token(SHOP)));
        let (serial, hash) = serving(listen, admin).await;
        first.stop().await.unwrap();

        let second = Running::start(shop.clone(), None);
        let (serial_again, hash_again) = serving(listen, admin).await;
        assert_eq!(serial_again, serial, "the same SVID after the restart");
        assert_eq!(hash_again, hash, "payments sees the same certificate");
        second.stop().await.unwrap();

        // The CA issued the shop exactly one SVID, through one enrollment, spending one token.
        let cli = Authority::open(&ca.ca_dir).unwrap();
        let issued: Vec<_> = cli
            .list()
            .unwrap()
            .into_iter()
            .filter(|c| c.spiffe_id.as_str() == SHOP)
            .collect();
        assert_eq!(issued.len(), 1, "{issued:?}");
        assert_eq!(issued[0].serial.to_string(), serial);
        let tokens: Vec<_> = cli
            .list_tokens()
            .unwrap()
            .into_iter()
            .filter(|t| t.spiffe_id.as_str() == SHOP)
            .collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].uses_left, 0);
        let metrics = ca.metrics().await;
        // One enrollment for payments, one for the shop.
        let sample = "meshgate_ca_enrollments_total{outcome=\"issued\"}";
        assert_eq!(metric(&metrics, sample), 2.0, "{metrics}");

        // A state directory with no SVID and no token: nothing to serve with.
        let mut empty = shop.clone();
        empty.state_dir = root.join("nothing-here");
        let err = meshgate_gateway::run(empty, None, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoState { .. }), "{err}");
    })
    .await
    .unwrap();
}

/// `gateway run` on a task, stopped through its shutdown future.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    fn start(config: Config, token: Option<BootstrapToken>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(meshgate_gateway::run(config, token, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Waits until the gateway at `admin` is ready, makes one call through its outbound route at
/// `listen`, and returns the serial it reports and the certificate hash payments saw.
async fn serving(listen: SocketAddr, admin: SocketAddr) -> (String, String) {
    eventually("the gateway to be ready", || async move {
        try_call(admin, "GET", "/readyz")
            .await
            .is_ok_and(|a| a.status == StatusCode::OK)
    })
    .await;
    let identity = try_call(admin, "GET", "/v1/identity").await.unwrap().json();
    assert_eq!(identity["spiffe_id"], SHOP);
    let answer = try_call(listen, "POST", "/v1/charges").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let xfcc = answer.json()["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = xfcc
        .split(';')
        .find_map(|p| p.strip_prefix("Hash="))
        .unwrap()
        .to_owned();
    (identity["serial"].as_str().unwrap().to_owned(), hash)
}
