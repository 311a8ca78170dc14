//! The results: a markdown table and the JSON file of `--json`.

use serde_json::{Value, json};

use crate::load::Run;

pub struct Result {
    pub name: &'static str,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub requests: u64,
    pub errors: u64,
    /// Sidecar CPU seconds per 10k requests and peak RSS; `None` for `direct`.
    pub cpu_s_per_10k: Option<f64>,
    pub rss_mib: Option<f64>,
    /// The sidecars' largest private resident memory (`RssAnon`) sampled
    /// during the run; `None` for `direct`.
    pub private_mib: Option<f64>,
    /// `rotation` only: SVID rotations and policy reloads during the run.
    pub rotations: Option<(f64, f64)>,
    /// `inbound-deny` only: requests the sidecar refused at Layer 2 for want
    /// of a matching rule during the run, and the audit events its sink lost.
    pub denials: Option<(f64, f64)>,
    /// Other processes used a noticeable share of a CPU during the run.
    pub disturbed: bool,
    /// The ALPN protocols the servers selected (empty: plain text) and the
    /// HTTP versions of the responses, from the real connections.
    pub alpn: Vec<String>,
    pub http_versions: Vec<String>,
    /// [`Self::median`]: each repetition's own numbers, in the order they ran.
    pub repetitions: Vec<Repetition>,
    /// `--idle N`: N idle connections and the resident memory (MiB) the
    /// target's processes grew by when they were opened.
    pub idle: Option<(usize, f64)>,
    /// The round it ran in (from 0) and its place in that round's order.
    pub round: u32,
    pub position: usize,
}

/// One repetition's numbers, reported beside the medians.
pub struct Repetition {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub requests: u64,
    pub errors: u64,
    pub cpu_s_per_10k: Option<f64>,
    pub disturbed: bool,
    pub round: u32,
    pub position: usize,
}

impl Result {
    pub fn new(name: &'static str, run: &Run, sidecar: Option<(f64, f64)>) -> Self {
        let per_10k = |cpu: f64| if run.requests == 0 { 0.0 } else { cpu / run.requests as f64 * 10_000.0 };
        Self {
            name,
            rps: run.rps(),
            p50_ms: run.quantile_ms(0.5),
            p99_ms: run.quantile_ms(0.99),
            p999_ms: run.quantile_ms(0.999),
            requests: run.requests,
            errors: run.errors,
            cpu_s_per_10k: sidecar.map(|(cpu, _)| per_10k(cpu)),
            rss_mib: sidecar.map(|(_, rss)| rss),
            private_mib: None,
            rotations: None,
            denials: None,
            disturbed: false,
            alpn: run.protocols.alpn.iter().cloned().collect(),
            http_versions: run.protocols.http.iter().map(|v| format!("{v:?}")).collect(),
            repetitions: Vec::new(),
            idle: None,
            round: 0,
            position: 0,
        }
    }

    /// The median of repetitions (request and error counts, rotations and
    /// denials summed; RSS and private memory the largest; disturbed if any
    /// was; protocols all seen), keeping each repetition's numbers.
    pub fn median(runs: Vec<Self>) -> Option<Self> {
        fn median_of(runs: &[Result], f: impl Fn(&Result) -> f64) -> f64 {
            let mut values: Vec<f64> = runs.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or_default()
        }
        let first = runs.first()?;
        Some(Self {
            name: first.name,
            rps: median_of(&runs, |r| r.rps),
            p50_ms: median_of(&runs, |r| r.p50_ms),
            p99_ms: median_of(&runs, |r| r.p99_ms),
            p999_ms: median_of(&runs, |r| r.p999_ms),
            requests: runs.iter().map(|r| r.requests).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            cpu_s_per_10k: first.cpu_s_per_10k.map(|_| median_of(&runs, |r| r.cpu_s_per_10k.unwrap_or_default())),
            rss_mib: runs.iter().filter_map(|r| r.rss_mib).reduce(f64::max),
            private_mib: runs.iter().filter_map(|r| r.private_mib).reduce(f64::max),
            rotations: runs.iter().filter_map(|r| r.rotations).reduce(|a, b| (a.0 + b.0, a.1 + b.1)),
            denials: runs.iter().filter_map(|r| r.denials).reduce(|a, b| (a.0 + b.0, a.1 + b.1)),
            disturbed: runs.iter().any(|r| r.disturbed),
            alpn: union(runs.iter().map(|r| &r.alpn)),
            http_versions: union(runs.iter().map(|r| &r.http_versions)),
            repetitions: runs
                .iter()
                .map(|r| Repetition {
                    rps: r.rps,
                    p50_ms: r.p50_ms,
                    p99_ms: r.p99_ms,
                    p999_ms: r.p999_ms,
                    requests: r.requests,
                    errors: r.errors,
                    cpu_s_per_10k: r.cpu_s_per_10k,
                    disturbed: r.disturbed,
                    round: r.round,
                    position: r.position,
                })
                .collect(),
            idle: runs.iter().filter_map(|r| r.idle).reduce(|a, b| if b.1 > a.1 { b } else { a }),
            round: first.round,
            position: first.position,
        })
    }
}

