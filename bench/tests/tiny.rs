//! The harness keeps working: a tiny run of every scenario (a few hundred
//! requests each) through real sidecar processes, all answered as they must
//! be (200; `inbound-deny`'s 403), with consistent numbers and the protocol
//! that was asked for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "tests fail loudly")]

#[test]
fn every_scenario_runs_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_a2a-bench"))
        .args(["--tiny", "--only", "direct,inbound-l1,inbound-all,inbound-deny,chain,handshake,rotation", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8_lossy(&output.stdout);
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let scenarios = results["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["direct", "inbound-l1", "inbound-all", "inbound-deny", "chain", "handshake", "rotation"]);
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        // (possibly marked "disturbed": the other tests run in parallel)
        assert!(table.contains(&format!("| {name}")), "{table}");
        // Every request was answered as it must be: 200 where all five layers
        // allowed the valid caller and token, 403 for `inbound-deny`'s paths.
        assert_eq!((s["requests"].as_u64(), s["errors"].as_u64()), (Some(300), Some(0)), "{s}");
        check_numbers(s, 1);
        // HTTP/1.1 keep-alive by default, as the servers agreed (ALPN only on the mTLS targets).
        let alpn: &[&str] = if matches!(name, "direct" | "chain") { &[] } else { &["http/1.1"] };
        check_protocols(s, alpn, "HTTP/1.1");
        if name != "direct" {
            let (rss, private) = (s["rss_mib"].as_f64().unwrap(), s["private_mib"].as_f64().unwrap());
            assert!(rss > 1.0, "the sidecar's memory is read from /proc: {s}");
            // Its private part: some heap, and less than all it maps (its code is file-backed).
            assert!(private > 0.1 && private < rss, "{s}");
        } else {
            assert!(s["private_mib"].is_null(), "{s}");
        }
    }
    // The SVID rotated under the run's traffic (the sidecar's own counter), every request still 200.
    let rotation = &scenarios[6];
    assert!(rotation["svid_rotations"].as_f64().unwrap() >= 1.0, "no SVID rotation during the run: {rotation}");
    assert!(rotation["policy_reloads"].is_number(), "{rotation}");
    // Each of `inbound-deny`'s 300 paths was refused by Layer 2, as its
    // sidecar counted them (not merely answered 403); its audit sink's
    // losses are read too.
    let deny = &scenarios[3];
    assert_eq!(deny["layer2_denials"].as_f64(), Some(300.0), "{deny}");
    assert!(deny["audit_dropped"].is_number(), "{deny}");
    assert!(table.contains("300 requests, each to a new path, 300 refused by Layer 2"), "{table}");
    assert!(scenarios[2]["layer2_denials"].is_null(), "{}", scenarios[2]);
    assert_eq!(results["machine"]["token_bytes"].as_u64().map(|b| b > 500), Some(true));
    assert!(results["machine"]["sidecar_binary"].is_null(), "the harness's own build served them");
    // With no peer in the run, the one ratio is `chain` against `inbound-all`
    // (its CPU null when a run this short took under one 10 ms tick).
    let ratios = results["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 1, "{ratios:?}");
    assert_eq!((ratios[0]["scenario"].as_str(), ratios[0]["versus"].as_str()), (Some("chain"), Some("inbound-all")));
    assert!(ratios[0]["rps"].as_f64().is_some_and(|r| r > 0.0), "{ratios:?}");
    assert!(table.contains("vs inbound-all (same run): `chain`"), "{table}");
}

/// HTTP/2 streams and the open loop: every request answered, at the asked
/// rate, over HTTP/2 when asked (the servers selected `h2` by ALPN).
#[test]
fn http2_and_open_loop_modes_work() {
    let h2 = run_and_check(&["--h2-streams", "4", "--only", "inbound-all,chain"], 300);
    for s in h2["scenarios"].as_array().unwrap() {
        let alpn: &[&str] = if s["name"] == "chain" { &[] } else { &["h2"] };
        check_protocols(s, alpn, "HTTP/2.0");
    }
    let open = run_and_check(&["--rate", "1000", "--only", "direct,inbound-all"], 300);
    for s in open["scenarios"].as_array().unwrap() {
        let alpn: &[&str] = if s["name"] == "direct" { &[] } else { &["http/1.1"] };
        check_protocols(s, alpn, "HTTP/1.1");
    }
}

/// Repetitions run in shuffled order and report medians, counts summed.
#[test]
fn repetitions_are_summed_and_reported_as_medians() {
    let results = run_and_check(&["--repeat", "3", "--only", "direct,inbound-all,handshake"], 900);
    for s in results["scenarios"].as_array().unwrap() {
        check_numbers(s, 3);
    }
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

/// `A2A_BENCH_SIDECAR_WRAPPER` (how callgrind is put under a sidecar): every
/// sidecar runs under it, and exits by itself, cleanly, once the harness is
/// done with it (callgrind writes its counts only then).
#[test]
fn sidecars_run_under_a_wrapper_and_exit_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let exits = dir.path().join("exits");
    let wrapper = dir.path().join("wrapper");
    let script = format!("#!/bin/sh\n\"$@\"\necho \"$A2A_BENCH_SIDECAR exit $?\" >> '{}'\n", exits.display());
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_a2a-bench"))
        .args(["--tiny", "--only", "inbound-all"])
        .env("A2A_BENCH_SIDECAR_WRAPPER", &wrapper)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let exits = std::fs::read_to_string(&exits).unwrap();
    let mut lines: Vec<&str> = exits.lines().collect();
    lines.sort_unstable();
    // Each sidecar by its name (what `bench/instructions.sh` picks its count by), each exited cleanly.
    assert_eq!(
        lines,
        ["all exit 0", "caller exit 0", "deny exit 0", "l1 exit 0", "pdp exit 0", "rotating exit 0"],
        "{exits:?}"
    );
}

/// Every reported number of scenario `s` is consistent: p50 <= p99 <= p99.9
/// (each repetition's and the medians), `repetitions` runs whose counts sum
/// to the reported ones, and each median is the middle repetition's value.
fn check_numbers(s: &serde_json::Value, repetitions: usize) {
    let quantiles = |v: &serde_json::Value| ["p50_ms", "p99_ms", "p999_ms"].map(|q| v[q].as_f64().unwrap());
    let [p50, p99, p999] = quantiles(s);
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "quantiles out of order: {s}");
    assert!(s["rps"].as_f64().unwrap() > 0.0, "{s}");
    let runs = s["repetitions"].as_array().unwrap();
    assert_eq!(runs.len(), repetitions, "{s}");
    for run in runs {
        let [p50, p99, p999] = quantiles(run);
        assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "a repetition's quantiles out of order: {s}");
    }
    for count in ["requests", "errors"] {
        let sum: u64 = runs.iter().map(|r| r[count].as_u64().unwrap()).sum();
        assert_eq!(s[count].as_u64(), Some(sum), "{count} are the repetitions' sum: {s}");
    }
    for key in ["rps", "p50_ms", "p99_ms", "p999_ms"] {
        let mut values: Vec<f64> = runs.iter().map(|r| r[key].as_f64().unwrap()).collect();
        values.sort_by(f64::total_cmp);
        let median = s[key].as_f64().unwrap();
        assert!(values[0] <= median && median <= values[values.len() - 1], "{key} outside its repetitions: {s}");
        assert_eq!(median, values[values.len() / 2], "{key} is not the median of its repetitions: {s}");
    }
}

