//! The admin API over real HTTP against a running sidecar: keys and roles,
//! the reference routes and shapes, persistence across a restart, audit and
//! its SSE stream.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::mesh::{ADMIN_KEY, MENUS, Mesh, REPORT, VIEWER_KEY};
use super::support::{eventually, http};

/// (status, headers, JSON body)
pub async fn call(
    mesh_addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, Value) {
    let tcp = tokio::net::TcpStream::connect(mesh_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", "mgmt");
    if let Some(key) = key {
        req = req.header("x-spiffe-admin-key", key);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = Full::new(bytes::Bytes::from(body.unwrap_or_default().to_owned()));
    let response = sender.send_request(req.body(body).unwrap()).await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_and_route_shapes() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let gets = [
        "/mgmt/policy",
        "/mgmt/mtls-policy",
        "/mgmt/agent-risk",
        "/mgmt/agent-tags",
        "/mgmt/oauth-status",
        "/mgmt/ca-policy-effective",
        "/mgmt/metrics",
        "/mgmt/audit",
    ];
    for path in gets {
        for key in [None, Some("wrong")] {
            let (status, _, body) = call(mgmt, "GET", path, key, None, &[]).await;
            assert_eq!((status, body), (401, serde_json::json!({"error": "unauthorized"})), "{path} {key:?}");
        }
        assert_eq!(call(mgmt, "GET", path, Some(VIEWER_KEY), None, &[]).await.0, 200, "{path}");
        assert_eq!(call(mgmt, "GET", path, Some(ADMIN_KEY), None, &[]).await.0, 200, "{path}");
    }
    let (status, _, health) = call(mgmt, "GET", "/mgmt/health", None, None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert!(health["spire_agent_connected"].as_bool().unwrap() && health["svid_ttl_seconds"].as_u64().unwrap() > 0);

    let (status, _, _) = call(mgmt, "PUT", "/mgmt/agent-risk", Some(VIEWER_KEY), Some("{}"), &[]).await;
    assert_eq!(status, 403, "viewer on a write");
    assert_eq!(call(mgmt, "GET", "/mgmt/nope", Some(ADMIN_KEY), None, &[]).await.0, 404);
    let (status, headers, _) = call(mgmt, "DELETE", "/mgmt/agent-risk", Some(ADMIN_KEY), None, &[]).await;
    assert_eq!((status, headers.get("allow").unwrap().to_str().unwrap()), (405, "GET, PUT"));

    let (_, _, mtls) = call(mgmt, "GET", "/mgmt/mtls-policy", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(mtls["mode"], "allowlist");
    assert_eq!(mtls["count"], 2);
    let (_, headers, policy) = call(mgmt, "GET", "/mgmt/policy", Some(VIEWER_KEY), None, &[]).await;
    assert!(headers.contains_key("etag") && policy["loaded_at"].is_string() && policy["policy"]["policies"].is_array());
    let (_, _, oauth) = call(mgmt, "GET", "/mgmt/oauth-status", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(oauth["audience"], super::mesh::AUDIENCE);
    assert!(oauth["audiences"].is_array() && oauth["config_loaded"].as_bool().unwrap());
    // Every missing or wrong key is counted: 2 on each of the 8 GET routes.
    let failures = counter(&scrape(mesh.backend.telemetry_addr).await, "a2a_mgmt_auth_failures_total", &[]);
    assert_eq!(failures, 16.0, "failures counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_are_slowed_but_a_valid_key_always_passes() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    // Repeated failures from one address: slowed with 429 and Retry-After...
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..13 {
        let (status, headers, _) = call(mgmt, "GET", "/mgmt/audit", Some("guess"), None, &[]).await;
        statuses.push(status);
        retry_after = retry_after.or_else(|| headers.get("retry-after").map(|v| v.to_str().unwrap().to_owned()));
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 3], "{statuses:?}");
    let retry_after: u64 = retry_after.expect("Retry-After on the 429").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // ...but a valid key from the same address always passes: whatever shares the
    // loopback (the app itself) cannot lock the operator out by failing on purpose.
    assert_eq!(call(mgmt, "GET", "/mgmt/audit", Some(ADMIN_KEY), None, &[]).await.0, 200);
    assert_eq!(call(mgmt, "PUT", "/mgmt/agent-risk", Some(ADMIN_KEY), Some("{}"), &[]).await.0, 400);
    // Every guess is counted, the slowed ones too.
    let failures = counter(&scrape(mesh.backend.telemetry_addr).await, "a2a_mgmt_auth_failures_total", &[]);
    assert_eq!(failures, 13.0, "failures counted");
}

/// A policy that denies employee-menus everything (the mesh's open policy otherwise).
fn deny_menus_policy() -> String {
    super::mesh::OPEN_POLICY.replace(
        "{name: employee-menus, spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/employee-menus', rules: [{path: '/*', methods: ['*'], action: allow}]}",
        "{name: employee-menus, spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/employee-menus', rules: [{path: '/*', methods: ['*'], action: deny}]}",
    )
}

async fn put(mgmt: std::net::SocketAddr, route: &str, body: &str) -> (u16, Value) {
    let (status, _, answer) = call(mgmt, "PUT", route, Some(ADMIN_KEY), Some(body), &[]).await;
    (status, answer)
}

/// One change through each write route: menus allowed, budget-report at high
/// risk, menus tagged `hr`, and a policy denying menus.
async fn change_everything(mgmt: std::net::SocketAddr) {
    let ids = format!(r#"{{"allowed_ids": ["{REPORT}", "{MENUS}"]}}"#);
    assert_eq!(put(mgmt, "/mgmt/mtls-policy", &ids).await.0, 200);
    assert_eq!(
        put(mgmt, "/mgmt/agent-risk", &format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "high"}}"#)).await.0,
        200
    );
    assert_eq!(put(mgmt, "/mgmt/agent-tags", &format!(r#"{{"spiffe_id": "{MENUS}", "tag": "hr"}}"#)).await.0, 200);
    assert_eq!(put(mgmt, "/mgmt/policy", &deny_menus_policy()).await.0, 200);
}

/// The allow-list: an empty list needs `?force=true`; a change applies to
/// the next request, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_change_applies_on_the_next_request_and_emptying_it_needs_force() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let (report_out, menus_out) = (mesh.report.outbound_addr.unwrap(), mesh.menus.outbound_addr.unwrap());
    assert_eq!(http(menus_out, "GET", "budget-backend", "/x", &[]).await.status, 502, "menus is not allowed yet");
    let ids = format!(r#"{{"allowed_ids": ["{REPORT}", "{MENUS}"]}}"#);
    let (status, body) = put(mgmt, "/mgmt/mtls-policy", &ids).await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(2)));
    assert_eq!(http(menus_out, "GET", "budget-backend", "/x", &[]).await.status, 200);

    let empty = r#"{"allowed_ids": []}"#;
    let (status, body) = put(mgmt, "/mgmt/mtls-policy", empty).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("empty_allowlist")), "{body}");
    assert_eq!(http(report_out, "GET", "budget-backend", "/x", &[]).await.status, 200, "nothing changed");
    let (status, body) = put(mgmt, "/mgmt/mtls-policy?force=true", empty).await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)), "{body}");
    // Nobody is allowed now: refused at the handshake (502 from the caller's
    // own sidecar) or, on a pooled connection, 403 not_allowed.
    for out in [report_out, menus_out] {
        let status = http(out, "GET", "budget-backend", "/x", &[]).await.status;
        assert!(status == 502 || status == 403, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_and_tag_pushes_are_validated_and_apply_at_once() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let bad = format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "severe"}}"#);
    assert_eq!(put(mgmt, "/mgmt/agent-risk", &bad).await.0, 400);
    assert_eq!(put(mgmt, "/mgmt/agent-risk", "{nope").await.0, 400);
    let high = format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "high"}}"#);
    let (status, risks) = put(mgmt, "/mgmt/agent-risk", &high).await;
    assert_eq!(
        (status, risks["risks"][REPORT].as_str(), risks["default_level"].as_str()),
        (200, Some("high"), Some("low"))
    );
    let out = mesh.report.outbound_addr.unwrap();
    assert_eq!(
        http(out, "GET", "budget-backend", "/x", &[]).await.denied(),
        ("risk".into(), "high_risk_agent_blocked".into())
    );
    let tag = format!(r#"{{"spiffe_id": "{MENUS}", "tag": "hr"}}"#);
    let (status, tags) = put(mgmt, "/mgmt/agent-tags", &tag).await;
    assert_eq!((status, tags["tags"][MENUS].as_str(), tags["source"].as_str()), (200, Some("hr"), Some("policy")));
}

