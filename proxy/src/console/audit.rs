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
use super::session::Session;
use crate::dataplane::body::Body;

/// Events the console keeps for browsers that reconnect.
const RING: usize = 1000;
/// A sidecar's event larger than this is not kept (an audit event is a few
/// KiB; its longest field, a path, is bounded by the request head limit).
const MAX_EVENT: usize = 40 * 1024;
/// A sidecar's stream that sends nothing for this long (its heartbeat is every 15 s) is reopened.
const SILENCE: Duration = Duration::from_secs(45);
/// Audit streams one session may hold open.
pub const STREAMS_PER_SESSION: usize = 4;
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
        // Only changes are recorded: a flapping or down sidecar does not fill the ring.
        let mut state = String::new();
        let mut note = |this: &Self, new: String, error: Option<String>| {
            if new != state {
                this.push("sidecar", &name, json!({"state": new, "error": error}));
                state = new;
            }
        };
        loop {
            match fleet.stream(index, "/mgmt/audit/stream", last).await {
                Ok(mut body) => {
                    note(&self, "following".into(), None);
                    let mut buffer: Vec<u8> = Vec::new();
                    loop {
                        let frame = match tokio::time::timeout(SILENCE, body.frame()).await {
                            Ok(Some(Ok(frame))) => frame,
                            Ok(_) => break,
                            Err(_) => break, // half-open: nothing, not even a heartbeat
                        };
                        let Ok(data) = frame.into_data() else { continue };
                        buffer.extend_from_slice(&data);
                        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                            let block: Vec<u8> = buffer.drain(..end + 2).collect();
                            if self.take(&name, &String::from_utf8_lossy(&block), &mut last) {
                                backoff = Duration::from_secs(1); // it works: a later break retries soon
                            }
                        }
                        if buffer.len() > MAX_EVENT {
                            // One event this large is not an audit event: skip to the next one.
                            self.push("dropped", &name, json!({"dropped": 1, "too_large": true}));
                            buffer.clear();
                        }
                    }
                    note(&self, "stream ended".into(), None);
                }
                Err(e) => note(&self, "unreachable".into(), Some(e.to_string())),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One SSE block from a sidecar; true for an audit event.
    fn take(&self, sidecar: &str, block: &str, last: &mut Option<u64>) -> bool {
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
        let Ok(value) = serde_json::from_str::<Value>(&data) else { return false };
        match event {
            "audit" => {
                if id.is_some() {
                    *last = id;
                }
                self.push("audit", sidecar, value);
                true
            }
            "dropped" => {
                self.push("dropped", sidecar, value);
                false
            }
            _ => false,
        }
    }

    /// A browser's stream for `session`: what the ring holds after
    /// `last_id`, then live, until the session ends (sign-out or expiry);
    /// `None` when the session has [`STREAMS_PER_SESSION`] open.
    pub fn subscribe(&self, last_id: Option<u64>, session: Arc<Session>) -> Option<Body> {
        let open = session.streams.fetch_add(1, Ordering::SeqCst);
        if open >= STREAMS_PER_SESSION {
            session.streams.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
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
            serve(frames, replay, &mut live, &session).await;
            session.streams.fetch_sub(1, Ordering::SeqCst);
        });
        let stream = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |bytes| {
            Ok::<_, crate::dataplane::body::BoxError>(Frame::data(bytes))
        });
        Some(StreamBody::new(stream).boxed())
    }
}

/// Sends `replay`, then live items and heartbeats, while the browser reads
/// and its session lasts.
async fn serve(
    frames: mpsc::Sender<Bytes>,
    replay: Vec<Arc<Item>>,
    live: &mut broadcast::Receiver<Arc<Item>>,
    session: &Session,
) {
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
        // Interest first, then the check: a sign-out in between still wakes this.
        let signed_out = session.signed_out.notified();
        if !session.live() {
            return;
        }
        let text = tokio::select! {
            () = signed_out => return,
            () = frames.closed() => return,
            () = tokio::time::sleep_until(session.expires.into()) => return,
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
}

fn sse(item: &Item) -> String {
    format!("id: {}\nevent: {}\ndata: {}\n\n", item.id, item.kind, item.data)
}
