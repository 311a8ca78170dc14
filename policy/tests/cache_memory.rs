//! The decision cache's byte budget is what it really holds: a scan of
//! short paths (the cheapest entries to send, the most per byte) fills it,
//! and the process's private memory grows by about the budget, not a
//! multiple of it. Its own test binary: no other test allocates meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use certs::SpiffeId;
use policy::engine::{CACHE_BYTES, Request};
use policy::{CompileOptions, PolicyEngine, Source};

const POLICY: &str = "version: '5'
trust_domain: td.example
default_action: deny
policies:
  - name: a
    spiffe_id: 'spiffe://td.example/budget-report'
    rules:
      - {path: /budget/read, methods: [GET], action: allow}
";

/// `RssAnon` (heap and stacks) of this process, in bytes.
fn private_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn a_path_scan_holds_about_the_budget() {
    let source = Source { name: "policy.yaml".into(), text: POLICY.into() };
    let engine = PolicyEngine::build(&source, &[], &|_| None, CompileOptions::default()).unwrap();
    let caller: SpiffeId = "spiffe://td.example/budget-report".parse().unwrap();
    let decide = |path: &str| engine.decide(Request { caller: &caller, method: "GET", path }).decision.allow;
    assert!(decide("/budget/read"));
    let before = private_bytes();
    // Far more short, distinct paths than the budget holds, each refused.
    for n in 0..200_000 {
        assert!(!decide(&format!("/budget/scan/{n}")));
    }
    let (entries, weighed) = engine.cache_usage();
    let grown = private_bytes().saturating_sub(before);
    let per_entry = grown / entries.max(1);
    eprintln!("{entries} entries weighed {weighed} bytes; private memory +{grown} bytes ({per_entry} per entry)");
    assert!(weighed <= CACHE_BYTES, "{weighed}");
    assert!(entries > 10_000, "the cache still remembers decisions: {entries}");
    assert!(grown <= CACHE_BYTES + CACHE_BYTES / 2, "the budget is {CACHE_BYTES} bytes; the cache holds {grown}");
}