/// A stale `If-Match` is 412, invalid YAML 400 and an oversized body 413,
/// and the old policy keeps being enforced; a fresh one applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_put_honours_if_match_and_keeps_the_old_policy_on_error() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let ids = format!(r#"{{"allowed_ids": ["{REPORT}", "{MENUS}"]}}"#);
    assert_eq!(put(mgmt, "/mgmt/mtls-policy", &ids).await.0, 200);
    let menus_out = mesh.menus.outbound_addr.unwrap();
    let (_, headers, _) = call(mgmt, "GET", "/mgmt/policy", Some(ADMIN_KEY), None, &[]).await;
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let deny_menus = deny_menus_policy();
    let stale = [("if-match", "\"999\"")];
    assert_eq!(call(mgmt, "PUT", "/mgmt/policy", Some(ADMIN_KEY), Some(&deny_menus), &stale).await.0, 412);
    let (status, body) = put(mgmt, "/mgmt/policy", "version: [broken").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_policy")));
    let big = "x".repeat(300 * 1024);
    assert_eq!(put(mgmt, "/mgmt/policy", &big).await.0, 413);
    assert_eq!(http(menus_out, "GET", "budget-backend", "/x", &[]).await.status, 200, "old policy still enforced");
    let fresh = [("if-match", etag.as_str())];
    assert_eq!(call(mgmt, "PUT", "/mgmt/policy", Some(ADMIN_KEY), Some(&deny_menus), &fresh).await.0, 200);
    assert_eq!(
        http(menus_out, "GET", "budget-backend", "/x", &[]).await.denied(),
        ("rbac".into(), "rule_denied".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_is_audited_with_the_keys_name_never_the_key() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    change_everything(mgmt).await;
    let (_, _, audit) = call(mgmt, "GET", "/mgmt/audit?limit=50", Some(VIEWER_KEY), None, &[]).await;
    let entries = audit["entries"].as_array().unwrap();
    let changes: Vec<&Value> = entries.iter().filter(|e| e["reason"] == "admin_change").collect();
    assert!(entries.iter().any(|e| e["reason"] == "policy_reloaded"), "{audit}");
    assert_eq!(changes.len(), 4, "allow-list, risk, tag, policy: {changes:?}");
    for event in changes {
        assert_eq!((event["direction"].as_str(), event["actor"].as_str()), (Some("mgmt"), Some("ops")), "{event}");
    }
    assert!(!audit.to_string().contains(ADMIN_KEY));
}

/// Restart on the same config and state file: every change is still in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_survive_a_restart() {
    let mesh = Mesh::start().await;
    change_everything(mesh.backend.mgmt_addr.unwrap()).await;
    let Mesh { backend, backend_config, .. } = mesh;
    backend.shutdown().await;
    let mut restarted = proxy::app::App::start(proxy::config::Config::load(&backend_config).unwrap()).await.unwrap();
    restarted.identity.wait_ready().await.unwrap();
    let mgmt = restarted.mgmt_addr.unwrap();
    let (_, _, mtls) = call(mgmt, "GET", "/mgmt/mtls-policy", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(mtls["count"], 2);
    let (_, _, risks) = call(mgmt, "GET", "/mgmt/agent-risk", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(risks["risks"][REPORT], "high");
    let (_, _, tags) = call(mgmt, "GET", "/mgmt/agent-tags", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(tags["tags"][MENUS], "hr");
    let (_, _, policy) = call(mgmt, "GET", "/mgmt/policy", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(policy["generation"], 2, "the PUT policy was re-applied on start");
    let (_, _, effective) = call(mgmt, "GET", "/mgmt/ca-policy-effective", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(effective["state_last_change"], "policy:ops");
}

/// Files edited while the sidecar is down are the more recent change. The
/// policy file: its policy replaces the PUT one, the API allow-list stays;
/// the config file: like a reload, its allow-list replaces the API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_edited_while_down_win_over_earlier_admin_changes() {
    let mesh = Mesh::start().await;
    change_everything(mesh.backend.mgmt_addr.unwrap()).await;
    let Mesh { backend, backend_config, policy_file, .. } = mesh;
    backend.shutdown().await;
    std::fs::write(&policy_file, super::mesh::OPEN_POLICY.replacen("version: '1'", "version: '7'", 1)).unwrap();
    let restart = || async {
        let mut app = proxy::app::App::start(proxy::config::Config::load(&backend_config).unwrap()).await.unwrap();
        app.identity.wait_ready().await.unwrap();
        app
    };
    let allowed = |mtls: &Value, id: &str| mtls["allowed_ids"].as_array().unwrap().iter().any(|a| a == id);
    let second = restart().await;
    let mgmt = second.mgmt_addr.unwrap();
    let (_, _, policy) = call(mgmt, "GET", "/mgmt/policy", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(policy["policy"]["version"], "7", "the edited file replaced the PUT policy");
    let (_, _, mtls) = call(mgmt, "GET", "/mgmt/mtls-policy", Some(VIEWER_KEY), None, &[]).await;
    assert!(allowed(&mtls, MENUS), "the config did not change: {mtls}");
    second.shutdown().await;
    let config = std::fs::read_to_string(&backend_config).unwrap();
    std::fs::write(&backend_config, config + "# edited while the sidecar was down\n").unwrap();
    let third = restart().await;
    let (_, _, mtls) = call(third.mgmt_addr.unwrap(), "GET", "/mgmt/mtls-policy", Some(VIEWER_KEY), None, &[]).await;
    assert!(!allowed(&mtls, MENUS) && allowed(&mtls, REPORT), "the config's allow-list: {mtls}");
}

/// Reads SSE events (`id`, event name) from a stream until `n` audit events arrived.
async fn read_events(body: &mut hyper::body::Incoming, n: usize) -> Vec<(u64, String)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while events.len() < n {
            let frame = body.frame().await.unwrap().unwrap();
            buffer.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap_or_default()));
            while let Some(end) = buffer.find("\n\n") {
                let chunk: String = buffer.drain(..end + 2).collect();
                let id = chunk.lines().find_map(|l| l.strip_prefix("id: ")).and_then(|v| v.parse().ok());
                let event = chunk.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_owned();
                if let Some(id) = id {
                    events.push((id, event));
                }
            }
        }
    })
    .await
    .expect("events arrived");
    events
}

