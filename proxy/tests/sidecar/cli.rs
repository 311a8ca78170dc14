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
        // Identity endpoints over plain http:// off loopback (tokens and keys in the clear).
        (
            "identity: {socket: unix:///x}\njwt: {tenant_id: t, audiences: [api://a], authority: 'http://login.example'}\n",
            "`jwt.authority`: `http://login.example` must be https://",
        ),
        (
            "identity: {socket: unix:///x}\nentra: {client_id: c, tenant_id: t, authority: 'http://10.0.0.5', federated_token_file: f}\n",
            "`entra.authority`: `http://10.0.0.5` must be https://",
        ),
        (
            "identity: {socket: unix:///x}\nentra: {client_id: c, tenant_id: t, graph_endpoint: 'http://graph.example', federated_token_file: f}\n",
            "`entra.graph_endpoint`: `http://graph.example` must be https://",
        ),
        // A Workload API socket given as a bare path.
        (
            "identity: {socket: /run/spire/agent.sock}\n",
            "`identity.socket`: `/run/spire/agent.sock` must start with `unix://`",
        ),
        // The admin listener refuses to start without keys (even on loopback) or a state file.
        ("identity: {socket: unix:///x}\nmgmt: {state_file: s.json}\n", "mgmt.keys"),
        (
            "identity: {socket: unix:///x}\nmgmt: {keys: [{name: ops, role: admin, sha256: '0000000000000000000000000000000000000000000000000000000000000000'}]}\n",
            "mgmt.state_file",
        ),
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
fn an_audit_file_it_cannot_open_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        "identity: {socket: unix:///x}\ntelemetry: {listen: '127.0.0.1:0'}\naudit: {file: no-such-dir/audit.jsonl}\n";
    let config = write(dir.path(), "sidecar.yaml", yaml);
    let out = bin().args(["run", "--config", &config]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`audit.file`") && stderr.contains("no-such-dir/audit.jsonl"), "{stderr}");
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
    assert_eq!(out.status.code(), Some(2), "a bad argument, not a failure: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not in the CA's trust domain `aim.example`"), "{}", text(&out.stderr));

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

/// A running `a2a-sidecar` and its log lines, read on a thread so that
/// waiting for one is bounded by a deadline.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// The `a2a-sidecar started` line (it names the bound addresses).
    started: String,
}

impl Running {
    /// Spawns `command` and waits (20 s at most) until its listeners are bound.
    fn start(command: &mut std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut running = Self { child, lines, started: String::new() };
        running.started = running.wait_for("a2a-sidecar started");
        running
    }

    /// The next log line containing `needle`; panics after 20 s or at exit.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    /// Its exit code; panics if it has not exited within 20 s.
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "still running 20 s after the signal");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill").args([name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut running = Running::start(bin().args(["run", "--config", &config]));
    running.signal("-TERM");
    assert_eq!(running.exit_code(), Some(0));
}

fn reference_config(dir: &std::path::Path) -> String {
    reference_config_with(
        dir,
        "jwt: {tenant_id: aaaaaaaa-0000-4000-8000-000000000001, audiences: ['api://budget-backend']}\n",
    )
}

fn reference_config_with(dir: &std::path::Path, extra: &str) -> String {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/reference-policy/spiffe-rbac-policy.yaml");
    write(
        dir,
        "sidecar.yaml",
        &format!(
            "identity: {{socket: unix:///x.sock}}
inbound:
  upstream: 'http://127.0.0.1:8000'
  allowed_callers: ['spiffe://aim.microsoft.com/ests/bp/*/aid/*']
policy: {{file: '{policy}'}}
{extra}"
        ),
    )
}

fn reference_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for name in ["BUDGET_REPORT", "EMPLOYEE_MENUS", "BUDGET_APPROVAL", "ADMIN_CONTROL_PLANE"] {
        let id = name.to_ascii_lowercase().replace('_', "-");
        cmd.env(format!("SPIFFE_PREFIX_{name}"), format!("spiffe://aim.microsoft.com/ests/bp/b1/aid/{id}"));
    }
    cmd.env("ENTRA_ID_BUDGET_REPORT", "00000000-0000-4000-8000-0000000000a1")
        .env("ENTRA_ID_BUDGET_APPROVAL", "00000000-0000-4000-8000-0000000000a2")
        .env("SPIFFE_ID_GOOGLE_BUDGET_READER", "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google")
        .env("ENTRA_ID_GOOGLE_BUDGET_READER", "11111111-0000-0000-0000-000000000001")
        .env("SPIFFE_ID_GITHUB_BUDGET_READER", "spiffe://aim.microsoft.com/ests/bp/gh/aid/github")
        .env("ENTRA_ID_GITHUB_BUDGET_READER", "11111111-0000-0000-0000-000000000002")
}

