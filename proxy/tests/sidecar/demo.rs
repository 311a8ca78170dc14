//! The demo's matrix, through the same code path as `a2a-sidecar demo`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_case_matches() {
    let stack = proxy::cmd::demo::Stack::start().await.unwrap();
    let outcomes = proxy::cmd::demo::run_matrix(&stack, |_| {}).await.unwrap();
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.matched()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // Each layer denies at least once (Layer 1 refuses the handshake, which the caller's sidecar reports).
    for (layer, reason) in [
        ("upstream", "upstream_rejected_identity"),
        ("rbac", "rule_denied"),
        ("oauth", "jwt_required"),
        ("oauth", "insufficient_roles"),
        ("risk", "high_risk_agent_blocked"),
        ("tags", "agent_tag_mismatch"),
    ] {
        assert!(outcomes.iter().any(|o| o.layer == layer && o.reason == reason), "no {layer}/{reason}");
    }
    assert!(outcomes.iter().filter(|o| o.reason == "allowed").count() >= 8);
}
