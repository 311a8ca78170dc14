//! Peers doing the closest equivalent job, measured in the same run when
//! installed (`bench/peers/install.sh`); absent ones are skipped with a message.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certs::dev::DevCa;

use crate::sidecar::Sidecar;

const NGINX_CONF: &str = include_str!("../peers/nginx.conf.template");

/// nginx terminating mTLS (`ssl_verify_client on`, the dev CA's bundle) in
/// front of the app, one worker, pinned like the sidecars.
pub fn nginx(dir: &Path, ca: &DevCa, server_id: &str, app: SocketAddr, cpu: Option<usize>) -> anyhow::Result<Sidecar> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow::anyhow!("nginx is not installed (bench/peers/install.sh)"))?;
    let certs = dir.join("nginx-certs");
    certs::dev::write_svid_files(&certs, &ca.issue(&server_id.parse()?, Duration::from_secs(3600))?, ca.bundle_pem())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let run = dir.join("nginx-run");
    std::fs::create_dir_all(&run)?;
    let conf = NGINX_CONF
        .replace("{run}", &run.display().to_string())
        .replace("{certs}", &certs.display().to_string())
        .replace("{port}", &port.to_string())
        .replace("{app}", &app.to_string());
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut command = match cpu {
        // taskset execs nginx: the child's pid is nginx's.
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), binary]);
            c
        }
        None => Command::new(binary),
    };
    let child = command
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(&run)
        .args(["-e", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let peer = Sidecar::peer(child, addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nginx did not start listening (see {})", run.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(peer)
}