/// One scenario against another ([`ratio`]).
pub struct Ratio {
    pub rps: f64,
    /// `None` where no round measured both sides' CPU (a run too short for
    /// one 10 ms tick, or `direct`, which has no sidecar).
    pub cpu: Option<f64>,
    /// Rounds compared (0: the scenarios had no repetitions; the medians were).
    pub rounds: usize,
    /// A run of a compared round was marked disturbed.
    pub disturbed: bool,
}

/// `a` against `b`, throughput and CPU per request: for each round both ran
/// in (joined by round, so a missing run can never pair two rounds), the
/// ratio of the two runs, and the median of those (the two middle ones'
/// geometric mean for an even count, so `b` against `a` is the inverse).
/// The host's speed drifts between rounds, and the medians of the two
/// scenarios could come from different ones; the targets' pairs also run
/// back to back within a round ([`crate::scenarios::ADJACENT`]). A CPU
/// ratio uses the rounds where both sides used some. Without repetitions,
/// the ratio of the two results.
pub fn ratio(a: &Result, b: &Result) -> Ratio {
    fn median(mut values: Vec<f64>) -> Option<f64> {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let upper = *values.get(n / 2)?;
        match n % 2 {
            1 => Some(upper),
            _ => Some((values.get(n / 2 - 1)? * upper).sqrt()),
        }
    }
    let cpu = |x: Option<f64>, y: Option<f64>| x.filter(|c| *c > 0.0).zip(y.filter(|c| *c > 0.0)).map(|(x, y)| x / y);
    let rounds: Vec<(&Repetition, &Repetition)> =
        a.repetitions.iter().filter_map(|x| Some((x, b.repetitions.iter().find(|y| y.round == x.round)?))).collect();
    let rps = median(rounds.iter().map(|(x, y)| x.rps / y.rps.max(f64::EPSILON)).collect());
    match rps {
        Some(rps) => Ratio {
            rps,
            cpu: median(rounds.iter().filter_map(|(x, y)| cpu(x.cpu_s_per_10k, y.cpu_s_per_10k)).collect()),
            rounds: rounds.len(),
            disturbed: rounds.iter().any(|(x, y)| x.disturbed || y.disturbed),
        },
        None => Ratio {
            rps: a.rps / b.rps.max(f64::EPSILON),
            cpu: cpu(a.cpu_s_per_10k, b.cpu_s_per_10k),
            rounds: 0,
            disturbed: a.disturbed || b.disturbed,
        },
    }
}

/// The sorted, deduplicated strings of all `lists`.
fn union<'a>(lists: impl Iterator<Item = &'a Vec<String>>) -> Vec<String> {
    let all: std::collections::BTreeSet<&String> = lists.flatten().collect();
    all.into_iter().cloned().collect()
}

/// Where one set runs (`--workers`, `--pin`, `--cpus`): the servers (app,
/// sidecars, peers) and the load generator.
pub struct Placement {
    pub workers: usize,
    /// The app's, sidecars' and peers' CPUs (empty: unpinned).
    pub server_cpus: Vec<usize>,
    /// The load generator's (empty: unpinned or sharing the servers').
    pub load_cpus: Vec<usize>,
}

impl Placement {
    /// `--cpus` as given, else with `--pin` the first `workers` CPUs (all of
    /// them if there are fewer); the load generator gets the rest, and
    /// shares the servers' CPUs when none is left.
    pub fn new(workers: usize, pin: bool, cpus: &[usize], all: &[usize]) -> Self {
        let server_cpus: Vec<usize> = match (cpus.is_empty(), pin) {
            (false, _) => cpus.to_vec(),
            (true, true) => all.iter().copied().take(workers.max(1)).collect(),
            (true, false) => Vec::new(),
        };
        let load_cpus = if server_cpus.is_empty() {
            Vec::new()
        } else {
            all.iter().copied().filter(|c| !server_cpus.contains(c)).collect()
        };
        Self { workers, server_cpus, load_cpus }
    }

