//! The dev Workload API server speaks the real protocol: the `spiffe` crate's
//! client works against it unchanged, and calls without the security header
//! are refused as SPIRE refuses them.

use std::time::Duration;

use certs::dev::{WorkloadApiServer, WorkloadApiServerConfig};
use certs::source::{self, WorkloadApiSource};
use spiffe::WorkloadApiClient;

use super::support::{ca, eventually, id};

async fn server(dir: &std::path::Path, ttl: Duration) -> WorkloadApiServer {
    let config = WorkloadApiServerConfig {
        ca: ca("a.test"),
        id: id("spiffe://a.test/workload"),
        ttl,
        federated: vec![ca("b.test")],
    };
    WorkloadApiServer::start(&dir.join("agent.sock"), config).await.unwrap()
}

#[tokio::test]
async fn spiffe_client_fetches_svids_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), Duration::from_secs(60)).await;
    let client = WorkloadApiClient::connect_to(server.endpoint()).await.unwrap();

    let ctx = client.fetch_x509_context().await.unwrap();
    let svid = ctx.default_svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://a.test/workload");
    let domains: Vec<String> = ctx.bundle_set().iter().map(|(td, _)| td.to_string()).collect();
    assert!(domains.contains(&"a.test".to_owned()) && domains.contains(&"b.test".to_owned()), "{domains:?}");

    let bundles = client.fetch_x509_bundles().await.unwrap();
    assert_eq!(bundles.len(), 2);

    let jwt = client.fetch_jwt_svid(["api://AzureADTokenExchange"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://a.test/workload");
    assert_eq!(jwt.audience(), ["api://AzureADTokenExchange"]);

    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("a.test").unwrap();
    let bundle = jwt_bundles.get(&td).unwrap();
    let kid = jwt.key_id().to_owned();
    assert!(bundle.find_jwt_authority(&kid).is_some(), "the JWT bundle holds the signing key {kid}");

    let validated = client.validate_jwt_token("api://AzureADTokenExchange", jwt.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), "spiffe://a.test/workload");
    assert!(client.validate_jwt_token("api://other", jwt.token()).await.is_err());
}

async fn first_svid(watch: &certs::IdentityWatch) -> std::sync::Arc<certs::Identity> {
    eventually(Duration::from_secs(10), "first svid", || {
        let w = watch.clone();
        async move { w.current() }
    })
    .await
}

#[tokio::test]
async fn stream_pushes_rotated_svids() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), Duration::from_secs(60)).await;
    let (watch, _task) = source::spawn(Box::new(WorkloadApiSource::new(Some(server.endpoint()))));
    let first = first_svid(&watch).await;
    assert!(watch.is_ready());
    assert_eq!(first.bundles().len(), 2, "own and federated bundles");

    server.rotate_now();
    let next = eventually(Duration::from_secs(10), "rotated svid", || {
        let w = watch.clone();
        let old = first.svid().serial().to_owned();
        async move { w.current().filter(|i| i.svid().serial() != old) }
    })
    .await;
    assert_eq!(Some(next.svid().serial().to_owned()), server.current_serial());
    assert_eq!(watch.status().rotations, 1);
}

/// An empty or unparsable federated bundle is skipped and reported; the SVID
/// still rotates and the good bundles stay (one bad federated bundle used to
/// fail every update, so our SVID would expire).
#[tokio::test]
async fn a_bad_federated_bundle_is_skipped_and_the_svid_still_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), Duration::from_secs(60)).await;
    let (watch, _task) = source::spawn(Box::new(WorkloadApiSource::new(Some(server.endpoint()))));
    let first = first_svid(&watch).await;
    assert!(watch.status().rejected_bundles.is_empty());

    server.set_federated_raw("spiffe://broken.test", Some(b"not a certificate".to_vec()));
    server.set_federated_raw("spiffe://empty.test", Some(Vec::new()));
    server.set_federated_raw("spiffe://a.test", Some(Vec::new()));
    server.rotate_now();
    let next = eventually(Duration::from_secs(10), "rotated svid despite bad bundles", || {
        let w = watch.clone();
        let old = first.svid().serial().to_owned();
        async move { w.current().filter(|i| i.svid().serial() != old) }
    })
    .await;
    let domains: Vec<String> = next.bundles().trust_domains().map(ToString::to_string).collect();
    assert_eq!(domains, ["a.test", "b.test"], "the own bundle (never replaced by a federated entry) and the good one");
    let mut rejected: Vec<String> = watch.status().rejected_bundles.iter().map(|r| r.trust_domain.clone()).collect();
    rejected.sort();
    assert_eq!(rejected, ["spiffe://broken.test", "spiffe://empty.test"]);
    assert!(watch.status().rejected_bundles.iter().all(|r| !r.error.is_empty()));

    // Fixed at the source: the report clears with the next update.
    server.set_federated_raw("spiffe://broken.test", None);
    server.set_federated_raw("spiffe://empty.test", None);
    server.rotate_now();
    let w = watch.clone();
    eventually(Duration::from_secs(10), "report cleared", || {
        let w = w.clone();
        async move { w.status().rejected_bundles.is_empty().then_some(()) }
    })
    .await;
}

/// Speaks gRPC by hand (HTTP/2 over the Unix socket) without the
/// `workload.spiffe.io` header: the server must answer INVALID_ARGUMENT.
#[tokio::test]
async fn requests_without_security_header_are_refused() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), Duration::from_secs(60)).await;
    let call = |with_header: bool| {
        let socket = server.socket().to_owned();
        async move {
            let io = TokioIo::new(tokio::net::UnixStream::connect(socket).await.unwrap());
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            let mut request = hyper::Request::post("http://localhost/SpiffeWorkloadAPI/FetchJWTSVID")
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if with_header {
                request = request.header("workload.spiffe.io", "true");
            }
            // One length-prefixed protobuf message: JWTSVIDRequest{audience: ["x"]}.
            let body = Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 1, b'x']));
            let response = sender.send_request(request.body(body).unwrap()).await.unwrap();
            let headers = response.headers().clone();
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let status = headers.get("grpc-status").or(trailers.get("grpc-status")).cloned();
            status.map(|s| s.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(call(false).await.as_deref(), Some("3"), "INVALID_ARGUMENT without the header");
    assert_eq!(call(true).await.as_deref(), Some("0"), "OK with it");
}
