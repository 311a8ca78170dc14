//! `a2a-sidecar probe`: exit 0 iff `/readyz` answers 200, for a container
//! HEALTHCHECK in an image without curl.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// Returns the `/readyz` status code at `addr`.
pub async fn readyz(addr: SocketAddr) -> anyhow::Result<u16> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let request = hyper::Request::get("/readyz")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())?;
        Ok::<_, anyhow::Error>(sender.send_request(request).await?.status().as_u16())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.context("timed out")?
}

/// Runs the probe on a small runtime; `true` when ready.
pub fn run(addr: SocketAddr) -> bool {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return false };
    match runtime.block_on(readyz(addr)) {
        Ok(200) => true,
        Ok(status) => {
            eprintln!("not ready: /readyz answered {status}");
            false
        }
        Err(e) => {
            eprintln!("not ready: {e:#}");
            false
        }
    }
}
