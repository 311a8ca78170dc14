//! The command-line contract: exit codes and messages that name the field.

use super::support::{bin, run, text, write};

#[test]
fn check_accepts_a_valid_config_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "sidecar.yaml", "identity: {socket: unix:///run/spire/agent.sock}\n");
    let out = run(&["check", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains("is valid") && summary.contains("unix:///run/spire/agent.sock"), "{summary}");
}

#[test]
fn bad_configs_exit_2_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("identity: {socket: unix:///x, sockett: 1}\n", "unknown field `sockett`"),
        ("identity: {source: files}\n", "identity.files"),
        ("identity: {socket: unix:///x}\ntelemetry: {listen: nowhere}\n", "telemetry.listen"),
        ("", "identity.socket"),
        ("identity: [\n", "sidecar.yaml"),
    ];
    for (yaml, want) in cases {
        let config = write(dir.path(), "sidecar.yaml", yaml);
        for command in ["check", "run"] {
            let out = run(&[command, "--config", &config]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {yaml:?}: {stderr}");
            assert!(stderr.contains(want) && stderr.contains("sidecar.yaml"), "{command} {yaml:?}: {stderr}");
        }
    }
    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--config"));
    let out = run(&["check", "--config", "/nonexistent/sidecar.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/sidecar.yaml"));
}

#[test]
fn static_client_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "sidecar.yaml", "identity: {socket: unix:///x}\n");
    let out = bin().args(["run", "--config", &config]).env("AZURE_CLIENT_SECRET", "hunter2").output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AZURE_CLIENT_SECRET") && !stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn socket_comes_from_spiffe_endpoint_socket() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "sidecar.yaml", "telemetry: {log_format: text}\n");
    let out = bin()
        .args(["check", "--config", &config])
        .env("SPIFFE_ENDPOINT_SOCKET", "unix:///from/env.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("unix:///from/env.sock"));
}

#[test]
fn dev_ca_issues_spiffe_helper_files_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let svid = dir.path().join("svid");
    let (ca, svid) = (ca.to_str().unwrap(), svid.to_str().unwrap());
    let out = run(&["dev", "ca", "init", "--dir", ca, "--trust-domain", "aim.example"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&[
        "dev",
        "ca",
        "issue",
        "--dir",
        ca,
        "--id",
        "spiffe://aim.example/budget-report",
        "--out",
        svid,
        "--ttl",
        "10m",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for name in ["svid.pem", "svid_key.pem", "svid_bundle.pem"] {
        assert!(std::path::Path::new(svid).join(name).is_file(), "{name}");
    }
    // An ID of another trust domain is refused.
    let out = run(&["dev", "ca", "issue", "--dir", ca, "--id", "spiffe://other.example/x", "--out", svid]);
    assert_ne!(out.status.code(), Some(0));

    let yaml = format!(
        "identity:\n  source: files\n  files: {{cert: {svid}/svid.pem, key: {svid}/svid_key.pem, bundle: {svid}/svid_bundle.pem}}\n"
    );
    let config = write(dir.path(), "sidecar.yaml", &yaml);
    let out = run(&["check", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("spiffe://aim.example/budget-report"), "{}", text(&out.stdout));

    // A key that does not belong to the certificate fails the check.
    let other = dir.path().join("other");
    run(&["dev", "ca", "issue", "--dir", ca, "--id", "spiffe://aim.example/x", "--out", other.to_str().unwrap()]);
    std::fs::copy(other.join("svid_key.pem"), std::path::Path::new(svid).join("svid_key.pem")).unwrap();
    let out = run(&["check", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("identity.files"), "{}", text(&out.stderr));
}

#[test]
fn dev_workload_api_serves_the_spiffe_client() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let socket = dir.path().join("agent.sock");
    run(&["dev", "ca", "init", "--dir", ca.to_str().unwrap(), "--trust-domain", "aim.example"]);
    let mut child = bin()
        .args(["dev", "workload-api", "--dir", ca.to_str().unwrap(), "--socket", socket.to_str().unwrap()])
        .args(["--id", "spiffe://aim.example/budget-backend", "--ttl", "1m"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let id = runtime.block_on(async {
        let endpoint = format!("unix://{}", socket.display());
        super::support::eventually(std::time::Duration::from_secs(20), "workload api answers", || {
            let endpoint = endpoint.clone();
            async move {
                let client = spiffe::WorkloadApiClient::connect_to(endpoint).await.ok()?;
                client.fetch_x509_svid().await.ok().map(|svid| svid.spiffe_id().to_string())
            }
        })
        .await
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(id, "spiffe://aim.example/budget-backend");
}

#[test]
fn sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "sidecar.yaml",
        &format!(
            "identity: {{socket: unix://{}/none.sock}}\ntelemetry: {{listen: 127.0.0.1:0}}\n",
            dir.path().display()
        ),
    );
    let mut child = bin().args(["run", "--config", &config]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait until it has started (it logs once its listeners are bound).
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("a2a-sidecar started") {
        line.clear();
        assert_ne!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap(), 0, "exited before starting");
    }
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
