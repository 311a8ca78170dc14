//! Wiring: builds the identity source, metrics and listeners from a
//! [`Config`], runs them, reloads what is hot on SIGHUP, and drains on
//! SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use certs::IdentityWatch;
use certs::source::{self, FilesSource, SourceTask, SvidSource, WorkloadApiSource};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::reload::{Handles, ReloadError, Reloader};
use crate::admin::restore;
use crate::admin::state::StateFile;
use crate::admin::{self, Mgmt};
use crate::changes::Changes;
use crate::config::FactSource;
use crate::config::{Config, IdentityConfig};
use crate::dataplane::inbound::{Inbound, Layers};
use crate::dataplane::outbound::Outbound;
use crate::dataplane::server::{self, Listener};
use crate::facts::entra_token::EntraTokens;
use crate::facts::graph::Graph;
use crate::facts::http::HttpClient;
use crate::facts::jwks::{Jwks, JwksSettings};
use crate::layers::allowlist::AllowList;
use crate::layers::governance::{Governor, GraphFacts};
use crate::layers::oauth::Oauth;
use crate::layers::rbac::{self, PolicyStore};
use crate::observe::audit::AuditHub;
use crate::observe::metrics::Metrics;
use crate::observe::telemetry::Telemetry;

/// A running sidecar. Dropping it stops its tasks; [`App::shutdown`] drains.
pub struct App {
    pub telemetry_addr: SocketAddr,
    pub inbound_addr: Option<SocketAddr>,
    pub outbound_addr: Option<SocketAddr>,
    pub mgmt_addr: Option<SocketAddr>,
    pub identity: IdentityWatch,
    pub metrics: Arc<Metrics>,
    pub allowlist: Arc<AllowList>,
    pub inbound: Option<Arc<Inbound>>,
    pub policy: Option<Arc<PolicyStore>>,
    /// Layer 3; replaced when a reload changes the `jwt` section.
    pub oauth: Arc<arc_swap::ArcSwapOption<Oauth>>,
    /// Layers 4a and 4b, with the operator's pushes.
    pub governor: Arc<Governor>,
    pub audit: Arc<AuditHub>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    /// Listeners, which drain on shutdown.
    servers: Vec<JoinHandle<()>>,
    /// Followers, aborted on shutdown.
    followers: Vec<JoinHandle<()>>,
    _source: SourceTask,
}

impl App {
    /// Starts everything `config` describes; listeners are bound when this returns.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let (identity, source_task) = source::spawn(identity_source(&config.identity)?);
        let metrics = Arc::new(Metrics::new().context("metrics registry")?);
        let (shutdown, _) = watch::channel(false);
        let drain = config.runtime.drain_timeout;
        let allowlist = AllowList::new(config.inbound.as_ref().map(|i| i.allowed_callers.clone()).unwrap_or_default());
        let mut servers = Vec::new();
        let mut followers = vec![tokio::spawn(metrics.as_ref().clone().follow_identity(identity.clone()))];

        let local = crate::config::LOCAL_MAX_CONNECTIONS;
        let max_connections = config.limits.max_connections;
        let telemetry_listener = Listener::bind(
            "telemetry.listen",
            config.telemetry.listen,
            local,
            Some(metrics.open_connections("telemetry")),
        )
        .await?;
        let telemetry_addr = telemetry_listener.local_addr()?;
        let telemetry = Arc::new(Telemetry { identity: identity.clone(), metrics: metrics.clone() });
        let handler = move |req, _| telemetry.clone().handle(req);
        let limits = crate::config::LOCAL_LIMITS;
        servers.push(tokio::spawn(server::serve_http1(
            telemetry_listener,
            limits,
            shutdown.subscribe(),
            drain,
            handler,
        )));

