//! `GET /mgmt/audit/stream`: server-sent events, `id:` = the event's `seq`.
//! `Last-Event-ID` replays what the ring still holds; a subscriber that falls
//! behind gets `event: dropped` with the count; comments keep idle proxies
//! from closing the stream.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use tokio::sync::mpsc;

use super::Context;
use crate::audit::{self, Delivery, Event};
use crate::body::Body;

const HEARTBEAT: Duration = Duration::from_secs(15);

pub fn stream(ctx: &Context, req: &Request<Incoming>) -> Response<Body> {
    let last =
        req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    // Subscribe before reading the ring, so nothing falls between the two.
    let mut live = ctx.audit.subscribe();
    let replay = last.map(|seq| ctx.audit.since(seq)).unwrap_or_default();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(64);
    let audit = ctx.audit.clone();
    tokio::spawn(async move {
        let send = |text: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_ok() }
        };
        let mut last_sent = last.unwrap_or(0);
        for event in replay {
            last_sent = event.seq;
            if !send(sse(&event)).await {
                return;
            }
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            let text = tokio::select! {
                delivery = audit::next(&mut live, audit.metrics()) => match delivery {
                    Some(Delivery::Event(event)) if event.seq > last_sent => {
                        last_sent = event.seq;
                        sse(&event)
                    }
                    Some(Delivery::Event(_)) => continue,
                    Some(Delivery::Dropped(n)) => format!("event: dropped\ndata: {{\"dropped\": {n}}}\n\n"),
                    None => return,
                },
                _ = heartbeat.tick() => ": heartbeat\n\n".to_owned(),
            };
            if !send(text).await {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn sse(event: &Event) -> String {
    let data = serde_json::to_string(event).unwrap_or_default();
    format!("id: {}\nevent: audit\ndata: {data}\n\n", event.seq)
}
