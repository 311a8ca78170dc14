//! What SIGHUP and `POST /mgmt/reload` do: re-read the config file and apply
//! what can change at run time (allow-list, policy, `jwt` audiences and
//! leeway). The file is then the most recent change, so the admin API's
//! overrides of the same things are cleared from the state file.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::allowlist::AllowList;
use crate::config::{Config, Env};
use crate::mgmt::state::StateFile;
use crate::oauth::Oauth;
use crate::policy_store::PolicyStore;

pub struct Reloader {
    pub config_path: PathBuf,
    pub env: Arc<dyn Env>,
    pub oauth: Arc<ArcSwapOption<Oauth>>,
    pub policy: Option<Arc<PolicyStore>>,
    pub allowlist: Arc<AllowList>,
    pub state: Option<Arc<StateFile>>,
}

impl Reloader {
    pub fn env(&self) -> &dyn Env {
        self.env.as_ref()
    }

    /// A config or policy that does not load changes nothing.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = Config::load_with_env(&self.config_path, self.env.as_ref())?;
        // Audiences and leeway apply at once (a new validator, an empty token
        // cache); the signing keys stay with the running provider.
        if let (Some(jwt), Some(current)) = (&config.jwt, self.oauth.load_full()) {
            self.oauth.store(Some(Arc::new(Oauth::new(jwt, current.jwks().clone()))));
        }
        if let (Some(store), Some(cfg)) = (&self.policy, &config.policy) {
            store.reload(cfg, self.env.as_ref())?;
        }
        let callers = config.inbound.as_ref().map(|i| i.allowed_callers.clone()).unwrap_or_default();
        tracing::info!(allowed_callers = callers.len(), "configuration reloaded");
        self.allowlist.replace(callers);
        if let Some(state) = &self.state {
            state
                .update("reload:config", |s| {
                    (s.allowed_ids, s.config_sha256) = (None, None);
                    (s.policy_yaml, s.policy_sha256) = (None, None);
                })
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}
