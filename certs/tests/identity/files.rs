//! The files source hot-reloads replaced PEM files, and a half-written set
//! never replaces a good SVID.

use std::collections::BTreeMap;
use std::time::Duration;

use certs::dev::write_svid_files;
use certs::source::{self, FilesConfig, FilesSource};

use super::support::{TlsServer, allow_all, ca, client, connect, eventually, id, static_identity};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_files_are_picked_up_without_a_failed_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("a.test");
    let server_id = id("spiffe://a.test/server");
    write_svid_files(dir.path(), &ca.issue(&server_id, Duration::from_secs(600)).unwrap(), ca.bundle_pem()).unwrap();

    let config = FilesConfig {
        cert: dir.path().join("svid.pem"),
        key: dir.path().join("svid_key.pem"),
        bundle: dir.path().join("svid_bundle.pem"),
        federated_bundles: BTreeMap::new(),
        poll_interval: Duration::from_millis(20),
    };
    let (identity, _task) = source::spawn(Box::new(FilesSource::new(config)));
    let server = TlsServer::start(identity.clone(), allow_all()).await;
    let client = client(static_identity(&ca, "spiffe://a.test/client", &[]), "spiffe://a.test/server");

    let first = eventually(Duration::from_secs(10), "first svid", || {
        let i = identity.clone();
        async move { i.current() }
    })
    .await;

    // Traffic runs for the whole test; every handshake must succeed.
    let traffic = {
        let (client, addr) = (client.clone(), server.addr);
        tokio::spawn(async move {
            let mut serials = Vec::new();
            loop {
                match connect(client.clone(), addr).await {
                    Ok(serial) => serials.push(serial),
                    Err(e) => return Err(format!("handshake failed after {} good ones: {e}", serials.len())),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if serials.len() > 10_000 {
                    return Ok(serials);
                }
            }
        })
    };

    // A half-written certificate (cut mid-PEM) and a new cert with the old key.
    let next = ca.issue(&server_id, Duration::from_secs(600)).unwrap();
    let staging = tempfile::tempdir().unwrap();
    write_svid_files(staging.path(), &next, ca.bundle_pem()).unwrap();
    let full_cert = std::fs::read(staging.path().join("svid.pem")).unwrap();
    std::fs::write(dir.path().join("svid.pem"), &full_cert[..full_cert.len() / 2]).unwrap();
    eventually(Duration::from_secs(10), "the partial file is seen and refused", || {
        let i = identity.clone();
        async move { i.status().last_error.filter(|e| e.contains("svid.pem")) }
    })
    .await;
    assert_eq!(identity.current().unwrap().svid().serial(), first.svid().serial(), "partial write ignored");

    std::fs::write(dir.path().join("svid.pem"), &full_cert).unwrap();
    eventually(Duration::from_secs(10), "new cert with the old key is refused", || {
        let i = identity.clone();
        async move { i.status().last_error.filter(|e| e.contains("does not match")) }
    })
    .await;
    assert_eq!(identity.current().unwrap().svid().serial(), first.svid().serial(), "mismatched pair ignored");

    std::fs::copy(staging.path().join("svid_key.pem"), dir.path().join("svid_key.pem")).unwrap();
    eventually(Duration::from_secs(10), "the new svid is served", || {
        let (c, addr, want) = (client.clone(), server.addr, next.serial().to_owned());
        async move { connect(c, addr).await.ok().filter(|s| *s == want) }
    })
    .await;

    if traffic.is_finished() {
        traffic.await.unwrap().unwrap();
    } else {
        traffic.abort();
    }
    // Refusals name a reason; a handshake cut by the aborted traffic task does not.
    let served: Vec<_> = server.seen.lock().unwrap().iter().filter(|s| matches!(s, Err(Some(_)))).cloned().collect();
    assert!(served.is_empty(), "server refused handshakes: {served:?}");
}