#[test]
fn check_reports_the_samples_deployment_gaps_then_passes_with_them_filled() {
    let dir = tempfile::tempdir().unwrap();
    let config = reference_config(dir.path());
    let out = run(&["check", "--config", &config]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for want in [
        "entry (employee-menus) `spiffe_id_prefix`: shares its prefix with `budget-report`",
        "set SPIFFE_PREFIX_EMPLOYEE_MENUS",
        "federated_policies[0] (google-budget-reader) `spiffe_id`: holds the placeholder `<blueprint-oid>`",
        "federated_policies[1] (github-budget-reader) `entra_agent_id`: holds the placeholder `<github-agent-oid>`: set ENTRA_ID_GITHUB_BUDGET_READER",
        "spiffe-rbac-policy.yaml",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in {stderr}");
    }
    // `run` refuses to start for the same reasons.
    assert_eq!(run(&["run", "--config", &config]).status.code(), Some(2));

    let out = reference_env(bin().args(["check", "--config", &config])).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains("6 caller entries, 10 rules"), "{summary}");

    // Rules that require a token need a `jwt` section, and a way to bind the token to the caller.
    let no_jwt = reference_config_with(dir.path(), "");
    let out = reference_env(bin().args(["check", "--config", &no_jwt])).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("entry `budget-report` rules[0] has `require_jwt` but the config has no `jwt` section")
    );
    let config = reference_config(dir.path());
    let out = reference_env(bin().args(["check", "--config", &config]))
        .env_remove("ENTRA_ID_BUDGET_REPORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no `agent_id`, `entra_agent_id` or `entra_app_id`")
            && text(&out.stderr).contains("ENTRA_ID_BUDGET_REPORT")
    );
}

#[test]
fn explain_names_the_deciding_layer_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let config = reference_config(dir.path());
    let explain = |caller: &str, method: &str, path: &str| {
        let out = reference_env(
            bin().args(["explain", "--config", &config, "--caller", caller, "--method", method, "--path", path]),
        )
        .output()
        .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let report = "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report";
    let (code, out, err) = explain(report, "POST", "/budget/submit");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("rbac     DENY  rule_denied (entry `budget-report`; policy ids: [budget-report/rules/1])"),
        "{out}"
    );
    let (code, out, _) = explain(report, "GET", "/budget//read/");
    assert_eq!(code, Some(1));
    assert!(
        out.contains("canonical path `/budget/read`")
            && out.contains("budget-report/rules/0")
            && out.contains("requires a bearer JWT (roles: Budget.Read)"),
        "{out}"
    );
    let (code, out, _) = explain("spiffe://other.example/x", "GET", "/");
    assert_eq!(code, Some(1));
    assert!(out.contains("mtls     DENY  not_allowed"), "{out}");
    let (code, out, _) =
        explain("spiffe://aim.microsoft.com/ests/bp/b1/aid/admin-control-plane", "GET", "/mgmt/health");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("result   forwarded"), "{out}");

    // What Graph would say is stated, in Graph's words.
    let graph = |risk: &str| {
        let args = ["explain", "--config", &config, "--caller", report, "--path", "/x", "--risk", risk, "--tag", "t"];
        reference_env(bin().args(args)).output().unwrap()
    };
    assert_eq!(graph("high").status.code(), Some(1), "a valid level: explained");
    let bad = graph("extreme");
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("none, low, medium, high"), "{}", text(&bad.stderr));
}

