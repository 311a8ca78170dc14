//! The demo's matrix, through the same code path as `a2a-sidecar demo`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_case_matches() {
    let stack = proxy::demo::Stack::start().await.unwrap();
    let outcomes = proxy::demo::run_matrix(&stack, |_| {}).await.unwrap();
    assert!(outcomes.len() >= 7);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.matched()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
