//! The real binary under signals: SIGHUP re-reads the allow-list, SIGTERM
//! lets an in-flight request finish, refuses new connections and exits 0.
//! Its audit trail reaches the file and stdout sinks (logs go to stderr).

use std::io::BufRead;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use certs::dev::{DevCa, write_svid_files};
use certs::{IdentityWatch, TrustDomain};

use super::app::TestApp;
use super::mesh::{BACKEND, MENUS, REPORT};
use super::support::{bin, eventually, read_reply, tls_connect};

fn config(dir: &std::path::Path, app: std::net::SocketAddr, caller: &str) -> String {
    format!(
        "identity:
  source: files
  files: {{cert: svid/svid.pem, key: svid/svid_key.pem, bundle: svid/svid_bundle.pem, poll_interval: 100ms}}
telemetry: {{listen: '127.0.0.1:0', log_format: json}}
runtime: {{drain_timeout: 10s, worker_threads: 1}}
inbound: {{listen: '127.0.0.1:0', upstream: 'http://{app}', allowed_callers: ['{caller}']}}
policy: {{file: policy.yaml}}
audit: {{file: audit.jsonl, stdout: true}}
"
    )
    .replace("svid/", &format!("{}/svid/", dir.display()))
}

/// The lines `from` prints, as they come.
fn read_lines(from: impl std::io::Read + Send + 'static) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn client(ca: &DevCa, id: &str) -> Arc<rustls::ClientConfig> {
    let identity =
        IdentityWatch::fixed(Arc::new(ca.identity(&id.parse().unwrap(), Duration::from_secs(600), &[]).unwrap()));
    let mut config = certs::tls::client_config(identity, BACKEND.parse().unwrap()).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn get(addr: std::net::SocketAddr, tls: Arc<rustls::ClientConfig>, path: &str) -> Option<u16> {
    let io = hyper_util::rt::TokioIo::new(tls_connect(addr, tls).await.ok()?);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", "x").body(http_body_util::Empty::<bytes::Bytes>::new()).ok()?;
    Some(read_reply(sender.send_request(req).await.ok()?).await.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_allow_list_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate(&TrustDomain::new(super::mesh::TRUST_DOMAIN).unwrap()).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), super::mesh::OPEN_POLICY).unwrap();
    write_svid_files(
        &dir.path().join("svid"),
        &ca.issue(&BACKEND.parse().unwrap(), Duration::from_secs(600)).unwrap(),
        ca.bundle_pem(),
    )
    .unwrap();
    let app = TestApp::start().await;
    let config_path = dir.path().join("sidecar.yaml");
    std::fs::write(&config_path, config(dir.path(), app.addr, REPORT)).unwrap();

    let mut child = bin()
        .args(["run", "--config", config_path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = read_lines(child.stderr.take().unwrap());
    let mut stdout = read_lines(child.stdout.take().unwrap());
    let inbound: std::net::SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv()).await.unwrap().expect("exited early");
        if line.contains("a2a-sidecar started") {
            let json: serde_json::Value = serde_json::from_str(&line).unwrap();
            break json["inbound"].as_str().unwrap().parse().unwrap();
        }
    };
    let (report, menus) = (client(&ca, REPORT), client(&ca, MENUS));
    eventually(Duration::from_secs(20), "report served", || {
        let report = report.clone();
        async move { (get(inbound, report, "/one").await == Some(200)).then_some(()) }
    })
    .await;
    assert_eq!(get(inbound, menus.clone(), "/menus-before").await, None, "menus is not allowed yet");

    // The request's audit event, as a JSON line in the file and on stdout; stdout carries nothing else.
    let audited = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|e| e["path"] == "/one" && e["decision"] == "allow")
    };
    let audit_file = dir.path().join("audit.jsonl");
    eventually(Duration::from_secs(10), "the audit file has the request", || {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        async move { text.lines().any(audited).then_some(()) }
    })
    .await;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), stdout.recv()).await.unwrap().expect("stdout open");
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok(), "not a JSON line on stdout: {line}");
        if audited(&line) {
            break;
        }
    }

    // SIGHUP with an edited config: menus in, report out.
    std::fs::write(&config_path, config(dir.path(), app.addr, MENUS)).unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    eventually(Duration::from_secs(20), "menus served after SIGHUP", || {
        let menus = menus.clone();
        async move { (get(inbound, menus, "/two").await == Some(200)).then_some(()) }
    })
    .await;
    assert_eq!(get(inbound, report.clone(), "/report-after").await, None, "report is refused after SIGHUP");

    // SIGTERM while a slow request is in flight.
    let slow = tokio::spawn(get(inbound, menus.clone(), "/slow"));
    eventually(Duration::from_secs(10), "slow request reached the app", || async {
        app.paths().iter().any(|p| p == "/slow").then_some(())
    })
    .await;
    let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    eventually(Duration::from_secs(10), "new connections refused", || async {
        tokio::net::TcpStream::connect(inbound).await.is_err().then_some(())
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "exited before the in-flight request finished");
    app.release_slow.notify_one();
    assert_eq!(slow.await.unwrap(), Some(200));
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!app.paths().iter().any(|p| p == "/menus-before" || p == "/report-after"));
}
