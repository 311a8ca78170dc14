//! Changes to what the sidecar enforces, one at a time: SIGHUP and
//! `POST /mgmt/reload` (the config file), the policy file watcher, and the
//! `/mgmt` writes all take [`Reloader::lock`], then validate everything,
//! then persist, then apply.
//!
//! A reload applies every field of the new configuration or none: a change
//! to a field only a restart can apply (see [`crate::config::HOT_FIELDS`])
//! refuses the reload as a whole, naming the fields. The config file is
//! then the most recent change, so the admin API's overrides of what it
//! sets (allow-list, policy) are cleared from the state file.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::admin::state::StateFile;
use crate::changes::Changes;
use crate::config::{AdminKey, Config, Env};
use crate::layers::allowlist::AllowList;
use crate::layers::governance::Governor;
use crate::layers::oauth::Oauth;
use crate::layers::pdp::PdpSlot;
use crate::layers::rbac::{self, Origin, PolicyStore};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config or policy does not validate.
    #[error("{0}")]
    Invalid(String),
    #[error("only a restart can apply changes to {}", .0.join(", "))]
    RestartRequired(Vec<String>),
    #[error("cannot record the change in the state file: {0}")]
    State(String),
}

/// What one look at the policy files did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilePoll {
    /// Their contents are what was last applied from them (or last refused).
    Unchanged,
    Applied,
    Rejected,
    /// A file cannot be read now (mid-replacement, say): tried again next time.
    Unreadable,
}

/// The live settings and the one lock every change takes.
pub struct Reloader {
    pub config_path: PathBuf,
    pub env: Arc<dyn Env>,
    /// The configuration last applied from the file (at start or by a reload).
    applied: ArcSwap<Config>,
    lock: tokio::sync::Mutex<()>,
    pub allowlist: Arc<AllowList>,
    pub policy: Option<Arc<PolicyStore>>,
    /// Layer 3; replaced when a reload changes the `jwt` section.
    pub oauth: Arc<ArcSwapOption<Oauth>>,
    pub governor: Arc<Governor>,
    /// The external AuthZEN PDP; rebuilt when `authzen.pdp` changes.
    pub pdp: Option<PdpSlot>,
    /// The admin keys (`mgmt.keys`).
    pub keys: Arc<ArcSwap<Vec<AdminKey>>>,
    pub state: Option<Arc<StateFile>>,
    changes: Changes,
    metrics: Arc<crate::observe::metrics::Metrics>,
    /// The config file's contents (fingerprint) last applied or refused: the
    /// watcher acts once per new content, so a bad edit is reported once.
    config_seen: std::sync::Mutex<Option<String>>,
}

/// The handles a [`Reloader`] changes.
pub struct Handles {
    pub allowlist: Arc<AllowList>,
    pub policy: Option<Arc<PolicyStore>>,
    pub oauth: Arc<ArcSwapOption<Oauth>>,
    pub governor: Arc<Governor>,
    pub pdp: Option<PdpSlot>,
    pub keys: Arc<ArcSwap<Vec<AdminKey>>>,
    pub state: Option<Arc<StateFile>>,
    /// Signalled after a reload: open streams are judged again.
    pub changes: Changes,
    /// `a2a_config_reloads_total`.
    pub metrics: Arc<crate::observe::metrics::Metrics>,
}

impl Reloader {
    /// `config` is what is running now.
    pub fn new(config: &Config, handles: Handles) -> Self {
        let Handles { allowlist, policy, oauth, governor, pdp, keys, state, changes, metrics } = handles;
        let config_seen = std::sync::Mutex::new(config_fingerprint(&config.path));
        Self {
            config_path: config.path.clone(),
            env: config.env.clone(),
            applied: ArcSwap::from_pointee(config.clone()),
            lock: tokio::sync::Mutex::new(()),
            allowlist,
            policy,
            oauth,
            governor,
            pdp,
            keys,
            state,
            changes,
            metrics,
            config_seen,
        }
    }

    pub fn env(&self) -> &dyn Env {
        self.env.as_ref()
    }

    /// The configuration in force (from the file; `/mgmt` overrides aside).
    pub fn applied(&self) -> Arc<Config> {
        self.applied.load_full()
    }

