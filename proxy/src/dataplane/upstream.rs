//! Upstream clients: pooled plain HTTP to the local app (inbound, `app`) and
//! pooled mTLS to peer sidecars (outbound, `sidecar`), plus error
//! classification, response-head timeouts and upgrade tunnels.

use std::error::Error as StdError;
use std::time::Duration;

use hyper::Response;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use policy::Reason;
use tokio_util::sync::CancellationToken;

pub mod app;
pub mod sidecar;

pub use app::{AppBody, AppClient};

/// Idle pooled connections are closed after this long.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// Waits for a response head at most `timeout`. `refusals` explains opaque
/// failures on a route whose peer recently refused our certificate.
pub async fn with_timeout<F>(
    timeout: Duration,
    send: F,
    refusals: Option<&sidecar::RefusalMemo>,
) -> Result<Response<Incoming>, Reason>
where
    F: Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>>,
{
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            let reason = match classify(&e) {
                Reason::UpstreamError if refusals.is_some_and(sidecar::RefusalMemo::recently_refused) => {
                    Reason::UpstreamRejectedIdentity
                }
                reason => reason,
            };
            tracing::debug!(error = %DisplayChain(&e), %reason, "upstream request failed");
            Err(reason)
        }
        Err(_) => Err(Reason::UpstreamTimeout),
    }
}

/// Maps a client error to an outcome reason by walking its source chain.
pub fn classify(err: &hyper_util::client::legacy::Error) -> Reason {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<sidecar::ConnectError>() {
            return connect.reason();
        }
        if peer_refused_certificate(e) {
            return Reason::UpstreamRejectedIdentity;
        }
        source = e.source();
    }
    if err.is_connect() { Reason::UpstreamUnavailable } else { Reason::UpstreamError }
}

/// True when `e` (or the rustls error inside an `io::Error`) is an alert a
/// peer sends when it refuses our certificate.
pub(crate) fn peer_refused_certificate(e: &(dyn StdError + 'static)) -> bool {
    use rustls::AlertDescription as A;
    let tls = e
        .downcast_ref::<rustls::Error>()
        .or_else(|| e.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::AlertReceived(alert)) = tls else { return false };
    matches!(
        *alert,
        A::BadCertificate
            | A::CertificateRequired
            | A::AccessDenied
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::UnsupportedCertificate
    )
}

/// What, besides either side closing, ends a tunnel.
#[derive(Debug, Clone)]
pub struct TunnelEnds {
    /// Cancelled when the caller may no longer be served.
    pub closed: CancellationToken,
    /// The caller's certificate (or token) expires then.
    pub deadline: Option<tokio::time::Instant>,
    /// No byte either way for this long (nginx closes idle WebSockets the same way).
    pub idle_timeout: Duration,
}

/// Copies bytes both ways between two upgraded connections until either
/// side closes or one of `ends` comes.
pub async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade, ends: TunnelEnds) {
    let (down, up) = match tokio::join!(downstream, upstream) {
        (Ok(down), Ok(up)) => (down, up),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let activity = crate::dataplane::body::Activity::new();
    let mut down = Touched { io: TokioIo::new(down), activity: activity.clone() };
    let mut up = Touched { io: TokioIo::new(up), activity: activity.clone() };
    let deadline = async {
        match ends.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "upgraded stream ended with an error");
            }
        }
        () = ends.closed.cancelled() => tracing::info!("upgraded stream closed: the caller may no longer be served"),
        () = deadline => tracing::info!("upgraded stream closed: the caller's certificate or token expired"),
        () = activity.idle_for(ends.idle_timeout) => tracing::debug!("upgraded stream closed: idle"),
    }
}

/// An upgraded stream whose reads and writes count as activity.
struct Touched<T> {
    io: T,
    activity: std::sync::Arc<crate::dataplane::body::Activity>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Touched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Touched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(result, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Formats an error with its sources, for logs.
pub struct DisplayChain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
