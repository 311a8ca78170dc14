//! Judging what is already open again, whenever something a decision
//! depends on changes: the allow-list, our bundles (a federated bundle
//! removed, a CA rotated out), the policy or its mode, the `jwt` settings,
//! an operator's risk or tag push, a risk level from Graph. Every open
//! connection gets Layer 1 again (allow-list, chain, expiry); every
//! long-lived stream (an upgraded tunnel, a streaming response) gets layers
//! 2-4 as well, with the request that opened it. What is no longer allowed
//! is closed: a connection dropped, a stream reset. (A caller's certificate
//! expiry closes both in any case, see `Connections::stream` and `drive`.)

use std::sync::Arc;

use certs::{BundleSet, IdentityWatch};
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use policy::Reason;

use super::Inbound;
use crate::config::PolicyMode;
use crate::dataplane::connections::Open;
use crate::layers::pipeline::{self, RequestFacts};
use crate::observe::audit::{Decision, Direction, Event};

impl Inbound {
    /// Re-checks open connections and streams after every change, until
    /// the signals end: Layer 1 at once for everything (local state only),
    /// layers 2-4 for the streams in a task of their own (a Graph look-up may
    /// take seconds; changes that come meanwhile are folded into one more
    /// pass), so a slow pass never delays an allow-list or bundle change.
    pub async fn enforce(self: Arc<Self>) {
        let mut changes = self.changes.subscribe();
        let mut allowlist = self.allowlist.subscribe();
        let mut identity = self.identity.clone();
        let mut bundles = current_bundles(&identity);
        let wake = Arc::new(tokio::sync::Notify::new());
        let streams = AbortOnDrop(tokio::spawn(self.clone().judge_streams_forever(wake.clone())));
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                changed = allowlist.changed() => if changed.is_err() { break },
                alive = identity.changed() => {
                    if !alive {
                        break;
                    }
                    // A rotation of our own SVID changes nothing for callers; new bundles do.
                    let now = current_bundles(&identity);
                    let same = match (&bundles, &now) {
                        (Some(old), Some(new)) => old.same_authorities(new),
                        (old, new) => old.is_none() == new.is_none(),
                    };
                    bundles = now;
                    if same {
                        continue;
                    }
                }
            }
            self.layer1_pass();
            wake.notify_one();
        }
        drop(streams);
    }

    /// Judges everything open once, now (tests; `enforce` splits the work).
    pub async fn recheck(self: &Arc<Self>) {
        self.layer1_pass();
        self.layers_pass().await;
    }

    /// Layer 1 for everything open: cancels what is no longer allowed.
    fn layer1_pass(&self) {
        let identity = self.identity.current();
        for open in self.connections.snapshot() {
            if let Err(reason) = self.layer1_again(&open, identity.as_deref()) {
                self.close(&open, reason);
            }
        }
    }

    async fn judge_streams_forever(self: Arc<Self>, wake: Arc<tokio::sync::Notify>) {
        loop {
            wake.notified().await;
            self.layers_pass().await;
        }
    }

    /// Layers 2-4 for every open stream, a few at a time.
    async fn layers_pass(self: &Arc<Self>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(RECHECKS_AT_ONCE));
        let mut judged = tokio::task::JoinSet::new();
        for open in self.connections.snapshot().into_iter().filter(|o| o.request.is_some()) {
            let Ok(permit) = limit.clone().acquire_owned().await else { break };
            let this = self.clone();
            judged.spawn(async move {
                if let Err(reason) = this.layers_again(&open).await {
                    this.close(&open, reason);
                }
                drop(permit);
            });
        }
        while judged.join_next().await.is_some() {}
    }

    /// Cancels `open`; a stream's cut is an audit event.
    fn close(&self, open: &Open, reason: Reason) {
        let what = if open.request.is_some() { "stream" } else { "connection" };
        tracing::info!(caller = %open.peer.id, %reason, "{what} closed: no longer allowed");
        if let Some(request) = &open.request {
            self.layers.audit.record(Event {
                direction: Direction::Inbound,
                request_id: Some(request.request_id.clone()),
                caller_spiffe_id: Some(Arc::from(open.peer.id.as_str())),
                target: Some(self.target.clone()),
                method: Some(request.method.clone()),
                path: Some(request.path.as_str().to_owned()),
                decision: Decision::Deny,
                layer: reason.layer(),
                reason: reason.into(),
                actor: Some("stream re-check".into()),
                ..Event::default()
            });
        }
        open.closed.cancel();
    }

    /// Layer 1: the allow-list, and the chain against our bundles now.
    fn layer1_again(&self, open: &Open, identity: Option<&certs::Identity>) -> Result<(), Reason> {
        if !self.allowlist.allows(&open.peer.id) {
            return Err(Reason::NotAllowed);
        }
        // Without an identity of our own nothing can be verified; the
        // connection's expiry still closes it.
        match identity {
            Some(identity) => certs::tls::verify_peer_chain(identity, &open.peer.chain).map_err(Reason::from),
            None => Ok(()),
        }
    }

    /// Layers 2-4 for a stream, with the request that opened it.
    async fn layers_again(&self, open: &Open) -> Result<(), Reason> {
        let Some(request) = &open.request else { return Ok(()) };
        let mut headers = HeaderMap::new();
        if let Some(authorization) = &request.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        let loaded = self.layers.policy.current();
        let oauth = self.layers.oauth.load_full();
        let leaf_sha256 = open.peer.chain.first().map(|leaf| crate::layers::oauth::thumbprint_s256(leaf));
        let facts = RequestFacts {
            caller: &open.peer.id,
            method: request.method.as_str(),
            path: &request.path,
            headers: &headers,
            leaf_sha256: Some(leaf_sha256.as_deref().unwrap_or_default()),
            asserted: None,
            request_id: Some(&request.request_id),
        };
        let mut trace = pipeline::Trace::default();
        // The external PDP was asked when the stream opened; re-checks judge Layers 2-4 only.
        let verdict =
            pipeline::evaluate(&loaded, oauth.as_deref(), &self.layers.governor, None, facts, None, &mut trace).await;
        match (verdict, loaded.mode) {
            (Ok(()), _) => Ok(()),
            (Err(denial), PolicyMode::Shadow) => {
                tracing::info!(caller = %open.peer.id, reason = %denial.reason, "shadow_deny: stream left open");
                Ok(())
            }
            (Err(denial), PolicyMode::Enforce) => Err(denial.reason),
        }
    }
}

/// Streams judged again at once (each may wait on Graph).
const RECHECKS_AT_ONCE: usize = 16;

/// Aborts the task when dropped (the stream judge lives as long as `enforce`).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn current_bundles(identity: &IdentityWatch) -> Option<BundleSet> {
    identity.current().map(|i| i.bundles().clone())
}
