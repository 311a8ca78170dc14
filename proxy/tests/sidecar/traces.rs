//! W3C trace context through two sidecars, and OTLP/HTTP span export to an
//! in-test collector.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use proxy::app::App;
use proxy::observe::audit::Event;

use super::mesh::{self, Mesh};
use super::support::{eventually, http};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

fn event(app: &App, path: &str) -> Arc<Event> {
    app.audit.recent(100, None, None).into_iter().find(|e| e.path.as_deref() == Some(path)).unwrap()
}

/// The app's trace is continued hop by hop: the caller's sidecar makes a
/// child of the app's span, the target's sidecar a child of that, and the
/// target app sees the target sidecar's span as its parent. Both audit
/// events carry the trace; without a `traceparent` the caller's sidecar
/// starts the trace and the target continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_continued_through_both_sidecars_to_the_app() {
    let mesh = Mesh::start().await;
    let outbound = mesh.report.outbound_addr.unwrap();
    let parent = format!("00-{TRACE}-{APP_SPAN}-01");
    let reply =
        http(outbound, "GET", "budget-backend", "/traced", &[("traceparent", &parent), ("tracestate", "app=1")]).await;
    assert_eq!(reply.status, 200);
    let (caller, target) = (event(&mesh.report, "/traced"), event(&mesh.backend, "/traced"));
    let (caller_trace, target_trace) = (caller.trace.unwrap(), target.trace.unwrap());
    assert_eq!(caller_trace.trace_id.to_string(), TRACE);
    assert_eq!(caller_trace.parent_span_id.unwrap().to_string(), APP_SPAN);
    assert_eq!(target_trace.trace_id.to_string(), TRACE);
    assert_eq!(target_trace.parent_span_id, Some(caller_trace.span_id), "the target continues the caller's span");
    assert_ne!(target_trace.span_id, caller_trace.span_id);
    let seen = mesh.app.seen().pop().unwrap();
    assert_eq!(seen.header("traceparent"), Some(format!("00-{TRACE}-{}-01", target_trace.span_id).as_str()));
    assert_eq!(seen.header("tracestate"), Some("app=1"), "a continued trace keeps its tracestate");
    let json = serde_json::to_value(target.as_ref()).unwrap();
    assert_eq!(
        (json["trace_id"].as_str(), json["parent_span_id"].as_str()),
        (Some(TRACE), Some(caller_trace.span_id.to_string().as_str()))
    );

    // No traceparent (or a malformed one): the caller's sidecar starts a trace.
    for (path, headers) in [("/fresh", vec![]), ("/malformed", vec![("traceparent", "00-XYZ-00f067aa0ba902b7-01")])] {
        let reply = http(outbound, "GET", "budget-backend", path, &headers).await;
        assert_eq!(reply.status, 200);
        let (caller, target) = (event(&mesh.report, path), event(&mesh.backend, path));
        let (caller_trace, target_trace) = (caller.trace.unwrap(), target.trace.unwrap());
        assert!(caller_trace.parent_span_id.is_none() && caller_trace.sampled, "{path}");
        assert_ne!(caller_trace.trace_id.to_string(), TRACE);
        assert_eq!(target_trace.trace_id, caller_trace.trace_id, "{path}");
        assert_eq!(target_trace.parent_span_id, Some(caller_trace.span_id), "{path}");
    }
}

/// What the in-test collector received: each POST's content type and body.
#[derive(Default)]
struct Collector {
    posts: Mutex<Vec<(String, String, serde_json::Value)>>,
    /// Answer 500 instead of 200.
    failing: std::sync::atomic::AtomicBool,
}

