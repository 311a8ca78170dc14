//! The harness keeps working: a tiny run of every scenario (a few hundred
//! requests each) through real sidecar processes, all answered 200.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "tests fail loudly")]

#[test]
fn every_scenario_runs_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_a2a-bench"))
        .args(["--tiny", "--only", "direct,inbound-l1,inbound-all,chain,handshake,rotation", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8_lossy(&output.stdout);
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let scenarios = results["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["direct", "inbound-l1", "inbound-all", "chain", "handshake", "rotation"]);
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        // (possibly marked "disturbed": the other tests run in parallel)
        assert!(table.contains(&format!("| {name}")), "{table}");
        // Every request was answered 200: all five layers allowed the valid caller and token.
        assert_eq!((s["requests"].as_u64(), s["errors"].as_u64()), (Some(300), Some(0)), "{s}");
        assert!(s["rps"].as_f64().unwrap() > 0.0 && s["p99_ms"].as_f64().unwrap() >= s["p50_ms"].as_f64().unwrap());
        if name != "direct" {
            assert!(s["rss_mib"].as_f64().unwrap() > 1.0, "the sidecar's memory is read from /proc: {s}");
        }
    }
    assert!(scenarios[5]["svid_rotations"].is_number() && scenarios[5]["policy_reloads"].is_number());
    assert_eq!(results["machine"]["token_bytes"].as_u64().map(|b| b > 500), Some(true));
}

/// HTTP/2 streams and the open loop: every request answered, at the asked rate.
#[test]
fn http2_and_open_loop_modes_work() {
    run_and_check(&["--h2-streams", "4", "--only", "inbound-all,chain"], 300);
    run_and_check(&["--rate", "1000", "--only", "direct,inbound-all"], 300);
}

/// Repetitions run in shuffled order and report medians, counts summed.
#[test]
fn repetitions_are_summed_and_reported_as_medians() {
    run_and_check(&["--repeat", "3", "--only", "direct,inbound-all,handshake"], 900);
}

/// `--requests N`: a fixed request count per run instead of a duration
/// (outside `--tiny`, so the harness's wait for a quiet machine runs too).
#[test]
fn a_fixed_request_count_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_a2a-bench"))
        .args(["--quick", "--requests", "500", "--only", "direct", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("500 requests per run"));
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let direct = &results["scenarios"][0];
    assert_eq!((direct["requests"].as_u64(), direct["errors"].as_u64()), (Some(500), Some(0)), "{direct}");
}

fn run_and_check(args: &[&str], requests: u64) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_a2a-bench"))
        .arg("--tiny")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let scenarios = results["scenarios"].as_array().unwrap();
    assert!(!scenarios.is_empty());
    for s in scenarios {
        assert_eq!((s["requests"].as_u64(), s["errors"].as_u64()), (Some(requests), Some(0)), "{args:?}: {s}");
        if args[0] == "--rate" {
            // 300 requests at 1000/s take about 0.3 s: the schedule held (loosely; shared machine).
            assert!(s["rps"].as_f64().unwrap() < 1500.0, "{s}");
        }
    }
}
