//! The real binary under signals: SIGHUP re-reads the allow-list, SIGTERM
//! lets an in-flight request finish, refuses new connections and exits 0.
//! Its audit trail reaches the file and stdout sinks (logs go to stderr).
//! Each behaviour is its own test, so one failure hides none of the others.

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
    config_with(dir, app, caller, "")
}

/// As [`config`], with `runtime_extra` added to the `runtime` section (`key: value, `).
fn config_with(dir: &std::path::Path, app: std::net::SocketAddr, caller: &str, runtime_extra: &str) -> String {
    format!(
        "identity:
  source: files
  files: {{cert: svid/svid.pem, key: svid/svid_key.pem, bundle: svid/svid_bundle.pem, poll_interval: 100ms}}
telemetry: {{listen: '127.0.0.1:0', log_format: json}}
runtime: {{{runtime_extra}drain_timeout: 10s, worker_threads: 1}}
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

/// The real binary serving an inbound listener for `caller`, in front of a test app.
struct Running {
    dir: tempfile::TempDir,
    ca: DevCa,
    app: Arc<TestApp>,
    config: std::path::PathBuf,
    child: std::process::Child,
    stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
    _stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
    inbound: std::net::SocketAddr,
    telemetry: std::net::SocketAddr,
}

impl Running {
    async fn start(caller: &str) -> Self {
        Self::start_with(caller, "").await
    }

    async fn start_with(caller: &str, runtime_extra: &str) -> Self {
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
        let config = dir.path().join("sidecar.yaml");
        std::fs::write(&config, config_with(dir.path(), app.addr, caller, runtime_extra)).unwrap();
        let mut child = bin()
            .args(["run", "--config", config.to_str().unwrap()])
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = read_lines(child.stderr.take().unwrap());
        let stdout = read_lines(child.stdout.take().unwrap());
        let (inbound, telemetry): (std::net::SocketAddr, std::net::SocketAddr) = loop {
            let line =
                tokio::time::timeout(Duration::from_secs(30), stderr.recv()).await.unwrap().expect("exited early");
            if line.contains("a2a-sidecar started") {
                let json: serde_json::Value = serde_json::from_str(&line).unwrap();
                let addr = |key: &str| json[key].as_str().unwrap().parse().unwrap();
                break (addr("inbound"), addr("telemetry"));
            }
        };
        let running = Self { dir, ca, app, config, child, stdout, _stderr: stderr, inbound, telemetry };
        let report = running.client(caller);
        eventually(Duration::from_secs(20), "the caller served", || {
            let report = report.clone();
            async move { (get(inbound, report, "/one").await == Some(200)).then_some(()) }
        })
        .await;
        running
    }

    fn client(&self, id: &str) -> Arc<rustls::ClientConfig> {
        client(&self.ca, id)
    }

    fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill").args([name, &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request's audit event is a JSON line in the file and on stdout; stdout
/// carries nothing else (logs go to stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_reaches_the_file_and_stdout() {
    let mut sidecar = Running::start(REPORT).await;
    let audited = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|e| e["path"] == "/one" && e["decision"] == "allow")
    };
    let audit_file = sidecar.dir.path().join("audit.jsonl");
    eventually(Duration::from_secs(10), "the audit file has the request", || {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        async move { text.lines().any(audited).then_some(()) }
    })
    .await;
    loop {
        let line =
            tokio::time::timeout(Duration::from_secs(10), sidecar.stdout.recv()).await.unwrap().expect("stdout open");
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok(), "not a JSON line on stdout: {line}");
        if audited(&line) {
            break;
        }
    }
}

