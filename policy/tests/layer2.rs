//! Layer 2 end to end inside the policy crate: the reference YAML compiled to
//! Cedar, native policies, and the decisions with their policy IDs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests")]

use std::collections::HashMap;

use certs::SpiffeId;
use policy::engine::Request;
use policy::{CompileOptions, PolicyEngine, Source};
use proptest::prelude::*;

const SAMPLE: &str = include_str!("../../examples/reference-policy/spiffe-rbac-policy.yaml");
const PERMISSIVE: &str = include_str!("../../examples/reference-policy/spiffe-rbac-policy-permissive.yaml");
const BP: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid";

fn env() -> HashMap<String, String> {
    let mut env = HashMap::new();
    for name in ["budget-report", "employee-menus", "budget-approval", "admin-control-plane"] {
        let key = name.to_ascii_uppercase().replace('-', "_");
        env.insert(format!("SPIFFE_PREFIX_{key}"), format!("{BP}/{name}"));
    }
    env.insert("SPIFFE_ID_GOOGLE_BUDGET_READER".into(), "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google".into());
    env.insert("ENTRA_ID_GOOGLE_BUDGET_READER".into(), "11111111-0000-0000-0000-000000000001".into());
    env.insert("SPIFFE_ID_GITHUB_BUDGET_READER".into(), "spiffe://aim.microsoft.com/ests/bp/gh/aid/github".into());
    env.insert("ENTRA_ID_GITHUB_BUDGET_READER".into(), "11111111-0000-0000-0000-000000000002".into());
    env
}

fn engine_with(yaml: &str, cedar: &[&str], options: CompileOptions) -> Result<PolicyEngine, policy::PolicyError> {
    let env = env();
    let cedar: Vec<Source> = cedar
        .iter()
        .enumerate()
        .map(|(i, t)| Source { name: format!("extra{i}.cedar"), text: (*t).to_owned() })
        .collect();
    PolicyEngine::build(
        &Source { name: "policy.yaml".into(), text: yaml.into() },
        &cedar,
        &|k| env.get(k).cloned(),
        options,
    )
}

fn engine(yaml: &str) -> PolicyEngine {
    engine_with(yaml, &[], CompileOptions::default()).unwrap()
}

