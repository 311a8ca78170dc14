//! a2a-bench: load-tests a2a-sidecar on this machine, against the same
//! client calling the app directly, in one run.
//!
//!     cargo run --release -p bench -- [--quick] [--pin] [--json PATH]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod load;
mod peers;
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
    /// A fixed request count: each run ends after this many requests in total
    /// (`--seconds` still caps it; without it, an hour).
    #[arg(long)]
    requests: Option<u64>,
    /// The warm-up before each measured run, in milliseconds (default 2000,
    /// 500 with `--quick`; 0: none, so two runs of N and M requests differ
    /// by exactly M - N requests, as an instruction count per request needs).
    #[arg(long, value_name = "MS")]
    warmup_ms: Option<u64>,
    /// App and sidecars on CPU 0 (the first N with `--workers N`), the load
    /// generator on the CPUs left (sharing them when none is left).
    #[arg(long)]
    pin: bool,
    /// Runtime workers of every sidecar and the app, and the same for the
    /// peers (nginx `worker_processes`, HAProxy `nbthread`, Envoy
    /// `--concurrency`); several (`1,2`) run the whole set once each and add
    /// a scaling table.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    workers: Vec<usize>,
    /// The CPUs of the app, sidecars and peers (comma-separated; implies
    /// pinning); the load generator gets the others.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// This many idle keep-alive connections (one request each, then silent)
    /// held open to each mTLS target while it is measured; the report gives
    /// the resident memory they cost.
    #[arg(long)]
    idle: Option<usize>,
    /// Open loop at this many requests/s in total, latency measured from
    /// the intended send times (default: closed loop, max throughput).
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2 with this many concurrent streams per connection.
    #[arg(long)]
    h2_streams: Option<usize>,
    /// Rounds, each measuring every scenario once in shuffled order (the
    /// targets' pairs back to back), medians reported (default 3; 1 with --quick).
    #[arg(long)]
    repeat: Option<u32>,
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
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
    },
}

/// The load of one run, the same for every scenario.
struct Plan {
    connections: usize,
    seconds: u64,
    warmup: Duration,
    max_requests: Option<u64>,
    tiny: bool,
    h2_streams: Option<usize>,
    rate: Option<f64>,
    idle: Option<usize>,
}

/// Another process using more than this share of a CPU during a run marks it disturbed.
const DISTURBED_CPU_SHARE: f64 = 0.15;

/// Runs that another process disturbed are measured again, this many times at most.
const DISTURBED_RETRIES: u32 = 2;
/// How long to wait for the machine to be quiet before a run.
const QUIET_WAIT: Duration = Duration::from_secs(10);

/// [`measure`] on a quiet machine: waits (bounded) for other processes to
/// calm down first, and measures again when the run was disturbed anyway. A
/// run still disturbed after the retries is kept and flagged.
fn measure_quietly(
    stack: &scenarios::Stack,
    client: &tokio::runtime::Runtime,
    name: &'static str,
    plan: &Plan,
) -> anyhow::Result<Option<report::Result>> {
    if plan.tiny {
        return measure(stack, client, name, plan);
    }
    let mut attempt = 0;
    loop {
        wait_for_quiet(stack);
        let result = measure(stack, client, name, plan)?;
        if !result.as_ref().is_some_and(|r| r.disturbed) || attempt == DISTURBED_RETRIES {
            return Ok(result);
        }
        attempt += 1;
        eprintln!("{name:<12} measuring again ({attempt} of {DISTURBED_RETRIES})");
    }
}

/// Waits until processes outside the harness use less than
/// [`DISTURBED_CPU_SHARE`] of a CPU over half a second, or [`QUIET_WAIT`] passed.
fn wait_for_quiet(stack: &scenarios::Stack) {
    const WINDOW: Duration = Duration::from_millis(500);
    let deadline = std::time::Instant::now() + QUIET_WAIT;
    let mut said = false;
    loop {
        let before = sidecar::cpu_outside(&stack.processes());
        std::thread::sleep(WINDOW);
        let share = (sidecar::cpu_outside(&stack.processes()) - before) / WINDOW.as_secs_f64();
        if share <= DISTURBED_CPU_SHARE {
            return;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "\rthe machine is still busy ({:.0}% of a CPU outside the harness): measuring anyway",
                share * 100.0
            );
            return;
        }
        if !said {
            eprintln!("\rwaiting for quiet: other processes use {:.0}% of a CPU", share * 100.0);
            said = true;
        }
    }
}

