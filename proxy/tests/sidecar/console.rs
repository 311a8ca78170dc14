//! The operator console against real sidecars (mTLS `/mgmt` with
//! `mgmt.tls.roles`) and the dev IdP's authorization-code sign-in: a
//! browser's requests played by hand (cookies, redirects, CSRF).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use certs::dev::{WorkloadApiServer, WorkloadApiServerConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::mesh::{BACKEND, Mesh, REPORT, TENANT};
use super::support::{eventually, http};

pub const CONSOLE_ID: &str = "spiffe://aim.microsoft.com/ops/console";

/// A sidecar whose `/mgmt` is mTLS on loopback, giving the console's SVID the admin role.
pub async fn sidecar(mesh: &Mesh, name: &str) -> proxy::app::App {
    sidecar_with(mesh, name, "").await
}

/// As [`sidecar`], with `extra` (`\n    field: value` lines) in `mgmt.tls`.
async fn sidecar_with(mesh: &Mesh, name: &str, extra: &str) -> proxy::app::App {
    let tls = format!(
        "  tls:\n    allowed_callers: ['{CONSOLE_ID}']\n    roles: {{'{CONSOLE_ID}': admin}}\n    consoles: ['{CONSOLE_ID}']{extra}"
    );
    let yaml = std::fs::read_to_string(&mesh.backend_config).unwrap().replace(
        "mgmt:\n  listen: '127.0.0.1:0'\n  state_file: state.json",
        &format!("mgmt:\n  listen: '127.0.0.1:0'\n  state_file: {name}-state.json\n{tls}"),
    );
    let mut app = mesh.start_sidecar(name, &yaml).await;
    app.identity.wait_ready().await.unwrap();
    app
}

/// budget-report's caller sidecar routing to `target` (and the port its
/// `down` route names, held closed while it lives).
pub async fn report_to(mesh: &Mesh, target: &proxy::app::App) -> (proxy::app::App, tokio::net::TcpListener) {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = mesh.dir.path().join("report.sock");
    let yaml = super::mesh::caller_yaml(&socket, target.inbound_addr.unwrap(), closed.local_addr().unwrap().port());
    (mesh.start_sidecar("report-to-target", &yaml).await, closed)
}

pub struct Console {
    pub running: proxy::console::Running,
    _agent: WorkloadApiServer,
}

pub async fn console(mesh: &Mesh, sidecars: &[(&str, &proxy::app::App)], extra: &str) -> Console {
    console_with_admins(mesh, sidecars, extra, "Console.Admin").await
}