        let audit = AuditHub::new(config.audit.ring, audit_sinks(&config.audit)?, metrics.clone());
        let state = match &config.mgmt {
            Some(mgmt) => Some(Arc::new(StateFile::open(&mgmt.state_file).map_err(anyhow::Error::msg)?)),
            None => None,
        };
        let http = HttpClient::new()?;
        // "Something a decision depends on changed": open streams are judged again.
        let changes = Changes::default();
        let tokens = config.entra.as_ref().map(|entra| EntraTokens::new(entra, http.clone()));
        let graph = match (&tokens, &config.entra) {
            (Some(tokens), Some(entra))
                if config.risk.source == FactSource::Graph || config.tags.source == FactSource::Graph =>
            {
                Some(Arc::new(Graph::new(
                    &entra.graph_endpoint,
                    tokens.clone(),
                    http.clone(),
                    (config.risk.refresh, config.tags.ttl),
                    (config.tags.attribute_set.clone(), config.tags.attribute.clone()),
                    metrics.clone(),
                    changes.clone(),
                )))
            }
            _ => None,
        };
        if let Some(graph) = graph.clone().filter(|_| config.risk.source == FactSource::Graph) {
            followers.push(tokio::spawn(graph.refresh_risk_forever(config.risk.refresh)));
        }
        if let Some(graph) = graph.clone().filter(|_| config.tags.source == FactSource::Graph) {
            followers.push(tokio::spawn(graph.refresh_tags_forever(config.tags.ttl)));
        }
        let graph = graph.map(GraphFacts::Live);
        let governor = Arc::new(Governor::new(config.risk.clone(), config.tags.clone(), graph, changes.clone()));
        let oauth = Arc::new(arc_swap::ArcSwapOption::<Oauth>::empty());
        if let Some(jwt) = &config.jwt {
            let settings = JwksSettings {
                discovery_url: format!("{}/{}/v2.0/.well-known/openid-configuration", jwt.authority, jwt.tenant_id),
                refresh: jwt.refresh,
                refetch_interval: jwt.refetch_interval,
            };
            let jwks = Jwks::new(settings, http.clone(), metrics.clone());
            followers.push(tokio::spawn(jwks.clone().refresh_forever()));
            oauth.store(Some(Arc::new(Oauth::new(jwt, jwks))));
        }
        let mut policy = None;
        if let Some(cfg) = &config.policy {
            let (engine, fingerprint) = rbac::load(cfg, config.env.as_ref(), config.jwt.as_ref())?;
            let audit = Some(audit.clone());
            policy = Some(PolicyStore::new(engine, cfg.mode, fingerprint, metrics.clone(), audit, changes.clone()));
        }
        let keys = Arc::new(ArcSwap::from_pointee(config.mgmt.as_ref().map(|m| m.keys.clone()).unwrap_or_default()));
        let handles = Handles {
            allowlist: allowlist.clone(),
            policy: policy.clone(),
            oauth: oauth.clone(),
            governor: governor.clone(),
            keys,
            state: state.clone(),
            changes: changes.clone(),
        };
        let reloader = Arc::new(Reloader::new(&config, handles));
        // What the admin API changed before a restart applies before the
        // first caller is served, and before the file watcher starts.
        if let Some(state) = &state {
            let _changing = reloader.lock().await;
            let in_force = restore::drop_stale(state, &config)?;
            restore::apply(&in_force, &config, &allowlist, policy.as_ref(), &governor).await?;
        }
        if policy.is_some() {
            followers.push(tokio::spawn(reloader.clone().watch_policy_files(std::time::Duration::from_secs(1))));
        }
        let (mut inbound_addr, mut inbound) = (None, None);
        if let Some(cfg) = config.inbound.clone() {
            let listener = Listener::bind(
                "inbound.listen",
                cfg.listen,
                max_connections,
                Some(metrics.open_connections("inbound")),
            )
            .await?;
            inbound_addr = Some(listener.local_addr()?);
            let store = policy.clone().context("`policy` is required with `inbound`")?;
            let layers =
                Layers { policy: store, oauth: oauth.clone(), governor: governor.clone(), audit: audit.clone() };
            let server =
                Inbound::new(cfg, identity.clone(), allowlist.clone(), metrics.clone(), layers, changes.clone())?;
            followers.push(tokio::spawn(server.clone().enforce()));
            servers.push(tokio::spawn(server.clone().serve(listener, shutdown.subscribe(), drain)));
            inbound = Some(server);
        }
        let mut outbound_addr = None;
        if let Some(cfg) = config.outbound.clone() {
            let listener = Listener::bind(
                "outbound.listen",
                cfg.listen,
                max_connections,
                Some(metrics.open_connections("outbound")),
            )
            .await?;
            outbound_addr = Some(listener.local_addr()?);
            let server = Outbound::new(cfg, identity.clone(), metrics.clone(), tokens.clone(), audit.clone());
            servers.push(tokio::spawn(server.serve(listener, shutdown.subscribe(), drain)));
        }
        let mut mgmt_addr = None;
        if let (Some(section), Some(state)) = (&config.mgmt, state) {
            let listener =
                Listener::bind("mgmt.listen", section.listen, local, Some(metrics.open_connections("mgmt"))).await?;
            mgmt_addr = Some(listener.local_addr()?);
            let ctx = admin::Context {
                allowlist: allowlist.clone(),
                governor: governor.clone(),
                policy: policy.clone(),
                oauth: oauth.clone(),
                audit: audit.clone(),
                identity: identity.clone(),
                metrics: metrics.clone(),
                state,
                reloader: reloader.clone(),
                started: std::time::Instant::now(),
                shutdown: shutdown.subscribe(),
            };
            servers.push(tokio::spawn(Mgmt::new(section, ctx)?.serve(listener, shutdown.subscribe(), drain)));
        }
        let show = |addr: Option<SocketAddr>| addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(
            telemetry = %telemetry_addr,
            inbound = %show(inbound_addr),
            outbound = %show(outbound_addr),
            mgmt = %show(mgmt_addr),
            config = %config.summary(),
            "a2a-sidecar started"
        );
        Ok(Self {
            telemetry_addr,
            inbound_addr,
            outbound_addr,
            mgmt_addr,
            reloader,
            identity,
            metrics,
            allowlist,
            inbound,
            policy,
            oauth,
            governor,
            audit,
            shutdown,
            servers,
            followers,
            _source: source_task,
        })
    }

    /// Re-reads the config file and applies all of it or nothing (SIGHUP;
    /// `POST /mgmt/reload` does the same).
    pub async fn reload(&self) -> Result<(), ReloadError> {
        self.reloader.reload().await
    }

    /// Every change goes through this (see [`Reloader`]).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout), then returns.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for server in self.servers.drain(..) {
            let _ = server.await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.servers.iter().chain(&self.followers).for_each(JoinHandle::abort);
    }
}

