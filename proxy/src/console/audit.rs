//! The merged audit stream: the console follows every sidecar's
//! `/mgmt/audit/stream` (resuming with `Last-Event-ID` after a break) and
//! serves one stream of all of them at `/api/audit/stream`, each event
//! tagged with its sidecar, under the console's own `id:` so a browser
//! resumes after a reconnect. A sidecar's `dropped` (it could not keep up
//! with us) and a browser's own losses (it could not keep up with the
//! console) both arrive as `event: dropped`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::fleet::Fleet;
use crate::dataplane::body::Body;

/// Events the console keeps for browsers that reconnect.
const RING: usize = 2000;
/// Events a browser may fall behind by before it is told it lost some.
const LAG: usize = 1024;
/// A browser that takes nothing for this long is let go.
const STALL: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(15);

/// One line of the merged stream.
#[derive(Debug)]
pub struct Item {
    pub id: u64,
    /// `audit`, `dropped` (a sidecar lost events for us) or `sidecar` (its stream broke or came back).
    pub kind: &'static str,
    /// `{"sidecar", ...}`: the sidecar's event with its name.
    pub data: String,
}

pub struct Merged {
    next: AtomicU64,
    ring: Mutex<VecDeque<Arc<Item>>>,
    live: broadcast::Sender<Arc<Item>>,
}

impl Default for Merged {
    fn default() -> Self {
        Self { next: AtomicU64::new(1), ring: Mutex::new(VecDeque::new()), live: broadcast::channel(LAG).0 }
    }
}

impl Merged {
    fn push(&self, kind: &'static str, sidecar: &str, mut data: Value) {
        if let Some(map) = data.as_object_mut() {
            map.insert("sidecar".into(), json!(sidecar));
        }
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let item = Arc::new(Item { id: self.next.fetch_add(1, Ordering::SeqCst), kind, data: data.to_string() });
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(item.clone());
        // Sent under the lock, so a subscriber's replay and its live items never overlap or miss one.
        let _ = self.live.send(item);
    }

    /// Follows every sidecar's audit stream until the task is dropped.
    pub async fn follow(self: Arc<Self>, fleet: Arc<Fleet>) {
        let followers: Vec<_> =
            (0..fleet.len()).map(|i| tokio::spawn(self.clone().follow_one(fleet.clone(), i))).collect();
        for follower in followers {
            let _ = follower.await;
        }
    }

    async fn follow_one(self: Arc<Self>, fleet: Arc<Fleet>, index: usize) {
        let name = fleet.name(index).to_owned();
        // From the start of the sidecar's ring: the console shows recent history at once.
        let mut last: Option<u64> = Some(0);
        let mut backoff = Duration::from_secs(1);
        loop {
            match fleet.stream(index, "/mgmt/audit/stream", last).await {
                Ok(mut body) => {
                    self.push("sidecar", &name, json!({"state": "following"}));
                    backoff = Duration::from_secs(1);
                    let mut buffer = String::new();
                    while let Some(Ok(frame)) = body.frame().await {
                        let Ok(data) = frame.into_data() else { continue };
                        buffer.push_str(&String::from_utf8_lossy(&data));
                        while let Some(end) = buffer.find("\n\n") {
                            let block: String = buffer.drain(..end + 2).collect();
                            self.take(&name, &block, &mut last);
                        }
                        if buffer.len() > 1024 * 1024 {
                            break; // not an event stream
                        }
                    }
                    self.push("sidecar", &name, json!({"state": "stream ended"}));
                }
                Err(e) => self.push("sidecar", &name, json!({"state": "unreachable", "error": e.to_string()})),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One SSE block from a sidecar.
    fn take(&self, sidecar: &str, block: &str, last: &mut Option<u64>) {
        let (mut id, mut event, mut data) = (None, "message", String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.trim().parse::<u64>().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = if v.trim() == "audit" {
                    "audit"
                } else if v.trim() == "dropped" {
                    "dropped"
                } else {
                    "message"
                };
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        let Ok(value) = serde_json::from_str::<Value>(&data) else { return };
        match event {
            "audit" => {
                if id.is_some() {
                    *last = id;
                }
                self.push("audit", sidecar, value);
            }
            "dropped" => self.push("dropped", sidecar, value),
            _ => {}
        }
    }

    /// A browser's stream: what the ring holds after `last_id`, then live.
    pub fn subscribe(&self, last_id: Option<u64>) -> Body {
        let (frames, rx) = mpsc::channel::<Bytes>(64);
        let (replay, mut live) = {
            let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            let replay: Vec<Arc<Item>> = match last_id {
                Some(last) => ring.iter().filter(|i| i.id > last).cloned().collect(),
                None => Vec::new(),
            };
            (replay, self.live.subscribe())
        };
        tokio::spawn(async move {
            let send = |text: String| {
                let frames = frames.clone();
                async move { tokio::time::timeout(STALL, frames.send(Bytes::from(text))).await.is_ok_and(|r| r.is_ok()) }
            };
            for item in replay {
                if !send(sse(&item)).await {
                    return;
                }
            }
            let mut heartbeat = tokio::time::interval(HEARTBEAT);
            heartbeat.tick().await;
            loop {
                let text = tokio::select! {
                    next = live.recv() => match next {
                        Ok(item) => sse(&item),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            format!("event: dropped\ndata: {}\n\n", json!({"sidecar": null, "dropped": n}))
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = heartbeat.tick() => ": heartbeat\n\n".to_owned(),
                };
                if !send(text).await {
                    return;
                }
            }
        });
        let stream = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |bytes| {
            Ok::<_, crate::dataplane::body::BoxError>(Frame::data(bytes))
        });
        StreamBody::new(stream).boxed()
    }
}

fn sse(item: &Item) -> String {
    format!("id: {}\nevent: {}\ndata: {}\n\n", item.id, item.kind, item.data)
}
