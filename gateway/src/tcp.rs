//! The byte tunnel of a TCP-mode connection, on either side: bytes copied both ways until both
//! sides have closed, the idle timeout passes with no byte moving, or the caller's `cut` future
//! completes (the peer's SVID expired or was revoked, or the policy withdrew its allow). The
//! bytes are counted as they move, so a cut tunnel still reports what it carried.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::Activity;

/// What a tunnel carried and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spliced {
    /// Bytes read from the side that connected (the peer gateway inbound, the app outbound).
    pub from_client: u64,
    /// Bytes read from the other side and sent to the client.
    pub to_client: u64,
    /// `closed` (both sides finished), `idle`, `error` (a side failed mid-stream), or the
    /// reason `cut` gave.
    pub end: &'static str,
}

/// Copies between `client` and `server` until the tunnel ends; see the module comment.
pub(crate) async fn splice<C, S>(
    client: C,
    server: S,
    idle_timeout: Duration,
    cut: impl Future<Output = &'static str>,
) -> Spliced
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Metered::new(client, activity.clone());
    let mut server = Metered::new(server, activity.clone());
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => match r {
            Ok(_) => "closed",
            Err(e) => {
                tracing::debug!("a TCP tunnel ended on an error: {e}");
                "error"
            }
        },
        () = activity.idle(idle_timeout) => "idle",
        reason = cut => reason,
    };
    Spliced {
        from_client: client.count(),
        to_client: server.count(),
        end,
    }
}

/// A stream that counts the bytes read from it and marks the tunnel busy when any arrive.
#[derive(Debug)]
struct Metered<S> {
    inner: S,
    read: Arc<AtomicU64>,
    activity: Arc<Activity>,
}

impl<S> Metered<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            read: Arc::new(AtomicU64::new(0)),
            activity,
        }
    }

    fn count(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.read
                .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
            this.activity.bytes_moved();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    use super::*;

    #[tokio::test]
    async fn counts_both_ways_and_ends_when_both_sides_close() {
        let (client, mut app) = duplex(64);
        let (server, mut service) = duplex(64);
        let tunnel = tokio::spawn(splice(
            client,
            server,
            Duration::from_secs(60),
            std::future::pending(),
        ));
        app.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        service.read_exact(&mut buf).await.unwrap();
        service.write_all(b"hi").await.unwrap();
        let mut two = [0u8; 2];
        app.read_exact(&mut two).await.unwrap();
        drop(app);
        drop(service);
        let spliced = tunnel.await.unwrap();
        assert_eq!((spliced.from_client, spliced.to_client), (5, 2));
        assert_eq!(spliced.end, "closed");
    }

    #[tokio::test]
    async fn a_cut_ends_a_busy_tunnel_and_keeps_the_counts() {
        let (client, mut app) = duplex(64);
        let (server, mut service) = duplex(64);
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
        let tunnel = tokio::spawn(splice(client, server, Duration::from_secs(60), async {
            let _ = cut_rx.await;
            "revoked"
        }));
        app.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        service.read_exact(&mut buf).await.unwrap();
        cut_tx.send(()).unwrap();
        let spliced = tunnel.await.unwrap();
        assert_eq!(spliced.end, "revoked");
        assert_eq!(spliced.from_client, 3);
        // Both ends see the tunnel gone.
        assert_eq!(app.read(&mut buf).await.unwrap(), 0);
        assert_eq!(service.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_quiet_tunnel_ends_at_the_idle_timeout() {
        let (client, _app) = duplex(64);
        let (server, _service) = duplex(64);
        let spliced = splice(
            client,
            server,
            Duration::from_millis(50),
            std::future::pending(),
        )
        .await;
        assert_eq!(spliced.end, "idle");
    }
}
