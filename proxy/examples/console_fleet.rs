//! How much of a core the operator console uses for a large fleet: N
//! sidecars (in this process: `/mgmt` over mTLS with the console's SVID as
//! admin), the dev IdP, and the console as its own process (the release
//! binary), polling every sidecar's health every 5 s; its CPU time is read
//! from /proc over the measured window.
//!
//!   cargo build --release -p proxy && cargo run --release -p proxy --example console_fleet -- 100 60
//!
//! Prints the console's CPU seconds per second (1.0 = one core) and its peak RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::TrustDomain;
use certs::dev::{DevCa, WorkloadApiServer, WorkloadApiServerConfig};

const CONSOLE_ID: &str = "spiffe://example.org/ops/console";
const SIDECAR_ID: &str = "spiffe://example.org/ns/fleet/sa/agent";

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0 // USER_HZ
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let sidecars: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(60), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let ca = Arc::new(DevCa::generate(&TrustDomain::new("example.org")?)?);
    let config = |id: &str| WorkloadApiServerConfig {
        ca: ca.clone(),
        id: id.parse().unwrap_or_else(|_| unreachable!()),
        ttl: Duration::from_secs(3600),
        federated: vec![],
    };
    let _sidecar_agent = WorkloadApiServer::start(&dir.path().join("sidecar.sock"), config(SIDECAR_ID)).await?;
    let _console_agent = WorkloadApiServer::start(&dir.path().join("console.sock"), config(CONSOLE_ID)).await?;
    let (idp, _, _idp_task) = proxy::cmd::dev_idp::start(&dir.path().join("idp")).await?;

    let mut apps = Vec::new();
    let mut entries = String::new();
    for i in 0..sidecars {
        let yaml = format!(
            "identity: {{socket: 'unix://{}'}}
telemetry: {{listen: '127.0.0.1:0'}}
outbound: {{listen: '127.0.0.1:0', routes: []}}
mgmt:
  listen: '127.0.0.1:0'
  state_file: state-{i}.json
  keys: [{{name: ops, role: admin, sha256: '{}'}}]
  tls: {{allowed_callers: ['{CONSOLE_ID}'], roles: {{'{CONSOLE_ID}': admin}}, consoles: ['{CONSOLE_ID}']}}
",
            dir.path().join("sidecar.sock").display(),
            "0".repeat(64),
        );
        let path = dir.path().join(format!("sidecar-{i}.yaml"));
        std::fs::write(&path, yaml)?;
        let app = proxy::app::App::start(proxy::config::Config::load(&path)?).await?;
        entries.push_str(&format!(
            "  - {{name: sidecar-{i}, mgmt: 'https://{}', spiffe_id: '{SIDECAR_ID}'}}\n",
            app.mgmt_addr.unwrap_or_else(|| unreachable!())
        ));
        apps.push(app);
    }
    let console_yaml = format!(
        "listen: '127.0.0.1:0'
identity: {{socket: 'unix://{}'}}
oidc: {{issuer: '{}/t/v2.0', client_id: console, admin: [Console.Admin]}}
fleet: {{concurrency: 16, timeout: 2s, poll_interval: 5s}}
sidecars:
{entries}",
        dir.path().join("console.sock").display(),
        idp.authority()
    );
    let console_path = dir.path().join("console.yaml");
    std::fs::write(&console_path, console_yaml)?;
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/a2a-sidecar");
    let mut console = std::process::Command::new(binary)
        .args(["console", "--config"])
        .arg(&console_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = console.id();
    // Warm-up: the first poll opens every mTLS connection.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu, elapsed) = (cpu_seconds(pid) - cpu0, t0.elapsed().as_secs_f64());
    println!(
        "console, {sidecars} sidecars polled every 5 s over mTLS: {:.4} CPU s/s ({:.2}% of a core) over {elapsed:.0} s; peak RSS {:.1} MiB",
        cpu / elapsed,
        100.0 * cpu / elapsed,
        peak_rss_mib(pid)
    );
    console.kill()?;
    Ok(())
}
