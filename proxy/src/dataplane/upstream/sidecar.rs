//! mTLS connections to peer sidecars: TCP, then TLS with the current SVID,
//! the target verified by its SPIFFE ID. HTTP/2 when the peer offers it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use certs::{IdPattern, IdentityWatch};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use policy::Reason;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why a connection to a peer sidecar could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no svid yet")]
    NotReady,
    #[error("target has no host")]
    NoHost,
    #[error("connect: {0}")]
    Tcp(std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("tls: {0}")]
    Tls(std::io::Error),
}

impl ConnectError {
    pub fn reason(&self) -> Reason {
        match self {
            Self::NotReady => Reason::NotReady,
            Self::Tls(e) => match certs::tls::rejection_of(e) {
                // Our verifier refused the target's certificate.
                Some(_) => Reason::UpstreamIdentityMismatch,
                None => Reason::UpstreamUnavailable,
            },
            Self::NoHost | Self::Tcp(_) | Self::Timeout => Reason::UpstreamUnavailable,
        }
    }
}

/// Remembers when a peer last refused our certificate on this route.
///
/// Under TLS 1.3 the server judges the client certificate after the client
/// has finished its handshake, so the refusal (a TLS alert) only shows up at
/// the first read, inside hyper's connection task, and the pool reports a
/// bare "connection was not ready". The stream records the alert here so the
/// failure can still be reported as `upstream_rejected_identity`.
#[derive(Debug, Clone, Default)]
pub struct RefusalMemo(Arc<Mutex<Option<Instant>>>);

impl RefusalMemo {
    /// How long a recorded refusal explains an opaque failure.
    const WINDOW: Duration = Duration::from_secs(10);

    fn record(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    pub fn recently_refused(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|at| at.elapsed() < Self::WINDOW)
    }

    fn observe<T>(&self, result: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &result
            && crate::dataplane::upstream::peer_refused_certificate(e)
        {
            self.record();
        }
        result
    }
}

/// A `hyper-util` connector for one route: its own expected server ID.
#[derive(Clone)]
pub struct SidecarConnector {
    tls: TlsConnector,
    identity: IdentityWatch,
    connect_timeout: Duration,
    refusals: RefusalMemo,
}

impl SidecarConnector {
    /// `http1_only` for upgrades, which travel over HTTP/1.1 between sidecars.
    pub fn new(
        identity: IdentityWatch,
        server_id: IdPattern,
        connect_timeout: Duration,
        http1_only: bool,
    ) -> Result<Self, rustls::Error> {
        let mut config = certs::tls::client_config(identity.clone(), server_id)?;
        config.alpn_protocols =
            if http1_only { vec![b"http/1.1".to_vec()] } else { vec![b"h2".to_vec(), b"http/1.1".to_vec()] };
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            identity,
            connect_timeout,
            refusals: RefusalMemo::default(),
        })
    }

    /// Shares `memo` with the route's other pool.
    pub fn with_refusals(mut self, memo: RefusalMemo) -> Self {
        self.refusals = memo;
        self
    }

    async fn connect(self, uri: Uri) -> Result<SidecarStream, ConnectError> {
        if self.identity.current().is_none() {
            return Err(ConnectError::NotReady);
        }
        let host = uri.host().ok_or(ConnectError::NoHost)?.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        // The name only feeds SNI: the verifier checks the SPIFFE ID, not a DNS name.
        let name = ServerName::try_from(host)
            .unwrap_or_else(|_| ServerName::from(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)));
        let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Tls)?;
        Ok(SidecarStream { io: TokioIo::new(tls), refusals: self.refusals.clone() })
    }
}

impl tower_service::Service<Uri> for SidecarConnector {
    type Response = SidecarStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<SidecarStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A TLS connection to a peer sidecar, telling hyper whether ALPN chose h2.
pub struct SidecarStream {
    io: TokioIo<TlsStream<TcpStream>>,
    refusals: RefusalMemo,
}

impl Connection for SidecarStream {
    fn connected(&self) -> Connected {
        let h2 = self.io.inner().get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 { Connected::new().negotiated_h2() } else { Connected::new() }
    }
}

impl hyper::rt::Read for SidecarStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.refusals.observe(Pin::new(&mut this.io).poll_read(cx, buf))
    }
}

impl hyper::rt::Write for SidecarStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.refusals.observe(Pin::new(&mut this.io).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.refusals.observe(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))
    }
}
