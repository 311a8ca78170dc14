//! Accepting connections: at most `max_connections` open at once per
//! listener (more wait in the kernel's backlog until one closes, as with
//! HAProxy's `maxconn`), and a back-off when `accept` itself fails: out of
//! file descriptors (`EMFILE`), retrying at once would spin a core while
//! nothing can be accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The first pause after a failed `accept`; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A bound TCP listener with a connection cap.
pub struct Listener {
    inner: TcpListener,
    /// The config field it was bound from, for logs.
    field: &'static str,
    slots: Arc<Semaphore>,
    open: Option<IntGauge>,
}

/// An accepted connection's place under the cap; freed when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Option<IntGauge>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

impl Listener {
    /// Binds `addr`, naming the config field on failure. `open` counts the
    /// connections this listener holds (`a2a_open_connections`).
    pub async fn bind(
        field: &'static str,
        addr: SocketAddr,
        max_connections: usize,
        open: Option<IntGauge>,
    ) -> Result<Self, std::io::Error> {
        let inner = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on `{field}` {addr}: {e}")))?;
        Ok(Self::new(inner, field, max_connections, open))
    }

    /// A listener bound elsewhere (the dev emulators).
    pub fn new(inner: TcpListener, field: &'static str, max_connections: usize, open: Option<IntGauge>) -> Self {
        let slots = Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)));
        Self { inner, field, slots, open }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next connection, once a slot is free. Cancel-safe.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, Slot) {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::warn!(listener = self.field, "connection limit reached; new connections wait");
                // Invariant: the semaphore is never closed, so this only waits.
                let Ok(permit) = self.slots.clone().acquire_owned().await else { return std::future::pending().await };
                permit
            }
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.inner.accept().await {
                Ok((tcp, remote)) => {
                    if backoff > MIN_BACKOFF {
                        tracing::info!(listener = self.field, "accepting again");
                    }
                    let _ = tcp.set_nodelay(true);
                    if let Some(open) = &self.open {
                        open.inc();
                    }
                    return (tcp, remote, Slot { _permit: permit, open: self.open.clone() });
                }
                // One connection's failure: the next may be fine.
                Err(e) if is_per_connection(&e) => tracing::debug!(listener = self.field, error = %e, "accept failed"),
                Err(e) => {
                    if backoff == MIN_BACKOFF {
                        tracing::warn!(listener = self.field, error = %e, "accept failed; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

/// Where a peer counts as one source (for limits and aggregation): all of
/// loopback as one (a local process can bind any 127/8 address), an
/// IPv4-mapped address as its IPv4 address, an IPv6 /64 (one host holds a
/// whole /64), or an IPv4 address.
pub fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    match ip {
        _ if ip.is_loopback() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` held. The
/// global budget behind per-source limits, so that cycling source
/// addresses does not get past them.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, state: std::sync::Mutex::new((burst, std::time::Instant::now())) }
    }

    /// Takes a token, if one is left.
    pub fn take(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = &mut *state;
        let now = std::time::Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let key = |s: &str| source_of(s.parse().unwrap());
        assert_eq!(key("127.0.0.1"), key("127.45.6.7"), "all of loopback is one source");
        assert_eq!(key("::1"), key("127.0.0.1"));
        assert_eq!(key("::ffff:127.9.9.9"), key("127.0.0.1"));
        assert_eq!(key("::ffff:10.1.2.3"), key("10.1.2.3"), "IPv4-mapped is its IPv4 address");
        assert_ne!(key("::ffff:10.1.2.3"), key("::ffff:10.1.2.4"));
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"), "one /64");
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn a_bucket_gives_its_burst_then_refuses() {
        let bucket = TokenBucket::new(0.0, 3.0);
        assert_eq!((0..5).map(|_| bucket.take()).collect::<Vec<_>>(), [true, true, true, false, false]);
    }
}
