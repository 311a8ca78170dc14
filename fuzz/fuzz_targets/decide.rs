//! Layer 2 on the reference sample (enriched as its deployment does): any
//! caller, method and path decides without panicking, and the decision cache
//! answers exactly what Cedar answers.
#![no_main]

use std::sync::LazyLock;

use certs::SpiffeId;
use libfuzzer_sys::fuzz_target;
use policy::engine::Request;
use policy::{CanonicalPath, CompileOptions, PathOptions, PolicyEngine, Source};

static ENGINE: LazyLock<PolicyEngine> = LazyLock::new(|| {
    let text = include_str!("../../examples/reference-policy/spiffe-rbac-policy.yaml").to_owned();
    let env = |name: &str| -> Option<String> {
        let under = |n: &str| format!("spiffe://aim.microsoft.com/ests/bp/b1/aid/{n}");
        Some(match name {
            "SPIFFE_PREFIX_BUDGET_REPORT" => under("budget-report"),
            "SPIFFE_PREFIX_EMPLOYEE_MENUS" => under("employee-menus"),
            "SPIFFE_PREFIX_BUDGET_APPROVAL" => under("budget-approval"),
            "SPIFFE_PREFIX_ADMIN_CONTROL_PLANE" => under("admin-control-plane"),
            "SPIFFE_ID_GOOGLE_BUDGET_READER" => "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google".into(),
            "SPIFFE_ID_GITHUB_BUDGET_READER" => "spiffe://aim.microsoft.com/ests/bp/gh/aid/github".into(),
            "ENTRA_ID_GOOGLE_BUDGET_READER" => "11111111-0000-0000-0000-000000000001".into(),
            "ENTRA_ID_GITHUB_BUDGET_READER" => "11111111-0000-0000-0000-000000000002".into(),
            _ => return None,
        })
    };
    let source = Source { name: "spiffe-rbac-policy.yaml".into(), text };
    PolicyEngine::build(&source, &[], &env, CompileOptions::default()).expect("the enriched sample loads")
});

const CALLERS: [&str; 6] = [
    "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report",
    "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report/sub",
    "spiffe://aim.microsoft.com/ests/bp/b1/aid/employee-menus",
    "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-approval",
    "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google",
    "spiffe://aim.microsoft.com/ests/bp/gh/aid/github",
];

fuzz_target!(|input: (u8, &str, &str)| {
    let (caller, method, raw_path) = input;
    let caller: SpiffeId = CALLERS[usize::from(caller) % CALLERS.len()].parse().expect("a valid ID");
    let Ok(path) = CanonicalPath::parse(raw_path, PathOptions::default()) else { return };
    let request = Request { caller: &caller, method, path: path.for_matching() };
    let cached = ENGINE.decide(request);
    let again = ENGINE.decide(request);
    let cedar = ENGINE.decide_uncached(request);
    assert_eq!(cached.decision, cedar.decision, "{caller} {method} {path:?}");
    assert_eq!(again.decision, cedar.decision);
    assert_eq!((cached.entry, cached.rule), (cedar.entry, cedar.rule));
});
