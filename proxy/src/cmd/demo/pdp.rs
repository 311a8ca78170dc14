//! The demo's external AuthZEN PDP (what `authzen.pdp` asks after Layers
//! 1-4): it allows, or denies one caller, or fails, as the matrix sets it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::dataplane::body::{Body, full};

const ALLOW: u8 = 0;
const DENY: u8 = 1;
const BROKEN: u8 = 2;

#[derive(Default)]
pub struct DemoPdp {
    mode: AtomicU8,
    /// Denied while `mode` is `DENY`.
    denied: Mutex<String>,
}

impl DemoPdp {
    /// Every evaluation allowed.
    pub fn allow(&self) {
        self.mode.store(ALLOW, Ordering::SeqCst);
    }

    /// `"decision": false` for the caller `spiffe_id`, true for the rest.
    pub fn deny(&self, spiffe_id: &str) {
        spiffe_id.clone_into(&mut self.denied.lock().unwrap_or_else(PoisonError::into_inner));
        self.mode.store(DENY, Ordering::SeqCst);
    }

    /// 500 for every evaluation.
    pub fn break_down(&self) {
        self.mode.store(BROKEN, Ordering::SeqCst);
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let body = Limited::new(req.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes());
        let request: Value = body.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let subject = request.pointer("/subject/id").and_then(Value::as_str).unwrap_or_default();
        let answer = match self.mode.load(Ordering::SeqCst) {
            BROKEN => return reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "down"})),
            DENY if *self.denied.lock().unwrap_or_else(PoisonError::into_inner) == subject => {
                json!({"decision": false, "context": {"reason": "outside the approval window"}})
            }
            _ => json!({"decision": true}),
        };
        reply(StatusCode::OK, answer)
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// Starts the demo PDP on 127.0.0.1:0.
pub async fn start() -> anyhow::Result<(Arc<DemoPdp>, SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pdp = Arc::new(DemoPdp::default());
    let served = pdp.clone();
    let task =
        tokio::spawn(crate::cmd::dev_idp::serve_dev(listener, "demo pdp", move |req| served.clone().handle(req)));
    Ok((pdp, addr, task))
}
