//! A sidecar under test runs as its own process (this binary re-executed as
//! `a2a-bench sidecar <config>`), so its CPU time and peak RSS can be read
//! from `/proc` apart from the load generator's.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// `0,1` for `--cpus` and `taskset -c`.
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Pins every thread the runtime starts to the next of `cpus`, round robin
/// (empty: no pinning): with N workers on N CPUs, one worker per CPU.
pub fn pin_threads(builder: &mut tokio::runtime::Builder, cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    let cpus = cpus.to_vec();
    let next = std::sync::atomic::AtomicUsize::new(0);
    builder.on_thread_start(move || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(id) = cpus.get(i % cpus.len()).copied() {
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
    });
}

/// `A2A_BENCH_SIDECAR_WRAPPER`: a command (words split on spaces, no
/// quoting) each sidecar process runs under, such as `valgrind
/// --tool=callgrind`, for a repeatable instruction count per request where
/// CPU time is too noisy to show a small change. Its CPU and memory figures
/// are then the wrapper's.
fn wrapper() -> Option<(String, Vec<String>)> {
    let line = std::env::var("A2A_BENCH_SIDECAR_WRAPPER").ok()?;
    let mut words = line.split_whitespace().map(str::to_owned);
    Some((words.next()?, words.collect()))
}

/// `A2A_BENCH_SIDECAR_BIN`: an `a2a-sidecar` binary to serve the sidecars
/// with (`<bin> run --config <config>`): the build that ships (a production
/// build without the `dev` feature, or a PGO build: `bench/pgo.sh`) rather
/// than the copy of the sidecar linked into this harness. `rotation` still
/// runs here: it needs the dev CA's SVID renewals.
pub fn shipped() -> Option<PathBuf> {
    std::env::var_os("A2A_BENCH_SIDECAR_BIN").filter(|b| !b.is_empty()).map(PathBuf::from)
}

/// What starts a process the harness owns (a sidecar or a peer), each
/// program exec'ing the next so the process keeps the child's pid:
/// `setpriv --pdeathsig TERM` (util-linux's, when on `PATH`), so it gets
/// SIGTERM when the harness thread that started it ends, however that ends
/// (a SIGKILLed harness included: the processes are started from their
/// set's thread, which outlives the set's stack); then `taskset -c <cpus>`
/// when `cpus` is not empty.
pub fn launcher(cpus: &[usize]) -> Vec<String> {
    let mut prefix = Vec::new();
    if ends_with_harness() {
        prefix.extend(["setpriv", "--pdeathsig", "TERM"].map(String::from));
    }
    if !cpus.is_empty() {
        prefix.extend(["taskset".into(), "-c".into(), cpu_list(cpus)]);
    }
    prefix
}

/// Whether this machine's `setpriv` can set the parent-death signal
/// (util-linux 2.33 and later; not busybox's): tried once.
pub fn ends_with_harness() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let mut tried = Command::new("setpriv");
        tried.args(["--pdeathsig", "TERM", "true"]).stdout(Stdio::null()).stderr(Stdio::null());
        tried.status().is_ok_and(|s| s.success())
    })
}

