//! The live Layer 2 policy: built from the files in `policy` (or a YAML
//! from `PUT /mgmt/policy`), swapped atomically. A policy that fails to
//! parse, validate or compile never replaces the running one.
//!
//! The store remembers the fingerprint of the policy files' contents it
//! last applied *from the files*: the file watcher applies a file only when
//! its contents differ from that, so a file that has not changed since it
//! was applied never overrides a later admin change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use policy::{CompileOptions, PolicyEngine, PolicyError, Source};

use crate::config::{Env, JwtSection, PolicyConfig, PolicyMode};
use crate::observe::metrics::Metrics;

/// Why the policy files could not be turned into an engine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("`{file}`: {why}")]
    Unverifiable { file: PathBuf, why: String },
    #[error("policy build did not finish: {0}")]
    Aborted(String),
}

/// The policy files as read at one moment: what is built and what is
/// fingerprinted are the same bytes.
#[derive(Debug, Clone)]
pub struct Sources {
    pub reference: Source,
    pub cedar: Vec<Source>,
    /// [`crate::config::fingerprint`] of the contents, in file order.
    pub fingerprint: String,
}

/// The engine in force, in which mode, and when it was loaded.
pub struct Loaded {
    pub engine: Arc<PolicyEngine>,
    /// `policy.mode`: in shadow mode layers 2-4 only log what they would deny.
    pub mode: PolicyMode,
    pub loaded_at: SystemTime,
    /// Increments with every accepted policy (not with a mode change).
    pub generation: u64,
    /// `<document version>#<generation>`, for health and audit events.
    pub label: Arc<str>,
}

impl Loaded {
    pub fn new(engine: PolicyEngine, mode: PolicyMode, generation: u64) -> Self {
        let label = Arc::from(format!("{}#{generation}", engine.doc().version));
        Self { engine: Arc::new(engine), mode, loaded_at: SystemTime::now(), generation, label }
    }
}

/// Reads every policy file once.
pub fn read_sources(config: &PolicyConfig) -> Result<Sources, LoadError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|text| Source { name: path.display().to_string(), text })
            .map_err(|source| LoadError::Read { path: path.to_owned(), source })
    };
    let reference = read(&config.file)?;
    let cedar = config.cedar.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
    let contents = std::iter::once(&reference).chain(&cedar).map(|s| s.text.as_bytes());
    let fingerprint = crate::config::fingerprint_bytes(contents);
    Ok(Sources { reference, cedar, fingerprint })
}

/// Reads the policy files and builds the engine (parse, enrich, validate,
/// compile), checking that its `require_jwt` rules can be enforced with
/// `jwt`. Returns the engine and the files' fingerprint.
pub fn load(
    config: &PolicyConfig,
    env: &dyn Env,
    jwt: Option<&JwtSection>,
) -> Result<(PolicyEngine, String), LoadError> {
    let sources = read_sources(config)?;
    let engine = build(&sources.reference, &sources.cedar, config, env, jwt)?;
    Ok((engine, sources.fingerprint))
}

/// Builds the engine from sources already read.
pub fn build(
    reference: &Source,
    cedar: &[Source],
    config: &PolicyConfig,
    env: &dyn Env,
    jwt: Option<&JwtSection>,
) -> Result<PolicyEngine, LoadError> {
    let options = CompileOptions { case_insensitive_paths: config.case_insensitive_paths };
    let engine = PolicyEngine::build(reference, cedar, &|name| env.get(name), options)?;
    crate::layers::oauth::check_policy(engine.doc(), jwt)
        .map_err(|why| LoadError::Unverifiable { file: reference.name.clone().into(), why })?;
    Ok(engine)
}

/// [`build`] with `yaml` given (`PUT /mgmt/policy`, the state file); the
/// native Cedar files still come from `config`. On a blocking thread:
/// compiling a large policy must not hold a runtime worker.
pub async fn build_yaml(
    yaml: String,
    name: &str,
    config: PolicyConfig,
    env: Arc<dyn Env>,
    jwt: Option<JwtSection>,
) -> Result<PolicyEngine, LoadError> {
    let name = name.to_owned();
    off_thread(move || {
        let cedar = read_sources(&config)?.cedar;
        build(&Source { name, text: yaml }, &cedar, &config, env.as_ref(), jwt.as_ref())
    })
    .await
}