/// The protocols recorded from the real connections: the ALPN protocols the
/// servers selected (none on plain-text targets) and the responses' HTTP version.
fn check_protocols(s: &serde_json::Value, alpn: &[&str], http_version: &str) {
    assert_eq!(s["alpn"], serde_json::json!(alpn), "{s}");
    assert_eq!(s["http_versions"], serde_json::json!([http_version]), "{s}");
}

/// A `--tiny` run with `args`: every scenario made `requests` requests, all
/// answered 200. Returns the JSON results.
fn run_and_check(args: &[&str], requests: u64) -> serde_json::Value {
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
    results
}

/// `--workers 1,2`: the set runs once per worker count (sidecars with that
/// many runtime workers) and the JSON keeps each; `--idle N` holds N idle
/// connections open to each mTLS target and reports what they cost.
#[test]
fn worker_counts_and_idle_connections() {
    let results = run_and_check(&["--workers", "1,2", "--idle", "20", "--only", "direct,inbound-all"], 300);
    let sets = results["by_workers"].as_array().unwrap();
    let workers: Vec<u64> = sets.iter().map(|s| s["workers"].as_u64().unwrap()).collect();
    assert_eq!(workers, [1, 2]);
    for set in sets {
        assert_eq!(set["machine"]["workers"], set["workers"], "{set}");
        for s in set["scenarios"].as_array().unwrap() {
            assert_eq!((s["requests"].as_u64(), s["errors"].as_u64()), (Some(300), Some(0)), "{s}");
            match s["name"].as_str().unwrap() {
                // Plain text to the app: no sidecar to hold idle connections.
                "direct" => assert!(s["idle_connections"].is_null(), "{s}"),
                _ => {
                    assert_eq!(s["idle_connections"].as_u64(), Some(20), "{s}");
                    assert!(s["idle_rss_mib"].is_number(), "{s}");
                }
            }
        }
    }
}