/// As [`console`], with `admins` as the claim value of admins (viewers: `Console.Viewer`).
async fn console_with_admins(mesh: &Mesh, sidecars: &[(&str, &proxy::app::App)], extra: &str, admins: &str) -> Console {
    let socket = mesh.dir.path().join("console.sock");
    let config = WorkloadApiServerConfig {
        ca: mesh.ca.clone(),
        id: CONSOLE_ID.parse().unwrap(),
        ttl: Duration::from_secs(600),
        federated: vec![],
    };
    let agent = WorkloadApiServer::start(&socket, config).await.unwrap();
    let entries: Vec<String> = sidecars
        .iter()
        .map(|(name, app)| {
            format!("  - {{name: {name}, mgmt: 'https://{}', spiffe_id: '{BACKEND}'}}", app.mgmt_addr.unwrap())
        })
        .collect();
    let yaml = format!(
        "listen: '127.0.0.1:0'
identity: {{socket: 'unix://{}'}}
oidc:
  issuer: '{}/{TENANT}/v2.0'
  client_id: console-client
  admin: [{admins}]
  viewer: [Console.Viewer]
fleet: {{concurrency: 4, timeout: 2s, poll_interval: 60s}}
{extra}sidecars:
{}
",
        socket.display(),
        mesh.idp.authority(),
        entries.join("\n")
    );
    let path = mesh.dir.path().join("console.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut running = proxy::console::start(proxy::config::ConsoleConfig::load(&path).unwrap()).await.unwrap();
    running.identity.wait_ready().await.unwrap();
    Console { running, _agent: agent }
}

/// A mesh whose sidecar `backend-a` a console fronts (`extra` added to the console's config).
async fn fronting_one(extra: &str) -> (Mesh, proxy::app::App, Console) {
    let mesh = Mesh::start().await;
    let a = sidecar(&mesh, "backend-a").await;
    let console = console(&mesh, &[("backend-a", &a)], extra).await;
    (mesh, a, console)
}

/// A browser, by hand: its cookies for the console, and what it got.
#[derive(Default)]
struct Browser {
    cookies: HashMap<String, String>,
}

struct Page {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> String {
        self.headers.get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Browser {
    async fn send(&mut self, method: &str, url: &str, headers: &[(&str, &str)], body: Option<Value>) -> Page {
        let uri: hyper::Uri = url.parse().unwrap();
        let addr: SocketAddr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap()).parse().unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut request = hyper::Request::builder().method(method).uri(path).header("host", addr.to_string());
        let cookie: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !cookie.is_empty() {
            request = request.header("cookie", cookie.join("; "));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let response = sender.send_request(request.body(Full::new(bytes::Bytes::from(body))).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        for set in parts.headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let body = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned();
        Page { status: parts.status.as_u16(), headers: parts.headers, body }
    }

    async fn get(&mut self, url: &str) -> Page {
        self.send("GET", url, &[], None).await
    }

    /// Signs in as `login` (a dev user) the way a browser does; returns the CSRF token.
    async fn sign_in(&mut self, console: SocketAddr, login: &str) -> String {
        let start = self.get(&format!("http://{console}/login")).await;
        assert_eq!(start.status, 302);
        let authorize = start.location();
        assert!(
            authorize.contains("code_challenge=") && authorize.contains("code_challenge_method=S256"),
            "{authorize}"
        );
        let set_cookies: Vec<_> =
            start.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert!(set_cookies.iter().any(|c| c.contains("HttpOnly") && c.contains("SameSite=Lax")), "{set_cookies:?}");
        let at_idp = self.get(&format!("{authorize}&login_hint={login}")).await;
        assert_eq!(at_idp.status, 302, "{}", at_idp.body);
        let callback = at_idp.location();
        assert!(callback.starts_with(&format!("http://{console}/callback?code=")), "{callback}");
        let back = self.get(&callback).await;
        assert_eq!(back.status, 200, "{}", back.body);
        let session = back
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("__Host-a2a_console="));
        let session = session.unwrap();
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(session.contains(attribute), "{session}");
        }
        // The same code and state once more: refused.
        assert_eq!(self.get(&callback).await.status, 400, "a callback is good once");
        let me = self.get(&format!("http://{console}/api/me")).await;
        assert_eq!(me.status, 200);
        me.json()["csrf"].as_str().unwrap().to_owned()
    }
}

/// Sign-in with PKCE, the fleet's health, a write on a person's behalf
/// (audited as that person on the sidecar), CSRF and roles enforced by the
/// console, a sidecar down shown as down, sign-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_sees_the_fleet_and_changes_an_allow_list() {
    let mesh = Mesh::start().await;
    let a = sidecar_with(&mesh, "backend-a", "\n    loopback_plain: true").await;
    let b = sidecar(&mesh, "backend-b").await;
    let console = console(&mesh, &[("backend-a", &a), ("backend-b", &b)], "").await;
    let addr = console.running.addr;
    let mut browser = Browser::default();

    // `loopback_plain`: curl with the key still works on a's loopback; b's listener is mTLS only.
    let plain = |app: &proxy::app::App| {
        let mgmt = app.mgmt_addr.unwrap();
        async move {
            let get = async move {
                let tcp = tokio::net::TcpStream::connect(mgmt).await.ok()?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
                tokio::spawn(conn);
                let request = hyper::Request::get("/mgmt/mtls-policy")
                    .header("host", "mgmt")
                    .header("x-spiffe-admin-key", super::mesh::ADMIN_KEY);
                let response = sender.send_request(request.body(Full::new(bytes::Bytes::new())).unwrap()).await.ok()?;
                Some(response.status().as_u16())
            };
            tokio::time::timeout(Duration::from_secs(10), get).await.ok().flatten()
        }
    };
    assert_eq!(plain(&a).await, Some(200));
    assert_eq!(plain(&b).await, None, "without loopback_plain the listener is mTLS only");

    // No session: pages go to the sign-in, the API says 401, and the connection is not kept.
    let page = browser.get(&format!("http://{addr}/overview")).await;
    assert_eq!((page.status, page.location().as_str()), (302, "/login"));
    assert_eq!(page.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert_eq!(browser.get(&format!("http://{addr}/api/fleet")).await.status, 401);
    // Sign-ins begun and abandoned keep nothing on the console: a flood of them changes nothing.
    let mut flood = Browser::default();
    for _ in 0..300 {
        assert_eq!(flood.get(&format!("http://{addr}/login")).await.status, 302);
    }

    let csrf = browser.sign_in(addr, "alice").await;
    let me = browser.get(&format!("http://{addr}/api/me")).await.json();
    assert_eq!((me["name"].as_str(), me["role"].as_str()), (Some("alice@dev.example"), Some("admin")));
    let page = browser.get(&format!("http://{addr}/overview")).await;
    assert_eq!(page.status, 200);
    let csp = page.headers.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(!page.body.contains("<script>"), "no inline script");

    console.running.poll_now().await;
    let fleet = browser.get(&format!("http://{addr}/api/fleet")).await.json();
    let states: Vec<(&str, &str)> = fleet["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, vec![("backend-a", "up"), ("backend-b", "up")], "{fleet}");

    // A write on alice's behalf: CSRF required; the sidecar records alice.
    let url = format!("http://{addr}/api/sidecars/backend-a/mtls-policy");
    let change = json!({"allowed_ids": [REPORT]});
    assert_eq!(browser.send("PUT", &url, &[], Some(change.clone())).await.status, 403, "no CSRF token");
    assert_eq!(browser.send("PUT", &url, &[("x-csrf-token", "forged")], Some(change.clone())).await.status, 403);
    let put = browser.send("PUT", &url, &[("x-csrf-token", &csrf)], Some(change)).await;
    assert_eq!(put.status, 200, "{}", put.body);
    let now = browser.get(&url).await.json();
    assert_eq!(now["allowed_ids"], json!([REPORT]));
    let actor = a
        .audit
        .recent(20, None, None)
        .iter()
        .find(|e| e.path.as_deref() == Some("/mgmt/mtls-policy"))
        .and_then(|e| e.actor.clone());
    assert_eq!(actor.as_deref(), Some(format!("alice@dev.example (via {CONSOLE_ID})").as_str()));

    // One sidecar down: shown as such, the other still up.
    b.shutdown().await;
    let started = std::time::Instant::now();
    console.running.poll_now().await;
    assert!(started.elapsed() < Duration::from_secs(10), "a down sidecar does not hold the poll up");
    let fleet = console.running.fleet();
    assert_eq!((fleet[0].state, fleet[1].state), ("up", "down"), "{fleet:?}");
    assert!(fleet[1].error.is_some());

    // Sign-out ends the session.
    assert_eq!(
        browser.send("POST", &format!("http://{addr}/api/logout"), &[("x-csrf-token", &csrf)], None).await.status,
        200
    );
    assert_eq!(browser.get(&format!("http://{addr}/api/me")).await.status, 401);
    console.running.shutdown().await;
}

/// A viewer reads but cannot write: the console refuses (403), and the
/// sidecar would too (its role is lowered to the person's: see mgmt.rs).
/// A callback that this browser did not start is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_but_every_write_is_refused() {
    let (_mesh, a, console) = fronting_one("").await;
    let addr = console.running.addr;
    let mut bob = Browser::default();
    let csrf = bob.sign_in(addr, "bob").await;
    assert_eq!(bob.get(&format!("http://{addr}/api/me")).await.json()["role"], "viewer");
    let url = format!("http://{addr}/api/sidecars/backend-a/mtls-policy");
    assert_eq!(bob.get(&url).await.status, 200, "a viewer reads");
    let put = bob.send("PUT", &url, &[("x-csrf-token", &csrf)], Some(json!({"allowed_ids": [REPORT]}))).await;
    assert_eq!((put.status, put.json()["error"].as_str()), (403, Some("forbidden")));
    let risk = bob
        .send(
            "PUT",
            &format!("http://{addr}/api/agent-risk"),
            &[("x-csrf-token", &csrf)],
            Some(json!({"spiffe_id": REPORT, "risk_level": "high"})),
        )
        .await;
    assert_eq!(risk.status, 403);
    assert!(a.audit.recent(50, None, None).iter().all(|e| e.actor.is_none()), "nothing reached the sidecar as a write");

    // The dev IdP sends codes to loopback only: no open redirect.
    let mut probe = Browser::default();
    let authorize = probe.get(&format!("http://{addr}/login")).await.location();
    let (base, query) = authorize.split_once('?').unwrap();
    let elsewhere: Vec<String> = query
        .split('&')
        .map(|p| {
            if p.starts_with("redirect_uri=") {
                "redirect_uri=https%3A%2F%2Fevil.example%2Fcallback".to_owned()
            } else {
                p.to_owned()
            }
        })
        .collect();
    let refused = probe.get(&format!("{base}?{}&login_hint=alice", elsewhere.join("&"))).await;
    assert_eq!(refused.status, 400, "{}", refused.body);

    // A sign-in started by another browser: its callback is refused here.
    let mut mallory = Browser::default();
    let start = mallory.get(&format!("http://{addr}/login")).await;
    let at_idp = mallory.get(&format!("{}&login_hint=alice", start.location())).await;
    let mut victim = Browser::default();
    assert_eq!(
        victim.get(&at_idp.location()).await.status,
        400,
        "login CSRF: the state is bound to the browser that began"
    );
    console.running.shutdown().await;
}

/// Risk is pushed to every sidecar the console fronts, each answering for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_risk_push_reaches_every_sidecar() {
    let mesh = Mesh::start().await;
    let (a, b) = (sidecar(&mesh, "backend-a").await, sidecar(&mesh, "backend-b").await);
    let console = console(&mesh, &[("backend-a", &a), ("backend-b", &b)], "").await;
    let addr = console.running.addr;
    let mut alice = Browser::default();
    let csrf = alice.sign_in(addr, "alice").await;
    let push = alice
        .send(
            "PUT",
            &format!("http://{addr}/api/agent-risk"),
            &[("x-csrf-token", &csrf)],
            Some(json!({"spiffe_id": REPORT, "risk_level": "high"})),
        )
        .await;
    assert_eq!(push.status, 200, "{}", push.body);
    let results = push.json()["results"].clone();
    assert_eq!(
        (results["backend-a"]["status"].as_u64(), results["backend-b"]["status"].as_u64()),
        (Some(200), Some(200)),
        "{results}"
    );
    // Tags go to every sidecar the same way.
    let tags = alice
        .send(
            "PUT",
            &format!("http://{addr}/api/agent-tags"),
            &[("x-csrf-token", &csrf)],
            Some(json!({"spiffe_id": REPORT, "tag": "finance"})),
        )
        .await;
    let tagged = tags.json()["results"].clone();
    assert_eq!(
        (tagged["backend-a"]["status"].as_u64(), tagged["backend-b"]["status"].as_u64()),
        (Some(200), Some(200)),
        "{tagged}"
    );
    for app in [&a, &b] {
        let pushed = app
            .audit
            .recent(20, None, None)
            .iter()
            .find(|e| e.path.as_deref() == Some("/mgmt/agent-risk"))
            .and_then(|e| e.actor.clone());
        assert_eq!(pushed.as_deref(), Some(format!("alice@dev.example (via {CONSOLE_ID})").as_str()));
    }
    console.running.shutdown().await;
}

/// The merged audit stream: every fronted sidecar's events, tagged with its
/// name, under the console's own ids; a browser that reconnects with
/// `Last-Event-ID` gets what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merged_audit_stream_resumes_after_a_reconnect() {
    let (mesh, a, console) = fronting_one("").await;
    let addr = console.running.addr;
    let mut alice = Browser::default();
    alice.sign_in(addr, "alice").await;
    let (report, _closed) = report_to(&mesh, &a).await;

    // Reads SSE events (id, event, data) from the console's stream until `until` shows up.
    async fn read_until(
        alice: &Browser,
        addr: SocketAddr,
        last: Option<u64>,
        until: &str,
    ) -> Vec<(u64, String, Value)> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let cookie: Vec<String> = alice.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut request = hyper::Request::get("/api/audit/stream")
            .header("host", addr.to_string())
            .header("cookie", cookie.join("; "));
        if let Some(id) = last {
            request = request.header("last-event-id", id.to_string());
        }
        let response = sender.send_request(request.body(Full::new(bytes::Bytes::new())).unwrap()).await.unwrap();
        assert_eq!(response.headers().get("content-type").unwrap(), "text/event-stream");
        let mut body = response.into_body();
        let mut text = String::new();
        let mut events = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(Ok(frame)) = body.frame().await {
                text.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap_or_default()));
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    let field =
                        |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().to_owned();
                    let (Ok(id), event) = (field("id: ").parse::<u64>(), field("event: ")) else { continue };
                    let data: Value = serde_json::from_str(&field("data: ")).unwrap_or(Value::Null);
                    let done = event == "audit" && data["path"] == until;
                    events.push((id, event, data));
                    if done {
                        return;
                    }
                }
            }
        })
        .await
        .expect("the event arrived");
        events
    }

    // From the start of the console's ring (Last-Event-ID 0): nothing can fall between.
    assert_eq!(http(report.outbound_addr.unwrap(), "GET", "budget-backend", "/first", &[]).await.status, 200);
    let events = read_until(&alice, addr, Some(0), "/first").await;
    let (last_id, _, event) = events.last().unwrap().clone();
    assert_eq!((event["sidecar"].as_str(), event["decision"].as_str()), (Some("backend-a"), Some("allow")));
    // Disconnected: two requests happen meanwhile; a reconnect with Last-Event-ID replays them.
    for path in ["/missed-1", "/missed-2"] {
        assert_eq!(http(report.outbound_addr.unwrap(), "GET", "budget-backend", path, &[]).await.status, 200);
    }
    let a_audit_has = |p: &str| a.audit.recent(50, None, None).iter().any(|e| e.path.as_deref() == Some(p));
    eventually(Duration::from_secs(10), "the sidecar recorded both", || async {
        (a_audit_has("/missed-1") && a_audit_has("/missed-2")).then_some(())
    })
    .await;
    let resumed = read_until(&alice, addr, Some(last_id), "/missed-2").await;
    let paths: Vec<&str> =
        resumed.iter().filter(|(_, e, _)| e == "audit").filter_map(|(_, _, d)| d["path"].as_str()).collect();
    assert!(paths.contains(&"/missed-1") && paths.contains(&"/missed-2"), "{paths:?}");
    assert!(resumed.iter().all(|(id, _, _)| *id > last_id), "only what came after");

    // A stream lasts as long as its session: sign-out ends it; a session holds at most 4.
    let open = |alice: &Browser| {
        let cookie: Vec<String> = alice.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            let request = hyper::Request::get("/api/audit/stream")
                .header("host", addr.to_string())
                .header("cookie", cookie.join("; "));
            sender.send_request(request.body(Full::new(bytes::Bytes::new())).unwrap()).await.unwrap()
        }
    };
    // A session of its own (the streams above count for theirs until the console notices they are gone).
    let mut alice = Browser::default();
    alice.sign_in(addr, "alice").await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let response = open(&alice).await;
        assert_eq!(response.status(), 200);
        streams.push(response.into_body());
    }
    assert_eq!(open(&alice).await.status(), 429, "a fifth stream for one session");
    let csrf = alice.get(&format!("http://{addr}/api/me")).await.json()["csrf"].as_str().unwrap().to_owned();
    assert_eq!(
        alice.send("POST", &format!("http://{addr}/api/logout"), &[("x-csrf-token", &csrf)], None).await.status,
        200
    );
    for mut body in streams {
        let ended =
            tokio::time::timeout(Duration::from_secs(10), async { while let Some(Ok(_)) = body.frame().await {} })
                .await;
        assert!(ended.is_ok(), "the stream ended with the session");
    }
    console.running.shutdown().await;
}

