//! Wiring: builds the identity source, metrics and listeners from a
//! [`Config`], runs them, and shuts them down.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use certs::IdentityWatch;
use certs::source::{self, FilesSource, SourceTask, SvidSource, WorkloadApiSource};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, IdentityConfig};
use crate::metrics::Metrics;
use crate::server;
use crate::telemetry::Telemetry;

/// A running sidecar. Dropping it stops its tasks; [`App::shutdown`] drains.
pub struct App {
    pub telemetry_addr: SocketAddr,
    pub identity: IdentityWatch,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _source: SourceTask,
}

impl App {
    /// Starts everything `config` describes; listeners are bound when this returns.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let (identity, source_task) = source::spawn(identity_source(&config.identity)?);
        let metrics = Arc::new(Metrics::new().context("metrics registry")?);
        let (shutdown, shutdown_rx) = watch::channel(false);

        let telemetry_listener = server::bind("telemetry.listen", config.telemetry.listen).await?;
        let telemetry_addr = telemetry_listener.local_addr()?;
        let telemetry = Arc::new(Telemetry { identity: identity.clone(), metrics: metrics.clone() });
        let handler = move |req| telemetry.clone().handle(req);
        let tasks = vec![
            tokio::spawn(server::serve_http1(telemetry_listener, handler, shutdown_rx)),
            tokio::spawn(metrics.as_ref().clone().follow_identity(identity.clone())),
        ];
        tracing::info!(telemetry = %telemetry_addr, "a2a-sidecar started");
        Ok(Self { telemetry_addr, identity, metrics, shutdown, tasks, _source: source_task })
    }

    /// Stops accepting, lets in-flight requests finish, then returns.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        // The first task is the telemetry server, which drains; the rest are followers.
        let mut tasks = self.tasks.drain(..);
        if let Some(server) = tasks.next() {
            let _ = server.await;
        }
        tasks.for_each(|t| t.abort());
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

fn identity_source(config: &IdentityConfig) -> anyhow::Result<Box<dyn SvidSource>> {
    Ok(match config {
        IdentityConfig::WorkloadApi { endpoint } => Box::new(WorkloadApiSource::new(Some(endpoint.clone()))),
        IdentityConfig::Files(files) => Box::new(FilesSource::new(files.clone())),
        #[cfg(feature = "dev")]
        IdentityConfig::Dev { ca_dir, id, ttl } => {
            let ca = certs::dev::DevCa::load(ca_dir)
                .with_context(|| format!("identity.dev.ca_dir `{}`", ca_dir.display()))?;
            Box::new(certs::source::dev::DevSource::new(Arc::new(ca), id.clone(), *ttl))
        }
        #[cfg(not(feature = "dev"))]
        IdentityConfig::Dev { .. } => anyhow::bail!("identity.source `dev` needs a build with the `dev` feature"),
    })
}

/// Runs the sidecar until SIGTERM or SIGINT: builds the runtime
/// (`runtime.worker_threads`), starts, waits, drains.
pub fn run(config: Config) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.runtime.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = builder.enable_all().build().context("tokio runtime")?;
    runtime.block_on(async {
        let app = App::start(config).await?;
        wait_for_signal().await?;
        tracing::info!("shutting down");
        app.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