/// [`build`] from `sources`, on a blocking thread.
pub async fn build_sources(
    sources: Sources,
    config: PolicyConfig,
    env: Arc<dyn Env>,
    jwt: Option<JwtSection>,
) -> Result<PolicyEngine, LoadError> {
    off_thread(move || build(&sources.reference, &sources.cedar, &config, env.as_ref(), jwt.as_ref())).await
}

async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LoadError> + Send + 'static,
) -> Result<T, LoadError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| LoadError::Aborted(e.to_string()))?
}

/// Where a new policy came from, for the audit event and the files' fingerprint.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The policy files, with the fingerprint of what was read.
    Files { channel: &'static str, fingerprint: String },
    /// An admin change (the API, or the state file replaying one).
    Admin { actor: String },
}

pub struct PolicyStore {
    current: ArcSwap<Loaded>,
    /// Fingerprint of the files' contents last applied from the files.
    from_files: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<crate::observe::audit::AuditHub>>,
    changes: crate::changes::Changes,
}

impl PolicyStore {
    /// `fingerprint`: of the files `engine` was built from.
    pub fn new(
        engine: PolicyEngine,
        mode: PolicyMode,
        fingerprint: String,
        metrics: Arc<Metrics>,
        audit: Option<Arc<crate::observe::audit::AuditHub>>,
        changes: crate::changes::Changes,
    ) -> Arc<Self> {
        metrics.policy_mode(mode);
        let loaded = Loaded::new(engine, mode, 1);
        Arc::new(Self {
            current: ArcSwap::from_pointee(loaded),
            from_files: Mutex::new(Some(fingerprint)),
            metrics,
            audit,
            changes,
        })
    }

    /// The policy in force: one consistent snapshot for a whole request.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// The fingerprint of the files' contents last applied from them.
    pub fn applied_from_files(&self) -> Option<String> {
        self.from_files.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records that the files' current contents (`fingerprint`) have been
    /// seen: a more recent admin change supersedes them, so the watcher must
    /// not apply them afterwards.
    pub fn supersede_files(&self, fingerprint: String) {
        *self.from_files.lock().unwrap_or_else(PoisonError::into_inner) = Some(fingerprint);
    }

    /// Swaps in `engine` in `mode`; returns what is now in force.
    pub fn install(&self, engine: PolicyEngine, mode: PolicyMode, origin: Origin) -> Arc<Loaded> {
        let loaded = Arc::new(Loaded::new(engine, mode, self.current.load().generation + 1));
        let actor = match origin {
            Origin::Files { channel, fingerprint } => {
                *self.from_files.lock().unwrap_or_else(PoisonError::into_inner) = Some(fingerprint);
                channel.to_owned()
            }
            Origin::Admin { actor } => actor,
        };
        self.current.store(loaded.clone());
        self.changes.bump();
        self.metrics.policy_reload("ok");
        self.metrics.policy_mode(mode);
        tracing::info!(generation = loaded.generation, ?mode, by = actor, "policy installed");
        self.audit(true, Some(loaded.label.clone()), &actor);
        loaded
    }

    /// Counts and audits a policy that was refused; the running one stays.
    pub fn rejected(&self, channel: &str, error: &LoadError) {
        self.metrics.policy_reload("error");
        tracing::error!(%error, channel, "policy rejected; keeping the running policy");
        self.audit(false, None, channel);
    }

    /// Every reload, accepted or refused, is an audit event.
    fn audit(&self, accepted: bool, version: Option<Arc<str>>, channel: &str) {
        if let Some(audit) = &self.audit {
            use crate::observe::audit::{AuditReason, Decision, Direction};
            audit.record(crate::observe::audit::Event {
                direction: Direction::Mgmt,
                decision: if accepted { Decision::Allow } else { Decision::Deny },
                reason: if accepted { AuditReason::PolicyReloaded } else { AuditReason::PolicyRejected },
                policy_version: version,
                actor: Some(channel.to_owned()),
                ..crate::observe::audit::Event::default()
            });
        }
    }
}
