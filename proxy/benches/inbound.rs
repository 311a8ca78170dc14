//! Requests/s and latency through the inbound sidecar (mTLS, keep-alive,
//! small response) against the same client talking to the app directly, in
//! one run; and, when `nginx` is installed, through nginx terminating mTLS
//! in front of the same app (one worker, keep-alive upstream pool).
//!
//!     cargo bench -p proxy --bench inbound -- [--connections 2] [--seconds 5] [--pin]
//!
//! The app, the sidecar (`runtime.worker_threads: 1`) and the load generator
//! each run on their own thread, as nginx runs as its own one-worker
//! process. With `--pin` (and 2+ CPUs) the app and the proxy under test share
//! CPU 0 and the load generator gets CPU 1, the topology of
//! `shared/bench-peers/README.md`. Closed loop: each connection sends its
//! next request when the previous response is read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "bench harness")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::dev::DevCa;
use certs::{IdentityWatch, TrustDomain};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use proxy::app::App;
use proxy::config::{Config, MapEnv};

const BACKEND: &str = "spiffe://bench.example/backend";
const CALLER: &str = "spiffe://bench.example/caller";

struct Run {
    name: &'static str,
    requests: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let connections = arg("--connections", 2) as usize;
    let seconds = arg("--seconds", 5);
    let pin = args.iter().any(|a| a == "--pin") && core_affinity::get_core_ids().is_some_and(|c| c.len() >= 2);
    certs::tls::install_default_provider();
    let runtime = |cpu: usize, name: &'static str| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1).thread_name(name).enable_all();
        if pin {
            builder.on_thread_start(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            });
        }
        builder.build().unwrap()
    };

    let dir = tempfile::tempdir().unwrap();
    // The app has its own thread, as nginx is its own process: each proxy gets one worker.
    let app_rt = runtime(0, "bench-app");
    let (app_addr, _app) = app_rt.block_on(proxy::demo::sample_app::start()).unwrap();
    let server_rt = runtime(0, "sidecar");
    let (inbound_addr, ca) = server_rt.block_on(async {
        let ca = DevCa::init(&dir.path().join("ca"), &TrustDomain::new("bench.example").unwrap()).unwrap();
        let policy = format!(
            "version: '1'\ntrust_domain: bench.example\ndefault_action: deny\npolicies:\n  - {{name: caller, spiffe_id: '{CALLER}', rules: [{{path: /budget/read, methods: [GET], action: allow}}]}}\n"
        );
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let yaml = format!(
            "identity: {{source: dev, dev: {{ca_dir: '{}', id: '{BACKEND}', ttl: 1h}}}}
telemetry: {{listen: '127.0.0.1:0'}}
inbound: {{listen: '127.0.0.1:0', upstream: 'http://{app_addr}', allowed_callers: ['{CALLER}']}}
policy: {{file: policy.yaml}}
",
            dir.path().join("ca").display()
        );
        let mut app = App::start(Config::parse(&dir.path().join("bench.yaml"), &yaml, &MapEnv::default()).unwrap())
            .await
            .unwrap();
        app.identity.wait_ready().await.unwrap();
        let addr = app.inbound_addr.unwrap();
        std::mem::forget(app); // lives as long as the process
        (addr, ca)
    });

    let tls = client_tls(&ca);
    let nginx = Nginx::start(dir.path(), &ca, app_addr, pin);
    if pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: 1 });
    }
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let duration = Duration::from_secs(seconds);
    let mut runs = Vec::new();
    let mut targets = vec![("direct", Target::Plain(app_addr)), ("inbound", Target::Mtls(inbound_addr, tls.clone()))];
    if let Some(nginx) = &nginx {
        targets.push(("nginx", Target::Mtls(nginx.addr, tls.clone())));
    }
    for (name, target) in targets {
        // Warm-up, then the measured run.
        client_rt.block_on(load(name, &target, connections, Duration::from_secs(1)));
        runs.push(client_rt.block_on(load(name, &target, connections, duration)));
    }
    report(&runs, connections, pin);
    drop(nginx);
    drop(server_rt);
    drop(app_rt);
}

