//! The decision cache's byte budget is what it really holds: a scan of
//! distinct paths (short ones: the cheapest entries to send, the most per
//! byte) fills it, and the process's private memory grows by about what
//! the entries weigh, not a multiple of it. Its own test binary, one test:
//! nothing else allocates meanwhile.

#![cfg(target_os = "linux")]
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
fn a_path_scan_holds_about_what_its_entries_weigh() {
    let caller: SpiffeId = "spiffe://td.example/budget-report".parse().unwrap();
    // Decisions with one policy ID (`default_action`), and with twenty
    // (native `forbid`s that all match: every one is named).
    let forbids: String =
        (0..20).map(|i| format!("@id(\"scan-forbid-{i:02}\") forbid(principal, action, resource) when {{ context.method == \"GET\" }};\n")).collect();
    let shapes: [(&str, Vec<Source>); 2] = [
        ("one policy ID", vec![]),
        ("twenty policy IDs", vec![Source { name: "forbids.cedar".into(), text: forbids }]),
    ];
    let before = private_bytes();
    let (mut engines, mut weighed_all) = (Vec::new(), 0);
    for (shape, cedar) in shapes {
        let source = Source { name: "policy.yaml".into(), text: POLICY.into() };
        let engine = PolicyEngine::build(&source, &cedar, &|_| None, CompileOptions::default()).unwrap();
        // Far more distinct paths than the budget holds, each refused.
        for n in 0..60_000 {
            let path = format!("/budget/scan/{n}");
            assert!(!engine.decide(Request { caller: &caller, method: "GET", path: &path }).decision.allow);
        }
        let (entries, weighed) = engine.cache_usage();
        assert!(weighed <= CACHE_BYTES, "{shape}: {weighed}");
        assert!(entries > 2_000, "{shape}: the cache still remembers decisions: {entries}");
        weighed_all += weighed;
        // Every cache filled so far is still held, so the growth is theirs.
        engines.push(engine);
        let grown = private_bytes().saturating_sub(before);
        eprintln!(
            "{shape}: {entries} entries weigh {weighed} bytes; all caches so far weigh {weighed_all}, private memory +{grown}"
        );
        assert!(
            grown <= weighed_all + weighed_all / 10 + (1 << 20),
            "{shape}: the entries weigh {weighed_all} bytes and hold {grown}"
        );
    }
}
