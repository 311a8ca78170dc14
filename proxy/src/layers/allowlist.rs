//! The live Layer 1 allow-list: read at every handshake and every request,
//! replaced whole by a reload (SIGHUP) or, later, the admin API.

use std::sync::Arc;

use arc_swap::ArcSwap;
use certs::tls::PeerAuthorizer;
use certs::{IdPattern, SpiffeId};
use tokio::sync::watch;

#[derive(Debug)]
pub struct AllowList {
    patterns: ArcSwap<Vec<IdPattern>>,
    /// Bumped on every replacement, so open connections can be re-checked.
    generation: watch::Sender<u64>,
}

impl AllowList {
    pub fn new(patterns: Vec<IdPattern>) -> Arc<Self> {
        Arc::new(Self { patterns: ArcSwap::from_pointee(patterns), generation: watch::Sender::new(0) })
    }

    pub fn allows(&self, id: &SpiffeId) -> bool {
        self.patterns.load().iter().any(|p| p.matches(id))
    }

    pub fn patterns(&self) -> Arc<Vec<IdPattern>> {
        self.patterns.load_full()
    }

    pub fn replace(&self, patterns: Vec<IdPattern>) {
        self.patterns.store(Arc::new(patterns));
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// How many replacements there have been.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }
}

impl PeerAuthorizer for AllowList {
    fn authorize(&self, peer: &SpiffeId) -> bool {
        self.allows(peer)
    }
}
