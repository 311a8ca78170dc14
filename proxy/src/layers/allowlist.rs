//! The live Layer 1 allow-list: read at every handshake and every request,
//! replaced whole by a reload (SIGHUP) or, later, the admin API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

    /// [`Self::allows`] for a connection's caller on each of its requests:
    /// `memo` remembers the list that last allowed it, and while that list
    /// is in force the patterns are not matched again.
    pub fn still_allows(&self, id: &SpiffeId, memo: &Memo) -> bool {
        // Read before the patterns: a result is remembered for a list at
        // least as new as the generation it is filed under.
        let Some(generation) = self.generation().checked_add(1) else {
            return self.allows(id);
        };
        if memo.0.load(Ordering::Relaxed) == generation {
            return true;
        }
        let allowed = self.allows(id);
        memo.0.store(if allowed { generation } else { 0 }, Ordering::Relaxed);
        allowed
    }

    pub fn patterns(&self) -> Arc<Vec<IdPattern>> {
        self.patterns.load_full()
    }

    pub fn replace(&self, patterns: Vec<IdPattern>) {
        // Under the generation's lock: no reader sees the new list under
        // the old generation (see `still_allows`), and replacements apply in order.
        self.generation.send_modify(|g| {
            self.patterns.store(Arc::new(patterns));
            *g += 1;
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// How many replacements there have been.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }
}

/// One connection's [`AllowList::still_allows`] memo: the generation (plus
/// one) of the list that last allowed its caller, 0 for none.
#[derive(Debug, Default)]
pub struct Memo(AtomicU64);

impl PeerAuthorizer for AllowList {
    fn authorize(&self, peer: &SpiffeId) -> bool {
        self.allows(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_allow_lasts_only_while_its_list_is_in_force() {
        let pattern = |p: &str| p.parse::<IdPattern>().unwrap();
        let id: SpiffeId = "spiffe://a.example/caller".parse().unwrap();
        let list = AllowList::new(vec![pattern("spiffe://a.example/caller")]);
        let memo = Memo::default();
        assert!(list.still_allows(&id, &memo));
        assert!(list.still_allows(&id, &memo), "remembered");
        list.replace(vec![pattern("spiffe://a.example/other")]);
        assert!(!list.still_allows(&id, &memo), "a new list is matched again");
        assert!(!list.still_allows(&id, &memo), "a refusal is never remembered as an allow");
        list.replace(vec![pattern("spiffe://a.example/*")]);
        assert!(list.still_allows(&id, &memo));
        let other: SpiffeId = "spiffe://b.example/caller".parse().unwrap();
        assert!(!list.still_allows(&other, &Memo::default()));
    }
}
