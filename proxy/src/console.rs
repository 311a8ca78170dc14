//! `a2a-sidecar console --config console.yaml`: the operator console. A
//! control plane in front of many sidecars' `/mgmt`: it signs operators in
//! with OpenID Connect (admin or viewer from a claim), and talks to each
//! sidecar over mTLS with its own SVID (from the Workload API like any
//! workload), so no admin key is shared: each sidecar's `mgmt.tls.roles`
//! gives the console's SVID its role, and `mgmt.tls.consoles` lets it name
//! the person it acts for (the sidecar audits that person and applies the
//! lower of the two roles).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ConsoleConfig;
use crate::dataplane::server::{Listener, serve_http1};
use crate::facts::http::HttpClient;
use crate::observe::metrics::Metrics;

mod audit;
mod fleet;
mod oidc;
mod session;
mod web;

pub use fleet::Status;

/// 32 random bytes, base64url: session IDs, CSRF tokens, PKCE verifiers,
/// nonces, states (and the dev IdP's authorization codes).
pub fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    // Without randomness nothing here is safe: the process refuses to go on.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        std::process::abort();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Connections the console's listener holds at once.
const MAX_CONNECTIONS: usize = 256;

pub struct Console {
    oidc: oidc::Oidc,
    sessions: session::Sessions,
    fleet: Arc<fleet::Fleet>,
    audit: Arc<audit::Merged>,
}

/// A started console.
pub struct Running {
    pub addr: SocketAddr,
    pub identity: certs::IdentityWatch,
    console: Arc<Console>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _source: certs::source::SourceTask,
}

impl Running {
    /// Polls every sidecar now (the poller does so every `fleet.poll_interval`).
    pub async fn poll_now(&self) {
        self.console.fleet.poll_once().await;
    }

    pub fn fleet(&self) -> Arc<Vec<Status>> {
        self.console.fleet.snapshot()
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Starts the console: its SVID source, the fleet poller and the listener.
pub async fn start(config: ConsoleConfig) -> anyhow::Result<Running> {
    let (identity, source) = certs::source::spawn(crate::app::identity_source(&config.identity)?);
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    let fleet = fleet::Fleet::new(&config.sidecars, identity.clone(), config.fleet)?;
    let audit = Arc::new(audit::Merged::default());
    let listener = Listener::bind("listen", config.listen, MAX_CONNECTIONS, None).await?;
    let addr = listener.local_addr()?;
    let url = config.url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let oidc = oidc::Oidc::new(config.oidc.clone(), format!("{url}/callback"), HttpClient::new()?, metrics);
    let console = Arc::new(Console {
        oidc,
        sessions: session::Sessions::new(config.session_ttl),
        fleet: fleet.clone(),
        audit: audit.clone(),
    });
    let (shutdown, stop) = watch::channel(false);
    let handler = {
        let console = console.clone();
        move |req, remote| console.clone().handle(req, remote)
    };
    let server =
        tokio::spawn(serve_http1(listener, crate::config::LOCAL_LIMITS, stop, Duration::from_secs(2), handler));
    let poller = tokio::spawn(fleet.clone().poll_forever());
    let follower = tokio::spawn(audit.follow(fleet));
    tracing::info!(%addr, sidecars = config.sidecars.len(), "console listening");
    Ok(Running { addr, identity, console, shutdown, tasks: vec![server, poller, follower], _source: source })
}

/// The `console` subcommand: runs until SIGTERM or SIGINT.
pub fn run(config: ConsoleConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let running = start(config).await?;
        println!("a2a-sidecar console on http://{}", running.addr);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        running.shutdown().await;
        Ok(())
    })
}
