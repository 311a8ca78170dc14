//! SVIDs streamed from a SPIFFE Workload API (a SPIRE agent).
//!
//! The `FetchX509SVID` stream is read with our own gRPC client (the
//! connection is the `spiffe` crate's): its responses are converted here so
//! that one empty or unparsable *federated* bundle is skipped and reported
//! instead of failing the whole update, which would keep our SVID from
//! rotating until it expired. Only the SVID and its own domain's bundle are
//! required.

use spiffe::transport::Endpoint;

use super::{Backoff, BoxFuture, SvidSource};
use crate::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use crate::proto::{X509svidRequest, X509svidResponse};
use crate::rotation::{IdentityPublisher, RejectedBundle};
use crate::spiffe_id::TrustDomain;
use crate::svid::{Bundle, BundleSet, Identity, MaterialError, Svid};
use crate::x509;

/// Why one Workload API session ended or one update was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("workload api endpoint: {0}")]
    Endpoint(String),
    #[error("workload api: cannot connect: {0}")]
    Connect(String),
    #[error("workload api: {}", describe_status(.0))]
    Status(#[from] tonic::Status),
    #[error("workload api stream ended")]
    StreamEnded,
    #[error("workload api sent no svid")]
    NoSvid,
    #[error("workload api sent an svid chain that does not parse: {0}")]
    Chain(x509::SvidError),
    #[error(transparent)]
    Material(#[from] MaterialError),
}

/// A gRPC status as an operator reads it: the code, the agent's message and,
/// for the codes SPIRE answers when a workload has no identity, what to check.
fn describe_status(status: &tonic::Status) -> String {
    let hint = match status.code() {
        tonic::Code::PermissionDenied => {
            " (no registration entry matches this process: check `spire-server entry show` and its selectors)"
        }
        tonic::Code::Unimplemented => " (the socket does not serve the SPIFFE Workload API)",
        _ => "",
    };
    format!("{:?}: {}{hint}", status.code(), status.message())
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

    fn endpoint(&self) -> Result<Endpoint, WorkloadApiError> {
        let text = match &self.endpoint {
            Some(text) => text.clone(),
            None => std::env::var("SPIFFE_ENDPOINT_SOCKET")
                .map_err(|_| WorkloadApiError::Endpoint("SPIFFE_ENDPOINT_SOCKET is not set".into()))?,
        };
        Endpoint::parse(&text).map_err(|e| WorkloadApiError::Endpoint(format!("`{text}`: {e}")))
    }

    async fn session(&self, publisher: &IdentityPublisher, backoff: &mut Backoff) -> Result<(), WorkloadApiError> {
        let channel = spiffe::transport::connect(&self.endpoint()?)
            .await
            .map_err(|e| WorkloadApiError::Connect(e.to_string()))?;
        let mut request = tonic::Request::new(X509svidRequest {});
        // SPIRE refuses Workload API calls without it (SSRF protection).
        request.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
        let mut stream = SpiffeWorkloadApiClient::new(channel).fetch_x509svid(request).await?.into_inner();
        publisher.set_connected(true);
        while let Some(response) = stream.message().await? {
            backoff.reset();
            match identity_from_response(&response) {
                Ok((identity, rejected)) => publisher.publish_with(identity, rejected),
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

/// The default (first) SVID with its own domain's bundle, plus every
/// federated bundle that parses; those that do not are returned, not fatal.
pub fn identity_from_response(
    response: &X509svidResponse,
) -> Result<(Identity, Vec<RejectedBundle>), WorkloadApiError> {
    let entry = response.svids.first().ok_or(WorkloadApiError::NoSvid)?;
    let chain = x509::split_der_certs(&entry.x509_svid).map_err(WorkloadApiError::Chain)?;
    let svid = Svid::from_der(chain, entry.x509_svid_key.clone())?;
    let own = svid.id().trust_domain();
    let mut bundles = BundleSet::default();
    bundles.insert(own.clone(), Bundle::from_concatenated_der(&own, &entry.bundle)?);
    let mut rejected = Vec::new();
    for (name, der) in &response.federated_bundles {
        match federated_bundle(name, der, &own) {
            // The own domain's bundle comes with the SVID; a second one is never trusted.
            Ok(None) => {}
            Ok(Some((td, bundle))) => bundles.insert(td, bundle),
            Err(error) => {
                tracing::warn!(trust_domain = %name, %error, "federated bundle skipped");
                rejected.push(RejectedBundle { trust_domain: name.clone(), error });
            }
        }
    }
    Ok((Identity::new(svid, bundles)?, rejected))
}

/// A federated bundle keyed by `spiffe://<td>` (or a bare trust domain
/// name); `None` for an entry of our own domain, which is ignored.
fn federated_bundle(name: &str, der: &[u8], own: &TrustDomain) -> Result<Option<(TrustDomain, Bundle)>, String> {
    let td = TrustDomain::new(name.strip_prefix("spiffe://").unwrap_or(name)).map_err(|e| e.to_string())?;
    if td == *own {
        return Ok(None);
    }
    let bundle = Bundle::from_concatenated_der(&td, der).map_err(|e| e.to_string())?;
    Ok(Some((td, bundle)))
}
