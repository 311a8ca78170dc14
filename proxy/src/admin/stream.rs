//! `GET /mgmt/audit/stream`: server-sent events, `id:` = the event's `seq`.
//! `Last-Event-ID` replays what the ring still holds (all of it when the id
//! is beyond this run's last `seq`: the reader saw an earlier run); a subscriber that falls
//! behind gets `event: dropped` with the count; comments keep idle proxies
//! from closing the stream. A subscriber that takes nothing for
//! [`STALL_LIMIT`] is told (a last `dropped` event with `"disconnected":
//! true`, delivered if it reads again within a grace period) and its
//! connection is closed: a stalled reader never holds its stream forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::dataplane::body::Body;
use crate::observe::audit::{Event, Next, STALL_LIMIT};

const HEARTBEAT: Duration = Duration::from_secs(15);
/// Frames the body holds before the subscriber counts as behind.
const BODY_QUEUE: usize = 64;
/// How long a stalled subscriber has to read its last word before its
/// connection is closed.
const GRACE: Duration = Duration::from_secs(5);

/// `connection` closes the subscriber's connection (a stall cannot be ended
/// by finishing the body: a reader that never reads never takes the end).
pub fn stream(ctx: &Context, req: &Request<Incoming>, connection: CancellationToken) -> Response<Body> {
    let last =
        req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    // Subscribe before reading the ring, so nothing falls between the two.
    let live = ctx.audit.subscribe();
    // An id beyond ours was given by an earlier run of this sidecar (`seq`
    // starts again at every start): everything we hold is new to that reader.
    let last = last.map(|seq| if seq > ctx.audit.last_seq() { 0 } else { seq });
    let replay = last.map(|seq| ctx.audit.since(seq)).unwrap_or_default();
    let (frames, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let (last_word, last_word_rx) = oneshot::channel::<Bytes>();
    let metrics = ctx.metrics.clone();
    let mut shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        // The subscription ends here (`feed` owns it): the hub stops counting for it.
        let cut = tokio::select! {
            cut = feed(live, replay, last.unwrap_or(0), &frames) => cut,
            // The body ends (the frames' sender is dropped): the connection drains.
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        if let Some(Lost { counted, queued }) = cut {
            // What was still queued (events, and frames the body never took) is lost too.
            let unsent = u64::try_from(BODY_QUEUE.saturating_sub(frames.capacity())).unwrap_or(u64::MAX);
            metrics.audit_dropped.inc_by(queued + unsent);
            let _ = last_word.send(Bytes::from(dropped(counted + queued + unsent, true)));
            tokio::time::sleep(GRACE).await;
            connection.cancel();
        }
    });
    let feed = Feed { frames: rx, last_word: Some(last_word_rx), done: false };
    let body = StreamBody::new(feed).boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// What a cut subscriber lost: events already counted (they did not fit
/// its queue), and events still queued for it.
struct Lost {
    counted: u64,
    queued: u64,
}

/// Sends the replay, then live events and heartbeats, until the subscriber
/// leaves (`None`) or stalls (`Some`).
async fn feed(
    mut live: crate::observe::audit::Subscription,
    replay: Vec<std::sync::Arc<Event>>,
    mut last_sent: u64,
    frames: &mpsc::Sender<Bytes>,
) -> Option<Lost> {
    for event in replay {
        last_sent = event.seq;
        match send(frames, sse(&event)).await {
            Some(true) => {}
            Some(false) => return None,
            None => return Some(Lost { counted: live.take_lost(), queued: live.queued() }),
        }
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        let text = tokio::select! {
            next = live.next() => match next {
                Next::Event(event) if event.seq > last_sent => {
                    last_sent = event.seq;
                    sse(&event)
                }
                Next::Event(_) => continue,
                Next::Dropped(n) => dropped(n, false),
                Next::Cut(n) => return Some(Lost { counted: n, queued: live.queued() }),
                Next::Closed => return None,
            },
            _ = heartbeat.tick() => ": heartbeat\n\n".to_owned(),
        };
        match send(frames, text).await {
            Some(true) => {}
            Some(false) => return None,
            None => return Some(Lost { counted: live.take_lost(), queued: live.queued() }),
        }
    }
}

/// `Some(true)` sent, `Some(false)` the subscriber left, `None` it took
/// nothing for [`STALL_LIMIT`].
async fn send(frames: &mpsc::Sender<Bytes>, text: String) -> Option<bool> {
    match tokio::time::timeout(STALL_LIMIT, frames.send(Bytes::from(text))).await {
        Ok(sent) => Some(sent.is_ok()),
        Err(_) => None,
    }
}

/// The body: queued frames, unless a last word arrives, which goes next and ends it.
struct Feed {
    frames: mpsc::Receiver<Bytes>,
    last_word: Option<oneshot::Receiver<Bytes>>,
    done: bool,
}

impl Stream for Feed {
    type Item = Result<Frame<Bytes>, crate::dataplane::body::BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(last_word) = self.last_word.as_mut() {
            match Pin::new(last_word).poll(cx) {
                Poll::Ready(Ok(text)) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::data(text))));
                }
                Poll::Ready(Err(_)) => self.last_word = None,
                Poll::Pending => {}
            }
        }
        self.frames.poll_recv(cx).map(|frame| frame.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn dropped(n: u64, disconnected: bool) -> String {
    let disconnected = if disconnected { ", \"disconnected\": true" } else { "" };
    format!("event: dropped\ndata: {{\"dropped\": {n}{disconnected}}}\n\n")
}

fn sse(event: &Event) -> String {
    let data = serde_json::to_string(event).unwrap_or_default();
    format!("id: {}\nevent: audit\ndata: {data}\n\n", event.seq)
}
