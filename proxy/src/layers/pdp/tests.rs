use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use certs::TrustDomain;
use certs::dev::DevCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn only_a_2xx_json_object_with_a_boolean_decision_is_an_answer() {
    let allow = classify(200, br#"{"decision": true}"#).unwrap();
    assert_eq!((allow.decision, allow.context), (true, None));
    let deny = classify(200, br#"{"decision": false, "context": {"reason_admin": {"en": "no"}}}"#).unwrap();
    assert!(!deny.decision);
    assert_eq!(deny.context, Some(json!({"reason_admin": {"en": "no"}})));
    let cases: [(u16, &[u8], Failure); 9] = [
        (200, br#"{"decision": "true"}"#, Failure::BadAnswer),
        (200, br#"{"decision": 1}"#, Failure::BadAnswer),
        (200, br#"{"allowed": true}"#, Failure::BadAnswer),
        (200, br#"[{"decision": true}]"#, Failure::BadAnswer),
        (200, b"true", Failure::BadAnswer),
        (200, b"<html>ok</html>", Failure::BadAnswer),
        (500, br#"{"decision": true}"#, Failure::Status),
        (302, br#"{"decision": true}"#, Failure::Status),
        (401, b"", Failure::Status),
    ];
    for (status, body, failure) in cases {
        assert_eq!(classify(status, body), Err(failure), "{status} {}", String::from_utf8_lossy(body));
    }
    let big = format!(r#"{{"decision": true, "pad": "{}"}}"#, "x".repeat(MAX_ANSWER_BYTES));
    assert_eq!(classify(200, big.as_bytes()), Err(Failure::TooLarge));
    // A peer-controlled context too large for the audit event is left out; the decision stands.
    let chatty = format!(r#"{{"decision": true, "context": {{"why": "{}"}}}}"#, "x".repeat(2000));
    assert_eq!(classify(200, chatty.as_bytes()).unwrap().context, None);
}

#[test]
fn the_request_is_authzen_shaped_and_carries_claims_but_never_a_token() {
    let caller: SpiffeId = "spiffe://a.example/caller".parse().unwrap();
    let roles = vec!["Read".to_owned()];
    let token = claims(Some("client-1"), &roles);
    let question = Question {
        caller: &caller,
        agent_id: Some("agent-1"),
        method: "GET",
        path: "/budget/read",
        claims: Some(&token),
        tag_claims: None,
        request_id: Some("r1"),
    };
    let body = request_body(&question, "spiffe://a.example/me");
    assert_eq!(
        body,
        json!({
            "subject": {"type": "spiffe_id", "id": "spiffe://a.example/caller", "properties": {"agent_id": "agent-1"}},
            "action": {"name": "GET"},
            "resource": {"type": "http_path", "id": "/budget/read", "properties": {"target": "spiffe://a.example/me"}},
            "context": {"claims": {"azp": "client-1", "roles": ["Read"]}},
        })
    );
    let anonymous = Question { agent_id: None, claims: None, ..question.clone() };
    let body = request_body(&anonymous, "spiffe://a.example/me");
    assert_eq!(body["subject"], json!({"type": "spiffe_id", "id": "spiffe://a.example/caller"}));
    assert_eq!(body["context"], json!({}));
}

/// What the test PDP answers, and what it saw.
struct Fake {
    status: u16,
    body: String,
    delay: Duration,
    extra_headers: String,
    calls: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

impl Fake {
    fn new(status: u16, body: &str) -> Arc<Self> {
        Arc::new(Self {
            status,
            body: body.to_owned(),
            delay: Duration::ZERO,
            extra_headers: String::new(),
            calls: AtomicUsize::new(0),
            seen: Mutex::default(),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A PDP on 127.0.0.1:0 answering every request as `fake` says.
async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let fake = fake.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        fake.calls.fetch_add(1, Ordering::SeqCst);
                        fake.seen.lock().unwrap().push(text.clone());
                        break;
                    }
                }
                tokio::time::sleep(fake.delay).await;
                let response = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}connection: close\r\n\r\n{}",
                    fake.status,
                    fake.body.len(),
                    fake.extra_headers,
                    fake.body
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/access/v1/evaluation")
}

fn config(url: &str, cache_ttl: Duration) -> PdpConfig {
    PdpConfig {
        url: url.to_owned(),
        timeout: Duration::from_millis(300),
        cache_ttl,
        cache_size: 100,
        fail_open: false,
        rules: PdpRules::All,
        server_id: None,
        bearer: Some(crate::config::BearerKey { env: "K".into(), value: "secret-key".into() }),
        entra_scope: None,
    }
}

fn client(config: &PdpConfig) -> (Pdp, Arc<Metrics>) {
    let ca = DevCa::generate(&TrustDomain::new("a.example").unwrap()).unwrap();
    let me = ca.identity(&"spiffe://a.example/me".parse().unwrap(), Duration::from_secs(600), &[]).unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    (Pdp::new(config, IdentityWatch::fixed(Arc::new(me)), metrics.clone(), None).unwrap(), metrics)
}

fn caller() -> SpiffeId {
    "spiffe://a.example/caller".parse().unwrap()
}

fn question<'a>(caller: &'a SpiffeId, roles: &'a [String]) -> Question<'a> {
    Question {
        caller,
        agent_id: None,
        method: "GET",
        path: "/p",
        // Leaked: a test's claims live as long as the test.
        claims: Some(Box::leak(Box::new(claims(None, roles)))),
        tag_claims: None,
        request_id: Some("req-1"),
    }
}

/// A validated token's claims with this agent and these roles.
fn claims(azp: Option<&str>, roles: &[String]) -> policy::jwt::Claims {
    policy::jwt::Claims {
        issuer: std::sync::Arc::from("entra"),
        entra: true,
        kid: "k".into(),
        exp: u64::MAX,
        oid: None,
        client_id: azp.map(std::sync::Arc::from),
        roles: roles.iter().cloned().collect(),
        strings: Default::default(),
        cnf: Default::default(),
    }
}

fn counted(metrics: &Metrics, result: &str) -> u64 {
    let text = metrics.encode();
    let series = format!("a2a_pdp_requests_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn failures_are_unavailable_and_a_deny_is_a_deny() {
    let caller = caller();
    let cases = [
        (Fake::new(200, r#"{"decision": false}"#), Err(Reason::PdpDenied)),
        (Fake::new(200, r#"{"decision": "true"}"#), Err(Reason::PdpUnavailable)),
        (Fake::new(200, r#"{}"#), Err(Reason::PdpUnavailable)),
        (Fake::new(500, r#"{"decision": true}"#), Err(Reason::PdpUnavailable)),
        (Fake::new(200, "not json"), Err(Reason::PdpUnavailable)),
        (
            Fake::new(200, &format!(r#"{{"decision": true, "p": "{}"}}"#, "x".repeat(70_000))),
            Err(Reason::PdpUnavailable),
        ),
        (Fake::new(200, r#"{"decision": true}"#), Ok(())),
    ];
    for (fake, expected) in cases {
        let url = serve(fake.clone()).await;
        let (pdp, _) = client(&config(&url, Duration::ZERO));
        let mut audit = PdpAudit::default();
        assert_eq!(pdp.decide(question(&caller, &[]), &mut audit).await, expected, "{}", fake.body.len());
        assert_eq!(fake.calls(), 1);
    }
    // A redirect is never followed.
    let mut redirect = Fake::new(307, r#"{"decision": true}"#);
    Arc::get_mut(&mut redirect).unwrap().extra_headers = "location: http://127.0.0.1:1/\r\n".into();
    let (pdp, _) = client(&config(&serve(redirect.clone()).await, Duration::ZERO));
    let mut audit = PdpAudit::default();
    assert_eq!(pdp.decide(question(&caller, &[]), &mut audit).await, Err(Reason::PdpUnavailable));
    assert_eq!((redirect.calls(), audit.error), (1, Some("status")));
    // Nobody listening.
    let (pdp, metrics) = client(&config("http://127.0.0.1:1/access/v1/evaluation", Duration::ZERO));
    let mut audit = PdpAudit::default();
    assert_eq!(pdp.decide(question(&caller, &[]), &mut audit).await, Err(Reason::PdpUnavailable));
    assert_eq!((audit.error, counted(&metrics, "error")), (Some("connect"), 1));
}

#[tokio::test]
async fn a_slow_pdp_is_bounded_by_the_timeout_and_fail_open_lets_it_through() {
    let mut slow = Fake::new(200, r#"{"decision": true}"#);
    Arc::get_mut(&mut slow).unwrap().delay = Duration::from_secs(5);
    let url = serve(slow).await;
    let caller = caller();
    let (closed, _) = client(&config(&url, Duration::ZERO));
    let started = Instant::now();
    let mut audit = PdpAudit::default();
    assert_eq!(closed.decide(question(&caller, &[]), &mut audit).await, Err(Reason::PdpUnavailable));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(audit.error, Some("timeout"));
    let (open, metrics) = client(&PdpConfig { fail_open: true, ..config(&url, Duration::ZERO) });
    let mut audit = PdpAudit::default();
    assert_eq!(open.decide(question(&caller, &[]), &mut audit).await, Ok(()));
    assert!(audit.failed_open);
    assert_eq!(counted(&metrics, "error"), 1);
}

#[tokio::test]
async fn allows_are_cached_per_request_claims_included_and_concurrent_misses_share_one_call() {
    let mut fake = Fake::new(200, r#"{"decision": true}"#);
    Arc::get_mut(&mut fake).unwrap().delay = Duration::from_millis(150);
    let url = serve(fake.clone()).await;
    let (pdp, metrics) = client(&config(&url, Duration::from_secs(60)));
    let pdp = Arc::new(pdp);
    let caller = caller();
    let read = vec!["Read".to_owned()];
    let asks = (0..8).map(|_| {
        let (pdp, caller, read) = (pdp.clone(), caller.clone(), read.clone());
        tokio::spawn(async move {
            let mut audit = PdpAudit::default();
            (pdp.decide(question(&caller, &read), &mut audit).await, audit.cached)
        })
    });
    let results = futures_util::future::join_all(asks).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().0.is_ok()));
    assert_eq!(fake.calls(), 1, "one call for eight concurrent misses");
    assert_eq!(results.iter().filter(|r| r.as_ref().unwrap().1).count(), 7);
    assert_eq!((counted(&metrics, "allow"), counted(&metrics, "cached")), (1, 7));

    let mut audit = PdpAudit::default();
    assert_eq!(pdp.decide(question(&caller, &read), &mut audit).await, Ok(()));
    assert!(audit.cached);
    assert_eq!(fake.calls(), 1, "served from the cache");
    // Fewer roles: another request, not the cached allow.
    assert_eq!(pdp.decide(question(&caller, &[]), &mut PdpAudit::default()).await, Ok(()));
    assert_eq!(fake.calls(), 2);

    let seen = fake.seen.lock().unwrap().clone();
    let first = seen.first().unwrap().to_ascii_lowercase();
    assert!(first.contains("x-request-id: req-1") && first.contains("authorization: bearer secret-key"), "{first}");
    assert!(first.contains("content-type: application/json"), "{first}");
}

#[tokio::test]
async fn a_deny_is_never_cached() {
    let fake = Fake::new(200, r#"{"decision": false}"#);
    let (pdp, _) = client(&config(&serve(fake.clone()).await, Duration::from_secs(60)));
    let caller = caller();
    for _ in 0..3 {
        assert_eq!(pdp.decide(question(&caller, &[]), &mut PdpAudit::default()).await, Err(Reason::PdpDenied));
    }
    assert_eq!(fake.calls(), 3);
}

/// The key covers every field the request carries, unambiguously: roles
/// split differently, a role moved into the agent claim, another tag value
/// or another caller are other requests.
#[test]
fn the_cache_key_tells_apart_every_request_it_stands_for() {
    let caller = caller();
    let other: SpiffeId = "spiffe://a.example/caller2".parse().unwrap();
    let key = |question: &Question<'_>| cache_key(question, "spiffe://a.example/me").unwrap();
    let roles = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (ab_c, a_bc, none) = (roles(&["ab", "c"]), roles(&["a", "bc"]), roles(&[]));
    let with = |azp: Option<&str>, r: &[String]| claims(azp, r);
    let (t1, t2, t3, t4) = (with(None, &ab_c), with(None, &a_bc), with(Some("ab"), &none), with(None, &none));
    let base = Question {
        caller: &caller,
        agent_id: None,
        method: "GET",
        path: "/p",
        claims: Some(&t1),
        tag_claims: None,
        request_id: Some("r"),
    };
    let same = Question { request_id: Some("another id"), ..base.clone() };
    assert_eq!(key(&base), key(&same), "the request id is not part of the decision");
    let mut tagged = with(None, &ab_c);
    tagged.strings.insert("dept".into(), "finance".into());
    let mut retagged = tagged.clone();
    retagged.strings.insert("dept".into(), "marketing".into());
    let tags = std::collections::BTreeMap::from([("dept".to_owned(), "finance".to_owned())]);
    let variants = [
        Question { claims: Some(&t2), ..base.clone() },
        Question { claims: Some(&t3), ..base.clone() },
        Question { claims: Some(&t4), ..base.clone() },
        Question { claims: None, ..base.clone() },
        Question { caller: &other, ..base.clone() },
        Question { agent_id: Some("x"), ..base.clone() },
        Question { method: "POST", ..base.clone() },
        Question { path: "/q", ..base.clone() },
        Question { claims: Some(&tagged), tag_claims: Some(&tags), ..base.clone() },
        Question { claims: Some(&retagged), tag_claims: Some(&tags), ..base.clone() },
    ];
    let mut keys = vec![key(&base)];
    keys.extend(variants.iter().map(key));
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "every variant has its own key");
}
