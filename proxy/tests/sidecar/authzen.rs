//! AuthZEN both ways through real sidecars: a sidecar asking an in-test PDP
//! after its own layers (`authzen.pdp`), a sidecar answering evaluations
//! (`authzen.listen`) the way its data plane decides, and one sidecar's PEP
//! using another's PDP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use proxy::app::App;
use proxy::config::{Config, MapEnv};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::mesh::{
    APPROVAL, APPROVAL_OID, BACKEND, MENUS, Mesh, REPORT, REPORT_OID, TENANT, VIEWER_KEY, backend_yaml, jwt_yaml,
    reference_policy,
};
use super::mgmt::call;
use super::support::{Reply, eventually, get, read_reply, tls_connect};

const ADMIN_PLANE: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid/admin-control-plane";
const INTRUDER: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid/intruder";

/// An in-test AuthZEN PDP: answers `(status, body)` after `delay`, counting calls.
#[derive(Default)]
struct Pdp {
    answer: Mutex<(u16, String)>,
    delay: Mutex<Duration>,
    calls: AtomicUsize,
    /// The last request's `Authorization` header.
    authorization: Mutex<Option<String>>,
}

impl Pdp {
    fn set(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned());
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn start(self: &Arc<Self>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = tcp.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&data).into_owned();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                        let length = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                    let text = String::from_utf8_lossy(&data).into_owned();
                    let authorization = text.split("\r\n\r\n").next().and_then(|head| {
                        head.lines().find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("authorization").then(|| value.trim().to_owned())
                        })
                    });
                    *this.authorization.lock().unwrap() = authorization;
                    this.calls.fetch_add(1, Ordering::SeqCst);
                    let delay = *this.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let (status, body) = this.answer.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }
}

/// `method path` from `caller` straight to a sidecar's inbound listener
/// (mTLS with the caller's SVID); `None` when the handshake or the request is refused.
async fn inbound(mesh: &Mesh, addr: SocketAddr, caller: &str, method: &str, path: &str) -> Option<Reply> {
    inbound_with(mesh, addr, caller, method, path, None).await
}

/// As [`inbound`], with a bearer token.
async fn inbound_with(
    mesh: &Mesh,
    addr: SocketAddr,
    caller: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Option<Reply> {
    let tls = tls_connect(addr, mesh.client_tls(caller, &[b"http/1.1"])).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.ok()?;
    tokio::spawn(conn);
    let mut request = hyper::Request::builder().method(method).uri(path).header("host", "backend");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender.send_request(request.body(Empty::<bytes::Bytes>::new()).unwrap()).await.ok()?;
    Some(read_reply(response).await)
}

async fn start(mesh: &Mesh, name: &str, yaml: &str, env: &MapEnv) -> App {
    let path = mesh.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let mut app = App::start(Config::load_with_env(&path, env).unwrap()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), app.identity.wait_ready()).await.unwrap();
    app
}

/// A sidecar with the backend's SVID whose own policy allows everyone, asking
/// the PDP at `url` after its layers, with `pdp_extra` in `authzen.pdp`.
async fn pep(mesh: &Mesh, name: &str, url: &str, pdp_extra: &str, env: &MapEnv) -> App {
    pep_with(mesh, name, url, pdp_extra, "", env).await
}