/// `program` run by the commands of `prefix` (each execs the next), if any.
pub fn under(prefix: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// `program` under the [`launcher`] and the wrapper (if any); its name (the
/// config's file stem: `all` serves `inbound-all`) in `A2A_BENCH_SIDECAR`
/// for the wrapper's output file (valgrind: `%q{A2A_BENCH_SIDECAR}`).
fn wrapped(program: PathBuf, config: &Path, cpus: &[usize]) -> Command {
    let mut prefix = launcher(cpus);
    if let Some((wrapper, args)) = wrapper() {
        prefix.push(wrapper);
        prefix.extend(args);
    }
    let mut command = under(&prefix, program);
    if let Some(name) = config.file_stem() {
        command.env("A2A_BENCH_SIDECAR", name);
    }
    command
}

/// Kernel clock ticks per second for `/proc/<pid>/stat` times: `USER_HZ`,
/// which is 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;

pub struct Sidecar {
    child: Child,
    /// Closed when the harness is done with it (or goes away): the sidecar
    /// then exits by itself.
    stdin: Option<ChildStdin>,
    /// Run from `A2A_BENCH_SIDECAR_BIN`: it ends at SIGTERM, not at stdin's end.
    shipped: bool,
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub telemetry: Option<SocketAddr>,
}

impl Sidecar {
    /// Starts the sidecar for `config`; returns once it serves (its SVID loaded).
    /// `cpus`: the CPUs its threads run on (empty: anywhere). With
    /// `A2A_BENCH_SIDECAR_BIN` set, that binary serves it (see [`shipped`]).
    pub fn spawn(config: &Path, cpus: &[usize]) -> anyhow::Result<Self> {
        match shipped() {
            Some(binary) => Self::spawn_shipped(&binary, config, cpus),
            None => Self::spawn_here(config, cpus),
        }
    }

    /// Starts the sidecar for `config` in this binary's `sidecar` mode,
    /// which also serves the dev identity source (a production build has none).
    pub fn spawn_here(config: &Path, cpus: &[usize]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating a2a-bench")?;
        let mut command = wrapped(exe, config, &[]);
        command.arg("sidecar").arg(config);
        if !cpus.is_empty() {
            command.arg("--cpus").arg(cpu_list(cpus));
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("sidecar stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ready") {
            let _ = child.kill();
            anyhow::bail!("sidecar for {} did not start: {line:?}", config.display());
        }
        let addr = |w: Option<&str>| w.and_then(|w| w.parse().ok());
        let (inbound, outbound, telemetry) = (addr(words.next()), addr(words.next()), addr(words.next()));
        Ok(Self { child, stdin, shipped: false, inbound, outbound, telemetry })
    }

    /// Starts `binary run --config <config>`, pinned with `taskset` to
    /// `cpus` (its threads share the set, where `sidecar` mode pins one
    /// thread per CPU): its addresses come from its `a2a-sidecar started` log line
    /// (text logs on stderr), then it is ready when its `/readyz` answers 200.
    fn spawn_shipped(binary: &Path, config: &Path, cpus: &[usize]) -> anyhow::Result<Self> {
        let mut command = wrapped(binary.to_owned(), config, cpus);
        // `info`: the start line it is found by (whatever `RUST_LOG` the harness has).
        command.arg("run").arg("--config").arg(config).env("RUST_LOG", "info");
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take();
        // Owned from here: any early return stops it (SIGTERM, then a kill).
        let mut sidecar = Self { child, stdin: None, shipped: true, inbound: None, outbound: None, telemetry: None };
        let stderr = stderr.context("sidecar stderr")?;
        // Its log, line by line, goes where ours does (and the pipe never
        // fills); the start line, or all it said before it ended, comes here.
        let (start_tx, start_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut start_tx = Some(start_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match &start_tx {
                    Some(tx) if line.contains("a2a-sidecar started") => {
                        let _ = tx.send(Ok(line.clone()));
                        start_tx = None;
                    }
                    Some(_) => seen.push_str(&format!("{line}\n")),
                    None => {}
                }
                eprintln!("{line}");
            }
            if let Some(tx) = start_tx {
                let _ = tx.send(Err(seen));
            }
        });
        let what = || format!("{} for {}", binary.display(), config.display());
        let started = match start_rx.recv_timeout(SHIPPED_READY_WAIT) {
            Ok(Ok(line)) => line,
            Ok(Err(seen)) => anyhow::bail!("{} did not start:\n{seen}", what()),
            Err(_) => anyhow::bail!("{} did not start in {SHIPPED_READY_WAIT:?}", what()),
        };
        // `name=value`, the first of that name only (the line ends with the config's summary).
        let field = |name: &str| -> Option<SocketAddr> {
            let value = started.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('='));
            value?.parse().ok()
        };
        (sidecar.inbound, sidecar.outbound, sidecar.telemetry) =
            (field("inbound"), field("outbound"), field("telemetry"));
        let telemetry = sidecar.telemetry.context("no telemetry address in its start line")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let deadline = std::time::Instant::now() + SHIPPED_READY_WAIT;
        let ready =
            || runtime.block_on(async { tokio::time::timeout(READY_ATTEMPT, http_get(telemetry, "/readyz")).await });
        while !matches!(ready(), Ok(Some(_))) {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("{} not ready in {SHIPPED_READY_WAIT:?}", what());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sidecar)
    }

    /// A peer proxy's process (nginx, ...), measured the same way.
    pub fn peer(child: Child, listen: SocketAddr) -> Self {
        Self { child, stdin: None, shipped: false, inbound: Some(listen), outbound: None, telemetry: None }
    }

    /// The process and its descendants (nginx's workers under its master).
    fn tree(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        let mut i = 0;
        while let Some(pid) = pids.get(i).copied() {
            pids.extend(children(pid));
            i += 1;
        }
        pids
    }

    /// Resident memory now, in MiB (the process tree's).
    pub fn rss_now_mib(&self) -> f64 {
        self.tree_mib("VmRSS:")
    }

    /// User + system CPU seconds used so far (the process tree's).
    pub fn cpu_seconds(&self) -> f64 {
        self.tree().into_iter().map(|pid| process_cpu_seconds(&format!("/proc/{pid}/stat"))).sum()
    }

    /// A counter from the sidecar's Prometheus `/metrics`, summed over the
    /// series whose labels include `labels`.
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let body = http_get(self.telemetry?, "/metrics").await?;
        let text = String::from_utf8_lossy(&body);
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
        let values = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            });
        Some(values.sum())
    }

    /// Peak resident set size (`VmHWM`) in MiB (summed over the process tree).
    pub fn peak_rss_mib(&self) -> f64 {
        self.tree_mib("VmHWM:")
    }

    /// Private resident memory now (`RssAnon`: heap, stacks; not the code
    /// pages, which every process of the same binary shares), in MiB.
    pub fn private_now_mib(&self) -> f64 {
        self.tree_mib("RssAnon:")
    }

    /// A `/proc/<pid>/status` memory field in MiB, summed over the process tree.
    fn tree_mib(&self, field: &str) -> f64 {
        self.tree().into_iter().map(|pid| status_mib(pid, field)).sum()
    }
}

