//! The live Layer 2 policy: built from the files in `policy`, swapped
//! atomically on a file change, SIGHUP or (later) the admin API. A policy
//! that fails to parse, validate or compile never replaces the running one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use policy::{CompileOptions, PolicyEngine, PolicyError, Source};

use crate::config::{Env, JwtSection, PolicyConfig};
use crate::metrics::Metrics;

/// Why the policy files could not be turned into an engine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("`{file}`: {why}")]
    Unverifiable { file: PathBuf, why: String },
}

/// The engine in force and when it was loaded.
pub struct Loaded {
    pub engine: PolicyEngine,
    pub loaded_at: SystemTime,
    /// Increments with every accepted policy.
    pub generation: u64,
    /// `<document version>#<generation>`, for health and audit events.
    pub label: Arc<str>,
}

impl Loaded {
    pub fn new(engine: PolicyEngine, generation: u64) -> Self {
        let label = Arc::from(format!("{}#{generation}", engine.doc().version));
        Self { engine, loaded_at: SystemTime::now(), generation, label }
    }
}

pub struct PolicyStore {
    current: ArcSwap<Loaded>,
    metrics: Arc<Metrics>,
    jwt: Option<JwtSection>,
    audit: Option<Arc<crate::audit::AuditHub>>,
}

/// Reads the policy files and builds the engine (parse, enrich, validate,
/// compile), and checks that its `require_jwt` rules can be enforced with `jwt`.
pub fn load(config: &PolicyConfig, env: &dyn Env, jwt: Option<&JwtSection>) -> Result<PolicyEngine, LoadError> {
    let text = std::fs::read_to_string(&config.file)
        .map_err(|source| LoadError::Read { path: config.file.clone(), source })?;
    build(&text, &config.file.display().to_string(), config, env, jwt)
}

/// As [`load`], with the reference YAML given (`PUT /mgmt/policy`); the
/// native Cedar files still come from `config`.
pub fn build(
    yaml: &str,
    name: &str,
    config: &PolicyConfig,
    env: &dyn Env,
    jwt: Option<&JwtSection>,
) -> Result<PolicyEngine, LoadError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|text| Source { name: path.display().to_string(), text })
            .map_err(|source| LoadError::Read { path: path.to_owned(), source })
    };
    let reference = Source { name: name.to_owned(), text: yaml.to_owned() };
    let cedar = config.cedar.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
    let options = CompileOptions { case_insensitive_paths: config.case_insensitive_paths };
    let engine = PolicyEngine::build(&reference, &cedar, &|name| env.get(name), options)?;
    crate::oauth::check_policy(engine.doc(), jwt).map_err(|why| LoadError::Unverifiable { file: name.into(), why })?;
    Ok(engine)
}

impl PolicyStore {
    pub fn new(
        engine: PolicyEngine,
        metrics: Arc<Metrics>,
        jwt: Option<JwtSection>,
        audit: Option<Arc<crate::audit::AuditHub>>,
    ) -> Arc<Self> {
        let loaded = Loaded::new(engine, 1);
        Arc::new(Self { current: ArcSwap::from_pointee(loaded), metrics, jwt, audit })
    }

    /// Every reload, accepted or refused, is an audit event.
    fn audit(&self, accepted: bool, version: Option<Arc<str>>, channel: &str) {
        if let Some(audit) = &self.audit {
            audit.record(crate::audit::Event {
                direction: "mgmt",
                decision: if accepted { "allow" } else { "deny" },
                layer: "none",
                reason: if accepted { "policy_reloaded" } else { "policy_rejected" },
                policy_version: version,
                actor: Some(channel.to_owned()),
                ..crate::audit::Event::default()
            });
        }
    }

    /// The policy in force: one consistent snapshot for a whole request.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Swaps in an engine built elsewhere (`PUT /mgmt/policy`); returns its generation.
    pub fn install(&self, engine: PolicyEngine) -> u64 {
        let loaded = Arc::new(Loaded::new(engine, self.current.load().generation + 1));
        let generation = loaded.generation;
        self.current.store(loaded.clone());
        self.metrics.policy_reload("ok");
        self.audit(true, Some(loaded.label.clone()), "admin-api");
        generation
    }

    /// Builds a new engine from `config` and swaps it in; on error the
    /// running policy stays and the error is logged and counted.
    pub fn reload(&self, config: &PolicyConfig, env: &dyn Env) -> Result<(), LoadError> {
        match load(config, env, self.jwt.as_ref()) {
            Ok(engine) => {
                let loaded = Arc::new(Loaded::new(engine, self.current.load().generation + 1));
                self.current.store(loaded.clone());
                self.metrics.policy_reload("ok");
                tracing::info!(generation = loaded.generation, file = %config.file.display(), "policy reloaded");
                self.audit(true, Some(loaded.label.clone()), "config");
                Ok(())
            }
            Err(e) => {
                self.metrics.policy_reload("error");
                tracing::error!(error = %e, "policy rejected; keeping the running policy");
                self.audit(false, None, "config");
                Err(e)
            }
        }
    }
}

/// What identifies a version of a file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads the policy whenever one of its files changes (polled, which also
/// sees Kubernetes' ConfigMap symlink swaps).
pub async fn watch(
    store: Arc<PolicyStore>,
    config: PolicyConfig,
    env: Arc<dyn Env>,
    every: Duration,
    state: Option<Arc<crate::mgmt::state::StateFile>>,
) {
    let files: Vec<PathBuf> = config.files().map(PathBuf::from).collect();
    let stamps = |files: &[PathBuf]| files.iter().map(|f| stamp(f)).collect::<Vec<_>>();
    let mut last = stamps(&files);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = stamps(&files);
        if now != last {
            last = now;
            // Errors are logged and counted inside; the running policy stays.
            let reloaded = store.reload(&config, env.as_ref()).is_ok();
            // The edited file is now the most recent change: drop an admin override.
            if let (true, Some(state)) = (reloaded, &state)
                && state.get().policy_yaml.is_some()
                && let Err(e) = state.update("policy:file", |s| (s.policy_yaml, s.policy_sha256) = (None, None))
            {
                tracing::error!(error = %e, "cannot record the policy file change in the state file");
            }
        }
    }
}
