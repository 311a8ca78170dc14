//! The harness keeps working: a tiny run of every scenario (a few hundred
//! requests each) through real sidecar processes, all answered 200.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "tests fail loudly")]

#[test]
fn every_scenario_runs_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_a2a-bench"))
        .args(["--tiny", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8_lossy(&output.stdout);
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let scenarios = results["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["direct", "inbound-l1", "inbound-all", "chain", "handshake"]);
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        assert!(table.contains(&format!("| {name} |")), "{table}");
        // Every request was answered 200: all five layers allowed the valid caller and token.
        assert_eq!((s["requests"].as_u64(), s["errors"].as_u64()), (Some(300), Some(0)), "{s}");
        assert!(s["rps"].as_f64().unwrap() > 0.0 && s["p99_ms"].as_f64().unwrap() >= s["p50_ms"].as_f64().unwrap());
        if name != "direct" {
            assert!(s["rss_mib"].as_f64().unwrap() > 1.0, "the sidecar's memory is read from /proc: {s}");
        }
    }
    assert_eq!(results["machine"]["token_bytes"].as_u64().map(|b| b > 500), Some(true));
}