/// Runs `f` while a thread samples the private memory of `sidecars` (summed)
/// every [`PRIVATE_SAMPLE_EVERY`]; returns `f`'s result and the largest
/// sample (the kernel keeps no peak of it, as it does `VmHWM` for RSS).
pub fn peak_private_while<T>(sidecars: &[&Sidecar], f: impl FnOnce() -> T) -> (T, f64) {
    let sample = || sidecars.iter().map(|s| s.private_now_mib()).sum::<f64>();
    let (stop, wake) = (std::sync::Mutex::new(false), std::sync::Condvar::new());
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = sample();
            let mut stopped = stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            while !*stopped {
                stopped = match wake.wait_timeout(stopped, PRIVATE_SAMPLE_EVERY) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
                peak = peak.max(sample());
            }
            peak
        });
        let result = f();
        *stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        wake.notify_one();
        let peak = sampler.join().unwrap_or_default().max(sample());
        (result, peak)
    })
}

/// How often [`peak_private_while`] reads `/proc`: a few reads per second
/// of a few processes, next to nothing beside the load.
const PRIVATE_SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The children of `pid` (of every one of its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `VmHWM:`, `RssAnon:`) in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// A plain HTTP/1.1 GET on loopback; the body when the answer is 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if response.status() != hyper::StatusCode::OK {
        return None;
    }
    Some(response.into_body().collect().await.ok()?.to_bytes())
}

fn process_cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the `(comm)`, which may itself hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    fields.iter().sum::<f64>() / USER_HZ
}

/// CPU seconds the whole machine has been busy, minus this process and
/// `ours`: what other processes used (compare two readings).
pub fn cpu_outside(ours: &[&Sidecar]) -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // `cpu  user nice system idle iowait irq softirq steal ...`: busy = all but idle and iowait.
    let busy: f64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum();
    let own = process_cpu_seconds("/proc/self/stat") + ours.iter().map(|s| s.cpu_seconds()).sum::<f64>();
    busy / USER_HZ - own
}

impl Drop for Sidecar {
    /// Ends the process: a clean exit where one is wanted (a wrapper such as
    /// callgrind, and a PGO-instrumented build, write their results at
    /// exit), else a kill.
    fn drop(&mut self) {
        // Already ended and reaped: its pid may be another process's by now.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let clean = if self.shipped {
            // Its SIGTERM drain (nothing is in flight by now), then its exit.
            let pid = rustix::process::Pid::from_child(&self.child);
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok()
        } else {
            self.stdin.take().is_some() && wrapper().is_some()
        };
        if clean {
            let deadline = std::time::Instant::now() + WRAPPED_EXIT_WAIT;
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a shipped binary may take to log its start, and then to answer `/readyz`.
const SHIPPED_READY_WAIT: Duration = Duration::from_secs(30);
/// One `/readyz` attempt (a sidecar that accepts and never answers is not ready).
const READY_ATTEMPT: Duration = Duration::from_secs(2);

/// How long a wrapped sidecar may take to exit (and its wrapper to write).
const WRAPPED_EXIT_WAIT: Duration = Duration::from_secs(60);

/// The `sidecar` mode: one runtime worker (the config's `runtime.worker_threads`,
/// default 1), optionally pinned; prints `ready <inbound> <outbound>` and
/// serves until its stdin closes (the harness's end, or its death: no
/// sidecar outlives a killed harness).
pub fn serve(config: &Path, cpus: &[usize]) -> anyhow::Result<()> {
    certs::crypto::install_default_provider();
    let config = proxy::config::Config::load(config)?;
    let runtime = proxy::config::RuntimeConfig {
        worker_threads: config.runtime.worker_threads.or(Some(1)),
        ..config.runtime.clone()
    };
    let mut builder = proxy::app::runtime_builder(&runtime);
    // The thread driving the runtime (all of it with one worker), and the rest.
    if let Some(first) = cpus.first().copied() {
        core_affinity::set_for_current(core_affinity::CoreId { id: first });
    }
    pin_threads(&mut builder, cpus);
    builder.build()?.block_on(async {
        let mut app = proxy::app::App::start(config).await?;
        tokio::time::timeout(Duration::from_secs(30), app.identity.wait_ready()).await?.context("no SVID")?;
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
        println!("ready {} {} {}", show(app.inbound_addr), show(app.outbound_addr), app.telemetry_addr);
        // Then stdout is /dev/null, as a shipped sidecar's is (an
        // `audit.stdout` sink writes there): the same sink for both builds.
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        rustix::stdio::dup2_stdout(&null)?;
        // Until the harness closes our stdin (or goes away); then a clean
        // exit, which a wrapper such as callgrind needs to write its results.
        let (closed, stdin_closed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
        let _ = stdin_closed.await;
        Ok(())
    })
}
