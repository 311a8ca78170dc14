//! SVIDs from an in-process dev CA, renewed at half-life.

use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, SvidSource};
use crate::dev::{DevCa, DevError};
use crate::rotation::IdentityPublisher;
use crate::spiffe_id::SpiffeId;
use crate::svid::Identity;

#[derive(Debug, Clone)]
pub struct DevSource {
    ca: Arc<DevCa>,
    id: SpiffeId,
    ttl: Duration,
    federated: Vec<Arc<DevCa>>,
}

impl DevSource {
    pub fn new(ca: Arc<DevCa>, id: SpiffeId, ttl: Duration) -> Self {
        Self { ca, id, ttl, federated: Vec::new() }
    }

    /// Also trusts peers of these domains.
    pub fn federate_with(mut self, cas: Vec<Arc<DevCa>>) -> Self {
        self.federated = cas;
        self
    }

    fn issue(&self) -> Result<Identity, DevError> {
        let federated: Vec<&DevCa> = self.federated.iter().map(Arc::as_ref).collect();
        self.ca.identity(&self.id, self.ttl, &federated)
    }
}

impl SvidSource for DevSource {
    fn describe(&self) -> String {
        format!("dev ca {} for {}", self.ca.trust_domain(), self.id)
    }

    fn run(self: Box<Self>, publisher: IdentityPublisher) -> BoxFuture {
        Box::pin(async move {
            let half_life = (self.ttl / 2).max(Duration::from_millis(100));
            loop {
                match self.issue() {
                    Ok(identity) => publisher.publish(identity),
                    Err(e) => publisher.failed(&e, true),
                }
                tokio::time::sleep(half_life).await;
            }
        })
    }
}