/// nginx terminating mTLS (`ssl_verify_client on`) in front of the app.
struct Nginx {
    addr: SocketAddr,
    child: std::process::Child,
}

impl Nginx {
    fn start(dir: &std::path::Path, ca: &DevCa, app: SocketAddr, pin: bool) -> Option<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            eprintln!("nginx not installed: skipping the nginx target (apt-get install nginx-light)");
            return None;
        };
        let certs = dir.join("nginx-certs");
        let svid = ca.issue(&BACKEND.parse().unwrap(), Duration::from_secs(3600)).unwrap();
        certs::dev::write_svid_files(&certs, &svid, ca.bundle_pem()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let run = dir.join("nginx-run");
        std::fs::create_dir_all(&run).unwrap();
        let conf = format!(
            "worker_processes 1; master_process off; daemon off; pid {run}/nginx.pid; error_log {run}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  client_body_temp_path {run}; proxy_temp_path {run}; fastcgi_temp_path {run}; uwsgi_temp_path {run}; scgi_temp_path {run};
  upstream app {{ server {app}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl http2 backlog=4096;
    ssl_certificate {certs}/svid.pem; ssl_certificate_key {certs}/svid_key.pem;
    ssl_client_certificate {certs}/svid_bundle.pem; ssl_verify_client on; ssl_verify_depth 2;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}
  }}
}}
",
            run = run.display(),
            certs = certs.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut command = if pin {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "0", binary]);
            c
        } else {
            std::process::Command::new(binary)
        };
        let child = command
            .args(["-c", conf_path.to_str().unwrap(), "-p", run.to_str().unwrap(), "-e", "stderr"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                eprintln!("nginx did not start: skipping it");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self { addr, child })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
enum Target {
    Plain(SocketAddr),
    Mtls(SocketAddr, Arc<rustls::ClientConfig>),
}

async fn load(name: &'static str, target: &Target, connections: usize, duration: Duration) -> Run {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut sender = connect(&target).await;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                sender.ready().await.unwrap();
                let req = hyper::Request::get("/budget/read")
                    .header("host", "backend")
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = sender.send_request(req).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap();
                latency.record(t.elapsed().as_micros() as u64).unwrap();
                n += 1;
            }
            (n, latency)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut requests = 0;
    for t in tasks {
        let (n, h) = t.await.unwrap();
        requests += n;
        total.add(h).unwrap();
    }
    Run { name, requests, elapsed: started.elapsed(), latency: total }
}

async fn connect(target: &Target) -> hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>> {
    match target {
        Target::Plain(addr) => {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            handshake(TokioIo::new(tcp)).await
        }
        Target::Mtls(addr, tls) => {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("backend").unwrap();
            let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.unwrap();
            handshake(TokioIo::new(stream)).await
        }
    }
}

async fn handshake<I>(io: I) -> hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn client_tls(ca: &DevCa) -> Arc<rustls::ClientConfig> {
    let identity =
        IdentityWatch::fixed(Arc::new(ca.identity(&CALLER.parse().unwrap(), Duration::from_secs(3600), &[]).unwrap()));
    let mut config = certs::tls::client_config(identity, BACKEND.parse().unwrap()).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn report(runs: &[Run], connections: usize, pin: bool) {
    let topology = if pin { "app + proxy on CPU 0, load on CPU 1" } else { "unpinned" };
    println!("\nclosed loop, {connections} keep-alive connections, small response, {topology}\n");
    println!("| target  | req/s   | p50 (us) | p99 (us) | p99.9 (us) | vs direct |");
    println!("|---------|---------|----------|----------|------------|-----------|");
    let rps = |r: &Run| r.requests as f64 / r.elapsed.as_secs_f64();
    let direct = runs.iter().find(|r| r.name == "direct").map(rps).unwrap_or(1.0);
    for r in runs {
        println!(
            "| {:<7} | {:>7.0} | {:>8} | {:>8} | {:>10} | {:>8.2}x |",
            r.name,
            rps(r),
            r.latency.value_at_quantile(0.5),
            r.latency.value_at_quantile(0.99),
            r.latency.value_at_quantile(0.999),
            rps(r) / direct
        );
    }
}
