//! Wiring: builds the identity source, metrics and listeners from a
//! [`Config`], runs them, reloads what is hot on SIGHUP, and drains on
//! SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
use crate::config::{Config, IdentityConfig, LOCAL_LIMITS, LOCAL_MAX_CONNECTIONS};
use crate::dataplane::inbound::{Inbound, Layers};
use crate::dataplane::outbound::Outbound;
use crate::dataplane::server::{self, Listener};
use crate::facts::entra_token::EntraTokens;
use crate::facts::graph::Graph;
use crate::facts::http::HttpClient;
use crate::facts::jwks::Jwks;
use crate::layers::allowlist::AllowList;
use crate::layers::governance::{Governor, GraphFacts};
use crate::layers::oauth::Oauth;
use crate::layers::pdp::PdpSlot;
use crate::layers::rbac::{self, PolicyStore};
use crate::observe::audit::AuditHub;
use crate::observe::metrics::Metrics;
use crate::observe::telemetry::Telemetry;
use crate::observe::trace::otlp::SpanQueue;

/// A running sidecar. Dropping it stops its tasks; [`App::shutdown`] drains.
pub struct App {
    pub telemetry_addr: SocketAddr,
    pub inbound_addr: Option<SocketAddr>,
    pub outbound_addr: Option<SocketAddr>,
    pub mgmt_addr: Option<SocketAddr>,
    /// The AuthZEN PDP listener (`authzen.listen`).
    pub authzen_addr: Option<SocketAddr>,
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
    terminating: Arc<std::sync::atomic::AtomicBool>,
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
        let spans = match &config.telemetry.otlp_endpoint {
            Some(endpoint) => Some(SpanQueue::start(endpoint.clone(), HttpClient::new()?, metrics.clone())),
            None => None,
        };
        let audit = AuditHub::new(config.audit.ring, audit_sinks(&config.audit)?, spans, metrics.clone());
        let mut run = Running {
            identity,
            metrics,
            audit,
            // "Something a decision depends on changed": open streams are judged again.
            changes: Changes::default(),
            shutdown: watch::channel(false).0,
            drain: config.runtime.drain_timeout,
            policy_loaded: Arc::new(std::sync::atomic::AtomicBool::new(config.inbound.is_none())),
            terminating: Arc::default(),
            servers: Vec::new(),
            followers: Vec::new(),
        };
        run.followers.push(tokio::spawn(run.metrics.as_ref().clone().follow_identity(run.identity.clone())));
        let telemetry_addr = run.telemetry(&config).await?;
        let decisions = run.decisions(&config)?;
        let state = match &config.mgmt {
            Some(mgmt) => Some(Arc::new(StateFile::open(&mgmt.state_file).map_err(anyhow::Error::msg)?)),
            None => None,
        };
        let reloader = run.control(&config, &decisions, state.clone()).await?;
        let (inbound_addr, inbound) = run.inbound(&config, &decisions).await?;
        run.policy_loaded.store(true, std::sync::atomic::Ordering::Release);
        let outbound_addr = run.outbound(&config, decisions.tokens.clone()).await?;
        let (mgmt_addr, authzen_addr) = run.mgmt(&config, &decisions, state, &reloader).await?;
        let show = |addr: Option<SocketAddr>| addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(
            telemetry = %telemetry_addr,
            inbound = %show(inbound_addr),
            outbound = %show(outbound_addr),
            mgmt = %show(mgmt_addr),
            authzen = %show(authzen_addr),
            config = %config.summary(),
            "a2a-sidecar started"
        );
        let Running { identity, metrics, audit, shutdown, terminating, servers, followers, .. } = run;
        let Decisions { allowlist, policy, oauth, governor, .. } = decisions;
        Ok(Self {
            telemetry_addr,
            inbound_addr,
            outbound_addr,
            mgmt_addr,
            authzen_addr,
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
            terminating,
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

    /// The first step of a shutdown: `/readyz` (and `/mgmt/health`) fail from
    /// now on, while every listener keeps serving, so load balancers and
    /// Kubernetes endpoints stop sending here before [`Self::shutdown`].
    pub fn begin_shutdown(&self) {
        self.terminating.store(true, std::sync::atomic::Ordering::Release);
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

/// What every subsystem shares while the sidecar starts and runs.
struct Running {
    identity: IdentityWatch,
    metrics: Arc<Metrics>,
    audit: Arc<AuditHub>,
    changes: Changes,
    shutdown: watch::Sender<bool>,
    drain: Duration,
    /// For `/readyz`: set once the inbound side has its policy and listener.
    policy_loaded: Arc<std::sync::atomic::AtomicBool>,
    /// For `/readyz`: set at SIGTERM.
    terminating: Arc<std::sync::atomic::AtomicBool>,
    /// Listeners, which drain on shutdown.
    servers: Vec<JoinHandle<()>>,
    /// Followers, aborted on shutdown.
    followers: Vec<JoinHandle<()>>,
}

/// The state the layers decide by, and what feeds it.
struct Decisions {
    allowlist: Arc<AllowList>,
    policy: Option<Arc<PolicyStore>>,
    oauth: Arc<arc_swap::ArcSwapOption<Oauth>>,
    governor: Arc<Governor>,
    /// The sidecar's own Entra tokens (outbound routes, Graph).
    tokens: Option<Arc<EntraTokens>>,
    /// The external AuthZEN PDP (`authzen.pdp`).
    pdp: PdpSlot,
}

impl Running {
    async fn bind(
        &self,
        field: &'static str,
        addr: SocketAddr,
        max: usize,
        name: &'static str,
    ) -> anyhow::Result<Listener> {
        Ok(Listener::bind(field, addr, max, Some(self.metrics.open_connections(name))).await?)
    }

    /// `/healthz`, `/readyz`, `/metrics`.
    async fn telemetry(&mut self, config: &Config) -> anyhow::Result<SocketAddr> {
        let listener =
            self.bind("telemetry.listen", config.telemetry.listen, LOCAL_MAX_CONNECTIONS, "telemetry").await?;
        let addr = listener.local_addr()?;
        let telemetry = Arc::new(Telemetry {
            identity: self.identity.clone(),
            metrics: self.metrics.clone(),
            policy_loaded: self.policy_loaded.clone(),
            terminating: self.terminating.clone(),
        });
        let handler = move |req, _| telemetry.clone().handle(req);
        let serve = server::serve_http1(listener, LOCAL_LIMITS, self.shutdown.subscribe(), self.drain, handler);
        self.servers.push(tokio::spawn(serve));
        Ok(addr)
    }

    /// Layers 1 to 4 and their facts: the allow-list, the policy, the JWKS
    /// behind Layer 3, Graph behind Layer 4.
    fn decisions(&mut self, config: &Config) -> anyhow::Result<Decisions> {
        let allowlist = AllowList::new(config.inbound.as_ref().map(|i| i.allowed_callers.clone()).unwrap_or_default());
        let http = HttpClient::new()?;
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
                    self.metrics.clone(),
                    self.changes.clone(),
                )))
            }
            _ => None,
        };
        if let Some(graph) = graph.clone().filter(|_| config.risk.source == FactSource::Graph) {
            self.followers.push(tokio::spawn(graph.refresh_risk_forever(config.risk.refresh)));
        }
        if let Some(graph) = graph.clone().filter(|_| config.tags.source == FactSource::Graph) {
            self.followers.push(tokio::spawn(graph.refresh_tags_forever(config.tags.ttl)));
        }
        let graph = graph.map(GraphFacts::Live);
        let governor = Arc::new(Governor::new(config.risk.clone(), config.tags.clone(), graph, self.changes.clone()));
        let oauth = Arc::new(arc_swap::ArcSwapOption::<Oauth>::empty());
        if let Some(jwt) = &config.jwt {
            let mut providers = Vec::new();
            for settings in crate::layers::oauth::key_sources(jwt) {
                let jwks = Jwks::new(settings, http.clone(), self.metrics.clone());
                self.followers.push(tokio::spawn(jwks.clone().refresh_forever()));
                providers.push(jwks);
            }
            oauth.store(Some(Arc::new(Oauth::new(jwt, providers))));
        }
        let policy = match &config.policy {
            Some(cfg) => {
                let (engine, fingerprint) = rbac::load(cfg, config.env.as_ref(), config.jwt.as_ref())?;
                let (metrics, audit, changes) = (self.metrics.clone(), Some(self.audit.clone()), self.changes.clone());
                Some(PolicyStore::new(engine, cfg.mode, fingerprint, metrics, audit, changes))
            }
            None => None,
        };
        let pdp =
            PdpSlot::new(config.authzen.pdp.as_ref(), self.identity.clone(), self.metrics.clone(), tokens.clone())?;
        if let (Some(cfg), Some(store)) = (&config.authzen.pdp, &policy)
            && cfg.rules == crate::config::PdpRules::Marked
            && !store.current().engine.doc().entries.iter().any(|e| e.rules.iter().any(|r| r.ask_pdp))
        {
            tracing::warn!(
                "authzen.pdp.rules is `marked` but no policy rule has `ask_pdp: true`: the PDP is never asked"
            );
        }
        let authzen = config.authzen.pdp.is_some() || config.authzen.listen.is_some();
        if authzen && config.policy.as_ref().is_some_and(|p| p.mode == crate::config::PolicyMode::Shadow) {
            tracing::warn!(
                "policy.mode is shadow: the external PDP's denies are forwarded too, and the PDP listener \
                 answers `decision: true` (with context.shadow_deny) to what the policy would deny"
            );
        }
        Ok(Decisions { allowlist, policy, oauth, governor, tokens, pdp })
    }

    /// Every change goes through the reloader (SIGHUP, `/mgmt`, the policy
    /// watcher). What the admin API changed before a restart applies before
    /// the first caller is served, and before the file watcher starts.
    async fn control(
        &mut self,
        config: &Config,
        decisions: &Decisions,
        state: Option<Arc<StateFile>>,
    ) -> anyhow::Result<Arc<Reloader>> {
        let keys = Arc::new(ArcSwap::from_pointee(config.mgmt.as_ref().map(|m| m.keys.clone()).unwrap_or_default()));
        let handles = Handles {
            allowlist: decisions.allowlist.clone(),
            policy: decisions.policy.clone(),
            oauth: decisions.oauth.clone(),
            governor: decisions.governor.clone(),
            pdp: Some(decisions.pdp.clone()),
            keys,
            state: state.clone(),
            changes: self.changes.clone(),
            metrics: self.metrics.clone(),
        };
        let reloader = Arc::new(Reloader::new(config, handles));
        if let Some(state) = &state {
            let _changing = reloader.lock().await;
            let in_force = restore::drop_stale(state, config)?;
            let Decisions { allowlist, policy, governor, .. } = decisions;
            restore::apply(&in_force, config, allowlist, policy.as_ref(), governor).await?;
        }
        self.followers.push(tokio::spawn(reloader.clone().watch_files(Duration::from_secs(1))));
        Ok(reloader)
    }

    /// mTLS from peer sidecars to the app, through every layer.
    async fn inbound(
        &mut self,
        config: &Config,
        decisions: &Decisions,
    ) -> anyhow::Result<(Option<SocketAddr>, Option<Arc<Inbound>>)> {
        let Some(cfg) = config.inbound.clone() else { return Ok((None, None)) };
        let listener = self.bind("inbound.listen", cfg.listen, config.limits.max_connections, "inbound").await?;
        let addr = listener.local_addr()?;
        let layers = Layers {
            policy: decisions.policy.clone().context("`policy` is required with `inbound`")?,
            oauth: decisions.oauth.clone(),
            governor: decisions.governor.clone(),
            pdp: decisions.pdp.current.clone(),
            audit: self.audit.clone(),
        };
        let (identity, allowlist) = (self.identity.clone(), decisions.allowlist.clone());
        let inbound = Inbound::new(cfg, identity, allowlist, self.metrics.clone(), layers, self.changes.clone())?;
        self.followers.push(tokio::spawn(inbound.clone().enforce()));
        self.servers.push(tokio::spawn(server::serve(
            inbound.clone(),
            listener,
            self.shutdown.subscribe(),
            self.drain,
        )));
        Ok((Some(addr), Some(inbound)))
    }

    /// Plain HTTP from the app to peer sidecars over mTLS.
    async fn outbound(
        &mut self,
        config: &Config,
        tokens: Option<Arc<EntraTokens>>,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let Some(cfg) = config.outbound.clone() else { return Ok(None) };
        let listener = self.bind("outbound.listen", cfg.listen, config.limits.max_connections, "outbound").await?;
        let addr = listener.local_addr()?;
        let outbound = Outbound::new(cfg, self.identity.clone(), self.metrics.clone(), tokens, self.audit.clone());
        self.servers.push(tokio::spawn(server::serve(outbound, listener, self.shutdown.subscribe(), self.drain)));
        Ok(Some(addr))
    }

    /// The admin API, and the AuthZEN PDP listener it protects.
    async fn mgmt(
        &mut self,
        config: &Config,
        decisions: &Decisions,
        state: Option<Arc<StateFile>>,
        reloader: &Arc<Reloader>,
    ) -> anyhow::Result<(Option<SocketAddr>, Option<SocketAddr>)> {
        let (Some(section), Some(state)) = (&config.mgmt, state) else { return Ok((None, None)) };
        let listener = self.bind("mgmt.listen", section.listen, LOCAL_MAX_CONNECTIONS, "mgmt").await?;
        let addr = listener.local_addr()?;
        let ctx = admin::Context {
            allowlist: decisions.allowlist.clone(),
            governor: decisions.governor.clone(),
            policy: decisions.policy.clone(),
            oauth: decisions.oauth.clone(),
            pdp: decisions.pdp.current.clone(),
            audit: self.audit.clone(),
            identity: self.identity.clone(),
            metrics: self.metrics.clone(),
            state,
            reloader: reloader.clone(),
            started: std::time::Instant::now(),
            shutdown: self.shutdown.subscribe(),
            terminating: self.terminating.clone(),
            explain_budget: Arc::new(admin::explain_budget()),
        };
        let mgmt = Mgmt::new(section, ctx)?;
        let authzen = self.authzen(config, decisions, &mgmt).await?;
        let serve = mgmt.serve(listener, self.shutdown.subscribe(), self.drain);
        self.servers.push(tokio::spawn(serve));
        Ok((Some(addr), authzen))
    }

    /// `authzen.listen`: the AuthZEN PDP, answering from the live policy.
    async fn authzen(
        &mut self,
        config: &Config,
        decisions: &Decisions,
        mgmt: &Arc<Mgmt>,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let Some(listen) = config.authzen.listen else { return Ok(None) };
        let policy = decisions.policy.clone().context("`authzen.listen` needs the `policy` section")?;
        let listener = self.bind("authzen.listen", listen, LOCAL_MAX_CONNECTIONS, "authzen").await?;
        let addr = listener.local_addr()?;
        let tls = config.mgmt.as_ref().is_some_and(|m| m.tls_callers.is_some());
        let service = Arc::new(crate::admin::authzen::Service {
            allowlist: decisions.allowlist.clone(),
            policy,
            oauth: decisions.oauth.clone(),
            governor: decisions.governor.clone(),
            options: config.inbound.as_ref().map(|i| i.path_options).unwrap_or_default(),
            metrics: self.metrics.clone(),
            ids: crate::dataplane::request_id::RequestIds::new(),
            base_url: format!("{}://{addr}", if tls { "https" } else { "http" }),
        });
        let serve = mgmt.clone().serve_authzen(listener, self.shutdown.subscribe(), self.drain, service);
        self.servers.push(tokio::spawn(serve));
        Ok(Some(addr))
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

pub(crate) fn identity_source(config: &IdentityConfig) -> anyhow::Result<Box<dyn SvidSource>> {
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
        let delay = config.runtime.shutdown_delay;
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
        app.begin_shutdown();
        if !delay.is_zero() {
            tracing::info!(delay = ?delay, "shutting down: /readyz fails; still serving for runtime.shutdown_delay");
            // A second signal cuts the delay short.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        app.shutdown().await;
        Ok(())
    })
}
