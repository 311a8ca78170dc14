//! What the admin API changed before a restart (the state file), applied
//! again at start before the first caller is served; `explain` reads the
//! same, without writing.

use std::sync::Arc;

use crate::admin::state::{State, StateFile, file_fingerprints};
use crate::config::Config;
use crate::layers::allowlist::AllowList;
use crate::layers::governance::Governor;
use crate::layers::rbac::{self, PolicyStore};

/// Overrides that a later file edit superseded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stale {
    pub allow_list: bool,
    pub policy: bool,
}

/// The most recent change wins, whatever its channel: a config or policy
/// file edited after an admin override (even while the sidecar was down)
/// replaces it, as a SIGHUP or the policy watcher would have while running.
/// A changed config counts as a reload: both overrides go.
pub fn stale(state: &State, config: &Config) -> Stale {
    let (config_now, policy_now) = file_fingerprints(&config.path, config.policy.as_ref());
    let changed = |recorded: &Option<String>, now: Option<String>| recorded.is_some() && *recorded != now;
    let config_changed = changed(&state.config_sha256, config_now);
    let policy_changed = config_changed || changed(&state.policy_sha256, policy_now);
    Stale {
        allow_list: config_changed && state.allowed_ids.is_some(),
        policy: policy_changed && state.policy_yaml.is_some(),
    }
}

/// `state` without its stale overrides.
pub fn in_force(mut state: State, config: &Config) -> State {
    let stale = stale(&state, config);
    forget(&mut state, stale);
    state
}

fn forget(state: &mut State, stale: Stale) {
    if stale.allow_list {
        (state.allowed_ids, state.config_sha256) = (None, None);
    }
    if stale.policy {
        (state.policy_yaml, state.policy_sha256) = (None, None);
    }
}

/// Drops the stale overrides from the file (saying so) and returns what is in force.
pub fn drop_stale(file: &StateFile, config: &Config) -> anyhow::Result<State> {
    let stale = stale(&file.get(), config);
    if stale.allow_list {
        tracing::warn!(
            "the config file changed after the allow-list was set through /mgmt: the file's allow-list applies"
        );
    }
    if stale.policy {
        tracing::warn!("the policy files changed after a policy was set through /mgmt: the files' policy applies");
    }
    if stale != Stale::default() {
        file.update("start:files", |s| forget(s, stale)).map_err(anyhow::Error::msg)?;
    }
    Ok(file.get())
}

/// Re-applies what the admin API changed before the restart.
pub async fn apply(
    state: &State,
    config: &Config,
    allowlist: &AllowList,
    policy: Option<&Arc<PolicyStore>>,
    governor: &Governor,
) -> anyhow::Result<()> {
    if let Some(ids) = &state.allowed_ids {
        let patterns = ids.iter().map(|id| id.parse()).collect::<Result<Vec<certs::IdPattern>, _>>()?;
        allowlist.replace(patterns);
    }
    if let (Some(yaml), Some(store), Some(cfg)) = (&state.policy_yaml, policy, &config.policy) {
        let name = "mgmt.state_file policy";
        let engine = rbac::build_yaml(yaml.clone(), name, cfg.clone(), config.env.clone(), config.jwt.clone()).await?;
        let actor = state.last_change.clone().unwrap_or_else(|| name.to_owned());
        store.install(engine, cfg.mode, rbac::Origin::Admin { actor });
    }
    for (id, level) in &state.risks {
        governor.pushes.set_risk(&id.parse()?, Some(level.parse().map_err(anyhow::Error::msg)?));
    }
    for (id, tag) in &state.tags {
        governor.pushes.set_tag(&id.parse()?, Some(tag.clone()));
    }
    Ok(())
}