async fn stream(mgmt: std::net::SocketAddr, last_id: Option<u64>) -> hyper::body::Incoming {
    let tcp = tokio::net::TcpStream::connect(mgmt).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut req =
        hyper::Request::get("/mgmt/audit/stream").header("host", "m").header("x-spiffe-admin-key", VIEWER_KEY);
    if let Some(id) = last_id {
        req = req.header("last-event-id", id.to_string());
    }
    let response = sender.send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap()).await.unwrap();
    assert_eq!(response.headers().get("content-type").unwrap(), "text/event-stream");
    response.into_body()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_stream_delivers_in_order_and_resumes() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let out = mesh.report.outbound_addr.unwrap();
    let mut body = stream(mgmt, None).await;
    for i in 0..5 {
        http(out, "GET", "budget-backend", &format!("/s/{i}"), &[]).await;
    }
    let first = read_events(&mut body, 5).await;
    let ids: Vec<u64> = first.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    drop(body);

    // While disconnected, three more; Last-Event-ID brings exactly those back first.
    for i in 5..8 {
        http(out, "GET", "budget-backend", &format!("/s/{i}"), &[]).await;
    }
    let last = *ids.last().unwrap();
    let mut resumed = stream(mgmt, Some(last)).await;
    let replay = read_events(&mut resumed, 3).await;
    assert_eq!(replay.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [last + 1, last + 2, last + 3]);

    // The audit query: newest first, filtered. The newest event is a deny, so
    // a decision filter that did nothing shows; no event names another caller.
    assert_eq!(http(out, "GET", "budget-backend", "/s/a%2Fb", &[]).await.status, 400);
    let (_, _, newest) = call(mgmt, "GET", "/mgmt/audit?limit=1", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(
        (newest["entries"][0]["caller_spiffe_id"].as_str(), newest["entries"][0]["decision"].as_str()),
        (Some(REPORT), Some("deny")),
        "{newest}"
    );
    let query = format!("/mgmt/audit?limit=50&spiffe_id={MENUS}");
    let (_, _, other) = call(mgmt, "GET", &query, Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(other["count"], 0, "{other}");
    let (_, _, audit) = call(
        mgmt,
        "GET",
        &format!("/mgmt/audit?limit=2&spiffe_id={REPORT}&decision=allow"),
        Some(VIEWER_KEY),
        None,
        &[],
    )
    .await;
    assert_eq!(audit["count"], 2);
    for bad in ["/mgmt/audit?limit=ten", "/mgmt/audit?limit=-1", "/mgmt/audit?decision=maybe"] {
        let (status, _, body) = call(mgmt, "GET", bad, Some(VIEWER_KEY), None, &[]).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_query")), "{bad}: {body}");
    }
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries[0]["seq"].as_u64() > entries[1]["seq"].as_u64());
    for entry in entries {
        assert_eq!(
            (entry["caller_spiffe_id"].as_str(), entry["decision"].as_str()),
            (Some(REPORT), Some("allow")),
            "{entry}"
        );
        assert_eq!(entry["direction"], "inbound", "{entry}");
    }
    assert_eq!(entries[0]["path"], "/s/7", "the newest match first");
    for field in [
        "seq",
        "timestamp",
        "direction",
        "request_id",
        "caller_spiffe_id",
        "method",
        "path",
        "decision",
        "layer",
        "reason",
        "policy_ids",
        "status",
        "latency_us",
        "jwt",
        "policy_version",
    ] {
        assert!(entries[0].get(field).is_some(), "missing {field}");
    }
    let (_, _, metrics) = call(mgmt, "GET", "/mgmt/metrics", Some(VIEWER_KEY), None, &[]).await;
    assert!(metrics["total_requests"].as_u64().unwrap() >= 8);
    assert!(metrics["per_caller"]["budget-report"]["allowed"].as_u64().unwrap() >= 8, "{metrics}");
}

