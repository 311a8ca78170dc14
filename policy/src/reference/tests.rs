use std::collections::HashMap;

use super::*;

const SAMPLE: &str = include_str!("../../../examples/reference-policy/spiffe-rbac-policy.yaml");
const PERMISSIVE: &str = include_str!("../../../examples/reference-policy/spiffe-rbac-policy-permissive.yaml");

/// The environment a deployment of the sample sets.
pub(crate) fn sample_env() -> HashMap<String, String> {
    let mut env = HashMap::new();
    for name in ["BUDGET_REPORT", "EMPLOYEE_MENUS", "BUDGET_APPROVAL", "ADMIN_CONTROL_PLANE"] {
        let id = name.to_ascii_lowercase().replace('_', "-");
        env.insert(format!("SPIFFE_PREFIX_{name}"), format!("spiffe://aim.microsoft.com/ests/bp/b1/aid/{id}"));
        env.insert(format!("ENTRA_ID_{name}"), format!("00000000-0000-0000-0000-{:0>12}", id.len()));
    }
    env.insert("SPIFFE_ID_GOOGLE_BUDGET_READER".into(), "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google".into());
    env.insert("ENTRA_ID_GOOGLE_BUDGET_READER".into(), "11111111-0000-0000-0000-000000000001".into());
    env.insert("SPIFFE_ID_GITHUB_BUDGET_READER".into(), "spiffe://aim.microsoft.com/ests/bp/gh/aid/github".into());
    env.insert("ENTRA_ID_GITHUB_BUDGET_READER".into(), "11111111-0000-0000-0000-000000000002".into());
    env
}

fn load(yaml: &str, env: &HashMap<String, String>) -> Result<PolicyDoc, ReferenceError> {
    PolicyDoc::from_yaml(yaml, &|k| env.get(k).cloned())
}

