//! Layer 2: choose the caller's entry, evaluate its Cedar slice (compiled
//! rules plus native policies), and say which policy decided and why.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, RestrictedExpression, Schema, ValidationMode, Validator,
};
use certs::SpiffeId;

use crate::compile::{self, CompileOptions, SCHEMA};
use crate::decision::{Decision, Reason};
use crate::hashed::{Answers, HashedCache};
use crate::reference::{Action, Entry, PolicyDoc, ReferenceError};

/// Why a policy set cannot be built. The old policy stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("`{file}`: {source}")]
    Reference { file: String, source: ReferenceError },
    #[error("`{file}`: cedar: {message}")]
    Cedar { file: String, message: String },
    #[error("`{file}`: policy id `{id}` is used twice")]
    DuplicateId { file: String, id: String },
    #[error("cedar schema: {0}")]
    Schema(String),
    #[error(
        "`{file}`: entry `{entry}`: the policy compiles to more than {} MiB of Cedar (this entry alone needs {bytes} bytes): \
         use fewer or shorter rules",
        compile::MAX_CEDAR_BYTES >> 20
    )]
    TooLarge { file: String, entry: String, bytes: usize },
}

/// A policy source file's name and text (the engine does no I/O).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// The evaluation input for Layer 2.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub caller: &'a SpiffeId,
    pub method: &'a str,
    /// The canonical path, trailing slash ignored (`CanonicalPath::for_matching`).
    pub path: &'a str,
}

/// The Layer 2 verdict and what later layers need from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The caller's entry in the policy document.
    pub entry: Option<usize>,
    /// The rule that allowed the request, when a rule did (not `default_action`
    /// or a native policy): its `require_jwt`, roles and tags apply next.
    pub rule: Option<usize>,
}

/// Bytes of decisions remembered per engine. Request paths are chosen by
/// callers, so the cache is bounded by what its entries weigh, not by their
/// number: a flood of distinct (long) paths only causes misses.
pub const CACHE_BYTES: u64 = 8 << 20;
/// A longer path (or path and method together: both are the caller's
/// choice) is decided by Cedar every time, never remembered.
pub const MAX_CACHED_PATH: usize = 1024;
/// What an entry costs besides its strings (moka's node, its queues and
/// table, the `Arc`, the allocator's headers), as measured: a scan of short
/// paths grew the heap by 657 bytes per entry whose strings are 68 bytes
/// (`tests/cache_memory.rs`). 160, an estimate, let the 8 MiB budget hold
/// 24 MiB.
const ENTRY_OVERHEAD: usize = 600;

/// A compiled, validated policy: immutable; swap a new one in to change it
/// (a new engine also starts with an empty decision cache).
pub struct PolicyEngine {
    doc: PolicyDoc,
    options: CompileOptions,
    slices: Vec<Slice>,
    exact: HashMap<String, usize>,
    prefixes: HashMap<String, usize>,
    native_ids: Vec<String>,
    authorizer: Authorizer,
    caller_type: EntityTypeName,
    action: EntityUid,
    resource: EntityUid,
    /// Decisions by a hash of their caller, method and path (a hit is
    /// checked against them: see [`HashedCache`]).
    cache: HashedCache<Cached>,
}

/// A remembered decision with the exact inputs it was made for: the key is
/// only a hash, so a hit is checked against them.
struct Cached {
    caller: String,
    method: String,
    path: String,
    verdict: Verdict,
}

/// A decision's inputs: the caller, the method and the canonical path.
type Inputs<'a> = (&'a str, &'a str, &'a str);

impl Answers<Inputs<'_>> for Cached {
    fn answers(&self, &(caller, method, path): &Inputs<'_>) -> bool {
        self.caller == caller && self.method == method && self.path == path
    }
}

