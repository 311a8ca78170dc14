//! a2a-bench: load-tests a2a-sidecar on this machine, against the same
//! client calling the app directly, in one run.
//!
//!     cargo run --release -p bench -- [--quick] [--pin] [--json PATH]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod load;
mod report;
mod scenarios;
mod sidecar;

#[derive(Parser)]
#[command(name = "a2a-bench", about = "Load-test a2a-sidecar against direct calls")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Short runs (2 s after a 0.5 s warm-up).
    #[arg(long)]
    quick: bool,
    /// A few hundred requests per scenario: checks that the harness works.
    #[arg(long)]
    tiny: bool,
    /// Closed-loop connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per measured run (overrides --quick).
    #[arg(long)]
    seconds: Option<u64>,
    /// App and sidecars on CPU 0, the load generator on CPU 1.
    #[arg(long)]
    pin: bool,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// (internal) Run one sidecar for the harness.
    #[command(hide = true)]
    Sidecar {
        config: PathBuf,
        #[arg(long)]
        cpu: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Sidecar { config, cpu }) = &cli.command {
        return sidecar::serve(config, *cpu);
    }
    certs::tls::install_default_provider();
    let pin = cli.pin && core_affinity::get_core_ids().is_some_and(|c| c.len() >= 2);
    if cli.pin && !pin {
        eprintln!("--pin needs 2 CPUs: running unpinned");
    }
    let (connections, seconds, warmup, max_requests) = match (cli.tiny, cli.quick) {
        (true, _) => (2, 10, Duration::ZERO, Some(300)),
        (false, true) => (cli.connections, cli.seconds.unwrap_or(2), Duration::from_millis(500), None),
        (false, false) => (cli.connections, cli.seconds.unwrap_or(10), Duration::from_secs(2), None),
    };
    let names: Vec<&str> =
        scenarios::NAMES.into_iter().filter(|n| cli.only.is_empty() || cli.only.iter().any(|o| o == n)).collect();

    let stack = scenarios::Stack::start(pin.then_some(0))?;
    if pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: 1 });
    }
    let client = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut results = Vec::new();
    for name in names {
        let Some((target, new_connection_per_request, sidecars)) = stack.scenario(name) else { continue };
        let mut shape = load::Shape { connections, duration: warmup, max_requests, new_connection_per_request };
        if !warmup.is_zero() {
            client.block_on(load::run(&target, &stack.request, shape))?;
        }
        shape.duration = Duration::from_secs(seconds);
        eprint!("\r{name:<12} c={connections} {seconds}s ...");
        let cpu_before: f64 = sidecars.iter().map(|s| s.cpu_seconds()).sum();
        let run = client.block_on(load::run(&target, &stack.request, shape))?;
        let cpu = sidecars.iter().map(|s| s.cpu_seconds()).sum::<f64>() - cpu_before;
        let rss = sidecars.iter().map(|s| s.peak_rss_mib()).sum::<f64>();
        eprintln!("\r{name:<12} {:>9.0} req/s  p99 {:.3} ms  errors {}", run.rps(), run.quantile_ms(0.99), run.errors);
        results.push(report::Result::new(name, &run, (!sidecars.is_empty()).then_some((cpu, rss))));
    }
    let report = report::Report::new(results, connections, pin, stack.request.bearer.len());
    println!("{}", report.markdown());
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
    }
    Ok(())
}