/// A session ends at `session_ttl`: then pages go to the sign-in again and the API says 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_goes_back_to_the_sign_in() {
    let (_mesh, _a, console) = fronting_one("session_ttl: 1s\n").await;
    let addr = console.running.addr;
    let mut alice = Browser::default();
    alice.sign_in(addr, "alice").await;
    let url = format!("http://{addr}/overview");
    let expired = || async {
        let mut alice = Browser { cookies: alice.cookies.clone() };
        let page = alice.get(&url).await;
        (page.status == 302 && page.location() == "/login").then_some(())
    };
    eventually(Duration::from_secs(20), "the session expired", expired).await;
    let mut again = Browser { cookies: alice.cookies.clone() };
    assert_eq!(again.get(&format!("http://{addr}/api/me")).await.status, 401);
    console.running.shutdown().await;
}

/// Someone whose ID token carries no configured console role is refused at
/// the sign-in: no session, no cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_without_a_console_role_is_refused_at_the_sign_in() {
    let mesh = Mesh::start().await;
    let a = sidecar(&mesh, "backend-a").await;
    // alice's app role is Console.Admin; this console's admins have another.
    let console = console_with_admins(&mesh, &[("backend-a", &a)], "", "Console.Owner").await;
    let addr = console.running.addr;
    let mut alice = Browser::default();
    let start = alice.get(&format!("http://{addr}/login")).await;
    let at_idp = alice.get(&format!("{}&login_hint=alice", start.location())).await;
    let back = alice.get(&at_idp.location()).await;
    assert_eq!(back.status, 403, "{}", back.body);
    assert!(back.body.contains("no console role"), "{}", back.body);
    assert!(!alice.cookies.contains_key("__Host-a2a_console"));
    assert_eq!(alice.get(&format!("http://{addr}/api/me")).await.status, 401);
    console.running.shutdown().await;
}
