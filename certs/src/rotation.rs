//! The live identity, published on a `watch` channel.
//!
//! A source publishes each new SVID; readers (the TLS resolver and verifiers,
//! health) see the latest one with no lock held across a handshake. A failed
//! renewal leaves the still-valid SVID in place; only expiry without a
//! replacement makes the identity `Unavailable`.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::svid::Identity;

/// Where the identity stands (ztunnel's certificate state machine).
#[derive(Debug, Clone)]
pub enum IdentityState {
    /// No SVID has been received yet: every handshake fails closed.
    Initializing,
    /// The current identity.
    Available(Arc<Identity>),
    /// The last SVID expired and no replacement arrived.
    Unavailable(Arc<str>),
}

/// How the SVID source is doing, for health and `/mgmt/health`.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// The source is connected (Workload API stream open) or its files are readable.
    pub connected: bool,
    /// The most recent error, kept until the next successful update.
    pub last_error: Option<String>,
    pub last_update: Option<SystemTime>,
    /// SVIDs accepted after the first one.
    pub rotations: u64,
    /// Federated bundles of the last update that were skipped (empty or
    /// unparsable); the SVID and the other bundles were used.
    pub rejected_bundles: Vec<RejectedBundle>,
}

/// A federated bundle that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedBundle {
    /// As the source named it (e.g. `spiffe://gcp.example`).
    pub trust_domain: String,
    pub error: String,
}

/// The writing side, handed to a source.
#[derive(Debug)]
pub struct IdentityPublisher {
    state: watch::Sender<IdentityState>,
    status: watch::Sender<SourceStatus>,
}

/// The reading side: cheap to clone, one per consumer.
#[derive(Debug, Clone)]
pub struct IdentityWatch {
    state: watch::Receiver<IdentityState>,
    status: watch::Receiver<SourceStatus>,
}

impl IdentityState {
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        match self {
            Self::Available(id) => Some(id),
            _ => None,
        }
    }
}

/// A publisher and the first watch on it.
pub fn channel() -> (IdentityPublisher, IdentityWatch) {
    let (state_tx, state_rx) = watch::channel(IdentityState::Initializing);
    let (status_tx, status_rx) = watch::channel(SourceStatus::default());
    let publisher = IdentityPublisher { state: state_tx, status: status_tx };
    (publisher, IdentityWatch { state: state_rx, status: status_rx })
}

impl IdentityPublisher {
    /// Makes `identity` current.
    pub fn publish(&self, identity: Identity) {
        self.publish_with(identity, Vec::new());
    }

    /// Makes `identity` current; `rejected` federated bundles were left out of it.
    pub fn publish_with(&self, identity: Identity, rejected: Vec<RejectedBundle>) {
        let identity = Arc::new(identity);
        tracing::info!(
            spiffe_id = %identity.svid().id(),
            serial = identity.svid().serial(),
            not_after = ?identity.svid().not_after(),
            trust_domains = identity.bundles().len(),
            "svid updated"
        );
        let was_available = self.state.borrow().identity().is_some();
        // Status first: whoever wakes on the new state reads the matching status.
        self.status.send_modify(|s| {
            s.connected = true;
            s.last_error = None;
            s.last_update = Some(SystemTime::now());
            if was_available {
                s.rotations += 1;
            }
            s.rejected_bundles = rejected;
        });
        self.state.send_replace(IdentityState::Available(identity));
    }

    /// Records a failure; the current SVID, if any, stays in service.
    pub fn failed(&self, error: &dyn std::error::Error, connected: bool) {
        tracing::warn!(error = %error, connected, "svid source error; keeping the current svid");
        self.status.send_modify(|s| {
            s.connected = connected;
            s.last_error = Some(error.to_string());
        });
    }

    pub fn set_connected(&self, connected: bool) {
        self.status.send_if_modified(|s| std::mem::replace(&mut s.connected, connected) != connected);
    }

    pub fn watch(&self) -> IdentityWatch {
        IdentityWatch { state: self.state.subscribe(), status: self.status.subscribe() }
    }

    /// Marks the identity unavailable whenever the current SVID expires
    /// without a replacement. Runs until the publisher is dropped.
    pub async fn expire_stale(state: watch::Sender<IdentityState>) {
        let mut rx = state.subscribe();
        loop {
            let deadline = rx.borrow_and_update().identity().map(|id| id.svid().not_after());
            let sleep = async {
                match deadline.and_then(|d| d.duration_since(SystemTime::now()).ok()) {
                    Some(left) => tokio::time::sleep(left).await,
                    None if deadline.is_some() => {}
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = sleep => {
                    tracing::error!("svid expired and no replacement arrived; refusing handshakes");
                    state.send_replace(IdentityState::Unavailable("svid expired".into()));
                }
            }
        }
    }

    /// A handle for [`Self::expire_stale`].
    pub fn state_sender(&self) -> watch::Sender<IdentityState> {
        self.state.clone()
    }
}

impl IdentityWatch {
    /// A watch that always holds `identity` (one connection pool's SVID).
    pub fn fixed(identity: Arc<Identity>) -> Self {
        let (publisher, watch) = channel();
        publisher.state.send_replace(IdentityState::Available(identity));
        watch
    }

    /// The current identity, if one is available.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.state.borrow().identity().cloned()
    }

    pub fn state(&self) -> IdentityState {
        self.state.borrow().clone()
    }

    pub fn status(&self) -> SourceStatus {
        self.status.borrow().clone()
    }

    /// Ready = an SVID is loaded and unexpired.
    pub fn is_ready(&self) -> bool {
        self.current().is_some_and(|id| !id.svid().leaf().is_expired_at(SystemTime::now()))
    }

    /// Waits until an identity is available (or the publisher is gone).
    pub async fn wait_ready(&mut self) -> Option<Arc<Identity>> {
        let state = self.state.wait_for(|s| s.identity().is_some()).await.ok()?;
        state.identity().cloned()
    }

    /// Waits for the next state change.
    pub async fn changed(&mut self) -> bool {
        self.state.changed().await.is_ok()
    }
}
