//! Serving HTTP, one way for every listener: [`accept_loop`] (the
//! listener's connection cap and accept back-off, see [`Listener`], and a
//! bounded drain on shutdown), a connection [`builder`] with the listener's
//! limits, and [`drive`] (idle timeout, graceful shutdown, deadlines).
//! Served connections close lingering ([`Lingering`]). The proxy listeners
//! put mTLS and their own services in front; the local ones (telemetry,
//! mgmt, the dev emulators) go through [`serve_http1`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::UpgradeableConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::HttpLimits;
use crate::dataplane::body::{Activity, Body, Tracked};

mod linger;
mod listener;

pub use linger::{Lingering, linger};
pub use listener::{Listener, Slot, TokenBucket, source_of};

/// Serves a local HTTP/1.1 listener with `handle` until `shutdown`, then
/// drains for at most `drain`.
pub async fn serve_http1<H, F>(
    listener: Listener,
    limits: HttpLimits,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
    handle: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    accept_loop(listener, shutdown, drain, move |tcp, remote, slot, shutdown| {
        let handle = handle.clone();
        http1_connection(tcp, slot, limits, shutdown, None, move |req| handle(req, remote))
    })
    .await;
}

/// Serves one HTTP/1.1 connection of a local listener: `handle` answers
/// each request, and its response counts as in flight until its body ends
/// (for the idle timeout and the drain); `closed` ends the connection at once.
pub async fn http1_connection<I, H, F>(
    io: I,
    slot: Slot,
    limits: HttpLimits,
    shutdown: watch::Receiver<bool>,
    closed: Option<CancellationToken>,
    handle: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Activity::new();
    let tracked = activity.clone();
    let handle = Arc::new(handle);
    let service = service_fn(move |req| {
        let in_flight = tracked.begin();
        let response = handle(req);
        async move { Ok::<_, Infallible>(response.await.map(|body| Tracked::wrap(body, in_flight, None))) }
    });
    let io = TokioIo::new(Lingering::new(io, Some(slot)));
    let builder = builder(&limits).http1_only();
    let connection = builder.serve_connection_with_upgrades(io, service);
    let idle_timeout = limits.idle_timeout;
    let ends = ConnectionEnds { activity, idle_timeout, shutdown, closed, drain_after: None, close_after: None };
    drive(connection, ends).await;
}

/// An HTTP/1.1 + HTTP/2 connection builder with the listener's limits.
pub fn builder(limits: &HttpLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// What, besides the peer, can end a served connection.
pub struct ConnectionEnds {
    pub activity: Arc<Activity>,
    pub idle_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Cancelled when the peer may no longer be served: close at once.
    pub closed: Option<CancellationToken>,
    /// Drain the connection when this elapses (just before the peer's certificate expiry)...
    pub drain_after: Option<Duration>,
    /// ...and close it when this does (the expiry).
    pub close_after: Option<Duration>,
}

/// Serves one connection to completion. Idle time, shutdown and
/// `drain_after` end it gracefully (in-flight requests finish, HTTP/2 gets a
/// GOAWAY); `closed` drops it immediately.
pub async fn drive<I, S>(connection: UpgradeableConnection<'_, I, S, TokioExecutor>, ends: ConnectionEnds)
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let ConnectionEnds { activity, idle_timeout, mut shutdown, closed, drain_after, close_after } = ends;
    let closed = closed.unwrap_or_default();
    let now = Instant::now();
    // Capped as tokio caps a sleep (30 years); were it to overflow anyway, due now.
    let at = |after: Duration| now.checked_add(after.min(MAX_WAIT)).unwrap_or(now);
    let ends = TimedEnds { drain_at: drain_after.map(at), close_at: close_after.map(at), idle_timeout };
    let timer = tokio::time::sleep_until(ends.next(&activity, false, now));
    tokio::pin!(connection, timer);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = closed.cancelled() => return,
            () = timer.as_mut() => {
                let now = Instant::now();
                match ends.due(&activity, draining, now) {
                    Due::Close => return,
                    Due::Drain => {}
                    Due::Nothing => {
                        timer.as_mut().reset(ends.next(&activity, draining, now));
                        continue;
                    }
                }
            }
            _ = shutdown.wait_for(|stop| *stop), if !draining => {}
        }
        connection.as_mut().graceful_shutdown();
        draining = true;
        timer.as_mut().reset(ends.next(&activity, draining, Instant::now()));
    }
}

/// The longest a connection's drain or close is put off (tokio's own cap on a sleep).
const MAX_WAIT: Duration = Duration::from_secs(30 * 365 * 86_400);

