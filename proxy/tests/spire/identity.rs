//! Identity from a real SPIRE agent: two sidecars with two SPIFFE IDs talk
//! over mTLS; a workload with no entry gets no SVID and says why; SVIDs
//! rotate under traffic; the agent restarts under traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::harness::{Agent, EchoApp, Server, Sidecar, backend_yaml, caller_yaml, http_get, open_policy, poll};

const TD: &str = "td1.test";
const AGENT: &str = "/agent/node1";

/// A server, its agent, and a backend and a caller sidecar registered and ready.
struct Mesh {
    dir: tempfile::TempDir,
    server: Server,
    agent: Agent,
    backend: Sidecar,
    caller: Sidecar,
    _app: EchoApp,
}

impl Mesh {
    fn start(svid_ttl: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), TD, svid_ttl);
        let token = server.join_token(AGENT);
        let mut backend = Sidecar::prepare(dir.path(), "backend");
        let mut caller = Sidecar::prepare(dir.path(), "caller");
        // Entries first: the agent fetches them when it attests.
        server.entry(AGENT, "/backend", &backend.binary, &[]);
        server.entry(AGENT, "/caller", &caller.binary, &[]);
        let agent = Agent::start(dir.path(), &server, &token);
        let app = EchoApp::start();
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, open_policy(TD, &server.id("/caller"))).unwrap();

        let started = Instant::now();
        backend.start(&backend_yaml(&agent.endpoint(), app.addr, &server.id("/caller"), &policy));
        caller.start(&caller_yaml(&agent.endpoint(), backend.inbound.unwrap(), &server.id("/backend")));
        let (b, c) = (backend.wait_ready(started), caller.wait_ready(started));
        eprintln!("time to first SVID from the real agent: backend {b:?}, caller {c:?}");
        Self { dir, server, agent, backend, caller, _app: app }
    }

    /// One request from the caller's app through both sidecars: (status, body).
    fn call(&self) -> Option<(u16, String)> {
        http_get(self.caller.outbound.unwrap(), "backend", "/hello")
    }
}

