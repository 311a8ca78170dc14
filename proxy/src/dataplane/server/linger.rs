//! Closing a connection without resetting it (nginx's lingering close).
//!
//! Closing a socket that still holds unread data makes the kernel send a
//! reset: a caller still writing an oversized head (or a body the sidecar
//! refused) sees "connection reset" instead of the 431 or deny that was
//! already sent. So a served connection, when dropped, first shuts down its
//! write side and then reads and discards for a bounded time.
//!
//! The connection's [`Slot`] under its listener's cap travels with the
//! socket: through an upgrade into the tunnel, and through the linger, so
//! neither holds a descriptor outside the cap.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Slot;

/// At most this long is spent discarding after the close.
const LINGER: Duration = Duration::from_secs(2);
/// Discarding stops once the peer has sent nothing for this long.
const LINGER_IDLE: Duration = Duration::from_millis(500);

/// An I/O stream that lingers when dropped (see the module docs).
pub struct Lingering<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// `None` only once dropped.
    io: Option<S>,
    slot: Option<Slot>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<S> {
    /// `slot`: the connection's place under its listener's cap, held until
    /// the socket is closed.
    pub fn new(io: S, slot: Option<Slot>) -> Self {
        Self { io: Some(io), slot }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        if let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current()) {
            let slot = self.slot.take();
            runtime.spawn(async move {
                linger(io).await;
                drop(slot);
            });
        }
    }
}

/// Shuts down the write side, then discards what still arrives until the
/// peer closes, goes quiet for [`LINGER_IDLE`], or [`LINGER`] has passed.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let discard = async {
        // Already shut down (hyper closes a connection it is done with): read anyway.
        let _ = io.shutdown().await;
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(LINGER_IDLE, io.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}

fn gone() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}