/// `A2A_BENCH_SIDECAR_BIN` (how a shipped build, such as `bench/pgo.sh`'s,
/// is measured): that binary serves every sidecar but `rotation` (its SVID
/// renewals need the dev CA, this harness's own mode), every request is
/// answered, and each sidecar exits cleanly at the harness's SIGTERM (an
/// instrumented build writes its profile only then).
#[test]
fn a_shipped_binary_serves_the_sidecars_and_exits_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    // The workspace's own a2a-sidecar, next to this test's directory (built by `cargo test --workspace`).
    let test = std::env::current_exe().unwrap();
    let shipped = test.parent().and_then(|deps| deps.parent()).unwrap().join("a2a-sidecar");
    assert!(shipped.exists(), "{} is missing: cargo build -p proxy (or cargo test --workspace)", shipped.display());
    let dir = tempfile::tempdir().unwrap();
    let exits = dir.path().join("exits");
    let wrapper = dir.path().join("wrapper");
    // It passes the harness's SIGTERM on (as valgrind and taskset do, being
    // the sidecar's own process) and keeps its stdin (the harness's own mode ends at its close).
    let script = format!(
        "#!/bin/sh
exec 3<&0
trap 'kill -TERM $child 2>/dev/null' TERM
\"$@\" <&3 &
child=$!
wait $child; status=$?
# A trapped SIGTERM interrupts `wait` (status > 128): wait for the sidecar's own exit.
while [ $status -gt 128 ] && kill -0 $child 2>/dev/null; do wait $child; status=$?; done
echo \"$A2A_BENCH_SIDECAR $(basename \"$1\") exit $status\" >> '{}'
",
        exits.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let json = dir.path().join("results.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_a2a-bench"))
        .args(["--tiny", "--only", "inbound-l1,inbound-all,inbound-deny,chain,rotation", "--json"])
        .arg(&json)
        .env("A2A_BENCH_SIDECAR_BIN", &shipped)
        .env("A2A_BENCH_SIDECAR_WRAPPER", &wrapper)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for s in results["scenarios"].as_array().unwrap() {
        assert_eq!((s["requests"].as_u64(), s["errors"].as_u64()), (Some(300), Some(0)), "{s}");
    }
    // The report says which build it measured.
    assert_eq!(results["machine"]["sidecar_binary"].as_str(), shipped.to_str());
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("sidecars served by {}", shipped.display())));
    let exits = std::fs::read_to_string(&exits).unwrap();
    let mut lines: Vec<&str> = exits.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "all a2a-sidecar exit 0",
            "caller a2a-sidecar exit 0",
            "deny a2a-sidecar exit 0",
            "l1 a2a-sidecar exit 0",
            "pdp a2a-sidecar exit 0",
            "rotating a2a-bench exit 0"
        ],
        "{exits:?}"
    );
}

/// A harness killed outright (SIGKILL: no drop, no stdin to close for a
/// shipped binary) leaves no sidecar behind: each gets SIGTERM from the
/// kernel when the harness thread that started it ends (`setpriv
/// --pdeathsig`), and exits.
#[test]
fn a_killed_harness_leaves_no_sidecar_behind() {
    if !std::process::Command::new("setpriv").args(["--pdeathsig", "TERM", "true"]).status().is_ok_and(|s| s.success())
    {
        eprintln!("skipped: no setpriv with --pdeathsig here (util-linux 2.33 or later), so the harness cannot do it");
        return;
    }
    let test = std::env::current_exe().unwrap();
    let shipped = test.parent().and_then(|deps| deps.parent()).unwrap().join("a2a-sidecar");
    assert!(shipped.exists(), "{} is missing: cargo build -p proxy (or cargo test --workspace)", shipped.display());
    let mut harness = std::process::Command::new(env!("CARGO_BIN_EXE_a2a-bench"))
        .args(["--only", "inbound-all", "--seconds", "120", "--warmup-ms", "0"])
        .env("A2A_BENCH_SIDECAR_BIN", &shipped)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its children, as (pid, start time) so a reused pid is not mistaken for one.
    let children = |parent: u32| -> Vec<(u32, String, String)> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // `pid (comm) state ppid ...`: the comm may hold spaces, the rest follows its last `)`.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
            let comm = stat[open + 1..close].to_owned();
            let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            if rest.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
                found.push((pid, comm, rest.get(19).copied().unwrap_or_default().to_owned()));
            }
        }
        found
    };
    // Every sidecar started: the five served by the shipped binary, and `rotation`'s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let started = loop {
        let now = children(harness.id());
        let shipped = now.iter().filter(|(_, comm, _)| comm == "a2a-sidecar").count();
        if shipped == 5 && now.iter().any(|(_, comm, _)| comm == "a2a-bench") {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "the sidecars did not all start: {now:?}");
        assert!(harness.try_wait().unwrap().is_none(), "the harness ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    harness.kill().unwrap();
    harness.wait().unwrap();
    // Alive: the same process (same start time), not yet a zombie.
    let alive = |(pid, _, start): &(u32, String, String)| {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        let rest: Vec<&str> = stat.rfind(')').map_or("", |close| &stat[close + 1..]).split_whitespace().collect();
        rest.first() != Some(&"Z") && rest.get(19) == Some(&start.as_str())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left: Vec<_> = started.iter().filter(|c| alive(c)).collect();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            for (pid, _, _) in &left {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            panic!("left running after the harness was killed: {left:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