/// Shutdown ends an open audit stream cleanly: a stream never ends by
/// itself, and would otherwise hold the drain to its timeout (two minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_audit_streams() {
    let mesh = Mesh::start().await;
    let yaml = mesh.sidecar_yaml("draining", mesh.app.addr).replace("drain_timeout: 5s", "drain_timeout: 120s");
    assert!(yaml.contains("drain_timeout: 120s"));
    let sidecar = mesh.start_sidecar("draining", &yaml).await;
    let mut body = stream(sidecar.mgmt_addr.unwrap(), None).await;
    let stopped = tokio::spawn(sidecar.shutdown());
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    ended.await.expect("the stream ended at shutdown").expect("and ended cleanly, not cut");
    tokio::time::timeout(Duration::from_secs(30), stopped).await.expect("stopped before the drain timeout").unwrap();
}

/// The `a2a_*` samples of `/metrics`, parsed with a real Prometheus text parser.
async fn scrape(addr: std::net::SocketAddr) -> Vec<prometheus_parse::Sample> {
    let text = super::support::get(addr, "/metrics").await.1;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    scrape.samples.into_iter().filter(|s| s.metric.starts_with("a2a_")).collect()
}

fn counter(samples: &[prometheus_parse::Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_exposition_parses_and_counters_move_by_layer() {
    let mesh = Mesh::start().await;
    let telemetry = mesh.backend.telemetry_addr;
    let before = scrape(telemetry).await;
    let out = mesh.report.outbound_addr.unwrap();
    for _ in 0..3 {
        http(out, "GET", "budget-backend", "/ok", &[]).await;
    }
    http(out, "GET", "budget-backend", "/a%2Fb", &[]).await;
    let after = scrape(telemetry).await;
    let allowed = [("direction", "inbound"), ("decision", "allow"), ("layer", "none"), ("reason", "allowed")];
    let bad_path = [("direction", "inbound"), ("decision", "deny"), ("layer", "http"), ("reason", "bad_path")];
    assert_eq!(counter(&after, "a2a_requests_total", &allowed) - counter(&before, "a2a_requests_total", &allowed), 3.0);
    assert_eq!(
        counter(&after, "a2a_requests_total", &bad_path) - counter(&before, "a2a_requests_total", &bad_path),
        1.0
    );
    for metric in [
        "a2a_svid_expiry_timestamp_seconds",
        "a2a_svid_rotations_total",
        "a2a_tls_handshakes_total",
        "a2a_policy_eval_duration_seconds_count",
        "a2a_request_duration_seconds_count",
        "a2a_audit_dropped_total",
        // Present at 0 before their first event (bounded label sets are pre-created).
        "a2a_upstream_errors_total",
        "a2a_policy_reloads_total",
        "a2a_jwks_refresh_total",
        "a2a_graph_requests_total",
    ] {
        assert!(after.iter().any(|s| s.metric == metric), "missing {metric}");
    }
    // Labels are bounded: no SPIFFE IDs and no raw paths.
    assert!(after.iter().all(|s| s.labels.values().all(|v| !v.contains("spiffe://") && !v.starts_with('/'))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_told_what_it_lost_and_requests_keep_flowing() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    // A subscriber that stops reading, with a small receive window.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stalled = socket.connect(mgmt).await.unwrap();
    let request = format!("GET /mgmt/audit/stream HTTP/1.1\r\nHost: m\r\nX-Spiffe-Admin-Key: {VIEWER_KEY}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stalled, request.as_bytes()).await.unwrap();
    // More events than the subscriber queue and the socket buffers hold:
    // pipelined requests straight to the inbound listener, batch after batch
    // until the subscriber has lost some (however fast the machine is).
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let mut pipelined = "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n".repeat(399);
    pipelined.push_str("GET /flood HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    for round in 0.. {
        if counter(&scrape(mesh.backend.telemetry_addr).await, "a2a_audit_dropped_total", &[]) > 0.0 {
            break;
        }
        assert!(round < 50, "50 rounds of 2,000 events and the stalled subscriber lost none");
        let batch: Vec<_> = (0..5)
            .map(|_| {
                let (tls, raw, addr) = (tls.clone(), pipelined.clone(), mesh.inbound());
                tokio::spawn(async move {
                    let out = super::support::raw_exchange(addr, tls, raw.as_bytes(), Duration::from_secs(120)).await;
                    assert_eq!(super::support::statuses(&out).len(), 400, "every request answered");
                })
            })
            .collect();
        for b in batch {
            b.await.unwrap();
        }
    }

    // When it reads again, it is told how many it lost.
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 64 * 1024];
        // The whole `dropped` event: it may arrive split across reads.
        let complete = |text: &str| text.find("event: dropped").is_some_and(|at| text[at..].contains("\n\n"));
        while !complete(&text) {
            let n = tokio::io::AsyncReadExt::read(&mut stalled, &mut buf).await.unwrap();
            assert!(n > 0, "stream closed");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .expect("a dropped event");
    assert!(text.contains("data: {\"dropped\": "), "{}", &text[text.find("event: dropped").unwrap()..][..60]);
    let samples = scrape(mesh.backend.telemetry_addr).await;
    assert!(counter(&samples, "a2a_audit_dropped_total", &[]) > 0.0, "the loss is counted");
}

/// A subscriber that never reads again: its losses are counted when they
/// happen (not when it next reads), and after `STALL_LIMIT` of taking
/// nothing it leaves the hub, is told (a last `dropped` event, delivered if
/// it reads within the grace period) and its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_counted_at_once_then_told_and_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start().await;
    let (mgmt, telemetry) = (mesh.backend.mgmt_addr.unwrap(), mesh.backend.telemetry_addr);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stalled = socket.connect(mgmt).await.unwrap();
    let request = format!("GET /mgmt/audit/stream HTTP/1.1\r\nHost: m\r\nX-Spiffe-Admin-Key: {VIEWER_KEY}\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    let gauge = |want: f64| async move {
        let samples = scrape(telemetry).await;
        (counter(&samples, "a2a_audit_subscribers", &[]) == want).then_some(())
    };
    eventually(Duration::from_secs(10), "subscribed", || gauge(1.0)).await;

    // Traffic goes on, far more than its queue and the socket buffers hold, while it reads nothing.
    let audit = mesh.backend.audit.clone();
    let traffic = tokio::spawn(async move {
        for i in 0.. {
            audit.record(proxy::observe::audit::Event {
                direction: proxy::observe::audit::Direction::Inbound,
                path: Some(format!("/flood/{i}")),
                ..Default::default()
            });
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let counted = || async { (counter(&scrape(telemetry).await, "a2a_audit_dropped_total", &[]) > 0.0).then_some(()) };
    eventually(Duration::from_secs(10), "losses counted without a read", counted).await;
    let limit = proxy::observe::audit::STALL_LIMIT + Duration::from_secs(20);
    eventually(limit, "the stalled subscriber left the hub", || gauge(0.0)).await;
    traffic.abort();

    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed");
    let text = String::from_utf8_lossy(&out);
    let last = text.rfind("event: dropped").map(|at| &text[at..]).unwrap_or_default();
    assert!(last.contains("\"disconnected\": true"), "no last word: {}", &text[text.len().saturating_sub(200)..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_admin_listener_needs_an_allowed_svid_and_a_key() {
    use super::support::{read_reply, tls_connect};
    let mesh = Mesh::start().await;
    // A second sidecar on the backend's Workload API, admin listener on all
    // addresses: mTLS for the admin SVID `REPORT` only.
    let yaml = std::fs::read_to_string(&mesh.backend_config).unwrap().replace(
        "mgmt:\n  listen: '127.0.0.1:0'\n  state_file: state.json",
        &format!("mgmt:\n  listen: '0.0.0.0:0'\n  state_file: state2.json\n  tls: {{allowed_callers: ['{REPORT}']}}"),
    );
    assert!(yaml.contains("0.0.0.0:0"));
    let path = mesh.dir.path().join("exposed.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut exposed = proxy::app::App::start(proxy::config::Config::load(&path).unwrap()).await.unwrap();
    exposed.identity.wait_ready().await.unwrap();
    let port = exposed.mgmt_addr.unwrap().port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let get = |id: &'static str, key: Option<&'static str>| {
        let tls = mesh.client_tls(id, &[b"http/1.1"]);
        async move {
            let io = TokioIo::new(tls_connect(addr, tls).await.ok()?);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            tokio::spawn(conn);
            let mut req = hyper::Request::get("/mgmt/mtls-policy").header("host", "mgmt");
            if let Some(key) = key {
                req = req.header("x-spiffe-admin-key", key);
            }
            let response = sender.send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap()).await;
            Some(read_reply(response.ok()?).await.status)
        }
    };
    assert_eq!(get(REPORT, Some(VIEWER_KEY)).await, Some(200), "allowed SVID and a key");
    assert_eq!(get(REPORT, None).await, Some(401), "the SVID alone is not enough");
    assert_eq!(get(MENUS, Some(ADMIN_KEY)).await, None, "a key alone is not enough: the handshake fails");
    // Plain HTTP to the TLS listener gets no HTTP answer.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/mgmt/health").header("host", "mgmt").body(Full::<bytes::Bytes>::default()).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req)).await;
    assert!(matches!(answered, Ok(Err(_))), "plain HTTP is not served");
    exposed.shutdown().await;
}

/// A connection that has not shown a valid key is not kept (nor is any
/// connection to the telemetry listener): whatever shares the loopback
/// cannot hold every admin slot with keep-alive health checks and lock the
/// operator out. A connection with a valid key is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_connection_with_a_valid_key_is_kept_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    for (addr, request) in [
        (mgmt, "GET /mgmt/health HTTP/1.1\r\nHost: m\r\n\r\n".to_owned()),
        (mgmt, "GET /mgmt/audit HTTP/1.1\r\nHost: m\r\nX-Spiffe-Admin-Key: wrong\r\n\r\n".to_owned()),
        (mesh.backend.telemetry_addr, "GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n".to_owned()),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(closed.is_ok(), "kept open: {request:?}");
        assert!(out.contains("connection: close"), "{out}");
    }
    // With a valid key, one connection serves several requests.
    let tcp = tokio::net::TcpStream::connect(mgmt).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        sender.ready().await.unwrap();
        let req = hyper::Request::get("/mgmt/audit").header("host", "m").header("x-spiffe-admin-key", VIEWER_KEY);
        let response = sender.send_request(req.body(Full::new(bytes::Bytes::new())).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
}

/// `mgmt.tls.roles`: an allowed SVID with a role needs no key (the least
/// privileged matching role applies; a key, when shown, decides instead).
/// `mgmt.tls.consoles`: such a caller may name the signed-in person it acts
/// for (`X-A2A-Actor`, `X-A2A-Actor-Role`): the audit event's `actor` is that
/// person, and the lower of the two roles applies, so a viewer's write is
/// refused by the sidecar itself. Anyone else's `X-A2A-Actor` is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_with_a_role_needs_no_key_and_a_console_acts_for_its_person() {
    use super::mesh::APPROVAL;
    use super::support::{read_reply, tls_connect};
    let mesh = Mesh::start().await;
    // REPORT plays the console (admin), AUTOMATION an admin SVID that is no console,
    // APPROVAL an SVID with the viewer role (and an admin pattern: the least wins), MENUS one without.
    const AUTOMATION: &str = "spiffe://aim.microsoft.com/ops/automation";
    let tls = format!(
        "  tls:\n    allowed_callers: ['{REPORT}', '{APPROVAL}', '{MENUS}', '{AUTOMATION}']\n    roles: {{'{REPORT}': admin, '{AUTOMATION}': admin, '{APPROVAL}': viewer, 'spiffe://aim.microsoft.com/ests/bp/*/aid/budget-approval': admin}}\n    consoles: ['{REPORT}']"
    );
    let yaml = std::fs::read_to_string(&mesh.backend_config).unwrap().replace(
        "mgmt:\n  listen: '127.0.0.1:0'\n  state_file: state.json",
        &format!("mgmt:\n  listen: '0.0.0.0:0'\n  state_file: state3.json\n{tls}"),
    );
    let path = mesh.dir.path().join("roles.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut sidecar = proxy::app::App::start(proxy::config::Config::load(&path).unwrap()).await.unwrap();
    sidecar.identity.wait_ready().await.unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], sidecar.mgmt_addr.unwrap().port()));

    let call = |id: &'static str, method: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let tls = mesh.client_tls(id, &[b"http/1.1"]);
        async move {
            let io = TokioIo::new(tls_connect(addr, tls).await.unwrap());
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let body = if method == "PUT" {
                format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "low"}}"#)
            } else {
                String::new()
            };
            let mut req = hyper::Request::builder().method(method).uri("/mgmt/agent-risk").header("host", "mgmt");
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let response = sender.send_request(req.body(Full::new(bytes::Bytes::from(body))).unwrap()).await.unwrap();
            read_reply(response).await
        }
    };
    assert_eq!(call(AUTOMATION, "GET", vec![]).await.status, 200, "an admin SVID alone reads");
    assert_eq!(call(AUTOMATION, "PUT", vec![]).await.status, 200, "and writes");
    assert_eq!(call(REPORT, "GET", vec![]).await.status, 200, "the console's SVID alone reads");
    assert_eq!(call(REPORT, "PUT", vec![]).await.status, 400, "but writes only for a person it names");
    let role_alone = vec![("x-a2a-actor-role", "viewer")];
    assert_eq!(call(REPORT, "GET", role_alone).await.status, 400, "a role without a person");
    assert_eq!(call(APPROVAL, "GET", vec![]).await.status, 200, "a viewer SVID reads");
    assert_eq!(call(APPROVAL, "PUT", vec![]).await.status, 403, "the least privileged matching role: viewer");
    assert_eq!(call(MENUS, "GET", vec![]).await.status, 401, "an allowed SVID without a role needs a key");
    assert_eq!(call(MENUS, "GET", vec![("x-spiffe-admin-key", VIEWER_KEY)]).await.status, 200);
    assert_eq!(call(APPROVAL, "PUT", vec![("x-spiffe-admin-key", ADMIN_KEY)]).await.status, 200, "a key decides");

    // The console acts for a person: its admin role, lowered to the person's.
    let alice = vec![("x-a2a-actor", "alice@contoso.example"), ("x-a2a-actor-role", "admin")];
    assert_eq!(call(REPORT, "PUT", alice).await.status, 200);
    let bob = vec![("x-a2a-actor", "bob@contoso.example"), ("x-a2a-actor-role", "viewer")];
    assert_eq!(call(REPORT, "PUT", bob.clone()).await.status, 403, "a viewer's write is refused by the sidecar");
    assert_eq!(call(REPORT, "GET", bob).await.status, 200);
    let no_role = vec![("x-a2a-actor", "carol@contoso.example")];
    assert_eq!(call(REPORT, "PUT", no_role).await.status, 400, "a person without a role is refused");
    let control = vec![("x-a2a-actor", "eve\tx"), ("x-a2a-actor-role", "admin")];
    assert_eq!(call(REPORT, "PUT", control).await.status, 400);
    let bidi = vec![("x-a2a-actor", "eve\u{202e}ecila"), ("x-a2a-actor-role", "admin")];
    assert_eq!(call(REPORT, "PUT", bidi).await.status, 400, "a bidi override would disguise the name");
    // Not a console: its X-A2A-Actor is ignored (the event names the key).
    let forged = vec![("x-spiffe-admin-key", ADMIN_KEY), ("x-a2a-actor", "mallory"), ("x-a2a-actor-role", "admin")];
    assert_eq!(call(APPROVAL, "PUT", forged).await.status, 200);

    let actors: Vec<String> = sidecar
        .audit
        .recent(50, None, None)
        .iter()
        .filter(|e| e.path.as_deref() == Some("/mgmt/agent-risk"))
        .filter_map(|e| e.actor.clone())
        .collect();
    assert!(actors.contains(&format!("alice@contoso.example (via {REPORT})")), "{actors:?}");
    assert!(actors.contains(&AUTOMATION.to_owned()), "an SVID's own writes name it: {actors:?}");
    assert!(actors.contains(&"ops".to_owned()), "{actors:?}");
    assert!(!actors.iter().any(|a| a.contains("mallory") || a.contains("bob")), "{actors:?}");
    sidecar.shutdown().await;
}

/// `GET /mgmt/explain`: the running sidecar's own verdict for a request,
/// with the same code as `explain` and the data plane: Layer 1 from the live
/// allow-list, a pushed risk level from Layer 4, nothing forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_from_the_live_state() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let explain = |caller: &str, path: &str| {
        let url = format!("/mgmt/explain?caller={caller}&method=GET&path={path}");
        async move {
            let (status, _, answer) = call(mgmt, "GET", &url, Some(VIEWER_KEY), None, &[]).await;
            (status, answer)
        }
    };
    let (status, answer) = explain(REPORT, "/budget/read").await;
    assert_eq!(
        (status, answer["verdict"].as_str(), answer["status"].as_u64()),
        (200, Some("forwarded"), Some(200)),
        "{answer}"
    );
    let (_, answer) = explain(MENUS, "/budget/read").await;
    assert_eq!(
        (answer["verdict"].as_str(), answer["layer"].as_str(), answer["reason"].as_str()),
        (Some("denied"), Some("mtls"), Some("not_allowed"))
    );
    assert!(answer["text"].as_str().unwrap().contains("no allowed pattern matches"));
    // A risk push applies at once, here as on the data plane.
    assert_eq!(
        put(mgmt, "/mgmt/agent-risk", &format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "high"}}"#)).await.0,
        200
    );
    let (_, answer) = explain(REPORT, "/budget/read").await;
    assert_eq!(
        (answer["verdict"].as_str(), answer["layer"].as_str(), answer["status"].as_u64()),
        (Some("denied"), Some("risk"), Some(403)),
        "{answer}"
    );
    let (status, answer) = explain(REPORT, "").await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_query")));
    let (status, _) = explain("not-an-id", "/x").await;
    assert_eq!(status, 400);
    let (status, answer) = explain(REPORT, "/budget/read%3Fa=1").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_query")),
        "a query in the path is not what the data plane sees"
    );
    // A viewer in a loop is held to the budget (Layer 4 may ask Graph for each).
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(explain(REPORT, "/budget/read").await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(mesh.app.seen().is_empty(), "nothing reached the app");
}

/// A reader that saw an earlier run of the sidecar (`seq` starts again at
/// every start) resumes with an id beyond this run's: it gets this run's
/// ring, not silence until the new run catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_stream_resumed_from_an_earlier_run_gets_this_runs_events() {
    let mesh = Mesh::start().await;
    for path in ["/r1", "/r2", "/r3"] {
        assert_eq!(http(mesh.report.outbound_addr.unwrap(), "GET", "budget-backend", path, &[]).await.status, 200);
    }
    let mut body = stream(mesh.backend.mgmt_addr.unwrap(), Some(1_000_000)).await;
    let events = read_events(&mut body, 3).await;
    assert!(events.len() >= 3 && events.iter().all(|(_, e)| e == "audit"), "{events:?}");
}
