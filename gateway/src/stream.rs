//! Bounds on a request once it has left for the next hop (the local service or a peer gateway):
//! the answer's head must come within the response timeout, counted from the moment the request
//! body has been sent whole, so that an upload is never cut by it; and a body in either direction
//! fails once the gateway has waited the idle timeout for its next frame, so that a stalled
//! stream on a busy HTTP/2 connection (which never goes idle) does not hold its slot forever.
//! Streams themselves have no total limit: a gRPC stream or a long download lives as long as its
//! frames keep coming. Each frame also counts as activity on the gateway's connection, so a
//! connection carrying a live stream is not closed as idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::conn::Activity;
use crate::reply::{Body, BoxError, Refusal};

/// A body that fails after `idle` without a frame while its reader waits, marks `activity` at
/// each frame, and (for request bodies) tells [`answer`] when it has been sent whole.
pub(crate) struct Watched {
    inner: Body,
    idle: Duration,
    /// Made at the first wait, so that a body that never makes its reader wait (most small ones)
    /// costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// True while a read is waiting for the next frame: the timer runs only then, so a reader
    /// that pauses (back-pressure) is not mistaken for a writer that stalled.
    waiting: bool,
    activity: Option<Arc<Activity>>,
    /// Set when the body has ended; dropped with the body, which [`answer`] reads as sent too.
    sent: Option<watch::Sender<bool>>,
}

/// Tells when a request body has been sent whole (or dropped by the client that was sending it);
/// `None` for a body with nothing to send, whole as soon as the request leaves.
#[derive(Debug, Clone)]
pub(crate) struct Sent(Option<watch::Receiver<bool>>);

impl Watched {
    /// A response body on its way back to the caller.
    pub(crate) fn response(inner: Body, idle: Duration, activity: Arc<Activity>) -> Self {
        Self::new(inner, idle, Some(activity), None)
    }

    /// A request body on its way to the next hop, and the signal that it has been sent. A body
    /// that has ended already (most requests have none) needs no signal: no channel is made.
    pub(crate) fn request(inner: Body, idle: Duration, activity: Arc<Activity>) -> (Self, Sent) {
        if inner.is_end_stream() {
            return (Self::new(inner, idle, Some(activity), None), Sent(None));
        }
        let (tx, rx) = watch::channel(false);
        (
            Self::new(inner, idle, Some(activity), Some(tx)),
            Sent(Some(rx)),
        )
    }