/// Requests at a steady rate from another thread until stopped: (sent, failed).
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(outbound: std::net::SocketAddr, expect: String) -> Self {
        let (stop, sent, failed) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
        let thread = {
            let (stop, sent, failed): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
                (stop.clone(), Arc::clone(&sent), Arc::clone(&failed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let reply = http_get(outbound, "backend", "/steady");
                    sent.fetch_add(1, Ordering::Relaxed);
                    if reply.as_ref().map(|(s, b)| (*s, b.as_str())) != Some((200, expect.as_str())) {
                        eprintln!("failed request: {reply:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self { stop, sent, failed, thread: Some(thread) }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops it; (sent, failed).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

#[test]
fn two_sidecars_get_their_ids_from_the_real_agent_and_a_workload_without_an_entry_says_why() {
    let mesh = Mesh::start("1h");
    // The app sees the caller's SPIFFE ID, as SPIRE issued it.
    assert_eq!(mesh.call(), Some((200, mesh.server.id("/caller"))));

    // A third copy of the binary, with no entry: no SVID, never ready, and it says why.
    let mut stranger = Sidecar::prepare(mesh.dir.path(), "stranger");
    let app = EchoApp::start();
    let policy = mesh.dir.path().join("policy.yaml");
    stranger.start(&backend_yaml(&mesh.agent.endpoint(), app.addr, &mesh.server.id("/caller"), &policy));
    let body = poll(Duration::from_secs(30), "readyz names the refusal", || {
        let (status, body) = stranger.telemetry("/readyz");
        assert!(status == 503 || status == 0, "{status} {body}");
        body.contains("PermissionDenied").then_some(body)
    });
    assert!(body.starts_with("not ready: no svid yet (workload api: PermissionDenied"), "{body}");
    assert!(body.contains("no registration entry matches this process"), "{body}");
    assert!(stranger.output().contains("PermissionDenied"), "a log line names the cause: {}", stranger.output());

    // Registered later, it is picked up without a restart.
    mesh.server.entry(AGENT, "/stranger", &stranger.binary, &[]);
    stranger.wait_ready(Instant::now());
}

/// SVIDs of 30 s (renewed at about half-life): traffic across at least two
/// rotations on both sides, and not one request fails.
#[test]
fn svids_rotate_under_traffic_without_a_failed_request() {
    let mesh = Mesh::start("30s");
    let expiry = |s: &Sidecar| s.metric("a2a_svid_expiry_timestamp_seconds").unwrap();
    let (backend_expiry, caller_expiry) = (expiry(&mesh.backend), expiry(&mesh.caller));
    let traffic = Traffic::start(mesh.caller.outbound.unwrap(), mesh.server.id("/caller"));
    let rotations = |s: &Sidecar| s.metric("a2a_svid_rotations_total").unwrap_or(0.0);
    poll(Duration::from_secs(90), "two rotations on both sides", || {
        (rotations(&mesh.backend) >= 2.0 && rotations(&mesh.caller) >= 2.0).then_some(())
    });
    let (sent, failed) = traffic.finish();
    let seen = (rotations(&mesh.backend), rotations(&mesh.caller));
    eprintln!("rotation under traffic: rotations (backend, caller) {seen:?}, {sent} requests sent, {failed} failed");
    assert_eq!(failed, 0, "of {sent}");
    assert!(sent > 20, "traffic flowed: {sent}");
    // New certificates, not the same ones counted again.
    assert!(expiry(&mesh.backend) > backend_expiry && expiry(&mesh.caller) > caller_expiry);
}

/// The agent stops and comes back under traffic: the sidecars keep serving
/// on the SVIDs they hold, reconnect, and take the next rotation.
#[test]
fn the_agent_restarts_under_traffic() {
    let mut mesh = Mesh::start("30s");
    let traffic = Traffic::start(mesh.caller.outbound.unwrap(), mesh.server.id("/caller"));
    // Both hold an SVID before the agent goes away.
    assert_eq!((mesh.backend.telemetry("/readyz").0, mesh.caller.telemetry("/readyz").0), (200, 200));
    mesh.agent.stop();
    let during = traffic.sent();
    poll(Duration::from_secs(30), "requests served while the agent is down", || {
        (traffic.sent() >= during + 20).then_some(())
    });
    let expiry = |s: &Sidecar| s.metric("a2a_svid_expiry_timestamp_seconds").unwrap_or(0.0);
    let before = (expiry(&mesh.backend), expiry(&mesh.caller));
    mesh.agent.restart();
    // A certificate issued after the restart on both sides (a later expiry).
    poll(Duration::from_secs(90), "a new SVID on both sides after the restart", || {
        (expiry(&mesh.backend) > before.0 && expiry(&mesh.caller) > before.1).then_some(())
    });
    let (sent, failed) = traffic.finish();
    eprintln!("agent restart under traffic: {sent} requests sent, {failed} failed");
    assert_eq!(failed, 0, "of {sent}");
    for sidecar in [&mesh.backend, &mesh.caller] {
        assert!(sidecar.output().contains("svid source error"), "the outage was logged");
        assert_eq!(sidecar.telemetry("/readyz").0, 200);
    }
}

/// Sockets that give no SVID: one that does not exist, and one that is not a
/// Workload API (the SPIRE server's own API socket). Each: `/readyz` 503
/// naming the cause, a log line, and the process keeps running (no crash loop).
/// (A socket without `unix://` is a configuration error: `check` and `run`
/// exit 2 naming `identity.socket`, shown in `sidecar/cli.rs`.)
#[test]
fn a_wrong_socket_says_what_is_wrong_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), TD, "1h");
    let cases = [
        (format!("unix://{}/nowhere.sock", dir.path().display()), "cannot connect"),
        (format!("unix://{}", server.socket.display()), "the socket does not serve the SPIFFE Workload API"),
    ];
    for (i, (endpoint, cause)) in cases.iter().enumerate() {
        let mut sidecar = Sidecar::prepare(dir.path(), &format!("wrong-{i}"));
        sidecar.start(&format!(
            "identity: {{source: workload_api, socket: '{endpoint}'}}\ntelemetry: {{listen: '127.0.0.1:0', log_format: json}}\n"
        ));
        let body = poll(Duration::from_secs(30), cause, || {
            let (status, body) = sidecar.telemetry("/readyz");
            assert_eq!(status, 503, "{body}");
            body.contains(cause).then_some(body)
        });
        assert!(body.starts_with("not ready: no svid yet (workload api"), "{body}");
        assert!(sidecar.output().contains(cause), "a log line names the cause: {}", sidecar.output());
        assert_eq!(sidecar.telemetry("/healthz").0, 200, "still running");
    }
}