/// (allowed, reason, policy ids, matched rule)
type Outcome = (bool, &'static str, Vec<String>, Option<usize>);

/// One row: caller, method, path, allowed, reason, policy ids.
type Case<'a> = (String, &'a str, &'a str, bool, &'a str, Vec<&'a str>);

fn decide(engine: &PolicyEngine, caller: &str, method: &str, path: &str) -> Outcome {
    let caller: SpiffeId = caller.parse().unwrap();
    let v = engine.decide(Request { caller: &caller, method, path });
    (v.decision.allow, v.decision.reason.as_str(), v.decision.policy_ids.to_vec(), v.rule)
}

#[test]
fn the_reference_sample_decides_like_the_reference() {
    let e = engine(SAMPLE);
    let report = format!("{BP}/budget-report");
    let cases: Vec<Case> = vec![
        (report.clone(), "GET", "/budget/read", true, "allowed", vec!["budget-report/rules/0"]),
        (report.clone(), "post", "/budget/read", true, "allowed", vec!["budget-report/rules/0"]),
        (format!("{report}/instance-7"), "GET", "/budget/read", true, "allowed", vec!["budget-report/rules/0"]),
        (report.clone(), "POST", "/budget/submit", false, "rule_denied", vec!["budget-report/rules/1"]),
        (report.clone(), "GET", "/budget/submit", false, "no_matching_rule", vec!["default_action"]),
        (report.clone(), "GET", "/budget/readx", false, "no_matching_rule", vec!["default_action"]),
        (report.clone(), "GET", "/budget/read/x", false, "no_matching_rule", vec!["default_action"]),
        (format!("{BP}/employee-menus"), "GET", "/budget/read", false, "rule_denied", vec!["employee-menus/rules/0"]),
        (format!("{BP}/employee-menus"), "DELETE", "/", false, "rule_denied", vec!["employee-menus/rules/0"]),
        (format!("{BP}/budget-approval"), "POST", "/budget/submit", true, "allowed", vec!["budget-approval/rules/1"]),
        (format!("{BP}/budget-approval"), "GET", "/budget/read", true, "allowed", vec!["budget-approval/rules/0"]),
        (
            format!("{BP}/budget-approval"),
            "DELETE",
            "/budget/submit",
            false,
            "no_matching_rule",
            vec!["default_action"],
        ),
        (
            format!("{BP}/admin-control-plane"),
            "PUT",
            "/mgmt/agent-risk",
            true,
            "allowed",
            vec!["admin-control-plane/rules/0"],
        ),
        (format!("{BP}/admin-control-plane"), "GET", "/mgmt", true, "allowed", vec!["admin-control-plane/rules/0"]),
        (format!("{BP}/admin-control-plane"), "GET", "/mgmtx", false, "no_matching_rule", vec!["default_action"]),
        (format!("{BP}/admin-control-plane"), "POST", "/mgmt/x", false, "no_matching_rule", vec!["default_action"]),
        (
            "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google".into(),
            "GET",
            "/budget/read",
            true,
            "allowed",
            vec!["google-budget-reader/rules/0"],
        ),
        (
            "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google".into(),
            "PATCH",
            "/budget/submit",
            false,
            "rule_denied",
            vec!["google-budget-reader/rules/1"],
        ),
        (
            "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/other".into(),
            "GET",
            "/budget/read",
            false,
            "no_caller_policy",
            vec![],
        ),
        (format!("{BP}/budget-reportx"), "GET", "/budget/read", false, "no_caller_policy", vec![]),
        ("spiffe://aim.microsoft.com/unknown".into(), "GET", "/budget/read", false, "no_caller_policy", vec![]),
    ];
    for (caller, method, path, allow, reason, ids) in cases {
        let (got_allow, got_reason, got_ids, _) = decide(&e, &caller, method, path);
        assert_eq!(
            (got_allow, got_reason, got_ids.iter().map(String::as_str).collect::<Vec<_>>()),
            (allow, reason, ids),
            "{caller} {method} {path}"
        );
    }
    // The matched rule carries Layer 3 requirements.
    let (_, _, _, rule) = decide(&e, &report, "GET", "/budget/read");
    assert_eq!(rule, Some(0));
    assert!(e.doc().entries[0].rules[0].require_jwt);
}

const HEAD: &str = "version: '5'\ntrust_domain: td.example\n";

fn one_entry(default_action: &str, rules: &str) -> String {
    format!(
        "{HEAD}default_action: {default_action}\npolicies:\n  - name: a\n    spiffe_id: 'spiffe://td.example/a'\n    rules:\n{rules}"
    )
}

#[test]
fn first_match_wins_in_both_orders() {
    let allow_first = one_entry(
        "deny",
        "      - {path: '/x/*', methods: [GET], action: allow}\n      - {path: '/x/secret', methods: ['*'], action: deny}\n",
    );
    let deny_first = one_entry(
        "allow",
        "      - {path: '/x/secret', methods: ['*'], action: deny}\n      - {path: '/x/*', methods: [GET], action: allow}\n",
    );
    let a = "spiffe://td.example/a";
    let e = engine(&allow_first);
    assert_eq!(decide(&e, a, "GET", "/x/secret"), (true, "allowed", vec!["a/rules/0".into()], Some(0)));
    assert_eq!(decide(&e, a, "POST", "/x/secret"), (false, "rule_denied", vec!["a/rules/1".into()], None));
    let e = engine(&deny_first);
    assert_eq!(decide(&e, a, "GET", "/x/secret"), (false, "rule_denied", vec!["a/rules/0".into()], None));
    assert_eq!(decide(&e, a, "GET", "/x/open"), (true, "allowed", vec!["a/rules/1".into()], Some(1)));
    // default_action: allow applies only when no rule matched, and is named.
    assert_eq!(decide(&e, a, "GET", "/y"), (true, "allowed", vec!["default_action".into()], None));
}

#[test]
fn default_allow_never_covers_unknown_callers() {
    let e = engine(PERMISSIVE);
    assert_eq!(
        decide(&e, &format!("{BP}/budget-report"), "DELETE", "/anything"),
        (true, "allowed", vec!["default_action".into()], None)
    );
    assert_eq!(
        decide(&e, "spiffe://aim.microsoft.com/stranger", "GET", "/"),
        (false, "no_caller_policy", vec![], None)
    );
}

#[test]
fn case_insensitive_paths_is_opt_in() {
    let yaml = one_entry("deny", "      - {path: '/Admin/*', methods: [GET], action: allow}\n");
    let a = "spiffe://td.example/a";
    assert!(!decide(&engine(&yaml), a, "GET", "/admin/x").0);
    let folded = engine_with(&yaml, &[], CompileOptions { case_insensitive_paths: true }).unwrap();
    assert!(decide(&folded, a, "GET", "/ADMIN/x").0);
}

#[test]
fn native_cedar_policies_add_to_the_reference_and_forbid_wins() {
    let yaml = one_entry("deny", "      - {path: '/*', methods: ['*'], action: allow}\n");
    let forbid = r#"@id("no-deletes") forbid(principal, action, resource) when { context.method == "DELETE" };"#;
    let permit_other = r#"@id("b-reads") permit(principal == Caller::"spiffe://td.example/b", action, resource) when { context.method == "GET" };"#;
    let e = engine_with(&yaml, &[forbid, permit_other], CompileOptions::default()).unwrap();
    let a = "spiffe://td.example/a";
    assert_eq!(decide(&e, a, "GET", "/x"), (true, "allowed", vec!["a/rules/0".into()], Some(0)));
    assert_eq!(decide(&e, a, "DELETE", "/x"), (false, "rule_denied", vec!["no-deletes".into()], None));
    assert_eq!(e.native_ids(), ["no-deletes", "b-reads"]);

    let bad_attr = r#"permit(principal, action, resource) when { context.colour == "red" };"#;
    let err = engine_with(&yaml, &[bad_attr], CompileOptions::default()).err().unwrap().to_string();
    assert!(err.contains("extra0.cedar") && err.contains("colour"), "{err}");
    let syntax = "permit(principal, action resource);";
    assert!(
        engine_with(&yaml, &[syntax], CompileOptions::default()).err().unwrap().to_string().contains("extra0.cedar")
    );
    let dup = r#"@id("x") permit(principal, action, resource); @id("x") forbid(principal, action, resource);"#;
    assert!(
        engine_with(&yaml, &[dup], CompileOptions::default()).err().unwrap().to_string().contains("`x` is used twice")
    );
}

#[test]
fn odd_characters_in_rule_paths_are_escaped_not_injected() {
    let yaml = one_entry(
        "deny",
        "      - {path: '/a\"b/*', methods: [GET], action: allow}\n      - {path: '/é x', methods: [GET], action: allow}\n",
    );
    let e = engine(&yaml);
    let a = "spiffe://td.example/a";
    assert!(decide(&e, a, "GET", "/a\"b/c").0);
    assert!(decide(&e, a, "GET", "/é x").0);
    assert!(!decide(&e, a, "GET", "/a").0);
}

// ---- property test: the compiled Cedar agrees with a direct reading of the rules ----

#[derive(Debug, Clone)]
struct RuleSpec {
    path: &'static str,
    methods: Vec<&'static str>,
    allow: bool,
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    let path = prop::sample::select(vec!["/*", "/a", "/a/*", "/a/b", "/a/b/*", "/b", "/b/*", "/"]);
    let methods = prop::collection::vec(prop::sample::select(vec!["GET", "POST", "PUT", "*"]), 1..3);
    (path, methods, any::<bool>()).prop_map(|(path, methods, allow)| RuleSpec { path, methods, allow })
}

/// The reference's algorithm, written plainly.
fn interpret(rules: &[RuleSpec], default_allow: bool, method: &str, path: &str) -> (bool, Option<usize>) {
    let path_matches = |p: &str| match p.strip_suffix("/*") {
        _ if p == "/*" => true,
        Some(prefix) => path == prefix || path.starts_with(&format!("{prefix}/")),
        None => p == path,
    };
    for (i, r) in rules.iter().enumerate() {
        if r.methods.iter().any(|m| *m == "*" || m.eq_ignore_ascii_case(method)) && path_matches(r.path) {
            return (r.allow, Some(i));
        }
    }
    (default_allow, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn cedar_equals_the_direct_interpretation(
        rules in prop::collection::vec(rule_spec(), 0..5),
        default_allow in any::<bool>(),
        requests in prop::collection::vec((prop::sample::select(vec!["GET", "post", "PUT", "DELETE"]), prop::sample::select(vec!["/", "/a", "/a/b", "/a/b/c", "/ab", "/b", "/c"])), 1..12),
    ) {
        let rule_yaml: String = rules
            .iter()
            .map(|r| format!("      - {{path: '{}', methods: [{}], action: {}}}\n", r.path,
                r.methods.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", "),
                if r.allow { "allow" } else { "deny" }))
            .collect();
        let yaml = one_entry(if default_allow { "allow" } else { "deny" }, if rule_yaml.is_empty() { "      []\n" } else { &rule_yaml });
        let yaml = yaml.replace("rules:\n      []", "rules: []");
        let e = engine(&yaml);
        for (method, path) in requests {
            let (want_allow, want_rule) = interpret(&rules, default_allow, method, path);
            let (allow, reason, ids, _) = decide(&e, "spiffe://td.example/a", method, path);
            prop_assert_eq!(allow, want_allow, "{} {} with {:?}", method, path, rules);
            match want_rule {
                Some(i) => prop_assert_eq!(ids, vec![format!("a/rules/{i}")]),
                None => {
                    prop_assert_eq!(ids, vec!["default_action".to_owned()]);
                    prop_assert!(allow || reason == "no_matching_rule");
                }
            }
        }
    }
}

/// One allowed caller sending distinct long paths cannot grow the decision
/// cache past its byte budget (an entry-count bound let 65,536 paths of up to
/// 32 KiB each pile up), and a very long path is never remembered.
#[test]
fn the_decision_cache_is_bounded_by_bytes() {
    let engine = engine(&one_entry("deny", "      - {path: '/*', methods: ['*'], action: allow}\n"));
    let caller = "spiffe://td.example/a";
    let segment = "x".repeat(1000);
    for i in 0..20_000 {
        assert!(decide(&engine, caller, "GET", &format!("/{i}/{segment}")).0);
    }
    let (entries, bytes) = engine.cache_usage();
    assert!(bytes <= policy::engine::CACHE_BYTES, "{bytes} bytes in {entries} entries");
    assert!(entries > 1000, "the cache still works: {entries} entries");

    let long = "y".repeat(policy::engine::MAX_CACHED_PATH + 1);
    let before = engine.cache_usage().0;
    for i in 0..100 {
        assert!(decide(&engine, caller, "GET", &format!("/{i}{long}")).0);
    }
    assert_eq!(engine.cache_usage().0, before, "long paths are not remembered");
}

fn many_rules(entries: usize, rules: usize, path_len: usize) -> String {
    let mut yaml = format!("{HEAD}default_action: deny\npolicies:\n");
    for e in 0..entries {
        yaml.push_str(&format!("  - name: e{e}\n    spiffe_id: 'spiffe://td.example/e{e}'\n    rules:\n"));
        for r in 0..rules {
            let path = format!("/{r}/{}", "p".repeat(path_len));
            yaml.push_str(&format!("      - {{path: '{path}', methods: [GET], action: allow}}\n"));
        }
    }
    yaml
}

/// Rules per entry and the compiled Cedar are bounded, and a document past
/// either bound is refused naming the entry, before any Cedar is built.
#[test]
fn policies_that_would_compile_to_too_much_cedar_are_refused() {
    let err = engine_with(&many_rules(1, 257, 1), &[], CompileOptions::default()).err().unwrap().to_string();
    assert!(err.contains("e0") && err.contains("`rules`") && err.contains("at most 256"), "{err}");

    // Only a policy file can be this large (a PUT body is at most 256 KiB).
    let yaml = many_rules(30, 256, 300);
    let err = engine_with(&yaml, &[], CompileOptions::default()).err().unwrap().to_string();
    assert!(err.contains("MiB of Cedar") && err.contains("entry `e"), "{err}");
}

/// Every rule of a full entry is reachable and first-match-wins holds to the
/// last one. The earlier encoding guarded each rule with the negation of all
/// earlier ones: its text grew with the square of the rules, a 256 KiB
/// document asked for hundreds of MB of Cedar, and past ~35 rules Cedar's
/// evaluator refused the nesting, so those rules silently never matched.
#[test]
fn a_full_entry_decides_by_its_first_matching_rule() {
    let mut rules = String::new();
    for r in 0..256 {
        let rule = match r {
            200 => "{path: '/x/*', methods: ['*'], action: deny}".to_owned(),
            254 => "{path: '/x/y', methods: [GET], action: allow}".to_owned(),
            _ => format!("{{path: '/{r}/p', methods: [GET], action: allow}}"),
        };
        rules.push_str(&format!("      - {rule}\n"));
    }
    let e = engine(&one_entry("deny", &rules));
    let a = "spiffe://td.example/a";
    assert_eq!(decide(&e, a, "GET", "/255/p"), (true, "allowed", vec!["a/rules/255".into()], Some(255)));
    assert_eq!(decide(&e, a, "GET", "/40/p"), (true, "allowed", vec!["a/rules/40".into()], Some(40)));
    assert_eq!(decide(&e, a, "GET", "/x/y"), (false, "rule_denied", vec!["a/rules/200".into()], None));
    assert_eq!(decide(&e, a, "POST", "/255/p"), (false, "no_matching_rule", vec!["default_action".into()], None));
}
