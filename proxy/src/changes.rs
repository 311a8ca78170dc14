//! "Something a decision depends on changed": the policy or its mode, the
//! `jwt` settings, an operator's risk or tag push, the risk and tag
//! settings, a risk level Graph reports. Open streams are judged again on
//! each (see `Inbound::enforce`); the allow-list has a signal of its own.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Changes(Arc<watch::Sender<u64>>);

impl Default for Changes {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl Changes {
    pub fn bump(&self) {
        self.0.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