/// One warm-up and one measured run of scenario `name`.
fn measure(
    stack: &scenarios::Stack,
    client: &tokio::runtime::Runtime,
    name: &'static str,
    plan: &Plan,
) -> anyhow::Result<Option<report::Result>> {
    let Some(scenarios::Scenario { target, new_connection_per_request, sidecars, request }) = stack.scenario(name)
    else {
        return Ok(None);
    };
    let mut shape = load::Shape {
        connections: plan.connections,
        duration: plan.warmup,
        max_requests: plan.max_requests,
        new_connection_per_request,
        h2_streams: plan.h2_streams.filter(|_| !new_connection_per_request),
        rate: plan.rate,
    };
    if !plan.warmup.is_zero() {
        client.block_on(load::run(&target, request, shape))?;
    }
    // `--idle N`: connections that stay open and silent through the run;
    // what they cost in resident memory, from the target's processes.
    let idle_rss_before: f64 = sidecars.iter().map(|s| s.rss_now_mib()).sum();
    let idle = match (plan.idle, &target) {
        (Some(n), load::Target::Mtls(..)) if n > 0 && !new_connection_per_request => {
            Some(client.block_on(load::open_idle(&target, request, n))?)
        }
        _ => None,
    };
    let idle_rss = idle.as_ref().map(|held| {
        let after: f64 = sidecars.iter().map(|s| s.rss_now_mib()).sum();
        (held.len(), after - idle_rss_before)
    });
    let rotation = name == "rotation";
    // Long enough for SVID rotations and a policy reload, unless --tiny.
    let seconds = if rotation && !plan.tiny { plan.seconds.max(6) } else { plan.seconds };
    shape.duration = Duration::from_secs(seconds);
    match plan.max_requests {
        Some(n) => eprint!("\r{name:<12} c={} {n} requests (at most {seconds}s) ...", plan.connections),
        None => eprint!("\r{name:<12} c={} {seconds}s ...", plan.connections),
    }
    let before = if rotation { client.block_on(rotation_counters(stack)) } else { None };
    let scan = name == "inbound-deny";
    let denials_before = if scan { client.block_on(denial_counters(stack)) } else { None };
    let cpu_before: f64 = sidecars.iter().map(|s| s.cpu_seconds()).sum();
    let others_before = sidecar::cpu_outside(&stack.processes());
    let (run, private) = sidecar::peak_private_while(&sidecars, || {
        client.block_on(async {
            let reloads = rotation.then(|| tokio::spawn(rewrite_policy(stack.rotating_policy.clone())));
            let run = match before {
                Some((rotations, _)) if plan.tiny => across_a_rotation(stack, &target, shape, rotations).await,
                _ => load::run(&target, request, shape).await,
            };
            if let Some(task) = reloads {
                task.abort();
            }
            run
        })
    });
    let run = run?;
    let others = sidecar::cpu_outside(&stack.processes()) - others_before;
    let cpu = sidecars.iter().map(|s| s.cpu_seconds()).sum::<f64>() - cpu_before;
    let rss = sidecars.iter().map(|s| s.peak_rss_mib()).sum::<f64>();
    let after = if rotation { client.block_on(rotation_counters(stack)) } else { None };
    let denials_after = if scan { client.block_on(denial_counters(stack)) } else { None };
    // `/proc` counts in 10 ms ticks: a very short run needs an absolute floor too.
    let disturbed = others >= 0.05 && others / run.elapsed.as_secs_f64().max(f64::EPSILON) > DISTURBED_CPU_SHARE;
    eprintln!(
        "\r{name:<12} {:>9.0} req/s  p99 {:.3} ms  errors {}{}",
        run.rps(),
        run.quantile_ms(0.99),
        run.errors,
        if disturbed { format!("  (disturbed: other processes used {others:.2} CPU s)") } else { String::new() }
    );
    let mut result = report::Result::new(name, &run, (!sidecars.is_empty()).then_some((cpu, rss)));
    result.disturbed = disturbed;
    // `None` (null in the JSON) for other scenarios, or when the sidecar's /metrics could not be read.
    result.rotations = before.zip(after).map(|(b, a)| (a.0 - b.0, a.1 - b.1));
    result.denials = denials_before.zip(denials_after).map(|(b, a)| (a.0 - b.0, a.1 - b.1));
    result.idle = idle_rss;
    result.private_mib = (!sidecars.is_empty()).then_some(private);
    drop(idle);
    Ok(Some(result))
}