/// The audit trail's JSON-lines sinks. The file is opened now, so a path
/// the sidecar cannot write refuses to start instead of losing the trail.
fn audit_sinks(
    config: &crate::config::AuditSection,
) -> anyhow::Result<Vec<(String, crate::observe::audit::SinkWriter)>> {
    let mut sinks: Vec<(String, crate::observe::audit::SinkWriter)> = Vec::new();
    if let Some(path) = &config.file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open `audit.file` {}", path.display()))?;
        sinks.push((path.display().to_string(), Box::new(tokio::fs::File::from_std(file))));
    }
    if config.stdout {
        sinks.push(("stdout".to_owned(), Box::new(tokio::io::stdout())));
    }
    Ok(sinks)
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

/// The runtime for `runtime.worker_threads`: with one thread, tokio's
/// current-thread scheduler (tasks run on the thread that drives the
/// runtime: no cross-thread wake-ups or work-stealing bookkeeping, like a
/// one-worker nginx or Envoy); otherwise the multi-thread scheduler.
pub fn runtime_builder(config: &crate::config::RuntimeConfig) -> tokio::runtime::Builder {
    let mut builder = match config.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    builder
}

/// Runs the sidecar until SIGTERM or SIGINT (reloading on SIGHUP): builds
/// the runtime (`runtime.worker_threads`), starts, waits, drains.
pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = runtime_builder(&config.runtime).build().context("tokio runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let app = App::start(config).await?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    if let Err(e) = app.reload().await {
                        tracing::error!(error = %e, "reload refused; nothing changed");
                    }
                }
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        app.shutdown().await;
        Ok(())
    })
}
