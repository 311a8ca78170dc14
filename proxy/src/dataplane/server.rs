//! Serving HTTP: a plain HTTP/1.1 accept loop for the local listeners
//! (telemetry, mgmt), and the connection driver the proxy listeners share.
//! Every listener caps its open connections and backs off when `accept`
//! fails ([`Listener`]); served connections close lingering ([`Lingering`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::UpgradeableConnection;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod linger;
mod listener;

pub use linger::{Lingering, linger};
pub use listener::{Listener, Slot, TokenBucket, source_of};

/// Reads a full request head within this time (slowloris guard).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `handler` on `listener` until `shutdown` turns true, then drains.
pub async fn serve_http1<H, F>(listener: Listener, handler: H, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, std::convert::Infallible>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            (tcp, peer, slot) = listener.accept() => {
                let service = service_fn(handler.clone());
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(Lingering::new(tcp, Some(slot))), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
}

/// An HTTP/1.1 + HTTP/2 connection builder with the listener's limits.
pub fn builder(limits: &crate::config::HttpLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
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
    pub activity: Arc<crate::dataplane::body::Activity>,
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
    S: Service<Request<Incoming>, Response = Response<crate::dataplane::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let ConnectionEnds { activity, idle_timeout, mut shutdown, closed, drain_after, close_after } = ends;
    let closed = closed.unwrap_or_default();
    let after = |after: Option<Duration>| async move {
        match after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    let (expiry, deadline) = (after(drain_after), after(close_after));
    tokio::pin!(connection, expiry, deadline);
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
            () = &mut deadline => return,
            () = activity.idle_for(idle_timeout), if !draining => {}
            () = &mut expiry, if !draining => {}
            _ = shutdown.wait_for(|stop| *stop), if !draining => {}
        }
        connection.as_mut().graceful_shutdown();
        draining = true;
    }
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
