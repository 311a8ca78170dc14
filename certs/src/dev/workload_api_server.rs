//! A SPIFFE Workload API server (gRPC over a Unix socket) backed by a
//! [`DevCa`]: it issues X509-SVIDs, rotates them at half-life and streams
//! each new one, serves bundles (own and federated) and JWT-SVIDs. Like a
//! SPIRE agent it refuses requests without the `workload.spiffe.io: true`
//! header. It stands in for SPIRE in tests and the demo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use jsonwebtoken::{DecodingKey, Validation};
use tokio::net::UnixListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::{Request, Response, Status};

use super::{DevCa, DevError};
use crate::spiffe_id::SpiffeId;

use crate::proto as pb;

use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

const JWT_SVID_TTL: Duration = Duration::from_secs(300);

/// What the server issues.
#[derive(Debug, Clone)]
pub struct WorkloadApiServerConfig {
    pub ca: Arc<DevCa>,
    /// The one SPIFFE ID every caller of this socket gets.
    pub id: SpiffeId,
    /// Lifetime of each X509-SVID; a new one is pushed at half of it.
    pub ttl: Duration,
    /// Other trust domains whose bundles are sent as federated bundles.
    pub federated: Vec<Arc<DevCa>>,
}

/// A running server; stops (and removes its socket) on [`Self::stop`] or drop.
pub struct WorkloadApiServer {
    state: Arc<State>,
    socket: PathBuf,
    stopped: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct State {
    config: WorkloadApiServerConfig,
    /// Federated bundles sent as given (tests of broken ones), by name.
    raw_federated: std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
    x509: watch::Sender<pb::X509svidResponse>,
    rotate: Notify,
    stopped: watch::Receiver<bool>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl WorkloadApiServer {
    /// Binds `socket` (replacing a stale socket file) and starts serving.
    pub async fn start(socket: &Path, config: WorkloadApiServerConfig) -> Result<Self, DevError> {
        let io = |source| DevError::Io { path: socket.into(), source };
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let listener = UnixListener::bind(socket).map_err(io)?;
        let (x509, _) = watch::channel(x509_response(&config, &Default::default())?);
        let (stopped_tx, stopped) = watch::channel(false);
        let raw_federated = std::sync::Mutex::default();
        let state = Arc::new(State { config, raw_federated, x509, rotate: Notify::new(), stopped });

        let rotation = tokio::spawn(rotate_forever(state.clone()));
        let mut shutdown = stopped_tx.subscribe();
        let service = SpiffeWorkloadApiServer::new(Service { state: state.clone() });
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = shutdown.wait_for(|stopped| *stopped).await;
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "workload api server ended");
            }
        });
        Ok(Self { state, socket: socket.into(), stopped: stopped_tx, tasks: vec![rotation, server] })
    }

    /// Issues and pushes a new SVID now.
    pub fn rotate_now(&self) {
        self.state.rotate.notify_one();
    }

    /// From the next push on, sends `der` as the federated bundle `name`
    /// (`spiffe://<td>`) as is, however broken; `None` stops sending it.
    pub fn set_federated_raw(&self, name: &str, der: Option<Vec<u8>>) {
        let mut raw = self.state.raw_federated.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match der {
            Some(der) => raw.insert(name.to_owned(), der),
            None => raw.remove(name),
        };
    }

    /// Serial of the SVID currently being served.
    pub fn current_serial(&self) -> Option<String> {
        let response = self.state.x509.borrow();
        let der = response.svids.first()?.x509_svid.clone();
        crate::x509::split_der_certs(&der)
            .ok()?
            .first()
            .and_then(|leaf| crate::x509::parse_leaf(leaf).ok())
            .map(|l| l.serial)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The endpoint string clients use: `unix://<socket>`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Ends every open stream, stops accepting and removes the socket.
    pub async fn stop(mut self) {
        self.stopped.send_replace(true);
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for WorkloadApiServer {
    fn drop(&mut self) {
        self.stopped.send_replace(true);
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn rotate_forever(state: Arc<State>) {
    let half_life = (state.config.ttl / 2).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = tokio::time::sleep(half_life) => {}
            () = state.rotate.notified() => {}
        }
        let raw = state.raw_federated.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match x509_response(&state.config, &raw) {
            Ok(response) => {
                state.x509.send_replace(response);
            }
            Err(e) => tracing::warn!(error = %e, "dev workload api: svid issue failed"),
        }
    }
}

fn x509_response(
    config: &WorkloadApiServerConfig,
    raw_federated: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<pb::X509svidResponse, DevError> {
    let svid = config.ca.issue(&config.id, config.ttl)?;
    let key = svid.private_key().secret_der().to_vec();
    Ok(pb::X509svidResponse {
        svids: vec![pb::X509svid {
            spiffe_id: config.id.to_string(),
            x509_svid: svid.chain().iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: key,
            bundle: config.ca.bundle_der().to_vec(),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: config
            .federated
            .iter()
            .map(|ca| (ca.trust_domain().id_string(), ca.bundle_der().to_vec()))
            .chain(raw_federated.iter().map(|(name, der)| (name.clone(), der.clone())))
            .collect(),
    })
}

struct Service {
    state: Arc<State>,
}

impl Service {
    /// Ends `stream` when the server stops, so graceful shutdown can finish.
    fn until_stopped<T: Send + 'static>(
        &self,
        stream: impl Stream<Item = T> + Send + 'static,
    ) -> impl Stream<Item = T> + Send + 'static {
        let mut stopped = self.state.stopped.clone();
        stream.take_until(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
    }

    fn all_cas(&self) -> impl Iterator<Item = &Arc<DevCa>> {
        std::iter::once(&self.state.config.ca).chain(self.state.config.federated.iter())
    }

    fn jwt_bundles(&self) -> Result<HashMap<String, Vec<u8>>, Status> {
        self.all_cas()
            .map(|ca| {
                let jwks = ca.jwt_bundle().map_err(internal)?;
                let json = serde_json::to_vec(&jwks).map_err(internal)?;
                Ok((ca.trust_domain().id_string(), json))
            })
            .collect()
    }
}

/// SPIRE refuses Workload API calls without this header (SSRF protection).
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("workload.spiffe.io") {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument("security header missing from request")),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = ResponseStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let updates = WatchStream::new(self.state.x509.subscribe()).map(Ok);
        Ok(Response::new(Box::pin(self.until_stopped(updates))))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        let own = self.state.config.ca.trust_domain().id_string();
        let updates = WatchStream::new(self.state.x509.subscribe()).map(move |svids| {
            let mut bundles = svids.federated_bundles;
            if let Some(svid) = svids.svids.into_iter().next() {
                bundles.insert(own.clone(), svid.bundle);
            }
            Ok(pb::X509BundlesResponse { crl: Vec::new(), bundles })
        });
        Ok(Response::new(Box::pin(self.until_stopped(updates))))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_header(&request)?;
        let request = request.into_inner();
        let config = &self.state.config;
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if !request.spiffe_id.is_empty() && request.spiffe_id != config.id.as_str() {
            return Err(Status::permission_denied("no identity issued for the requested SPIFFE ID"));
        }
        let token = config.ca.jwt_svid(&config.id, &request.audience, JWT_SVID_TTL).map_err(internal)?;
        let svid = pb::Jwtsvid { spiffe_id: config.id.to_string(), svid: token, hint: String::new() };
        Ok(Response::new(pb::JwtsvidResponse { svids: vec![svid] }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        let first = pb::JwtBundlesResponse { bundles: self.jwt_bundles()? };
        // JWT keys do not rotate in the dev CA: one message, then the stream stays open.
        let updates = futures_util::stream::once(async move { Ok(first) }).chain(futures_util::stream::pending());
        Ok(Response::new(Box::pin(self.until_stopped(updates))))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let header = jsonwebtoken::decode_header(&request.svid).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ca = self
            .all_cas()
            .find(|ca| header.kid.as_deref() == Some(ca.jwt_kid()))
            .ok_or_else(|| Status::invalid_argument("unknown kid"))?;
        let key = DecodingKey::from_rsa_pem(public_pem(ca)?.as_bytes()).map_err(internal)?;
        let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[request.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(&request.svid, &key, &validation)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let spiffe_id = data.claims.get("sub").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let claims = prost_types::Struct { fields: data.claims.into_iter().map(|(k, v)| (k, to_prost(v))).collect() };
        Ok(Response::new(pb::ValidateJwtsvidResponse { spiffe_id, claims: Some(claims) }))
    }
}

/// The public half of a CA's JWT key, as a PEM `DecodingKey` accepts.
fn public_pem(ca: &DevCa) -> Result<String, Status> {
    ca.jwt_key().public_pem().map_err(internal)
}

fn to_prost(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(to_prost).collect() })
        }
        serde_json::Value::Object(map) => {
            Kind::StructValue(prost_types::Struct { fields: map.into_iter().map(|(k, v)| (k, to_prost(v))).collect() })
        }
    };
    prost_types::Value { kind: Some(kind) }
}