impl Collector {
    async fn start() -> (Arc<Self>, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Arc::new(Self::default());
        let shared = collector.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let collector = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let collector = collector.clone();
                        async move {
                            let path = request.uri().path().to_owned();
                            let kind = request.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                            collector.posts.lock().unwrap().push((path, kind.unwrap_or_default(), json));
                            let failing = collector.failing.load(std::sync::atomic::Ordering::SeqCst);
                            let status = if failing { 500 } else { 200 };
                            let response =
                                hyper::Response::builder().status(status).body(Full::new(Bytes::from_static(b"{}")));
                            Ok::<_, std::convert::Infallible>(response.unwrap())
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        (collector, addr)
    }

    /// Every span received so far, flattened.
    fn spans(&self) -> Vec<serde_json::Value> {
        let posts = self.posts.lock().unwrap();
        posts
            .iter()
            .flat_map(|(_, _, body)| body["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

fn attribute<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

fn metric(app: &App, line_start: &str) -> f64 {
    let text = app.metrics.encode();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// With `telemetry.otlp_endpoint`, a caller sidecar and a target sidecar
/// export one span each per request to the collector, as OTLP JSON on
/// `/v1/traces`, linked parent to child; a failing collector loses spans
/// (counted) without failing a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_an_otlp_collector() {
    let mesh = Mesh::start().await;
    let (collector, addr) = Collector::start().await;
    let with_otlp = |yaml: String| {
        yaml.replace("log_format: text}", &format!("log_format: text, otlp_endpoint: 'http://{addr}/v1/traces'}}"))
    };
    let target =
        mesh.start_sidecar("traced-target", &with_otlp(mesh.sidecar_yaml("traced-target", mesh.app.addr))).await;
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let caller_yaml = mesh::caller_yaml(
        &mesh.dir.path().join("report.sock"),
        target.inbound_addr.unwrap(),
        reserved.local_addr().unwrap().port(),
    );
    let caller = mesh.start_sidecar("traced-caller", &with_otlp(caller_yaml)).await;

    let parent = format!("00-{TRACE}-{APP_SPAN}-01");
    let reply =
        http(caller.outbound_addr.unwrap(), "GET", "budget-backend", "/exported", &[("traceparent", &parent)]).await;
    assert_eq!(reply.status, 200);
    let spans = eventually(Duration::from_secs(20), "both spans exported", || async {
        let spans = collector.spans();
        (spans.len() >= 2).then_some(spans)
    })
    .await;
    let find = |kind: i64| spans.iter().find(|s| s["kind"] == kind).unwrap().clone();
    let (client, server) = (find(3), find(2));
    assert_eq!((client["traceId"].as_str(), server["traceId"].as_str()), (Some(TRACE), Some(TRACE)));
    assert_eq!(client["parentSpanId"], APP_SPAN);
    assert_eq!(server["parentSpanId"], client["spanId"], "the target's span is the caller's child");
    assert_eq!(server["name"], "inbound GET");
    assert_eq!(attribute(&server, "url.path").unwrap()["stringValue"], "/exported");
    assert_eq!(attribute(&server, "a2a.decision").unwrap()["stringValue"], "allow");
    assert_eq!(attribute(&server, "http.response.status_code").unwrap()["intValue"], "200");
    assert_eq!(attribute(&server, "a2a.caller.spiffe_id").unwrap()["stringValue"], mesh::REPORT);
    let start: u128 = server["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = server["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && start <= end);
    {
        let posts = collector.posts.lock().unwrap();
        assert!(posts.iter().all(|(path, kind, _)| path == "/v1/traces" && kind == "application/json"));
        let resource = &posts[0].2["resourceSpans"][0]["resource"]["attributes"][0];
        assert_eq!(
            (resource["key"].as_str(), resource["value"]["stringValue"].as_str()),
            (Some("service.name"), Some("a2a-sidecar"))
        );
    }
    let exported = || async { (metric(&target, "a2a_spans_total{result=\"exported\"}") >= 1.0).then_some(()) };
    eventually(Duration::from_secs(10), "exported spans counted", exported).await;

    // An unsampled trace is propagated, not exported.
    let before = collector.spans().len();
    let unsampled = format!("00-{TRACE}-{APP_SPAN}-00");
    let reply =
        http(caller.outbound_addr.unwrap(), "GET", "budget-backend", "/unsampled", &[("traceparent", &unsampled)])
            .await;
    assert_eq!(reply.status, 200);
    assert!(mesh.app.seen().pop().unwrap().header("traceparent").unwrap().ends_with("-00"));

    // The collector fails: requests still succeed, the lost spans are counted.
    collector.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = http(caller.outbound_addr.unwrap(), "GET", "budget-backend", "/collector-down", &[]).await;
    assert_eq!(reply.status, 200);
    let failed = || async { (metric(&target, "a2a_spans_total{result=\"failed\"}") >= 1.0).then_some(()) };
    eventually(Duration::from_secs(20), "failed exports counted", failed).await;
    let received: Vec<_> = collector.spans();
    assert!(
        received[before..].iter().all(|s| attribute(s, "url.path").unwrap()["stringValue"] != "/unsampled"),
        "an unsampled request was exported"
    );
}

/// `telemetry.otlp_endpoint` follows the identity endpoints' rule (https, or
/// http on loopback) and refuses credentials in the URL.
#[test]
fn an_otlp_endpoint_must_be_https_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    for (url, why) in [
        ("http://collector.example:4318/v1/traces", "must be https://"),
        ("https://user:secret@collector.example/v1/traces", "credentials in the URL"),
        ("https://collector.example/v1/traces?api-key=secret", "credentials in the URL"),
        ("not a url", "is not a URL"),
    ] {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, format!("identity: {{socket: 'unix:///x.sock'}}\ntelemetry: {{otlp_endpoint: '{url}'}}\noutbound: {{routes: []}}\n")).unwrap();
        let error = proxy::config::Config::load(&path).unwrap_err().to_string();
        assert!(error.contains("telemetry.otlp_endpoint") && error.contains(why), "{url}: {error}");
        assert!(!error.contains("secret"), "{error}");
    }
}