fn problems(yaml: &str) -> Vec<Problem> {
    match load(yaml, &HashMap::new()) {
        Err(ReferenceError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn env_names() {
    assert_eq!(env_name("budget-report"), "BUDGET_REPORT");
    assert_eq!(env_name("a.b c/d"), "A_B_C_D");
}

#[test]
fn the_sample_without_its_environment_says_exactly_what_is_missing() {
    let got: Vec<String> = problems(SAMPLE).iter().map(ToString::to_string).collect();
    let expect = [
        "entry (employee-menus) `spiffe_id_prefix`: shares its prefix with `budget-report`; give each entry its own IDs (e.g. set SPIFFE_PREFIX_EMPLOYEE_MENUS)",
        "entry (budget-approval) `spiffe_id_prefix`: shares its prefix with `budget-report`",
        "entry (admin-control-plane) `spiffe_id_prefix`: shares its prefix with `budget-report`",
        "federated_policies[0] (google-budget-reader) `spiffe_id`: holds the placeholder `<blueprint-oid>`: set SPIFFE_ID_GOOGLE_BUDGET_READER to the real ID",
        "federated_policies[0] (google-budget-reader) `entra_agent_id`: holds the placeholder `<google-agent-oid>`: set ENTRA_ID_GOOGLE_BUDGET_READER",
        "federated_policies[1] (github-budget-reader) `spiffe_id`: holds the placeholder `<blueprint-oid>`: set SPIFFE_ID_GITHUB_BUDGET_READER to the real ID",
        "federated_policies[1] (github-budget-reader) `entra_agent_id`: holds the placeholder `<github-agent-oid>`: set ENTRA_ID_GITHUB_BUDGET_READER",
    ];
    for want in expect {
        assert!(got.iter().any(|g| g.starts_with(want)), "missing {want:?} in\n{}", got.join("\n"));
    }
}

#[test]
fn the_samples_load_with_their_environment() {
    let doc = load(SAMPLE, &sample_env()).unwrap();
    assert_eq!(doc.version, "5.0");
    assert_eq!(doc.default_action, Action::Deny);
    assert!(doc.governance.enabled);
    assert_eq!(doc.governance.target_agent_tag, "finance");
    let names: Vec<&str> = doc.entries.iter().map(|e| &*e.name).collect();
    assert_eq!(
        names,
        [
            "budget-report",
            "employee-menus",
            "budget-approval",
            "admin-control-plane",
            "google-budget-reader",
            "github-budget-reader"
        ]
    );
    let menus = &doc.entries[1];
    assert_eq!(menus.ca.agent_tag, "");
    let admin = &doc.entries[3];
    assert!(admin.ca.skip_target_tag_check);
    assert_eq!(admin.rules[0].path, RulePath::Under("/mgmt".into()));
    let google = &doc.entries[4];
    assert!(google.federated);
    assert_eq!(google.trust_domain.as_str(), "gcp.aim.microsoft.com");
    assert_eq!(google.entra_agent_id.as_deref(), Some("11111111-0000-0000-0000-000000000001"));
    assert!(google.rules[0].require_jwt && google.rules[0].required_roles == ["Budget.Read"]);

    let permissive = load(PERMISSIVE, &sample_env()).unwrap();
    assert_eq!(permissive.default_action, Action::Allow);
    assert_eq!(permissive.entries.len(), 3);
}

#[test]
fn invalid_documents_name_entry_field_and_why() {
    let head = "version: '5'\ntrust_domain: td.example\ndefault_action: deny\n";
    let entry = |body: &str| format!("{head}policies:\n  - {{name: a, {body}}}\n");
    let cases = [
        ("trust_domain: td.example\ndefault_action: deny\npolicies: []", "document `version`: is required"),
        ("version: '5'\ndefault_action: deny\npolicies: []", "document `trust_domain`: is required"),
        (
            "version: '5'\ntrust_domain: td.example\ndefault_action: maybe\npolicies: []",
            "document `default_action`: must be",
        ),
        (&format!("{head}policies: []"), "document `policies`: at least one entry"),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', spiffe_id_prefix: 'spiffe://td.example/'"),
            "`spiffe_id`: set `spiffe_id` or `spiffe_id_prefix`, not both",
        ),
        (&entry("rules: []"), "`spiffe_id`: one of"),
        (
            &entry("spiffe_id: 'spiffe://other.example/a'"),
            "`spiffe_id`: `spiffe://other.example/a` is outside the trust domain `td.example`",
        ),
        (&entry("spiffe_id: 'spiffe://td.example/a/'"), "is not a SPIFFE ID"),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', rules: [{path: '/a/*/b', methods: [GET], action: allow}]"),
            "`rules[0].path`: `/a/*/b`: `*` is only allowed",
        ),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', rules: [{path: 'a', methods: [GET], action: allow}]"),
            "`rules[0].path`: `a`: path does not start",
        ),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', rules: [{path: '/a/../b', methods: [GET], action: allow}]"),
            "is not in canonical form: write `/b`",
        ),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', rules: [{path: '/a', methods: [], action: allow}]"),
            "`rules[0].methods`: at least one method",
        ),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', rules: [{path: '/a', methods: ['GE T'], action: allow}]"),
            "`GE T` is not an HTTP method",
        ),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', rules: [{path: '/a', methods: [GET], action: permit}]"),
            "`rules[0].action`: must be `allow` or `deny`, got `permit`",
        ),
        (&entry("spiffe_id: 'spiffe://td.example/a', ca: {agent_state: paused}"), "`ca.agent_state`"),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', entra_agent_id: '../users/x?$select=y'"),
            "`entra_agent_id`: `../users/x?$select=y` is not an Entra object ID (a GUID",
        ),
        (
            &entry("spiffe_id: 'spiffe://td.example/a', entra_agent_id: '00000000-0000-0000-0000-00000000000g'"),
            "is not an Entra object ID",
        ),
        (&entry("spiffe_id: 'spiffe://td.example/a', colour: red"), "unknown field `colour`"),
        (&format!("{head}policies:\n  - {{spiffe_id: 'spiffe://td.example/a'}}"), "policies[0] `name`: is required"),
        (
            &format!(
                "{head}policies:\n  - {{name: a, spiffe_id_prefix: 'spiffe://td.example/x/'}}\n  - {{name: b, spiffe_id: 'spiffe://td.example/x/y'}}"
            ),
            "entry (b) `spiffe_id`: is inside the prefix of `a`",
        ),
        (
            &format!(
                "{head}policies:\n  - {{name: a, spiffe_id_prefix: 'spiffe://td.example/x'}}\n  - {{name: a, spiffe_id: 'spiffe://td.example/z'}}"
            ),
            "entry (a) `name`: `a` is already used",
        ),
        (
            &format!(
                "{head}policies:\n  - {{name: a, spiffe_id: 'spiffe://td.example/a'}}\nfederated_policies:\n  - {{name: f, spiffe_id_prefix: 'spiffe://o.example/'}}"
            ),
            "federated_policies[0] (f) `trust_domain`: is required",
        ),
        (
            &format!(
                "{head}policies:\n  - {{name: a, spiffe_id: 'spiffe://td.example/a'}}\nfederated_policies:\n  - {{name: f, trust_domain: o.example, spiffe_id: 'spiffe://p.example/x'}}"
            ),
            "is outside the trust domain `o.example`",
        ),
        (
            &format!(
                "{head}policies:\n  - {{name: a, spiffe_id: 'spiffe://td.example/a'}}\nfederated_policies:\n  - {{name: f, trust_domain: o.example, spiffe_id: 'spiffe://o.example/x', jwt_only: true}}"
            ),
            "`jwt_only`: is not supported",
        ),
    ];
    for (yaml, want) in cases {
        let message = match load(yaml, &HashMap::new()) {
            Err(e) => e.to_string(),
            Ok(doc) => panic!("{yaml}\nloaded: {doc:?}"),
        };
        assert!(message.contains(want), "{yaml}\nwant {want:?}\ngot {message}");
    }
}

#[test]
fn selectors_use_the_segment_boundary() {
    let prefix = Selector::Prefix("spiffe://td/ests/bp/b1/aid/budget-report".into());
    let id = |s: &str| s.parse::<SpiffeId>().unwrap();
    assert!(prefix.matches(&id("spiffe://td/ests/bp/b1/aid/budget-report")));
    assert!(prefix.matches(&id("spiffe://td/ests/bp/b1/aid/budget-report/instance-1")));
    assert!(!prefix.matches(&id("spiffe://td/ests/bp/b1/aid/budget-report-extended")));
    assert!(RulePath::Under("/budget".into()).matches("/budget"));
    assert!(RulePath::Under("/budget".into()).matches("/budget/read"));
    assert!(!RulePath::Under("/budget".into()).matches("/budgetx"));
    assert!(!RulePath::Exact("/budget/read".into()).matches("/budget/readx"));
    assert!(!RulePath::Exact("/budget/read".into()).matches("/budget/read/x"));
}

#[test]
fn agent_id_and_bound_tokens_are_checked() {
    let doc = |rest: &str| {
        PolicyDoc::from_yaml(
            &format!(
                "version: '1'\ntrust_domain: td.example\ndefault_action: deny\npolicies:\n  - {{name: a, spiffe_id: 'spiffe://td.example/a', {rest}}}"
            ),
            &|_| None,
        )
    };
    let ok = doc("agent_id: budget-report, rules: [{path: /p, methods: [GET], action: allow, require_jwt: true, require_bound_token: true}]").unwrap();
    let entry = ok.entries.first().unwrap();
    assert_eq!(entry.agent_id.as_deref(), Some("budget-report"));
    assert_eq!(entry.rules.first().unwrap().require_bound_token, Some(true));
    let from_env = PolicyDoc::from_yaml(
        "version: '1'\ntrust_domain: td.example\ndefault_action: deny\npolicies:\n  - {name: my-agent, spiffe_id: 'spiffe://td.example/a', rules: []}",
        &|name| (name == "AGENT_ID_MY_AGENT").then(|| "from-env".to_owned()),
    )
    .unwrap();
    assert_eq!(from_env.entries.first().unwrap().agent_id.as_deref(), Some("from-env"));
    for (rest, want) in [
        ("agent_id: 'two words', rules: []", "`agent_id`: must be at most 256 characters"),
        ("agent_id: '<report-agent>', rules: []", "`agent_id`: holds the placeholder `<report-agent>`: set AGENT_ID_A"),
        (
            "rules: [{path: /p, methods: [GET], action: allow, require_bound_token: true}]",
            "`rules[0].require_bound_token`: binds a token: it needs `require_jwt: true`",
        ),
    ] {
        let error = doc(rest).unwrap_err().to_string();
        assert!(error.contains(want), "{rest}\n=> {error}");
    }
}