impl Cached {
    /// Approximate bytes held by one entry.
    fn weight(_key: &u64, entry: &Arc<Self>) -> u32 {
        // Each policy ID: its `String` in the slice, and its text with the
        // allocator's header, which is never under 32 bytes.
        let ids: usize = entry.verdict.decision.policy_ids.iter().map(|id| 24 + (id.len() + 8).max(32)).sum();
        let bytes = ENTRY_OVERHEAD + entry.caller.len() + entry.method.len() + entry.path.len() + ids;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

struct Slice {
    set: PolicySet,
    rule_of: HashMap<PolicyId, usize>,
}

impl PolicyEngine {
    /// Builds the engine from a reference YAML and native Cedar files. Every
    /// policy is parsed and validated against the schema before anything is used.
    pub fn build(
        reference: &Source,
        cedar: &[Source],
        env: &dyn Fn(&str) -> Option<String>,
        options: CompileOptions,
    ) -> Result<Self, PolicyError> {
        let doc = PolicyDoc::from_yaml(&reference.text, env)
            .map_err(|source| PolicyError::Reference { file: reference.name.clone(), source })?;
        let schema = Schema::from_str(SCHEMA).map_err(|e| PolicyError::Schema(e.to_string()))?;
        let validator = Validator::new(schema);
        let native = native_policies(cedar, &validator)?;
        let native_ids = native.iter().map(|p| p.id().to_string()).collect();

        let mut slices = Vec::with_capacity(doc.entries.len());
        let mut budget = compile::MAX_CEDAR_BYTES;
        for entry in &doc.entries {
            let compiled = compile::compile_entry(entry, options, budget).map_err(|needed| PolicyError::TooLarge {
                file: reference.name.clone(),
                entry: entry.name.to_string(),
                bytes: needed,
            })?;
            budget -= compiled.iter().map(|c| c.text.len()).sum::<usize>().min(budget);
            slices.push(build_slice(compiled, &native, &reference.name, &validator)?);
        }
        let (mut exact, mut prefixes) = (HashMap::new(), HashMap::new());
        for (i, entry) in doc.entries.iter().enumerate() {
            match &entry.selector {
                crate::reference::Selector::Exact(id) => exact.insert(id.to_string(), i),
                crate::reference::Selector::Prefix(p) => prefixes.insert(p.clone(), i),
            };
        }
        let fixed = |s: &str| EntityUid::from_str(s).map_err(|e| PolicyError::Schema(e.to_string()));
        Ok(Self {
            doc,
            options,
            slices,
            exact,
            prefixes,
            native_ids,
            authorizer: Authorizer::new(),
            caller_type: EntityTypeName::from_str("Caller").map_err(|e| PolicyError::Schema(e.to_string()))?,
            action: fixed(r#"Action::"request""#)?,
            resource: fixed(r#"Service::"app""#)?,
            cache: HashedCache::new(moka::sync::Cache::builder().max_capacity(CACHE_BYTES).weigher(Cached::weight)),
        })
    }

    pub fn doc(&self) -> &PolicyDoc {
        &self.doc
    }

    pub fn options(&self) -> CompileOptions {
        self.options
    }

    /// IDs of the native Cedar policies, in load order.
    pub fn native_ids(&self) -> &[String] {
        &self.native_ids
    }

    /// The entry for `caller`: exact ID first, then each ancestor as a prefix.
    pub fn entry_for(&self, caller: &SpiffeId) -> Option<(usize, &Entry)> {
        let index = self.exact.get(caller.as_str()).copied().or_else(|| {
            let mut id = caller.as_str();
            loop {
                if let Some(i) = self.prefixes.get(id) {
                    return Some(*i);
                }
                id = id.rsplit_once('/').map(|(parent, _)| parent).filter(|p| p.len() > "spiffe:/".len())?;
            }
        })?;
        self.doc.entries.get(index).map(|e| (index, e))
    }

    /// Layer 2 for one request. Decisions depend only on the caller, the
    /// method and the canonical path, so a warm request skips Cedar.
    pub fn decide(&self, request: Request<'_>) -> Verdict {
        let inputs = (request.caller.as_str(), request.method, request.path);
        if let Some(hit) = self.cache.get(&inputs) {
            return hit.verdict.clone();
        }
        let verdict = self.decide_uncached(request);
        if request.path.len() + request.method.len() <= MAX_CACHED_PATH {
            let cached = Cached {
                caller: inputs.0.to_owned(),
                method: inputs.1.to_owned(),
                path: inputs.2.to_owned(),
                verdict: verdict.clone(),
            };
            self.cache.insert(&inputs, cached);
        }
        verdict
    }

    /// Entries and approximate bytes in the decision cache (after pending evictions).
    pub fn cache_usage(&self) -> (u64, u64) {
        self.cache.usage()
    }

    /// Layer 2 evaluated by Cedar, bypassing the decision cache.
    pub fn decide_uncached(&self, request: Request<'_>) -> Verdict {
        let Some((index, entry)) = self.entry_for(request.caller) else {
            return Verdict { decision: Decision::deny(Reason::NoCallerPolicy), entry: None, rule: None };
        };
        let Some(slice) = self.slices.get(index) else {
            return Verdict { decision: Decision::deny(Reason::NoCallerPolicy), entry: None, rule: None };
        };
        let path =
            if self.options.case_insensitive_paths { request.path.to_lowercase() } else { request.path.to_owned() };
        let context = Context::from_pairs([
            ("method".to_owned(), RestrictedExpression::new_string(request.method.to_ascii_uppercase())),
            ("path".to_owned(), RestrictedExpression::new_string(path)),
            (
                "trust_domain".to_owned(),
                RestrictedExpression::new_string(request.caller.trust_domain_name().to_owned()),
            ),
            ("caller_policy".to_owned(), RestrictedExpression::new_string(entry.name.to_string())),
        ]);
        let principal =
            EntityUid::from_type_name_and_id(self.caller_type.clone(), EntityId::new(request.caller.as_str()));
        let Ok(context) = context else { return error_verdict(index) };
        let Ok(cedar_request) =
            cedar_policy::Request::new(principal, self.action.clone(), self.resource.clone(), context, None)
        else {
            return error_verdict(index);
        };
        let response = self.authorizer.is_authorized(&cedar_request, &slice.set, &Entities::empty());
        // A policy that cannot be evaluated must not let a later rule (or a
        // permit) decide in its place: any error denies.
        if response.diagnostics().errors().next().is_some() {
            return error_verdict(index);
        }
        let satisfied = || response.diagnostics().reason();
        match response.decision() {
            // Only a native `forbid` can deny in Cedar: it wins over every rule.
            CedarDecision::Deny if satisfied().next().is_some() => {
                let decision = Decision {
                    policy_ids: satisfied().map(ToString::to_string).collect(),
                    ..Decision::deny(Reason::RuleDenied)
                };
                Verdict { decision, entry: Some(index), rule: None }
            }
            CedarDecision::Deny => self.default_action(index),
            CedarDecision::Allow => {
                // First matching rule wins; native permits allow when no rule matched.
                let first = satisfied()
                    .filter_map(|id| slice.rule_of.get(id).map(|rule| (*rule, id)))
                    .min_by_key(|(rule, _)| *rule);
                match first {
                    Some((rule, id)) if entry.rules.get(rule).is_some_and(|r| r.action == Action::Deny) => {
                        let decision =
                            Decision { policy_ids: Arc::new([id.to_string()]), ..Decision::deny(Reason::RuleDenied) };
                        Verdict { decision, entry: Some(index), rule: None }
                    }
                    Some((rule, id)) => {
                        let native = satisfied().filter(|p| !slice.rule_of.contains_key(*p)).map(ToString::to_string);
                        let policy_ids = std::iter::once(id.to_string()).chain(native).collect();
                        Verdict {
                            decision: Decision { policy_ids, ..Decision::allow() },
                            entry: Some(index),
                            rule: Some(rule),
                        }
                    }
                    None => {
                        let decision = Decision {
                            policy_ids: satisfied().map(ToString::to_string).collect(),
                            ..Decision::allow()
                        };
                        Verdict { decision, entry: Some(index), rule: None }
                    }
                }
            }
        }
    }

    /// No rule and no native policy decided: `default_action` does.
    fn default_action(&self, index: usize) -> Verdict {
        let policy_ids: Arc<[String]> = Arc::new([compile::DEFAULT_ACTION_ID.to_owned()]);
        let decision = match self.doc.default_action {
            Action::Allow => Decision { policy_ids, ..Decision::allow() },
            Action::Deny => Decision { policy_ids, ..Decision::deny(Reason::NoMatchingRule) },
        };
        Verdict { decision, entry: Some(index), rule: None }
    }
}

/// A request Cedar could not even be asked about fails closed.
fn error_verdict(entry: usize) -> Verdict {
    Verdict { decision: Decision::deny(Reason::NoMatchingRule), entry: Some(entry), rule: None }
}

fn build_slice(
    compiled: Vec<compile::CompiledPolicy>,
    native: &[Policy],
    file: &str,
    validator: &Validator,
) -> Result<Slice, PolicyError> {
    let mut set = PolicySet::new();
    let mut rule_of = HashMap::new();
    let cedar_err = |message: String| PolicyError::Cedar { file: file.to_owned(), message };
    for compiled in compiled {
        let id = PolicyId::new(&compiled.id);
        let policy = Policy::parse(Some(id.clone()), &compiled.text).map_err(|e| cedar_err(e.to_string()))?;
        set.add(policy).map_err(|_| PolicyError::DuplicateId { file: file.to_owned(), id: compiled.id.clone() })?;
        if let Some(rule) = compiled.rule {
            rule_of.insert(id, rule);
        }
    }
    validate(validator, &set, file)?;
    for policy in native {
        set.add(policy.clone())
            .map_err(|_| PolicyError::DuplicateId { file: file.to_owned(), id: policy.id().to_string() })?;
    }
    Ok(Slice { set, rule_of })
}

/// Parses native `.cedar` files; each policy is named by its `@id`
/// annotation, or `<file>#<n>` without one.
fn native_policies(files: &[Source], validator: &Validator) -> Result<Vec<Policy>, PolicyError> {
    let mut all = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for file in files {
        let cedar_err = |message: String| PolicyError::Cedar { file: file.name.clone(), message };
        let parsed = PolicySet::from_str(&file.text).map_err(|e| cedar_err(e.to_string()))?;
        if parsed.templates().next().is_some() {
            return Err(cedar_err("templates are not supported".into()));
        }
        validate(validator, &parsed, &file.name)?;
        for (n, policy) in parsed.policies().enumerate() {
            let name = policy.annotation("id").map_or_else(|| format!("{}#{n}", file.name), str::to_owned);
            if !seen.insert(name.clone()) {
                return Err(PolicyError::DuplicateId { file: file.name.clone(), id: name });
            }
            all.push(policy.new_id(PolicyId::new(name)));
        }
    }
    Ok(all)
}

fn validate(validator: &Validator, set: &PolicySet, file: &str) -> Result<(), PolicyError> {
    let result = validator.validate(set, ValidationMode::Strict);
    if result.validation_passed() {
        return Ok(());
    }
    let message = result.validation_errors().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    Err(PolicyError::Cedar { file: file.to_owned(), message })
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasherDefault;

    use super::*;
    use crate::hashed::Collide;

    fn cached(caller: &str, allow: bool) -> Cached {
        let decision = if allow { Decision::allow() } else { Decision::deny(Reason::NoMatchingRule) };
        let verdict = Verdict { decision, entry: Some(0), rule: None };
        Cached { caller: caller.into(), method: "GET".into(), path: "/x".into(), verdict }
    }

    #[test]
    fn a_key_collision_is_a_miss_never_another_requests_verdict() {
        let builder = moka::sync::Cache::builder().max_capacity(CACHE_BYTES).weigher(Cached::weight);
        let cache = HashedCache::with_key(builder, BuildHasherDefault::<Collide>::default());
        let allow = |hit: Option<Arc<Cached>>| hit.map(|c| c.verdict.decision.allow);
        let a = ("spiffe://td.example/a", "GET", "/x");
        cache.insert(&a, cached(a.0, true));
        assert_eq!(allow(cache.get(&a)), Some(true));
        // The same key, another caller, method or path: each a miss.
        for other in [("spiffe://td.example/b", "GET", "/x"), (a.0, "POST", "/x"), (a.0, "GET", "/y")] {
            assert_eq!(allow(cache.get(&other)), None, "{other:?}");
        }
        // A denial stored under the same key answers only for its own request.
        let b = ("spiffe://td.example/b", "GET", "/x");
        cache.insert(&b, cached(b.0, false));
        assert_eq!(allow(cache.get(&b)), Some(false));
        assert_eq!(allow(cache.get(&a)), None);
    }
}