    pub fn describe(&self) -> String {
        let list = crate::sidecar::cpu_list;
        match (self.server_cpus.is_empty(), self.load_cpus.is_empty()) {
            (true, _) => format!("{} worker(s), unpinned", self.workers),
            (false, false) => format!(
                "{} worker(s); app, sidecars and peers on CPU {}, load on CPU {}",
                self.workers,
                list(&self.server_cpus),
                list(&self.load_cpus)
            ),
            (false, true) => format!(
                "{} worker(s); app, sidecars and peers on CPU {}, the load generator shares them (no CPU left)",
                self.workers,
                list(&self.server_cpus)
            ),
        }
    }
}

pub struct Report {
    results: Vec<Result>,
    connections: usize,
    mode: String,
    placement: Placement,
    token_bytes: usize,
}

impl Report {
    pub fn new(
        results: Vec<Result>,
        (connections, mode): (usize, String),
        placement: Placement,
        token_bytes: usize,
    ) -> Self {
        Self { results, connections, mode, placement, token_bytes }
    }

    fn direct(&self) -> Option<&Result> {
        self.results.iter().find(|r| r.name == "direct")
    }

    pub fn markdown(&self) -> String {
        let topology = self.placement.describe();
        let sidecars = match crate::sidecar::shipped() {
            Some(binary) => format!("sidecars served by {}", binary.display()),
            None => "sidecars served by this harness's own build (the image's is PGO: bench/pgo.sh)".to_owned(),
        };
        let mut out = format!(
            "\n{}, {} connections, {}-byte Bearer JWT on every request, {topology}; {sidecars}\n\n",
            self.mode, self.connections, self.token_bytes
        );
        out.push_str("| scenario | req/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | vs direct | CPU s/10k | RSS MiB | private MiB | errors |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let dash = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"));
        for r in &self.results {
            let direct = self.direct();
            out.push_str(&format!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} |\n",
                if r.disturbed { format!("{} (disturbed)", r.name) } else { r.name.to_owned() },
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                dash(direct.map(|d| r.p50_ms - d.p50_ms), 3),
                dash(direct.map(|d| r.p99_ms - d.p99_ms), 3),
                dash(direct.map(|d| r.rps / d.rps.max(f64::EPSILON)), 2),
                dash(r.cpu_s_per_10k, 3),
                dash(r.rss_mib, 1),
                dash(r.private_mib, 1),
                r.errors,
            ));
        }
        let ratios = self.ratios();
        let mut versus = "";
        for (name, other, ratio) in &ratios {
            if versus != *other {
                out.push_str(&format!("{}vs {other} (same run):", if versus.is_empty() { "\n" } else { "\n\n" }));
                versus = other;
            }
            // (`-`: no CPU to compare, see `Ratio::cpu`)
            let cpu = ratio.cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"));
            let disturbed = if ratio.disturbed { " (a run disturbed)" } else { "" };
            out.push_str(&format!(" `{name}` {:.2}x req/s, {cpu}x CPU per request{disturbed};", ratio.rps));
        }
        if let Some((_, _, ratio)) = ratios.first().filter(|(_, _, r)| r.rounds > 1) {
            out.push_str(&format!(
                "\n\n(each ratio: the median over {} rounds of the two runs' ratio)\n",
                ratio.rounds
            ));
        } else if !ratios.is_empty() {
            out.push('\n');
        }
        for r in &self.results {
            if let Some((n, mib)) = r.idle {
                out.push_str(&format!(
                    "\n`{}`: {n} idle keep-alive connections held open during the run: +{mib:.1} MiB resident, {:.1} KiB per idle connection\n",
                    r.name,
                    mib * 1024.0 / (n.max(1) as f64)
                ));
            }
            if let Some((rotations, reloads)) = r.rotations {
                out.push_str(&format!(
                    "\n`{}`: {rotations} SVID rotations and {reloads} policy reloads during the run, {} errors\n",
                    r.name, r.errors
                ));
            }
            if let Some((denied, dropped)) = r.denials {
                out.push_str(&format!(
                    "\n`{}`: {} requests, each to a new path, {denied} refused by Layer 2 (`no_matching_rule`), {dropped} audit events lost by its stdout sink\n",
                    r.name, r.requests
                ));
            }
        }
        out
    }

    /// What is compared: every `inbound-*` scenario a peer would forward
    /// too (`inbound-deny`'s requests are refused) against each peer, and
    /// `chain` against `inbound-all` (its two sidecars against one): name,
    /// the other, throughput ratio, CPU per request ratio ([`ratio`]).
    fn ratios(&self) -> Vec<(&'static str, &'static str, Ratio)> {
        let find = |name: &str| self.results.iter().find(|r| r.name == name);
        let forwarded = || self.results.iter().filter(|r| r.name.starts_with("inbound") && r.name != "inbound-deny");
        let peers = self.results.iter().filter(|r| crate::scenarios::PEERS.contains(&r.name));
        let mut out: Vec<_> =
            peers.flat_map(|peer| forwarded().map(move |r| (r.name, peer.name, ratio(r, peer)))).collect();
        if let (Some(chain), Some(all)) = (find("chain"), find("inbound-all")) {
            out.push((chain.name, all.name, ratio(chain, all)));
        }
        out
    }

    pub fn json(&self) -> Value {
        let direct = self.direct().map(|d| (d.p50_ms, d.p99_ms));
        let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        json!({
            "machine": {
                "cpus": cpus,
                "os": std::env::consts::OS,
                "arch": std::env::consts::ARCH,
                "kernel": kernel.trim(),
                "pinned": !self.placement.server_cpus.is_empty(),
                "workers": self.placement.workers,
                "server_cpus": self.placement.server_cpus,
                "load_cpus": self.placement.load_cpus,
                "mode": self.mode,
                "connections": self.connections,
                "token_bytes": self.token_bytes,
                // `A2A_BENCH_SIDECAR_BIN`; null: the harness's own build served them.
                "sidecar_binary": crate::sidecar::shipped().map(|b| b.display().to_string()),
            },
            "scenarios": self.results.iter().map(|r| json!({
                "name": r.name,
                "rps": r.rps,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "p999_ms": r.p999_ms,
                "added_p50_ms": direct.map(|(p50, _)| r.p50_ms - p50),
                "added_p99_ms": direct.map(|(_, p99)| r.p99_ms - p99),
                "requests": r.requests,
                "errors": r.errors,
                "cpu_s_per_10k": r.cpu_s_per_10k,
                "rss_mib": r.rss_mib,
                "private_mib": r.private_mib,
                "disturbed": r.disturbed,
                "svid_rotations": r.rotations.map(|(n, _)| n),
                "policy_reloads": r.rotations.map(|(_, n)| n),
                "layer2_denials": r.denials.map(|(n, _)| n),
                "audit_dropped": r.denials.map(|(_, n)| n),
                "idle_connections": r.idle.map(|(n, _)| n),
                "idle_rss_mib": r.idle.map(|(_, mib)| mib),
                "alpn": r.alpn,
                "http_versions": r.http_versions,
                "repetitions": r.repetitions.iter().map(|p| json!({
                    "rps": p.rps,
                    "p50_ms": p.p50_ms,
                    "p99_ms": p.p99_ms,
                    "p999_ms": p.p999_ms,
                    "requests": p.requests,
                    "errors": p.errors,
                    "cpu_s_per_10k": p.cpu_s_per_10k,
                    "disturbed": p.disturbed,
                    "round": p.round,
                    "position": p.position,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            // Medians of the per-round ratios (see `ratio`).
            "ratios": self.ratios().into_iter().map(|(name, other, ratio)| json!({
                "scenario": name,
                "versus": other,
                "rps": ratio.rps,
                "cpu_per_request": ratio.cpu,
                "rounds": ratio.rounds,
                "disturbed": ratio.disturbed,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Each scenario's throughput and CPU per request at each worker count, and
/// the throughput against the first (one worker).
pub fn scaling_markdown(reports: &[Report]) -> String {
    let Some(first) = reports.first() else { return String::new() };
    let mut out = String::from("\nScaling (same harness, one set per worker count):\n\n| scenario |");
    for r in reports {
        out.push_str(&format!(" {}w req/s | {}w CPU s/10k |", r.placement.workers, r.placement.workers));
    }
    out.push_str(" speed-up |\n|---|");
    out.push_str(&"---:|---:|".repeat(reports.len()));
    out.push_str("---:|\n");
    for base in &first.results {
        fn at<'r>(r: &'r Report, name: &str) -> Option<&'r Result> {
            r.results.iter().find(|x| x.name == name)
        }
        out.push_str(&format!("| {} |", base.name));
        for r in reports {
            let found = at(r, base.name);
            let cpu = found.and_then(|x| x.cpu_s_per_10k).map_or_else(|| "-".to_owned(), |c| format!("{c:.3}"));
            out.push_str(&format!(" {} | {cpu} |", found.map_or_else(|| "-".to_owned(), |x| format!("{:.0}", x.rps))));
        }
        let last = reports.last().and_then(|r| at(r, base.name));
        let speedup = last.map(|l| l.rps / base.rps.max(f64::EPSILON));
        out.push_str(&format!(" {} |\n", speedup.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}x"))));
    }
    out
}

/// The `--json` document: the first set's report, and with several worker
/// counts each set's scenarios under `by_workers`.
pub fn json(reports: &[Report]) -> Value {
    let mut out = reports.first().map(Report::json).unwrap_or_default();
    if reports.len() > 1
        && let Some(fields) = out.as_object_mut()
    {
        let sets: Vec<Value> = reports
            .iter()
            .map(|r| {
                let mut set = r.json();
                if let Some(fields) = set.as_object_mut() {
                    fields.insert("workers".into(), json!(r.placement.workers));
                }
                set
            })
            .collect();
        fields.insert("by_workers".into(), json!(sets));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Placement, Report, Result};

    /// The peers are compared with the requests they would forward too:
    /// `inbound-deny`'s are refused, so it has no ratio.
    #[test]
    fn refused_requests_are_not_compared_with_a_peer() {
        let result = |name, cpu| {
            let latency = hdrhistogram::Histogram::new(3).unwrap();
            let run = crate::load::Run {
                requests: 10_000,
                errors: 0,
                elapsed: std::time::Duration::from_secs(1),
                latency,
                protocols: Default::default(),
            };
            Result::new(name, &run, Some((cpu, 10.0)))
        };
        let results = vec![result("inbound-all", 1.0), result("inbound-deny", 0.5), result("nginx", 2.0)];
        let report = Report::new(results, (32, "closed loop".into()), Placement::new(1, false, &[], &[]), 900);
        let table = report.markdown();
        let vs = table.lines().find(|l| l.starts_with("vs nginx")).unwrap();
        assert_eq!(vs, "vs nginx (same run): `inbound-all` 1.00x req/s, 0.50x CPU per request;");
        assert!(table.contains("| inbound-deny | 10000 |"), "{table}");
    }

    /// A scenario's runs: requests in one second and CPU seconds, by round.
    fn rounds(name: &'static str, rounds: &[(u64, f64)]) -> Result {
        let runs = rounds.iter().zip(0..).map(|(&(requests, cpu), round)| {
            let run = crate::load::Run {
                requests,
                errors: 0,
                elapsed: std::time::Duration::from_secs(1),
                latency: hdrhistogram::Histogram::new(3).unwrap(),
                protocols: Default::default(),
            };
            Result { round, ..Result::new(name, &run, Some((cpu, 10.0))) }
        });
        Result::median(runs.collect()).unwrap()
    }

    /// A ratio compares the runs of one round: nginx met a slow moment of
    /// the host in round 2 and a busy one in round 3, so the medians of the
    /// two scenarios come from different rounds and would compare 1.25x
    /// throughput at 1.0x CPU; round by round it is 0.75, 1.67 and 1.56x
    /// throughput at 0.8, 1.5 and 0.5x CPU.
    #[test]
    fn a_ratio_is_the_median_of_the_rounds_ratios() {
        let ours = rounds("inbound-all", &[(30_000, 0.6), (40_000, 1.2), (50_000, 0.5)]);
        let nginx = rounds("nginx", &[(40_000, 1.0), (24_000, 0.48), (32_000, 0.64)]);
        let chain = rounds("chain", &[(15_000, 0.6), (20_000, 1.2), (25_000, 0.5)]);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(ours.rps / nginx.rps, 1.25));
        assert!(close(ours.cpu_s_per_10k.unwrap() / nginx.cpu_s_per_10k.unwrap(), 1.0));
        let ratio = super::ratio(&ours, &nginx);
        assert!(close(ratio.rps, 1.5625) && close(ratio.cpu.unwrap(), 0.8), "{} {:?}", ratio.rps, ratio.cpu);
        assert_eq!((ratio.rounds, ratio.disturbed), (3, false));
        let report =
            Report::new(vec![ours, chain, nginx], (32, "closed loop".into()), Placement::new(1, false, &[], &[]), 900);
        let table = report.markdown();
        assert!(table.contains("vs nginx (same run): `inbound-all` 1.56x req/s, 0.80x CPU per request;"), "{table}");
        assert!(table.contains("vs inbound-all (same run): `chain` 0.50x req/s, 2.00x CPU per request;"), "{table}");
        let json = report.json();
        let ratios = json["ratios"].as_array().unwrap();
        assert_eq!(ratios.len(), 2, "{ratios:?}");
        assert_eq!(ratios[1]["scenario"], "chain");
        assert!((ratios[1]["cpu_per_request"].as_f64().unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(ratios[1]["rounds"], 3);
    }

    /// Runs are paired by their round, never by their place in the list;
    /// an even count takes the two middle ratios' geometric mean, so one
    /// side against the other is the inverse of the reverse; a round where
    /// either side used no measurable CPU has no CPU ratio, the others do;
    /// a disturbed run marks the ratio.
    #[test]
    fn rounds_are_paired_by_their_number() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let ours = rounds("inbound-all", &[(20_000, 0.4), (30_000, 0.0), (40_000, 0.8), (10_000, 0.2)]);
        let mut nginx = rounds("nginx", &[(10_000, 0.2), (10_000, 0.2), (10_000, 0.2), (10_000, 0.2)]);
        // nginx's round 1 is missing: its run list is shorter and shifted.
        nginx.repetitions.remove(1);
        let ratio = super::ratio(&ours, &nginx);
        // Rounds 0, 2, 3: 2x, 4x, 1x throughput; CPU 1x in each.
        assert_eq!(ratio.rounds, 3);
        assert!(close(ratio.rps, 2.0) && close(ratio.cpu.unwrap(), 1.0), "{} {:?}", ratio.rps, ratio.cpu);
        let (even_a, even_b) = (
            rounds("inbound-all", &[(10_000, 0.1), (20_000, 0.2), (40_000, 0.4), (80_000, 0.8)]),
            rounds("nginx", &[(10_000, 0.1); 4]),
        );
        let (there, back) = (super::ratio(&even_a, &even_b), super::ratio(&even_b, &even_a));
        assert!(close(there.rps, 8f64.sqrt()) && close(there.rps * back.rps, 1.0), "{} {}", there.rps, back.rps);
        // A round with no CPU on our side is left out of the CPU ratio, not counted as 0x.
        let idle = rounds("inbound-all", &[(10_000, 0.0), (10_000, 0.3)]);
        let two = rounds("nginx", &[(10_000, 0.1), (10_000, 0.1)]);
        assert!(close(super::ratio(&idle, &two).cpu.unwrap(), 3.0));
        let mut disturbed = rounds("nginx", &[(10_000, 0.1), (10_000, 0.1)]);
        disturbed.repetitions[1].disturbed = true;
        assert!(super::ratio(&idle, &disturbed).disturbed);
    }

    /// `--pin` takes the first N CPUs for the servers and leaves the rest to
    /// the load; `--cpus` chooses them; with no CPU left the load shares.
    #[test]
    fn placements() {
        let on = |workers, pin, cpus: &[usize], all: &[usize]| {
            let p = Placement::new(workers, pin, cpus, all);
            (p.server_cpus, p.load_cpus)
        };
        assert_eq!(on(2, true, &[], &[0, 1, 2, 3]), (vec![0, 1], vec![2, 3]));
        assert_eq!(on(1, true, &[], &[0, 1]), (vec![0], vec![1]));
        assert_eq!(on(2, true, &[], &[0, 1]), (vec![0, 1], vec![]), "none left: the load shares");
        assert_eq!(on(2, false, &[2, 3], &[0, 1, 2, 3]), (vec![2, 3], vec![0, 1]), "--cpus implies pinning");
        assert_eq!(on(4, false, &[], &[0, 1]), (vec![], vec![]), "unpinned");
        assert!(Placement::new(2, true, &[], &[0, 1]).describe().contains("shares them"));
    }
}