/// The order of one round: `names` shuffled, but the scenarios of each
/// [`scenarios::ADJACENT`] group that are measured run one after another,
/// in either direction at random, so the ratios the targets name compare
/// runs seconds apart and neither side always goes first.
fn round_order(names: &[&'static str], seed: &mut u64) -> Vec<&'static str> {
    let mut units: Vec<Vec<&'static str>> = Vec::new();
    for &name in names {
        if units.iter().any(|unit| unit.contains(&name)) {
            continue;
        }
        units.push(match scenarios::ADJACENT.iter().find(|group| group.contains(&name)) {
            Some(group) => group.iter().copied().filter(|n| names.contains(n)).collect(),
            None => vec![name],
        });
    }
    for i in (1..units.len()).rev() {
        units.swap(i, (next_random(seed) % (i as u64 + 1)) as usize);
    }
    for unit in &mut units {
        if next_random(seed) % 2 == 1 {
            unit.reverse();
        }
    }
    units.concat()
}

/// A xorshift step: the order only needs to vary.
fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// `--tiny`'s `rotation` run, far shorter than the SVID's half-life: the
/// first half of the requests, a wait (bounded by the SVID's lifetime) until
/// the sidecar has rotated past `rotations`, then the second half on new
/// connections, whose handshakes meet the new SVID. The wait is not measured.
async fn across_a_rotation(
    stack: &scenarios::Stack,
    target: &load::Target,
    shape: load::Shape,
    rotations: f64,
) -> anyhow::Result<load::Run> {
    let Some(total) = shape.max_requests else { return load::run(target, &stack.request, shape).await };
    let first = load::Shape { max_requests: Some(total / 2), ..shape };
    let mut run = load::run(target, &stack.request, first).await?;
    let deadline = tokio::time::Instant::now() + scenarios::TINY_ROTATION_SVID_TTL;
    while tokio::time::Instant::now() < deadline
        && rotation_counters(stack).await.is_none_or(|(now, _)| now <= rotations)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = load::Shape { max_requests: Some(total - total / 2), ..shape };
    run.merge(load::run(target, &stack.request, second).await?)?;
    Ok(run)
}

/// SVID rotations and accepted policy reloads of the `rotation` sidecar so far.
async fn rotation_counters(stack: &scenarios::Stack) -> Option<(f64, f64)> {
    let rotations = stack.rotating.counter("a2a_svid_rotations_total", &[]).await?;
    let reloads = stack.rotating.counter("a2a_policy_reloads_total", &[("result", "ok")]).await?;
    Some((rotations, reloads))
}

/// Requests the `inbound-deny` sidecar refused at Layer 2 for want of a
/// matching rule so far, and the audit events its sink lost.
async fn denial_counters(stack: &scenarios::Stack) -> Option<(f64, f64)> {
    let labels = [("direction", "inbound"), ("decision", "deny"), ("layer", "rbac"), ("reason", "no_matching_rule")];
    let denied = stack.deny.counter("a2a_requests_total", &labels).await?;
    let dropped = stack.deny.counter("a2a_audit_dropped_total", &[]).await?;
    Some((denied, dropped))
}

/// Rewrites the `rotation` sidecar's policy file (same rules, new version)
/// every few seconds until aborted; the sidecar's file watcher reloads it.
async fn rewrite_policy(path: PathBuf) {
    let mut interval = tokio::time::interval(scenarios::ROTATION_POLICY_EVERY);
    interval.tick().await;
    for n in 1.. {
        interval.tick().await;
        // Written to a temp file and renamed, as a config-management tool would.
        let temp = path.with_extension("tmp");
        if std::fs::write(&temp, scenarios::rotating_policy(n)).is_ok() {
            let _ = std::fs::rename(&temp, &path);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Sidecar { config, cpus }) = &cli.command {
        return sidecar::serve(config, cpus);
    }
    certs::crypto::install_default_provider();
    let pin = cli.pin && core_affinity::get_core_ids().is_some_and(|c| c.len() >= 2);
    if cli.pin && !pin {
        eprintln!("--pin needs 2 CPUs: running unpinned");
    }
    let (connections, seconds, warmup, max_requests) = match (cli.tiny, cli.quick) {
        (true, _) => (2, 10, Duration::ZERO, Some(300)),
        (false, quick) => {
            let default_seconds = match (cli.requests, quick) {
                (Some(_), _) => 3600,
                (None, true) => 2,
                (None, false) => 10,
            };
            let warmup = Duration::from_millis(cli.warmup_ms.unwrap_or(if quick { 500 } else { 2000 }));
            (cli.connections, cli.seconds.unwrap_or(default_seconds), warmup, cli.requests)
        }
    };
    let names: Vec<&str> =
        scenarios::NAMES.into_iter().filter(|n| cli.only.is_empty() || cli.only.iter().any(|o| o == n)).collect();

    let with_peers = cli.only.is_empty() || cli.only.iter().any(|o| scenarios::PEERS.contains(&o.as_str()));
    let rotation_ttl = if cli.tiny { scenarios::TINY_ROTATION_SVID_TTL } else { scenarios::ROTATION_SVID_TTL };
    let plan = Plan {
        connections,
        seconds,
        warmup,
        max_requests,
        tiny: cli.tiny,
        h2_streams: cli.h2_streams,
        rate: cli.rate,
        idle: cli.idle,
    };
    let repeat = cli.repeat.unwrap_or(if cli.quick || cli.tiny { 1 } else { 3 }).max(1);
    // Read before anything is pinned: a pinned thread sees only its own CPU.
    let all: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let mut reports = Vec::new();
    for workers in cli.workers.iter().copied().map(|w| w.max(1)) {
        let layout = report::Placement::new(workers, pin || !cli.cpus.is_empty(), &cli.cpus, &all);
        eprintln!("{}", layout.describe());
        // Each set on a thread of its own, pinned as its layout says: the
        // main thread stays unpinned for the next set.
        let set = || run_set(&layout, &names, (with_peers, rotation_ttl), &plan, repeat);
        let results = std::thread::scope(|s| s.spawn(set).join()).map_err(|_| anyhow::anyhow!("a set panicked"))??;
        reports.push((layout, results));
    }
    let mode = match (cli.rate, cli.h2_streams) {
        (Some(rate), _) => format!("open loop at {rate} req/s"),
        (None, Some(streams)) => format!("closed loop, HTTP/2 x {streams} streams per connection"),
        (None, None) => "closed loop, HTTP/1.1 keep-alive".to_owned(),
    };
    let mode = match max_requests {
        Some(n) => format!("{mode}, {n} requests per run"),
        None => mode,
    };
    let mode = if repeat > 1 { format!("{mode}, median of {repeat} rounds in shuffled order") } else { mode };
    let reports: Vec<report::Report> = reports
        .into_iter()
        .map(|(layout, (results, token_bytes))| {
            report::Report::new(results, (connections, mode.clone()), layout, token_bytes)
        })
        .collect();
    for report in &reports {
        println!("{}", report.markdown());
    }
    if reports.len() > 1 {
        println!("{}", report::scaling_markdown(&reports));
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report::json(&reports))?)?;
    }
    Ok(())
}

/// Starts the stack for `layout`, checks the token-checking targets refuse
/// a request without one, and measures every scenario of `names` once in
/// each of `repeat` rounds ([`round_order`]): the medians, and the token's size.
fn run_set(
    layout: &report::Placement,
    names: &[&'static str],
    (with_peers, rotation_ttl): (bool, Duration),
    plan: &Plan,
    repeat: u32,
) -> anyhow::Result<(Vec<report::Result>, usize)> {
    let on = scenarios::Placement { cpus: &layout.server_cpus, workers: layout.workers };
    let stack = scenarios::Stack::start(on, with_peers, rotation_ttl)?;
    if let Some(first) = layout.load_cpus.first().copied() {
        core_affinity::set_for_current(core_affinity::CoreId { id: first });
    }
    // One load thread per load CPU (one when unpinned or sharing).
    let client = match layout.load_cpus.len() {
        0 | 1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n).enable_all();
            sidecar::pin_threads(&mut builder, &layout.load_cpus);
            builder.build()?
        }
    };
    // The token-checking targets must refuse a request without one, or the comparison is void.
    for name in names.iter().copied().filter(|n| matches!(*n, "inbound-all" | "inbound-pdp" | "chain" | "envoy-authz"))
    {
        if let Some(scenario) = stack.scenario(name) {
            let anonymous = load::RequestSpec { bearer: "".into(), ..stack.request.clone() };
            match client.block_on(load::probe(&scenario.target, &anonymous)) {
                Some(status) if status.is_client_error() => {
                    eprintln!("{name}: a request without a token gets {status}")
                }
                other => anyhow::bail!("{name} does not refuse a request without a token: {other:?}"),
            }
        }
    }
    // `inbound-deny`'s requests must be refused for their path alone: the
    // same sidecar allows the allowed request.
    if let Some(scenario) = names.contains(&"inbound-deny").then(|| stack.scenario("inbound-deny")).flatten() {
        let allowed = client.block_on(load::probe(&scenario.target, &stack.request));
        let scanned = client.block_on(load::probe(&scenario.target, scenario.request));
        anyhow::ensure!(
            allowed == Some(hyper::StatusCode::OK) && scanned == Some(scenario.request.expect),
            "inbound-deny: the allowed request got {allowed:?} and a scanned path {scanned:?}"
        );
    }
    let mut runs: Vec<(&str, Vec<report::Result>)> = names.iter().map(|n| (*n, Vec::new())).collect();
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    for round in 0..repeat {
        for (position, name) in round_order(names, &mut seed).into_iter().enumerate() {
            if let Some(result) = measure_quietly(&stack, &client, name, plan)?
                && let Some((_, results)) = runs.iter_mut().find(|(n, _)| *n == name)
            {
                results.push(report::Result { round, position, ..result });
            }
        }
    }
    let results = runs.into_iter().filter_map(|(_, rs)| report::Result::median(rs)).collect();
    Ok((results, stack.request.bearer.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compared_scenarios_run_next_to_each_other_in_every_round() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let adjacent = |order: &[&str], a: &str, b: &str| {
            let at = |n| order.iter().position(|o| *o == n).unwrap();
            at(a).abs_diff(at(b)) == 1
        };
        let (mut reversed, mut forward, mut moved) = (false, false, false);
        for round in 0..50 {
            let order = round_order(&scenarios::NAMES, &mut seed);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            let mut all = scenarios::NAMES.to_vec();
            all.sort_unstable();
            assert_eq!(sorted, all, "round {round}: every scenario once");
            assert!(adjacent(&order, "inbound-all", "nginx"), "round {round}: {order:?}");
            assert!(adjacent(&order, "inbound-all", "chain"), "round {round}: {order:?}");
            assert!(adjacent(&order, "inbound-l1", "haproxy"), "round {round}: {order:?}");
            let at = |n| order.iter().position(|o| *o == n);
            reversed |= at("chain") < at("nginx");
            forward |= at("nginx") < at("chain");
            moved |= order.first() != Some(&"direct");
        }
        assert!(reversed && forward && moved, "rounds are shuffled, the pairs in both directions");
        // A group with one member measured is a scenario like any other.
        let mut order = round_order(&["direct", "inbound-all", "haproxy"], &mut seed);
        order.sort_unstable();
        assert_eq!(order, ["direct", "haproxy", "inbound-all"]);
    }
}