#[test]
fn dev_token_is_entra_shaped_and_explain_checks_it_offline() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let idp = dir.path().join("idp");
    let out = run(&[
        "dev",
        "token",
        "--dir",
        idp.to_str().unwrap(),
        "--aud",
        "api://budget-backend",
        "--azp",
        "client-1",
        "--oid",
        "00000000-0000-4000-8000-0000000000a1",
        "--roles",
        "Budget.Read",
        "--tid",
        "aaaaaaaa-0000-4000-8000-000000000001",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["azp"], "client-1");
    assert_eq!(claims["oid"], "00000000-0000-4000-8000-0000000000a1");
    assert_eq!(claims["roles"], serde_json::json!(["Budget.Read"]));
    assert_eq!(claims["iss"], "https://login.microsoftonline.com/aaaaaaaa-0000-4000-8000-000000000001/v2.0");

    // The same key, as a JWKS file, lets `explain` run Layer 3 with no network.
    let key = certs::dev::JwtKey::from_pem(std::fs::read_to_string(idp.join("idp_key.pem")).unwrap()).unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({"keys": [key.jwk().unwrap()]}).to_string()).unwrap();
    let config = reference_config(dir.path());
    let report = "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report";
    let explain = |token: &str| {
        let out =
            reference_env(bin().args(["explain", "--config", &config, "--caller", report, "--path", "/budget/read"]))
                .args(["--token", token, "--jwks", jwks.to_str().unwrap()])
                .output()
                .unwrap();
        (out.status.code(), text(&out.stdout))
    };
    let (code, out) = explain(&token);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("oauth    allow valid token"), "{out}");
    let (code, out) = explain(&format!("{token}x"));
    assert_eq!(code, Some(1));
    assert!(out.contains("oauth    DENY  jwt_invalid"), "{out}");
}

/// CPU time (user + system, in clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of file descriptors, `accept` fails at once for every pending
/// connection: the listener backs off instead of spinning a core.
#[test]
fn accept_backs_off_when_out_of_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "sidecar.yaml",
        &format!(
            "identity: {{socket: unix://{}/none.sock}}\ntelemetry: {{listen: 127.0.0.1:0}}\noutbound: {{listen: 127.0.0.1:0}}\n",
            dir.path().display()
        ),
    );
    let bin = env!("CARGO_BIN_EXE_a2a-sidecar");
    let running = Running::start(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -n 64 && exec \"$0\" run --config \"$1\"", bin, &config])
            .env_remove("SPIFFE_ENDPOINT_SOCKET"),
    );
    let port = running.started.split("\"outbound\":\"127.0.0.1:").nth(1).and_then(|r| r.split('"').next()).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // More connections than it has descriptors: the rest wait in the backlog and accept fails.
    let held: Vec<std::net::TcpStream> = (0..100).filter_map(|_| std::net::TcpStream::connect(addr).ok()).collect();
    assert!(held.len() > 64, "{}", held.len());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = cpu_ticks(running.child.id());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = cpu_ticks(running.child.id()) - before;
    // A spinning accept loop burns a whole core: ~200 ticks in 2 s.
    assert!(used < 50, "{used} clock ticks in 2 s while out of descriptors");
}

/// SIGHUP with a change only a restart can apply: nothing changes and the
/// log names the fields (the same refusal `POST /mgmt/reload` answers 409).
#[test]
fn sighup_names_the_fields_a_reload_cannot_change() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "identity: {{socket: unix://{}/none.sock}}\ntelemetry: {{listen: 127.0.0.1:0, log_format: text}}\n",
        dir.path().display()
    );
    let config = write(dir.path(), "sidecar.yaml", &yaml);
    let running = Running::start(bin().args(["run", "--config", &config]));
    std::fs::write(&config, yaml.replace("log_format: text", "log_format: json") + "runtime: {worker_threads: 1}\n")
        .unwrap();
    running.signal("-HUP");
    let refusal = running.wait_for("reload refused");
    assert!(refusal.contains("runtime.worker_threads") && refusal.contains("telemetry.log_format"), "{refusal}");
}

/// `--version` and `a2a_build_info` name the release and the commit built.
#[test]
fn version_names_the_release_and_the_commit() {
    let git = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output();
    let commit = git.ok().filter(|o| o.status.success()).map(|o| text(&o.stdout).trim().to_owned());
    let commit = std::env::var("A2A_GIT_COMMIT").ok().filter(|c| !c.is_empty()).or(commit).unwrap_or("unknown".into());
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).trim(), format!("a2a-sidecar {} ({commit})", env!("CARGO_PKG_VERSION")));
    let metrics = proxy::observe::metrics::Metrics::new().unwrap().encode();
    let line = format!("a2a_build_info{{commit=\"{commit}\",version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
}