    /// Serialises every change: hold it from validation to application.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Re-reads the config file and applies all of it, or nothing (SIGHUP,
    /// `POST /mgmt/reload`, the watcher); counted in `a2a_config_reloads_total`.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let _changing = self.lock().await;
        let seen = config_fingerprint(&self.config_path);
        let result = self.reload_locked().await;
        self.metrics.config_reload(if result.is_ok() { "ok" } else { "error" });
        if result.is_ok() {
            *self.config_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = seen;
        }
        result
    }

    async fn reload_locked(&self) -> Result<(), ReloadError> {
        let config = Config::load_with_env(&self.config_path, self.env.as_ref())
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let fields = self.applied().restart_required(&config);
        if !fields.is_empty() {
            return Err(ReloadError::RestartRequired(fields));
        }

        // Validate everything before anything changes.
        let policy = match (&self.policy, &config.policy) {
            (Some(store), Some(cfg)) => {
                let built = async {
                    let sources = rbac::read_sources(cfg)?;
                    let fingerprint = sources.fingerprint.clone();
                    let engine =
                        rbac::build_sources(sources, cfg.clone(), self.env.clone(), config.jwt.clone()).await?;
                    Ok((engine, fingerprint))
                };
                match built.await {
                    Ok(built) => Some(built),
                    Err(e) => {
                        store.rejected("config", &e);
                        return Err(ReloadError::Invalid(e.to_string()));
                    }
                }
            }
            _ => None,
        };
        let oauth = match (&config.jwt, self.oauth.load_full()) {
            (Some(jwt), Some(current)) => Some(current.reconfigured(jwt)),
            _ => None,
        };
        // A changed `authzen.pdp`: a new client with an empty cache (no allow outlives it).
        let pdp = match &self.pdp {
            Some(slot) if self.applied().authzen.pdp != config.authzen.pdp => {
                let built = slot.build(config.authzen.pdp.as_ref());
                Some(built.map_err(|e| ReloadError::Invalid(format!("`authzen.pdp`: {e}")))?)
            }
            _ => None,
        };

        // Persist: the file is now the most recent change.
        if let Some(state) = &self.state {
            state
                .update("reload:config", |s| {
                    (s.allowed_ids, s.config_sha256) = (None, None);
                    (s.policy_yaml, s.policy_sha256) = (None, None);
                })
                .map_err(ReloadError::State)?;
        }

        // Apply.
        let callers = config.inbound.as_ref().map(|i| i.allowed_callers.clone()).unwrap_or_default();
        tracing::info!(allowed_callers = callers.len(), "configuration reloaded");
        self.allowlist.replace(callers);
        if let (Some(store), Some((engine, fingerprint)), Some(cfg)) = (&self.policy, policy, &config.policy) {
            store.install(engine, cfg.mode, Origin::Files { channel: "config", fingerprint });
        }
        if let Some(oauth) = oauth {
            self.oauth.store(Some(Arc::new(oauth)));
        }
        self.governor.configure(config.risk.clone(), config.tags.clone());
        if let (Some(slot), Some(pdp)) = (&self.pdp, pdp) {
            tracing::info!(pdp = pdp.as_ref().map(|p| p.config().url.as_str()), "authzen.pdp replaced");
            slot.current.store(pdp);
        }
        if let Some(mgmt) = &config.mgmt {
            self.keys.store(Arc::new(mgmt.keys.clone()));
        }
        self.applied.store(Arc::new(config));
        self.changes.bump();
        Ok(())
    }

    /// One look at the policy files: applies them when their contents differ
    /// from what was last applied from them (and from what was last refused,
    /// `last_rejected`, so a bad file is reported once, not every second).
    /// A file that has not changed since it was applied never overrides a
    /// later `/mgmt` change.
    pub async fn poll_policy_files(&self, last_rejected: &mut Option<String>) -> FilePoll {
        let (Some(store), Some(cfg)) = (&self.policy, self.applied().policy.clone()) else {
            return FilePoll::Unchanged;
        };
        let unchanged = |fingerprint: &String| {
            store.applied_from_files().as_ref() == Some(fingerprint) || last_rejected.as_ref() == Some(fingerprint)
        };
        // A cheap look first, without the lock...
        match rbac::read_sources(&cfg) {
            Ok(sources) if unchanged(&sources.fingerprint) => return FilePoll::Unchanged,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "policy files unreadable; trying again");
                return FilePoll::Unreadable;
            }
        }
        let _changing = self.lock().await;
        // ...then the files as they are now, under the lock: a reload or an
        // admin change may have happened meanwhile (and re-pointed the files).
        let applied = self.applied();
        if applied.policy.as_ref() != Some(&cfg) {
            return FilePoll::Unchanged;
        }
        let sources = match rbac::read_sources(&cfg) {
            Ok(sources) if unchanged(&sources.fingerprint) => return FilePoll::Unchanged,
            Ok(sources) => sources,
            Err(_) => return FilePoll::Unreadable,
        };
        let fingerprint = sources.fingerprint.clone();
        let engine = match rbac::build_sources(sources, cfg.clone(), self.env.clone(), applied.jwt.clone()).await {
            Ok(engine) => engine,
            Err(e) => {
                store.rejected("policy:file", &e);
                *last_rejected = Some(fingerprint);
                return FilePoll::Rejected;
            }
        };
        // The edited file is now the most recent change: drop an admin override.
        if let Some(state) = self.state.as_ref().filter(|s| s.get().policy_yaml.is_some())
            && let Err(e) = state.update("policy:file", |s| (s.policy_yaml, s.policy_sha256) = (None, None))
        {
            // Applied without being recorded, a restart would bring the older override back.
            tracing::error!(error = %e, "cannot record the policy file change in the state file; not applied");
            return FilePoll::Unreadable;
        }
        store.install(engine, cfg.mode, Origin::Files { channel: "policy:file", fingerprint });
        *last_rejected = None;
        FilePoll::Applied
    }

    /// Installs a policy set through the admin API (already validated and
    /// persisted, under [`Self::lock`]). `files`, the policy files'
    /// fingerprint as the change recorded it, counts as seen: the admin
    /// change is more recent, so a file edit the watcher had not yet applied
    /// does not override it later.
    pub fn install_admin_policy(
        &self,
        engine: policy::PolicyEngine,
        actor: String,
        files: Option<String>,
    ) -> Option<Arc<rbac::Loaded>> {
        let store = self.policy.as_ref()?;
        if let Some(fingerprint) = files {
            store.supersede_files(fingerprint);
        }
        Some(store.install(engine, store.current().mode, Origin::Admin { actor }))
    }

    /// An admin change was applied (under the lock): the config file as it is
    /// now counts as seen, so an edit not yet polled never overrides the
    /// change (as for the policy files).
    pub fn supersede_config_file(&self) {
        *self.config_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            config_fingerprint(&self.config_path);
    }

    /// One look at the config file: when its contents differ from what was
    /// last applied or refused, a reload (all or nothing, as SIGHUP does). A
    /// ConfigMap's symlink swap is a change of contents like any other.
    pub async fn poll_config_file(&self) -> FilePoll {
        let Some(now) = config_fingerprint(&self.config_path) else { return FilePoll::Unreadable };
        {
            let mut seen = self.config_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.as_deref() == Some(now.as_str()) {
                return FilePoll::Unchanged;
            }
            *seen = Some(now);
        }
        let path = self.config_path.display().to_string();
        match self.reload().await {
            Ok(()) => {
                tracing::info!(%path, "config file changed: applied");
                FilePoll::Applied
            }
            Err(e) => {
                tracing::error!(%path, error = %e, "config file changed but not applied; the running configuration stays");
                FilePoll::Rejected
            }
        }
    }

    /// Polls the config file and the policy files every `every`, for as
    /// long as the task runs.
    pub async fn watch_files(self: Arc<Self>, every: std::time::Duration) {
        let mut last_rejected = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.poll_config_file().await == FilePoll::Applied {
                continue;
            }
            self.poll_policy_files(&mut last_rejected).await;
        }
    }
}

/// The config file's contents as a fingerprint (`None` while unreadable).
fn config_fingerprint(path: &std::path::Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| crate::config::fingerprint_bytes([bytes.as_slice()]))
}

#[cfg(test)]
mod tests;
