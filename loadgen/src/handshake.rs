//! New connections, each with a full mTLS handshake, as fast as the server takes them.
//!
//! In TLS 1.3 the client's handshake ends before the server has checked the client's
//! certificate, so each connection also waits for the server's verdict: it sends close_notify
//! and reads until the server closes. A server that rejected the certificate sends an alert
//! instead, and the connection counts as an error. No HTTP request is sent, so a proxy does no
//! upstream work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Target;

/// One connection may take this long before it counts as an error.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct HandshakeReport {
    pub handshakes: u64,
    pub errors: u64,
    pub seconds: f64,
    /// The first error seen, for diagnosis.
    pub first_error: Option<String>,
}

impl HandshakeReport {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.handshakes as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// One JSON line, as `scripts/bench.sh` reads it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "handshakes_per_sec": (self.per_second() * 10.0).round() / 10.0,
            "handshakes": self.handshakes,
            "errors": self.errors,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
        })
    }
}

/// `concurrency` loops, each opening one connection after the other until `duration` has
/// passed; connections in flight at the end finish (or time out) and are counted.
pub async fn run_handshakes(
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> HandshakeReport {
    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (target, done, ok, failed, first_error) = (
            target.clone(),
            done.clone(),
            ok.clone(),
            failed.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                match tokio::time::timeout(CONNECTION_TIMEOUT, one(&target)).await {
                    Ok(Ok(())) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    outcome => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let message = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {CONNECTION_TIMEOUT:?}"),
                        };
                        let mut first = first_error
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        first.get_or_insert(message);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(duration).await;
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let first_error = first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    HandshakeReport {
        handshakes: ok.load(Ordering::Relaxed),
        errors: failed.load(Ordering::Relaxed),
        seconds,
        first_error,
    }
}

/// Connect, handshake, close_notify, and read until the server closes.
async fn one(target: &Target) -> std::io::Result<()> {
    let mut tls = target.connect().await?;
    tls.shutdown().await?;
    let mut buf = [0u8; 512];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // Some servers close the TCP connection without their own close_notify: the
            // handshake was accepted all the same (a rejection arrives as an alert, an error
            // of another kind).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