/// As [`pep`], with `top_extra` (whole sections) added.
async fn pep_with(mesh: &Mesh, name: &str, url: &str, pdp_extra: &str, top_extra: &str, env: &MapEnv) -> App {
    let timeout = if pdp_extra.contains("timeout:") { "" } else { ", timeout: 300ms" };
    let open = "version: '1'\ntrust_domain: aim.microsoft.com\ndefault_action: deny\npolicies:\n  \
                - {name: anyone, spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report', \
                rules: [{path: '/*', methods: ['*'], action: allow}]}\n";
    std::fs::write(mesh.dir.path().join("open.yaml"), open).unwrap();
    let yaml = backend_yaml(&mesh.dir.path().join("backend.sock"), mesh.app.addr, &[REPORT, APPROVAL])
        .replace("policy: {file: policy.yaml}", "policy: {file: open.yaml}")
        .replace("state_file: state.json", &format!("state_file: {name}-state.json"))
        + &format!("authzen:\n  pdp: {{url: '{url}'{timeout}{pdp_extra}}}\n")
        + top_extra;
    start(mesh, name, &yaml, env).await
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pdp_is_asked_after_layers_2_to_4_and_its_answer_decides() {
    let mesh = Mesh::start().await;
    let pdp = Arc::new(Pdp::default());
    pdp.set(200, r#"{"decision": true}"#);
    let url = format!("http://{}/access/v1/evaluation", pdp.start().await);
    let sidecar = pep(&mesh, "pep", &url, "", &MapEnv::default()).await;
    let addr = sidecar.inbound_addr.unwrap();
    let send = |path: &'static str| inbound(&mesh, addr, REPORT, "GET", path);

    assert_eq!(send("/a").await.unwrap().status, 200);
    assert_eq!(pdp.calls(), 1);
    assert_eq!(send("/a").await.unwrap().status, 200, "served from the cache");
    assert_eq!(pdp.calls(), 1);
    let metrics = get(sidecar.telemetry_addr, "/metrics").await.1;
    assert_eq!(metric(&metrics, "a2a_pdp_requests_total{result=\"cached\"} "), 1, "{metrics}");
    assert_eq!(metric(&metrics, "a2a_pdp_requests_total{result=\"allow\"} "), 1);

    pdp.set(200, r#"{"decision": false, "context": {"reason_admin": {"en": "not today"}}}"#);
    let reply = send("/b").await.unwrap();
    assert_eq!((reply.status, reply.denied()), (403, ("pdp".into(), "pdp_denied".into())));
    let audit = sidecar.audit.recent(50, None, None);
    let event = audit.iter().rev().find(|e| e.path.as_deref() == Some("/b")).expect("the deny's audit event");
    let event = serde_json::to_value(&**event).unwrap();
    assert_eq!(event["pdp"]["decision"], json!(false), "{event}");
    assert_eq!(event["pdp"]["context"]["reason_admin"]["en"], "not today");

    for (status, body, path) in
        [(500, r#"{"decision": true}"#, "/c"), (200, "not json", "/d"), (200, r#"{"decision": "true"}"#, "/e")]
    {
        pdp.set(status, body);
        let reply = send(path).await.unwrap();
        assert_eq!((reply.status, reply.denied()), (503, ("pdp".into(), "pdp_unavailable".into())), "{body}");
    }
    *pdp.delay.lock().unwrap() = Duration::from_secs(5);
    let started = Instant::now();
    let reply = send("/slow").await.unwrap();
    assert_eq!((reply.status, reply.denied().1), (503, "pdp_unavailable".into()));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    *pdp.delay.lock().unwrap() = Duration::ZERO;

    // Layers 1-4 deny before the PDP is asked.
    let before = pdp.calls();
    let reply = inbound(&mesh, addr, APPROVAL, "GET", "/a").await.unwrap();
    assert_eq!((reply.status, reply.denied()), (403, ("rbac".into(), "no_caller_policy".into())));
    assert!(inbound(&mesh, addr, MENUS, "GET", "/a").await.is_none(), "refused at the handshake");
    assert_eq!(pdp.calls(), before, "a deny by Layers 1-4 never reaches the PDP");

    // fail_open: a PDP that is down lets requests through (counted as errors).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}/access/v1/evaluation", closed.local_addr().unwrap());
    drop(closed);
    let open = pep(&mesh, "pep-open", &down, ", fail_open: true", &MapEnv::default()).await;
    let reply = inbound(&mesh, open.inbound_addr.unwrap(), REPORT, "GET", "/a").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let metrics = get(open.telemetry_addr, "/metrics").await.1;
    assert_eq!(metric(&metrics, "a2a_pdp_requests_total{result=\"error\"} "), 1, "{metrics}");
}

/// Sidecar B: the reference policy, every test caller allowed but the
/// intruder, and the PDP listener.
async fn pdp_sidecar(mesh: &Mesh, env: &MapEnv) -> App {
    let yaml =
        backend_yaml(&mesh.dir.path().join("backend.sock"), mesh.app.addr, &[REPORT, MENUS, APPROVAL, ADMIN_PLANE])
            .replace("state_file: state.json", "state_file: b-state.json")
            + &jwt_yaml(&mesh.idp.authority())
            + "authzen: {listen: '127.0.0.1:0'}\n";
    start(mesh, "pdp-b", &yaml, env).await
}

fn evaluation(caller: &str, method: &str, path: &str) -> String {
    evaluation_with(caller, method, path, None)
}

/// With `context.claims`: a validated token's claims as a PEP passes them.
fn evaluation_with(caller: &str, method: &str, path: &str, claims: Option<&Value>) -> String {
    let mut body = json!({
        "subject": {"type": "spiffe_id", "id": caller},
        "action": {"name": method},
        "resource": {"type": "http_path", "id": path},
    });
    if let Some(claims) = claims {
        body["context"] = json!({ "claims": claims });
    }
    body.to_string()
}

async fn ask(addr: SocketAddr, route: &str, key: Option<&str>, body: &str) -> (u16, hyper::HeaderMap, Value) {
    call(addr, "POST", route, key, Some(body), &[("content-type", "application/json")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pdp_answers_what_the_data_plane_does_and_serves_another_sidecars_pep() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env.clone()).await;
    let b = pdp_sidecar(&mesh, &env).await;
    let listen = b.authzen_addr.unwrap();
    // The demo matrix's rows: the data plane gets the token, the PDP the
    // claims a PEP that validated it passes in `context.claims`.
    let token = |oid: &str, roles: &[&str]| {
        let spec = super::jwt::spec(oid, roles);
        let claims = mesh.idp.claims(&spec);
        let asserted =
            json!({"iss": claims["iss"], "azp": claims["azp"], "oid": claims["oid"], "roles": claims["roles"]});
        (mesh.idp.token(&spec).unwrap(), asserted)
    };
    let read = token(REPORT_OID, &["Budget.Read"]);
    let no_role = token(REPORT_OID, &[]);
    let submit = token(APPROVAL_OID, &["Budget.Submit"]);
    let mut foreign = token(REPORT_OID, &["Budget.Read"]);
    foreign.1["iss"] = json!("https://idp.elsewhere.example/");
    let rows = [
        (REPORT, "GET", "/budget/read", None),                  // jwt_required
        (REPORT, "GET", "/budget/read", Some(&read)),           // allowed
        (REPORT, "GET", "/budget/read", Some(&no_role)),        // insufficient_roles
        (REPORT, "GET", "/budget/read", Some(&submit)),         // jwt_caller_mismatch
        (REPORT, "POST", "/budget/submit", Some(&read)),        // rule_denied
        (REPORT, "GET", "/budget/submit", None),                // no_matching_rule
        (MENUS, "GET", "/budget/read", None),                   // rule_denied (deny-all entry)
        (APPROVAL, "POST", "/budget/submit", None),             // jwt_required
        (APPROVAL, "POST", "/budget/submit", Some(&submit)),    // allowed
        (ADMIN_PLANE, "GET", "/mgmt/health", None),             // allowed
        (ADMIN_PLANE, "DELETE", "/mgmt/health", None),          // no_matching_rule
        (ADMIN_PLANE, "GET", "/mgmt/%2e%2e/budget/read", None), // the canonical path decides
        (INTRUDER, "GET", "/budget/read", None),                // not_allowed (Layer 1)
    ];
    let inbound_addr = b.inbound_addr.unwrap();
    let mut reasons = Vec::new();
    for (caller, method, path, token) in rows {
        let body = evaluation_with(caller, method, path, token.map(|(_, claims)| claims));
        let (status, headers, answer) = ask(listen, "/access/v1/evaluation", Some(VIEWER_KEY), &body).await;
        assert_eq!(status, 200, "{answer}");
        assert!(headers.contains_key("x-request-id"));
        let reason = answer["context"]["reason"].as_str().unwrap().to_owned();
        reasons.push(reason.clone());
        match inbound_with(&mesh, inbound_addr, caller, method, path, token.map(|(t, _)| t.as_str())).await {
            None => {
                assert_eq!((answer["decision"].clone(), reason.as_str()), (json!(false), "not_allowed"), "{caller}")
            }
            Some(reply) if reply.status == 200 => {
                assert_eq!(answer["decision"], json!(true), "{caller} {method} {path}: {answer}");
            }
            Some(reply) => {
                let (layer, denied) = reply.denied();
                assert_eq!(answer["decision"], json!(false), "{caller} {method} {path}: {answer}");
                assert_eq!(
                    (answer["context"]["layer"].as_str().unwrap(), reason.as_str()),
                    (layer.as_str(), denied.as_str())
                );
            }
        }
    }
    let want = [
        "jwt_required",
        "allowed",
        "insufficient_roles",
        "jwt_caller_mismatch",
        "rule_denied",
        "no_matching_rule",
        "rule_denied",
        "jwt_required",
        "allowed",
        "allowed",
        "no_matching_rule",
        "no_matching_rule",
        "not_allowed",
    ];
    assert_eq!(reasons, want, "every row says what it is meant to");
    // Claims from an issuer this sidecar does not trust are not trusted either.
    let body = evaluation_with(REPORT, "GET", "/budget/read", Some(&foreign.1));
    let answer = ask(listen, "/access/v1/evaluation", Some(VIEWER_KEY), &body).await.2;
    assert_eq!(
        (answer["decision"].clone(), answer["context"]["reason"].clone()),
        (json!(false), json!("jwt_wrong_issuer"))
    );
    let metrics = get(b.telemetry_addr, "/metrics").await.1;
    assert_eq!(metric(&metrics, "a2a_authzen_evaluations_total{decision=\"true\"} "), 3, "{metrics}");

    // A batch answers in order; deny_on_first_deny stops at the first deny.
    let batch = json!({
        "subject": {"type": "spiffe_id", "id": ADMIN_PLANE},
        "action": {"name": "GET"},
        "options": {"evaluations_semantic": "deny_on_first_deny"},
        "evaluations": [
            {"resource": {"type": "http_path", "id": "/mgmt/a"}},
            {"resource": {"type": "http_path", "id": "/elsewhere"}},
            {"resource": {"type": "http_path", "id": "/mgmt/b"}},
        ],
    });
    let (status, _, answer) = ask(listen, "/access/v1/evaluations", Some(VIEWER_KEY), &batch.to_string()).await;
    let decisions: Vec<_> = answer["evaluations"].as_array().unwrap().iter().map(|e| e["decision"].clone()).collect();
    assert_eq!((status, decisions), (200, vec![json!(true), json!(false)]));

    // Sidecar A asks B: B's policy decides what A's own (open) policy allowed.
    let env = MapEnv::default().with("PDP_KEY", VIEWER_KEY);
    let url = format!("http://{listen}/access/v1/evaluation");
    let a = pep(&mesh, "pep-a", &url, ", key_env: PDP_KEY", &env).await;
    let reply = inbound(&mesh, a.inbound_addr.unwrap(), REPORT, "POST", "/budget/submit").await.unwrap();
    assert_eq!((reply.status, reply.denied()), (403, ("pdp".into(), "pdp_denied".into())));
    let asked = || async {
        let text = get(b.telemetry_addr, "/metrics").await.1;
        (metric(&text, "a2a_authzen_evaluations_total{decision=\"false\"} ") > 8).then_some(())
    };
    eventually(Duration::from_secs(5), "B answered A", asked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_to_the_pdp_are_refused_and_name_their_field() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env.clone()).await;
    let b = pdp_sidecar(&mesh, &env).await;
    let listen = b.authzen_addr.unwrap();
    let good = evaluation(REPORT, "GET", "/budget/read");

    let (status, headers, _) = ask(listen, "/access/v1/evaluation", None, &good).await;
    assert_eq!(status, 401);
    assert_eq!(headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert_eq!(ask(listen, "/access/v1/evaluation", Some("wrong-key"), &good).await.0, 401);
    assert_eq!(call(listen, "GET", "/access/v1/evaluation", Some(VIEWER_KEY), None, &[]).await.0, 405);
    assert_eq!(call(listen, "GET", "/mgmt/health", Some(VIEWER_KEY), None, &[]).await.0, 404);

    let (status, _, answer) = ask(listen, "/access/v1/evaluation", Some(VIEWER_KEY), "{garbage").await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_request")));
    let bad = evaluation("not-a-spiffe-id", "GET", "/p");
    let (status, _, answer) = ask(listen, "/access/v1/evaluation", Some(VIEWER_KEY), &bad).await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("subject.id")));
    let (status, _, _) =
        call(listen, "POST", "/access/v1/evaluation", Some(VIEWER_KEY), Some(&good), &[("content-type", "text/plain")])
            .await;
    assert_eq!(status, 415);

    let item = "{}";
    let many = format!(
        r#"{{"subject": {{"id": "{REPORT}"}}, "action": {{"name": "GET"}}, "resource": {{"id": "/"}}, "evaluations": [{}]}}"#,
        vec![item; 10_000].join(",")
    );
    let started = Instant::now();
    let (status, _, answer) = ask(listen, "/access/v1/evaluations", Some(VIEWER_KEY), &many).await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("evaluations")), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let huge = format!(r#"{{"pad": "{}"}}"#, "x".repeat(300 * 1024));
    assert_eq!(ask(listen, "/access/v1/evaluations", Some(VIEWER_KEY), &huge).await.0, 413);

    // The request id: echoed when sane, else ours.
    let (_, headers, _) = call(
        listen,
        "POST",
        "/access/v1/evaluation",
        Some(VIEWER_KEY),
        Some(&good),
        &[("content-type", "application/json"), ("x-request-id", "pep-42")],
    )
    .await;
    assert_eq!(headers.get("x-request-id").map(|v| v.to_str().unwrap()), Some("pep-42"));
    let (status, _, meta) =
        call(listen, "GET", "/.well-known/authzen-configuration", Some(VIEWER_KEY), None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(meta["access_evaluation_endpoint"], json!(format!("http://{listen}/access/v1/evaluation")));
    assert_eq!(meta["access_evaluations_endpoint"], json!(format!("http://{listen}/access/v1/evaluations")));
    assert_eq!(meta["policy_decision_point"], json!(format!("http://{listen}")));
}

/// `authzen.pdp.entra_token`: the PEP presents a token it obtained by
/// federation (a JWT-SVID as the client assertion), never one of the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pep_presents_its_own_federated_entra_token_to_the_pdp() {
    let mesh = Mesh::start().await;
    mesh.idp.trust_assertion_keys(serde_json::to_string(&mesh.ca.jwt_bundle().unwrap()).unwrap().as_bytes()).unwrap();
    let registration = proxy::cmd::dev_idp::AppRegistration { oid: "pep-oid".into(), roles: vec![] };
    mesh.idp.register_app("pep-client", registration);
    let pdp = Arc::new(Pdp::default());
    pdp.set(200, r#"{"decision": true}"#);
    let url = format!("http://{}/access/v1/evaluation", pdp.start().await);
    let entra = format!(
        "entra: {{client_id: pep-client, tenant_id: '{TENANT}', authority: '{}', use_jwt_svid: true}}\n",
        mesh.idp.authority()
    );
    let scope = ", timeout: 2s, entra_token: {scope: 'api://pdp/.default'}";
    let a = pep_with(&mesh, "pep-entra", &url, scope, &entra, &MapEnv::default()).await;
    let reply = inbound(&mesh, a.inbound_addr.unwrap(), REPORT, "GET", "/x").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let authorization = pdp.authorization.lock().unwrap().clone().expect("a bearer token");
    let token = authorization.strip_prefix("Bearer ").unwrap();
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!((claims["aud"].as_str(), claims["azp"].as_str()), (Some("api://pdp"), Some("pep-client")), "{claims}");

    // One credential per PDP: a key and a federated token together are refused.
    let config = "entra_token: {scope: 'api://pdp/.default'}, key_env: K";
    let yaml = format!("identity: {{socket: unix:///x}}\n{entra}authzen: {{pdp: {{url: '{url}', {config}}}}}\n");
    let path = mesh.dir.path().join("both.yaml");
    std::fs::write(&path, yaml).unwrap();
    let error = Config::load_with_env(&path, &MapEnv::default().with("K", "v")).unwrap_err().to_string();
    assert!(error.contains("`authzen.pdp.entra_token`: one credential"), "{error}");
}

/// `authzen.pdp.server_id`: the PEP reaches a sidecar PDP over mTLS with its
/// SVID, which `mgmt.tls.roles` makes a viewer there: no key at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pep_asks_a_sidecar_pdp_over_mtls_with_its_svid() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env.clone()).await;
    let tls = format!("  tls: {{allowed_callers: ['{BACKEND}'], roles: {{'{BACKEND}': viewer}}}}\n");
    let yaml = backend_yaml(&mesh.dir.path().join("backend.sock"), mesh.app.addr, &[REPORT, APPROVAL])
        .replace("state_file: state.json\n", &format!("state_file: tls-state.json\n{tls}"))
        + &jwt_yaml(&mesh.idp.authority())
        + "authzen: {listen: '127.0.0.1:0'}\n";
    assert!(yaml.contains("roles:"), "{yaml}");
    let b = start(&mesh, "pdp-tls", &yaml, &env).await;
    let listen = b.authzen_addr.unwrap();

    // Plain HTTP to an mTLS listener gets nowhere.
    let plain = format!("http://{listen}/access/v1/evaluation");
    let a = pep(&mesh, "pep-plain", &plain, "", &MapEnv::default()).await;
    let reply = inbound(&mesh, a.inbound_addr.unwrap(), REPORT, "GET", "/budget/read").await.unwrap();
    assert_eq!((reply.status, reply.denied()), (503, ("pdp".into(), "pdp_unavailable".into())));

    // mTLS with A's SVID: B's policy answers (budget-report may not submit).
    let url = format!("https://{listen}/access/v1/evaluation");
    let a = pep(&mesh, "pep-mtls", &url, &format!(", server_id: '{BACKEND}'"), &MapEnv::default()).await;
    let reply = inbound(&mesh, a.inbound_addr.unwrap(), REPORT, "POST", "/budget/submit").await.unwrap();
    assert_eq!((reply.status, reply.denied()), (403, ("pdp".into(), "pdp_denied".into())), "{}", reply.body);
    // A PEP that also sends a bearer (here a static one that is no key of
    // B's) is still let in by its SVID's role: the bearer is not read as a key.
    let env = MapEnv::default().with("PDP_TOKEN", "an-idp-token-not-a-key");
    let extra = format!(", server_id: '{BACKEND}', key_env: PDP_TOKEN");
    let with_bearer = pep(&mesh, "pep-mtls-bearer", &url, &extra, &env).await;
    let reply = inbound(&mesh, with_bearer.inbound_addr.unwrap(), REPORT, "POST", "/budget/submit").await.unwrap();
    assert_eq!((reply.status, reply.denied()), (403, ("pdp".into(), "pdp_denied".into())), "{}", reply.body);
    let metrics = get(b.telemetry_addr, "/metrics").await.1;
    assert_eq!(metric(&metrics, "a2a_authzen_evaluations_total{decision=\"false\"} "), 2, "{metrics}");
}
