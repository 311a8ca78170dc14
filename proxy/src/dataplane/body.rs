//! Body plumbing: one boxed body type for every response, a trailer filter,
//! and a guard that counts a request as in flight until its response body
//! is finished (for idle timeouts and draining).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

/// Why a body ended early (the peer's stream broke, or the sidecar cut it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the sidecar sends and every request it forwards.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// `body` as a [`Body`].
pub fn boxed(body: Incoming) -> Body {
    body.map_err(BoxError::from).boxed()
}

/// Streams `body` on, dropping identity (and, unless allowed, underscore)
/// headers from its trailers.
pub fn without_spoofable_trailers(body: Incoming, allow_underscores: bool) -> Body {
    body.map_frame(move |frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            crate::dataplane::headers::sanitize_trailers(&mut trailers, allow_underscores);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    })
    .map_err(BoxError::from)
    .boxed()
}

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
}

/// Held while a request (and its response body) is in flight; also counted
/// in a listener-wide gauge once [`InFlight::count`] gave it one.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>, Option<prometheus::IntGauge>);

impl InFlight {
    /// Counts this request in `gauge` until it ends.
    pub fn count(&mut self, gauge: prometheus::IntGauge) {
        gauge.inc();
        if let Some(previous) = self.1.replace(gauge) {
            previous.dec();
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { origin: Instant::now(), in_flight: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0) })
    }

    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone(), None)
    }

    /// When the connection became idle, or `None` while a request is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.origin + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)))
    }

    /// Records activity now (an upgraded stream moved bytes).
    pub fn touch(&self) {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(elapsed, Ordering::Release);
    }

    /// Waits until the connection has been idle for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = match self.idle_since() {
                Some(since) => since + timeout,
                None => Instant::now() + timeout,
            };
            tokio::time::sleep_until(deadline).await;
            if self.idle_since().is_some_and(|since| since + timeout <= Instant::now()) {
                return;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(elapsed, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(gauge) = &self.1 {
            gauge.dec();
        }
    }
}

/// A body that keeps its request counted as in flight until it ends, and
/// that a [`Cut`] can end early.
pub struct Tracked<B> {
    inner: B,
    _in_flight: Option<InFlight>,
    cut: Option<Cut>,
}

/// Ends a body with [`StreamCut`] once its token is cancelled (the caller
/// may no longer be served) or its deadline passes (the caller's
/// certificate, or its token, expires); holds `guard` (its registration)
/// meanwhile.
pub struct Cut {
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _guard: Box<dyn Send + Sync>,
}

impl Cut {
    pub fn new(
        token: tokio_util::sync::CancellationToken,
        deadline: Instant,
        guard: impl Send + Sync + 'static,
    ) -> Self {
        Self {
            cancelled: Box::pin(token.cancelled_owned()),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            _guard: Box::new(guard),
        }
    }

    fn poll_cut(&mut self, cx: &mut Context<'_>) -> bool {
        self.cancelled.as_mut().poll(cx).is_ready() || self.deadline.as_mut().poll(cx).is_ready()
    }
}

/// Why a stream ended early: hyper resets the HTTP/2 stream or aborts the
/// HTTP/1.1 response, so the caller cannot mistake it for a complete one.
#[derive(Debug, thiserror::Error)]
#[error("stream cut: the caller may no longer be served")]
pub struct StreamCut;

impl<B> Tracked<B>
where
    B: HttpBody<Data = Bytes> + Unpin + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    /// `inner` holding `in_flight` until it ends (and cut by `cut`), boxed once.
    pub fn wrap(inner: B, in_flight: InFlight, cut: Option<Cut>) -> Body {
        Self { inner, _in_flight: Some(in_flight), cut }.boxed()
    }

    /// `inner`, cut by `cut` (a request body streamed to the app).
    pub fn cut(inner: B, cut: Cut) -> Body {
        Self { inner, _in_flight: None, cut: Some(cut) }.boxed()
    }
}

impl<B> HttpBody for Tracked<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(cut) = self.cut.as_mut()
            && cut.poll_cut(cx)
        {
            self.cut = None;
            return Poll::Ready(Some(Err(Box::new(StreamCut))));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