    fn new(
        inner: Body,
        idle: Duration,
        activity: Option<Arc<Activity>>,
        sent: Option<watch::Sender<bool>>,
    ) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            waiting: false,
            activity,
            sent,
        }
    }

    fn ended(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(true);
        }
    }
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("idle", &self.idle)
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if let Some(activity) = &this.activity {
                    activity.bytes_moved();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.idle)));
                if !this.waiting {
                    // A new wait: the timer runs from now.
                    this.waiting = true;
                    if let Some(deadline) = Instant::now().checked_add(this.idle) {
                        timer.as_mut().reset(deadline);
                    }
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.ended();
                        Poll::Ready(Some(Err(Box::new(StreamIdle(this.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// No frame came within the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data moved on the stream for {}s (limits.idle_timeout)", .0.as_secs())]
pub(crate) struct StreamIdle(Duration);

/// True when `error` (or what caused it) is a body that went idle: the caller stalled its
/// request body, which is not the next hop's fault.
pub(crate) fn went_idle(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<StreamIdle>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The answer to a caller whose request body stalled.
pub(crate) const STALLED_BODY: Refusal =
    Refusal::RequestTimeout("the request body stopped arriving (limits.idle_timeout)");

/// Waits for `request` (the next hop's answer) until `timeout` has passed since the request
/// body was sent whole; `None` when it did not come in time. The clock is one of `timers`.
pub(crate) async fn answer<F: Future>(
    request: F,
    sent: Sent,
    timeout: Duration,
    timers: &Timers,
) -> Option<F::Output> {
    let deadline = async move {
        // An error means the body was dropped: sent, or abandoned by the client; either way the
        // clock runs from now.
        if let Sent(Some(mut sent)) = sent {
            let _ = sent.wait_for(|done| *done).await;
        }
        timers.take(timeout).await;
    };
    tokio::select! {
        biased;
        r = request => Some(r),
        () = deadline => None,
    }
}

/// Most timers a connection keeps for its requests to reuse.
const KEPT_TIMERS: usize = 16;

/// The response-timeout timers of one connection, kept for its next requests. A new timer is
/// an insertion into tokio's timer wheel and a removal from it, each under the driver's lock;
/// a kept one is still in the wheel, and setting it to a later deadline is one atomic
/// operation (the wheel moves it when its old deadline comes). All of a connection's
/// requests wait the same `limits.response_timeout`, so a reused timer's deadline only grows.
/// A kept timer holds no waker of a finished request.
#[derive(Debug, Default)]
pub(crate) struct Timers(std::sync::Mutex<Vec<Pin<Box<Sleep>>>>);

impl Timers {
    /// A timer that completes `timeout` from now, kept again when dropped.
    fn take(&self, timeout: Duration) -> Kept<'_> {
        let now = Instant::now();
        // As `tokio::time::sleep` does with a timeout too far away to add: about 30 years.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
        let kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let timer = match kept {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Kept {
            timers: self,
            timer: Some(timer),
        }
    }
}

/// A timer taken from [`Timers`]; completes at its deadline and goes back when dropped.
struct Kept<'a> {
    timers: &'a Timers,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Future for Kept<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut().timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        if let Some(mut timer) = self.timer.take() {
            // Swap the finished request's waker for one that does nothing, so that a kept timer
            // holds no task alive and wakes nothing if it comes due unused.
            let _ = timer
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()));
            let mut kept = self
                .timers
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.len() < KEPT_TIMERS {
                kept.push(timer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)] // test code

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::reply::full;

    /// A body that never yields a frame.
    struct Silent;

    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_silent_body_fails_after_the_idle_timeout() {
        let (body, _sent) =
            Watched::request(Silent.boxed(), Duration::from_millis(50), Activity::new());
        let err = body.collect().await.err().unwrap();
        assert!(err.to_string().contains("limits.idle_timeout"), "{err}");
    }

    #[tokio::test]
    async fn the_response_clock_starts_when_the_body_is_sent() {
        let (body, sent) = Watched::request(full("x"), Duration::from_secs(5), Activity::new());
        let never = std::future::pending::<()>();
        let timers = Arc::new(Timers::default());
        let waited = tokio::spawn({
            let timers = timers.clone();
            async move { answer(never, sent, Duration::from_millis(10), &timers).await }
        });
        // Not sent yet: the clock does not run.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waited.is_finished());
        let _ = body.collect().await.unwrap();
        assert_eq!(waited.await.unwrap(), None);
    }

    #[tokio::test]
    async fn without_a_body_the_response_clock_starts_at_once() {
        // The body is neither read nor dropped: nothing but its emptiness starts the clock.
        let (body, sent) = Watched::request(full(""), Duration::from_secs(5), Activity::new());
        let never = std::future::pending::<()>();
        let timers = Timers::default();
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            answer(never, sent, Duration::from_millis(10), &timers),
        );
        assert_eq!(waited.await.unwrap(), None);
        drop(body);
    }

    #[tokio::test]
    async fn an_answer_in_time_is_returned() {
        let (body, sent) = Watched::request(full("x"), Duration::from_secs(5), Activity::new());
        drop(body);
        assert_eq!(
            answer(
                async { 7 },
                sent,
                Duration::from_secs(60),
                &Timers::default()
            )
            .await,
            Some(7)
        );
    }

    /// Waits on `timers` for an answer that never comes: `None` after `timeout`, and not before
    /// `not_before`.
    async fn times_out(timers: &Timers, timeout: Duration, not_before: Duration) {
        let waited = answer(std::future::pending::<()>(), Sent(None), timeout, timers);
        tokio::pin!(waited);
        let early = tokio::time::timeout(not_before, &mut waited).await;
        assert!(early.is_err(), "the timer fired before its deadline");
        assert_eq!(waited.await, None);
    }

    #[tokio::test]
    async fn a_kept_timer_counts_each_request_from_its_own_start() {
        let timers = Timers::default();
        let ms = Duration::from_millis;
        // An answer ready at once needs no timer.
        assert_eq!(
            answer(async { 7 }, Sent(None), ms(100), &timers).await,
            Some(7)
        );
        assert_eq!(timers.0.lock().unwrap().len(), 0);
        let later = async {
            tokio::task::yield_now().await;
            7
        };
        assert_eq!(answer(later, Sent(None), ms(100), &timers).await, Some(7));
        assert_eq!(timers.0.lock().unwrap().len(), 1, "the timer was kept");
        // Reused at once, with its old deadline 100 ms away: the new one is 400 ms away, and
        // the old one passes while the request waits.
        times_out(&timers, ms(400), ms(250)).await;
        // Reused after it came due in the pool, unused.
        tokio::time::sleep(ms(500)).await;
        times_out(&timers, ms(300), ms(150)).await;
        assert_eq!(
            timers.0.lock().unwrap().len(),
            1,
            "one timer served all three"
        );
    }

    #[tokio::test]
    async fn a_kept_timer_lets_go_of_the_finished_request() {
        struct Count;
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {}
        }
        let count = Arc::new(Count);
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let timers = Timers::default();
        let mut polled = false;
        let request = std::future::poll_fn(|_| {
            if std::mem::replace(&mut polled, true) {
                Poll::Ready(7)
            } else {
                Poll::Pending
            }
        });
        let waited = answer(request, Sent(None), Duration::from_secs(60), &timers);
        tokio::pin!(waited);
        assert!(waited.as_mut().poll(&mut cx).is_pending());
        // The timer holds a clone of this request's waker while it waits.
        assert_eq!(Arc::strong_count(&count), 3);
        assert_eq!(waited.as_mut().poll(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(timers.0.lock().unwrap().len(), 1, "the timer was kept");
        assert_eq!(
            Arc::strong_count(&count),
            2,
            "the kept timer let go of the waker"
        );
    }
}