/// SIGHUP with an edited config: the new caller in, the old one out, and
/// neither refused request reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_allow_list() {
    let sidecar = Running::start(REPORT).await;
    let (report, menus, inbound) = (sidecar.client(REPORT), sidecar.client(MENUS), sidecar.inbound);
    assert_eq!(get(inbound, menus.clone(), "/menus-before").await, None, "menus is not allowed yet");
    std::fs::write(&sidecar.config, config(sidecar.dir.path(), sidecar.app.addr, MENUS)).unwrap();
    sidecar.signal("-HUP");
    eventually(Duration::from_secs(20), "menus served after SIGHUP", || {
        let menus = menus.clone();
        async move { (get(inbound, menus, "/two").await == Some(200)).then_some(()) }
    })
    .await;
    assert_eq!(get(inbound, report, "/report-after").await, None, "report is refused after SIGHUP");
    assert!(!sidecar.app.paths().iter().any(|p| p == "/menus-before" || p == "/report-after"));
}

/// SIGTERM while a slow request is in flight: new connections are refused
/// at once, the request finishes, then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let mut sidecar = Running::start(REPORT).await;
    let inbound = sidecar.inbound;
    let slow = tokio::spawn(get(inbound, sidecar.client(REPORT), "/slow"));
    let app = sidecar.app.clone();
    eventually(Duration::from_secs(10), "slow request reached the app", || async {
        app.paths().iter().any(|p| p == "/slow").then_some(())
    })
    .await;
    sidecar.signal("-TERM");
    eventually(Duration::from_secs(10), "new connections refused", || async {
        tokio::net::TcpStream::connect(inbound).await.is_err().then_some(())
    })
    .await;
    assert!(sidecar.child.try_wait().unwrap().is_none(), "exited before the in-flight request finished");
    app.release_slow.notify_one();
    assert_eq!(slow.await.unwrap(), Some(200));
    let exited = || {
        let status = sidecar.child.try_wait().unwrap();
        async move { status }
    };
    let status = eventually(Duration::from_secs(20), "exited after the drain", exited).await;
    assert_eq!(status.code(), Some(0));
}

/// With `runtime.shutdown_delay`, SIGTERM first fails `/readyz` while every
/// request, on new connections too, is still served; only after the delay
/// does the listener close (refused from then on, never a failed request in
/// between), and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_shutdown_delay_keeps_serving_while_readyz_fails() {
    let mut sidecar = Running::start_with(REPORT, "shutdown_delay: 2s, ").await;
    let (inbound, telemetry, report) = (sidecar.inbound, sidecar.telemetry, sidecar.client(REPORT));
    let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let traffic = {
        let (signalled, results) = (signalled.clone(), results.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let status = get(inbound, report.clone(), &format!("/steady-{i}")).await;
                let after = signalled.load(std::sync::atomic::Ordering::SeqCst);
                results.lock().unwrap().push((after, status));
                if status.is_none() && after {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let flowing = || async { (results.lock().unwrap().len() >= 5).then_some(()) };
    eventually(Duration::from_secs(10), "traffic before the signal", flowing).await;
    signalled.store(true, std::sync::atomic::Ordering::SeqCst);
    sidecar.signal("-TERM");
    let failing = || async {
        let (status, body) = super::support::get(telemetry, "/readyz").await;
        (status == 503).then_some(body)
    };
    let body = eventually(Duration::from_secs(10), "readyz fails at once", failing).await;
    assert_eq!(body, "not ready: shutting down\n");
    tokio::time::timeout(Duration::from_secs(30), traffic).await.expect("the listener closed after the delay").unwrap();
    let results = results.lock().unwrap().clone();
    let first_refused = results.iter().position(|(_, s)| s.is_none()).unwrap();
    assert!(
        results[..first_refused].iter().all(|(_, s)| *s == Some(200)),
        "a request failed before the close: {results:?}"
    );
    let served_after = results[..first_refused].iter().filter(|(after, _)| *after).count();
    assert!(served_after >= 1, "requests after SIGTERM were served during the delay: {results:?}");
    let exited = || {
        let status = sidecar.child.try_wait().unwrap();
        async move { status }
    };
    assert_eq!(eventually(Duration::from_secs(20), "exit after the drain", exited).await.code(), Some(0));
}
