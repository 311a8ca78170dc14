//! SVIDs streamed from a SPIFFE Workload API (a SPIRE agent), via the `spiffe` crate.

use futures_util::StreamExt;
use spiffe::{WorkloadApiClient, X509Context};

use super::{Backoff, BoxFuture, SvidSource};
use crate::rotation::IdentityPublisher;
use crate::spiffe_id::TrustDomain;
use crate::svid::{Bundle, BundleSet, Identity, MaterialError, Svid};

/// Why one Workload API session ended.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("workload api: {0}")]
    Api(#[from] spiffe::WorkloadApiError),
    #[error("workload api stream ended")]
    StreamEnded,
    #[error("workload api sent no svid")]
    NoSvid,
    #[error("workload api sent a bundle for an invalid trust domain `{0}`")]
    BadTrustDomain(String),
    #[error(transparent)]
    Material(#[from] MaterialError),
}

/// Follows `FetchX509SVID`, reconnecting with backoff when the stream breaks.
#[derive(Debug, Clone)]
pub struct WorkloadApiSource {
    /// `unix:///path` or `tcp://ip:port`; `None` reads `SPIFFE_ENDPOINT_SOCKET`.
    endpoint: Option<String>,
    backoff: Backoff,
}

impl WorkloadApiSource {
    pub fn new(endpoint: Option<String>) -> Self {
        Self { endpoint, backoff: Backoff::default() }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    async fn session(&self, publisher: &IdentityPublisher, backoff: &mut Backoff) -> Result<(), WorkloadApiError> {
        let client = match &self.endpoint {
            Some(endpoint) => WorkloadApiClient::connect_to(endpoint).await?,
            None => WorkloadApiClient::connect_env().await?,
        };
        let mut stream = client.stream_x509_contexts().await?;
        publisher.set_connected(true);
        while let Some(update) = stream.next().await {
            backoff.reset();
            match update.map_err(WorkloadApiError::from).and_then(|ctx| identity_from_context(&ctx)) {
                Ok(identity) => publisher.publish(identity),
                // A bad update is skipped: the current SVID stays until a good one arrives.
                Err(e) => publisher.failed(&e, true),
            }
        }
        Err(WorkloadApiError::StreamEnded)
    }
}

impl SvidSource for WorkloadApiSource {
    fn describe(&self) -> String {
        format!("workload_api {}", self.endpoint.as_deref().unwrap_or("$SPIFFE_ENDPOINT_SOCKET"))
    }

    fn run(self: Box<Self>, publisher: IdentityPublisher) -> BoxFuture {
        Box::pin(async move {
            let mut backoff = self.backoff.clone();
            loop {
                if let Err(e) = self.session(&publisher, &mut backoff).await {
                    publisher.failed(&e, false);
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        })
    }
}

/// Converts the `spiffe` crate's context into our identity (default SVID).
pub fn identity_from_context(ctx: &X509Context) -> Result<Identity, WorkloadApiError> {
    let svid = ctx.default_svid().ok_or(WorkloadApiError::NoSvid)?;
    let chain = svid.cert_chain().iter().map(|c| c.as_bytes().to_vec()).collect();
    let svid = Svid::from_der(chain, svid.private_key().as_bytes().to_vec())?;
    let mut bundles = BundleSet::default();
    for (td, bundle) in ctx.bundle_set().iter() {
        let td = TrustDomain::new(td.as_str()).map_err(|_| WorkloadApiError::BadTrustDomain(td.to_string()))?;
        let authorities = bundle.authorities().iter().map(|c| c.as_bytes().to_vec()).collect();
        bundles.insert(td.clone(), Bundle::from_der(&td, authorities)?);
    }
    Ok(Identity::new(svid, bundles)?)
}
