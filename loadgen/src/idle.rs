//! Many mTLS connections held open and idle, for measuring what a server spends on each.
//!
//! Each connection completes its handshake and then only reads: it sends nothing after the
//! handshake, so the server holds an established, authenticated connection with no request. A
//! connection the server closes meanwhile (a timeout, a connection limit) is counted, so that
//! a memory figure is never read off fewer connections than claimed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Target;

/// What a hold measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleReport {
    /// Connections that completed their handshake.
    pub opened: u64,
    /// Handshakes that failed.
    pub errors: u64,
    /// Of the opened connections, those the server had closed by the end of the hold.
    pub closed_by_peer: u64,
    pub first_error: Option<String>,
}

impl IdleReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "opened": self.opened,
            "errors": self.errors,
            "closed_by_peer": self.closed_by_peer,
        })
    }
}

/// Opens `connections` connections, at most `concurrency` handshakes at a time, calls `ready`
/// with the number opened, holds them for `hold`, then closes them all.
pub async fn hold_idle(
    target: &Target,
    connections: usize,
    concurrency: usize,
    hold: Duration,
    ready: impl FnOnce(u64),
) -> IdleReport {
    let closed = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut opening = JoinSet::new();
    for _ in 0..connections {
        let (target, gate) = (target.clone(), gate.clone());
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            target.connect().await
        });
    }
    let mut held = JoinSet::new();
    let (mut opened, mut errors, mut first_error) = (0, 0, None);
    while let Some(result) = opening.join_next().await {
        match result {
            Ok(Ok(mut tls)) => {
                opened += 1;
                let closed = closed.clone();
                held.spawn(async move {
                    // Nothing is expected; any end of the stream means the server closed it.
                    let mut buf = [0u8; 64];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(n) if n > 0 => {}
                            _ => break,
                        }
                    }
                    closed.fetch_add(1, Ordering::Relaxed);
                });
            }
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    ready(opened);
    tokio::time::sleep(hold).await;
    let closed_by_peer = closed.load(Ordering::Relaxed);
    held.shutdown().await;
    IdleReport {
        opened,
        errors,
        closed_by_peer,
        first_error,
    }
}