/// A served connection's timed ends on one timer, which its task polls on
/// every wake (three timers cost three times that): the close (the caller's
/// certificate expiry), and until the connection drains, the drain before it
/// and the idle timeout.
struct TimedEnds {
    drain_at: Option<Instant>,
    close_at: Option<Instant>,
    idle_timeout: Duration,
}

/// What [`TimedEnds`] finds due.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Close,
    Drain,
    Nothing,
}

impl TimedEnds {
    fn due(&self, activity: &Activity, draining: bool, now: Instant) -> Due {
        if self.close_at.is_some_and(|at| at <= now) {
            return Due::Close;
        }
        let idle = || self.idle_at(activity).is_some_and(|at| at <= now);
        if !draining && (self.drain_at.is_some_and(|at| at <= now) || idle()) { Due::Drain } else { Due::Nothing }
    }

    /// When the connection will have been idle for the timeout; `None` while
    /// a request is in flight.
    fn idle_at(&self, activity: &Activity) -> Option<Instant> {
        activity.idle_since().and_then(|since| since.checked_add(self.idle_timeout))
    }

    /// When to look again: the close, and (not draining) the drain and the
    /// idle deadline (while a request is in flight, a timeout from now).
    fn next(&self, activity: &Activity, draining: bool, now: Instant) -> Instant {
        let idle = (!draining).then(|| self.idle_at(activity).or_else(|| now.checked_add(self.idle_timeout))).flatten();
        let drain = self.drain_at.filter(|_| !draining);
        // Nothing timed: a day from now, then look again.
        let far = now.checked_add(Duration::from_secs(86_400)).unwrap_or(now);
        [self.close_at, drain, idle].into_iter().flatten().min().unwrap_or(far)
    }
}

/// What a proxy listener (inbound, outbound) does with each connection.
pub trait Serve: Send + Sync + 'static {
    fn connection(
        self: Arc<Self>,
        tcp: tokio::net::TcpStream,
        remote: SocketAddr,
        slot: Slot,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// Accepts until `shutdown`, then drains connections for at most `drain`.
pub async fn serve<S: Serve>(server: Arc<S>, listener: Listener, shutdown: watch::Receiver<bool>, drain: Duration) {
    accept_loop(listener, shutdown, drain, |tcp, remote, slot, shutdown| {
        server.clone().connection(tcp, remote, slot, shutdown)
    })
    .await;
}

/// Accepts on `listener` until `shutdown`, running `serve` for each
/// connection (with its slot under the listener's cap, which the connection
/// keeps until its socket is closed: see [`Lingering`]); then waits up to
/// `drain` for open connections to finish.
pub async fn accept_loop<F, Fut>(listener: Listener, shutdown: watch::Receiver<bool>, drain: Duration, serve: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr, Slot, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = tokio_util::task::TaskTracker::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            (tcp, remote, slot) = listener.accept() => {
                tracker.spawn(serve(tcp, remote, slot, shutdown.clone()));
            }
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(connections = tracker.len(), "drain timeout: closing the remaining connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_timer_finds_the_next_timed_end_and_what_is_due() {
        let activity = Activity::new();
        let start = Instant::now();
        let idle_since = activity.idle_since().unwrap();
        let secs = Duration::from_secs;
        let ends =
            TimedEnds { drain_at: Some(start + secs(50)), close_at: Some(start + secs(60)), idle_timeout: secs(10) };
        // Idle from the start: the idle deadline comes first.
        assert_eq!(ends.next(&activity, false, start), idle_since + secs(10));
        assert_eq!(ends.due(&activity, false, start), Due::Nothing);
        assert_eq!(ends.due(&activity, false, idle_since + secs(10)), Due::Drain, "idle");
        // Draining: only the close is left.
        assert_eq!(ends.next(&activity, true, start), start + secs(60));
        assert_eq!(
            ends.due(&activity, true, idle_since + secs(55)),
            Due::Nothing,
            "idle and past the drain, but draining"
        );
        assert_eq!(ends.due(&activity, true, start + secs(60)), Due::Close);
        assert_eq!(ends.due(&activity, false, start + secs(60)), Due::Close);
        // A request in flight is never idle; the timer looks again a timeout later.
        let in_flight = activity.begin();
        let later = start + secs(30);
        assert_eq!(ends.due(&activity, false, later), Due::Nothing);
        assert_eq!(ends.next(&activity, false, later), later + secs(10));
        assert_eq!(ends.due(&activity, false, start + secs(50)), Due::Drain, "the drain comes anyway");
        drop(in_flight);
        // Nothing timed at all: look again a day later, and nothing is due.
        let none = TimedEnds { drain_at: None, close_at: None, idle_timeout: secs(10) };
        assert_eq!(none.next(&activity, true, start), start + secs(86_400));
        assert_eq!(none.due(&activity, true, start + secs(86_400)), Due::Nothing);
    }
}
