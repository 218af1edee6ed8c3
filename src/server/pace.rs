//! The pace request bodies must keep, so that a client trickling an upload (even an
//! authenticated one) cannot hold a connection, a staged file and a handler for good.
//!
//! Time is cut into windows of [`Pace::window`], starting when the handler first reads
//! the body; each window must bring at least `max(1, min_rate × window)` bytes. A body
//! that falls short fails with [`TooSlow`] (the handler answers 408 and closes the
//! connection). Only time spent waiting for the client counts against it: the check runs
//! when a read finds no data, or when data arrives after a window ended.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Default of [`Pace::window`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Pace::min_rate`], bytes per second.
pub const DEFAULT_MIN_BODY_RATE: u64 = 1024;

/// The least a request body must deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Length of one window; also the longest a body may send nothing.
    pub window: Duration,
    /// Bytes per second, averaged over each window.
    pub min_rate: u64,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            window: DEFAULT_BODY_TIMEOUT,
            min_rate: DEFAULT_MIN_BODY_RATE,
        }
    }
}

impl Pace {
    /// Bytes one window must bring.
    fn needed(&self) -> u64 {
        let per_window = self.min_rate as f64 * self.window.as_secs_f64();
        (per_window as u64).max(1)
    }
}

/// A request body that arrived more slowly than its [`Pace`].
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived more slowly than {min_rate} bytes/s over {window:?}")]
pub struct TooSlow {
    pub min_rate: u64,
    pub window: Duration,
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// A body that fails with [`TooSlow`] when it falls behind its pace.
pub(crate) struct Paced<B> {
    inner: B,
    pace: Pace,
    /// Bytes received in the current window.
    got: u64,
    /// End of the current window; set at the first read.
    window_end: Option<Pin<Box<Sleep>>>,
    failed: bool,
}

impl<B> Paced<B> {
    pub(crate) fn new(inner: B, pace: Pace) -> Self {
        Paced {
            inner,
            pace,
            got: 0,
            window_end: None,
            failed: false,
        }
    }

    /// Whether the windows that ended so far were all met; starts a new window after one
    /// that ended and was met.
    fn on_pace(&mut self, now: Instant) -> bool {
        let pace = self.pace;
        let end = self
            .window_end
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(now + pace.window)));
        if now < end.deadline() {
            return true;
        }
        if self.got < pace.needed() {
            return false;
        }
        self.got = 0;
        end.as_mut().reset(now + pace.window);
        true
    }

    /// Arranges to be polled when the current window ends; checks it first if the timer
    /// says it has ended already. False if that window fell short.
    fn check_when_window_ends(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(end) = self.window_end.as_mut() else {
            return true;
        };
        if end.as_mut().poll(cx).is_pending() {
            return true;
        }
        let ended = end.deadline();
        if !self.on_pace(ended) {
            return false;
        }
        // A new window began at `ended`: register for its end.
        if let Some(end) = self.window_end.as_mut() {
            let _ = end.as_mut().poll(cx);
        }
        true
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let now = Instant::now();
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                // Count this data in the window it ends, then check.
                this.got = this.got.saturating_add(n);
                if this.on_pace(now) {
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
            Poll::Ready(other) => return Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if this.on_pace(now) && this.check_when_window_ends(cx) {
                    return Poll::Pending;
                }
            }
        }
        this.failed = true;
        Poll::Ready(Some(Err(Box::new(TooSlow {
            min_rate: this.pace.min_rate,
            window: this.pace.window,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (from reading a request body) is a [`TooSlow`] somewhere in its chain.
pub(crate) fn is_too_slow(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<TooSlow>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::BodyExt;

    /// A body of `chunks`, one every `gap`.
    fn trickle(
        chunks: usize,
        size: usize,
        gap: Duration,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let s = futures_util::stream::iter(0..chunks).then(move |_| async move {
            tokio::time::sleep(gap).await;
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![0u8; size])))
        });
        http_body_util::StreamBody::new(Box::pin(s))
    }

    async fn drain(b: impl Body<Data = Bytes, Error = BoxError> + Unpin) -> Result<u64, BoxError> {
        let mut b = b;
        let mut n = 0;
        while let Some(f) = b.frame().await {
            n += f?.data_ref().map_or(0, |d| d.len() as u64);
        }
        Ok(n)
    }

    const PACE: Pace = Pace {
        window: Duration::from_secs(10),
        min_rate: 100,
    };

    #[tokio::test(start_paused = true)]
    async fn a_body_on_pace_is_passed_whole() {
        // 1,000 bytes every 5 s: 2,000 per 10 s window, the least allowed is 1,000.
        let got = drain(Paced::new(trickle(20, 1000, Duration::from_secs(5)), PACE)).await;
        assert_eq!(got.unwrap(), 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_or_a_stall_fails() {
        // 1 byte a second.
        let slow = drain(Paced::new(trickle(100, 1, Duration::from_secs(1)), PACE)).await;
        assert!(is_too_slow(&*slow.unwrap_err()));
        // Nothing at all.
        let start = Instant::now();
        let stall = drain(Paced::new(trickle(2, 5000, Duration::from_secs(60)), PACE)).await;
        assert!(is_too_slow(&*stall.unwrap_err()));
        assert!(start.elapsed() <= Duration::from_secs(61));
    }
}
