//! Layer 2 decision cost with the reference policy, warm (decision cache)
//! and uncached (Cedar every time), and with 1,000 caller entries to show
//! that per-caller slicing keeps it flat.
//!
//!     cargo bench -p policy --bench decide

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "bench")]

use std::collections::HashMap;
use std::fmt::Write as _;

use certs::SpiffeId;
use criterion::{Criterion, criterion_group, criterion_main};
use policy::engine::Request;
use policy::{CompileOptions, PolicyEngine, Source};

const SAMPLE: &str = include_str!("../../examples/reference-policy/spiffe-rbac-policy.yaml");
const BP: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid";

fn reference() -> PolicyEngine {
    let mut env = HashMap::new();
    for name in ["budget-report", "employee-menus", "budget-approval", "admin-control-plane"] {
        env.insert(format!("SPIFFE_PREFIX_{}", name.to_ascii_uppercase().replace('-', "_")), format!("{BP}/{name}"));
    }
    for (name, id) in [("GOOGLE", "spiffe://gcp.aim.microsoft.com/g"), ("GITHUB", "spiffe://aim.microsoft.com/gh")] {
        env.insert(format!("SPIFFE_ID_{name}_BUDGET_READER"), id.to_owned());
        env.insert(format!("ENTRA_ID_{name}_BUDGET_READER"), "11111111-0000-0000-0000-000000000001".to_owned());
    }
    let source = Source { name: "policy.yaml".into(), text: SAMPLE.into() };
    PolicyEngine::build(&source, &[], &|k| env.get(k).cloned(), CompileOptions::default()).unwrap()
}

fn thousand_callers() -> PolicyEngine {
    let mut yaml = String::from("version: '5'\ntrust_domain: aim.microsoft.com\ndefault_action: deny\npolicies:\n");
    for i in 0..1000 {
        let _ = writeln!(
            yaml,
            "  - {{name: agent-{i}, spiffe_id: '{BP}/agent-{i}', rules: [{{path: /budget/read, methods: [GET, POST], action: allow}}, {{path: /budget/submit, methods: [POST], action: deny}}, {{path: '/admin/*', methods: ['*'], action: deny}}]}}"
        );
    }
    let source = Source { name: "big.yaml".into(), text: yaml };
    PolicyEngine::build(&source, &[], &|_| None, CompileOptions::default()).unwrap()
}

fn bench(c: &mut Criterion) {
    let engine = reference();
    let report: SpiffeId = format!("{BP}/budget-report/instance-1").parse().unwrap();
    let approval: SpiffeId = format!("{BP}/budget-approval").parse().unwrap();
    c.bench_function("reference: report GET /budget/read (allow, rule 0)", |b| {
        b.iter(|| engine.decide(Request { caller: &report, method: "GET", path: "/budget/read" }))
    });
    c.bench_function("reference: approval POST /budget/submit (allow, rule 1)", |b| {
        b.iter(|| engine.decide(Request { caller: &approval, method: "POST", path: "/budget/submit" }))
    });
    c.bench_function("reference: report GET /other (default deny)", |b| {
        b.iter(|| engine.decide(Request { caller: &report, method: "GET", path: "/other" }))
    });
    c.bench_function("reference: report GET /budget/read, uncached (Cedar every time)", |b| {
        b.iter(|| engine.decide_uncached(Request { caller: &report, method: "GET", path: "/budget/read" }))
    });
    let big = thousand_callers();
    let agent: SpiffeId = format!("{BP}/agent-777").parse().unwrap();
    c.bench_function("1000 callers: agent-777 GET /budget/read", |b| {
        b.iter(|| big.decide(Request { caller: &agent, method: "GET", path: "/budget/read" }))
    });
    c.bench_function("1000 callers: agent-777 GET /budget/read, uncached", |b| {
        b.iter(|| big.decide_uncached(Request { caller: &agent, method: "GET", path: "/budget/read" }))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
