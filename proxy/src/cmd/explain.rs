//! `a2a-sidecar explain`: which layer allows or denies a request and why,
//! from the configuration alone (no network, no running sidecar).
//!
//! It builds what the sidecar builds from the same configuration (the
//! allow-list, the policy store, the governor, Layer 3) and applies the
//! admin API's overrides from `mgmt.state_file`, then runs the request
//! through the same code ([`explain_with`]). What only a live sidecar knows comes from the
//! question: the token and its keys (a JWKS file), and what Graph would say
//! of the caller when `risk` or `tags` come from Graph.

use std::sync::Arc;

use crate::admin::explain::PdpPart;
use crate::admin::restore;
use crate::admin::state::StateFile;
use crate::changes::Changes;
use crate::config::Config;
use crate::facts::jwks::Jwks;
use crate::layers::allowlist::AllowList;
use crate::layers::governance::{Governor, GraphFacts};
use crate::layers::oauth::Oauth;
use crate::layers::rbac::{self, PolicyStore};
use crate::observe::metrics::Metrics;

pub use crate::admin::explain::{Explanation, Parts, Question, Verdict, explain_with};

/// Explains `question` against `config`; `Err` for a configuration or
/// question that cannot be explained (exit 2).
pub fn explain(config: &Config, question: &Question<'_>) -> Result<Explanation, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
    runtime.block_on(explain_async(config, question))
}

/// The sidecar's decision pieces, built from the configuration as `App` builds them.
struct Offline {
    allowlist: Arc<AllowList>,
    policy: Arc<PolicyStore>,
    governor: Governor,
    oauth: Option<Oauth>,
}

impl Offline {
    async fn build(config: &Config, question: &Question<'_>) -> Result<Self, String> {
        let inbound = config.inbound.as_ref().ok_or("the config has no `inbound` section: nothing to explain")?;
        let policy = config.policy.as_ref().ok_or("`policy` is required with `inbound`")?;
        let metrics = Arc::new(Metrics::new().map_err(|e| e.to_string())?);
        let changes = Changes::default();
        let allowlist = AllowList::new(inbound.allowed_callers.clone());
        let (engine, fingerprint) =
            rbac::load(policy, config.env.as_ref(), config.jwt.as_ref()).map_err(|e| e.to_string())?;
        let store = PolicyStore::new(engine, policy.mode, fingerprint, metrics.clone(), None, changes.clone());
        let graph = GraphFacts::Stated { risk: question.graph_risk, tag: question.graph_tag.clone() };
        let governor = Governor::new(config.risk.clone(), config.tags.clone(), Some(graph), changes);
        let keys = match question.jwks {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("--jwks `{}`: {e}", path.display()))?;
                Some(policy::jwt::KeySet::from_jwks(&bytes).map_err(|e| format!("--jwks `{}`: {e}", path.display()))?)
            }
            None => None,
        };
        let oauth = match (&config.jwt, question.token) {
            // Offline, the given keys stand in for every issuer's (the token's `iss` still picks the issuer).
            (Some(jwt), _) => {
                let providers = crate::layers::oauth::key_sources(jwt)
                    .iter()
                    .map(|_| Jwks::offline(keys.clone(), metrics.clone()))
                    .collect();
                Some(Oauth::new(jwt, providers))
            }
            (None, Some(_)) => return Err("--token needs a `jwt` section in the config".into()),
            (None, None) => None,
        };
        // What the admin API changed (and a later file edit did not supersede), as at start.
        if let Some(mgmt) = &config.mgmt
            && mgmt.state_file.exists()
        {
            let file = StateFile::open(&mgmt.state_file)?;
            let state = restore::in_force(file.get(), config);
            restore::apply(&state, config, &allowlist, Some(&store), &governor).await.map_err(|e| format!("{e:#}"))?;
        }
        Ok(Self { allowlist, policy: store, governor, oauth })
    }
}

async fn explain_async(config: &Config, question: &Question<'_>) -> Result<Explanation, String> {
    let sidecar = Offline::build(config, question).await?;
    let parts = Parts {
        allowlist: &sidecar.allowlist,
        policy: &sidecar.policy,
        governor: &sidecar.governor,
        oauth: sidecar.oauth.as_ref(),
        configured: config.inbound.as_ref().map_or(&[][..], |i| &i.allowed_callers[..]),
        options: config.inbound.as_ref().map(|i| i.path_options).unwrap_or_default(),
        pdp: match config.authzen.pdp {
            Some(_) => PdpPart::Offline,
            None => PdpPart::NotConfigured,
        },
    };
    explain_with(parts, question).await
}
