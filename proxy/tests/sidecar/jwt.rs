//! Layer 3 through real sidecars and the dev IdP over HTTP: the bad-token
//! suite, the reference matrix's JWT rows, and key rotation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use certs::dev::JwtKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proxy::cmd::dev_idp::TokenSpec;
use serde_json::{Value, json};

use super::mesh::{APPROVAL_OID, AUDIENCE, Mesh, REPORT_OID, TENANT, reference_policy};
use super::support::{Reply, eventually, http};

/// A token for the mesh's backend, for the agent `oid` with `roles`.
pub fn spec(oid: &str, roles: &[&str]) -> TokenSpec {
    TokenSpec {
        tenant: TENANT.into(),
        audiences: vec![AUDIENCE.into()],
        client_id: format!("client-{oid}"),
        oid: oid.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        ttl: Duration::from_secs(600),
        v1: false,
        cnf_x5t: None,
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn call(mesh: &Mesh, method: &str, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    http(mesh.report.outbound_addr.unwrap(), method, "budget-backend", path, &headers).await
}

/// A token with arbitrary header and claims, signed by `key` (RS256 over the exact bytes).
fn raw_token(key: &JwtKey, header: &Value, payload: &[u8]) -> String {
    let message = format!("{}.{}", B64.encode(header.to_string()), B64.encode(payload));
    let encoding = EncodingKey::from_rsa_pem(key.pem().as_bytes()).unwrap();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &encoding, Algorithm::RS256).unwrap();
    format!("{message}.{signature}")
}

/// A refused token: its name, the token, the status and reason it must get.
type Refused = (&'static str, String, u16, &'static str);

/// The token table for budget-report calling `GET /budget/read` on the mesh's
/// backend: tokens refused (with their outcome) and tokens accepted.
fn token_table(mesh: &Mesh) -> (Vec<Refused>, Vec<(&'static str, String)>) {
    let key = mesh.idp.current_key().unwrap();
    let kid = key.kid().to_owned();
    let good = mesh.idp.claims(&spec(REPORT_OID, &["Budget.Read"]));
    let with = |changes: &[(&str, Value)], removed: &[&str]| {
        let mut claims = good.clone();
        let map = claims.as_object_mut().unwrap();
        for (k, v) in changes {
            map.insert((*k).to_owned(), v.clone());
        }
        for k in removed {
            map.remove(*k);
        }
        key.sign(&claims).unwrap()
    };
    let attacker = JwtKey::generate().unwrap();
    let rs256 = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let public_pem = key.public_pem().unwrap();
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(public_pem.as_bytes())).unwrap()
    };
    let embedded_jwk = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(attacker.kid().to_owned());
        header.jwk = Some(attacker.jwk().unwrap());
        header.jku = Some("http://127.0.0.1:1/evil-jwks".into());
        attacker.sign_with_header(&header, &good).unwrap()
    };
    let valid = key.sign(&good).unwrap();
    let truncated = valid[..valid.len() - 10].to_owned();
    let none_alg =
        format!("{}.{}.", B64.encode(json!({"alg": "none", "kid": kid}).to_string()), B64.encode(good.to_string()));
    let other_tenant = "bbbbbbbb-0000-4000-8000-000000000002";

    let refused = vec![
        ("alg none", none_alg, 401, "jwt_invalid"),
        ("HS256 keyed with the RSA public key", hs256_with_public_key, 401, "jwt_invalid"),
        ("unknown kid", attacker.sign(&good).unwrap(), 401, "jwt_invalid"),
        (
            "missing kid",
            raw_token(&key, &json!({"alg": "RS256", "typ": "JWT"}), good.to_string().as_bytes()),
            401,
            "jwt_invalid",
        ),
        ("attacker key in jwk / jku", embedded_jwk, 401, "jwt_invalid"),
        ("expired", with(&[("exp", json!(now() - 3600))], &[]), 401, "jwt_expired"),
        ("nbf in the future", with(&[("nbf", json!(now() + 3600))], &[]), 401, "jwt_not_yet_valid"),
        ("missing exp", with(&[], &["exp"]), 401, "jwt_invalid"),
        ("wrong iss", with(&[("iss", json!("https://evil.example/v2.0"))], &[]), 401, "jwt_wrong_issuer"),
        (
            "other tenant",
            with(
                &[("iss", json!(format!("https://sts.windows.net/{other_tenant}/"))), ("tid", json!(other_tenant))],
                &[],
            ),
            401,
            "jwt_wrong_issuer",
        ),
        ("wrong tid", with(&[("tid", json!(other_tenant))], &[]), 401, "jwt_wrong_issuer"),
        (
            "aud array without a configured value",
            with(&[("aud", json!(["api://other", "api://third"]))], &[]),
            401,
            "jwt_wrong_audience",
        ),
        (
            "another app's token (v2)",
            mesh.idp.token(&spec(APPROVAL_OID, &["Budget.Read"])).unwrap(),
            403,
            "jwt_caller_mismatch",
        ),
        (
            "another app's token (v1)",
            mesh.idp.token(&TokenSpec { v1: true, ..spec(APPROVAL_OID, &["Budget.Read"]) }).unwrap(),
            403,
            "jwt_caller_mismatch",
        ),
        ("missing role", mesh.idp.token(&spec(REPORT_OID, &["Budget.Submit"])).unwrap(), 403, "insufficient_roles"),
        ("truncated signature", truncated, 401, "jwt_invalid"),
        ("non-JSON payload", raw_token(&key, &rs256, b"not json at all"), 401, "jwt_invalid"),
    ];
    let accepted = vec![
        ("valid", valid),
        ("expired within the leeway", with(&[("exp", json!(now() - 30))], &[])),
        ("aud array with one configured value", with(&[("aud", json!(["api://other", AUDIENCE]))], &[])),
        (
            "v1 token of the caller",
            mesh.idp.token(&TokenSpec { v1: true, ..spec(REPORT_OID, &["Budget.Read"]) }).unwrap(),
        ),
        ("client-ID audience form", with(&[("aud", json!("11111111-2222-3333-4444-555555555555"))], &[])),
    ];
    (refused, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_their_documented_outcome() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    let (cases, accepted) = token_table(&mesh);
    for (name, token, status, reason) in cases {
        let reply = call(&mesh, "GET", "/budget/read", Some(&token)).await;
        assert_eq!((reply.status, reply.denied()), (status, ("oauth".into(), reason.into())), "{name}");
        if status == 401 {
            let challenge = reply.headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""), "{name}");
        }
        assert!(!reply.body.contains(&token), "{name}: the token is echoed");
    }

    for (name, token) in accepted {
        let reply = call(&mesh, "GET", "/budget/read", Some(&token)).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.body);
    }
    assert_eq!(mesh.app.paths().len(), 5, "only the accepted tokens reached the app");

    let huge = "a".repeat(40 * 1024);
    assert_eq!(call(&mesh, "GET", "/budget/read", Some(&huge)).await.status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_matrix_jwt_rows() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    let reply = call(&mesh, "GET", "/budget/read", None).await;
    assert_eq!((reply.status, reply.denied()), (401, ("oauth".into(), "jwt_required".into())));
    assert_eq!(reply.headers.get("www-authenticate").unwrap(), "Bearer");

    let wrong_role = mesh.idp.token(&spec(REPORT_OID, &["Budget.Submit"])).unwrap();
    let reply = call(&mesh, "GET", "/budget/read", Some(&wrong_role)).await;
    assert_eq!((reply.status, reply.denied()), (403, ("oauth".into(), "insufficient_roles".into())));

    let read = mesh.idp.token(&spec(REPORT_OID, &["Budget.Read"])).unwrap();
    assert_eq!(call(&mesh, "GET", "/budget/read", Some(&read)).await.status, 200);

    let submit = mesh.idp.token(&spec(APPROVAL_OID, &["Budget.Read", "Budget.Submit"])).unwrap();
    let approval = mesh.approval.outbound_addr.unwrap();
    let auth = format!("Bearer {submit}");
    let reply = http(approval, "POST", "budget-backend", "/budget/submit", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(http(approval, "GET", "budget-backend", "/budget/read", &[("authorization", &auth)]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_fetched_once_and_bursts_share_one_fetch() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    let read = |mesh: &Mesh| mesh.idp.token(&spec(REPORT_OID, &["Budget.Read"])).unwrap();
    // Warm: keys loaded at start.
    let first = read(&mesh);
    eventually(Duration::from_secs(10), "keys loaded", || async {
        (call(&mesh, "GET", "/budget/read", Some(&first)).await.status == 200).then_some(())
    })
    .await;
    let before = mesh.idp.jwks_fetches();

    // Mid-traffic rotation: concurrent requests with tokens of the new kid all
    // pass on one refetch (its answer held until it is asked for). That the
    // others wait for the fetch in flight, rather than being refused by the
    // rate limit, is shown step by step in `facts::jwks::tests`.
    mesh.idp.rotate(false).unwrap();
    mesh.idp.hold_jwks(true);
    let tokens: Vec<String> = (0..10).map(|_| read(&mesh)).collect();
    let burst: Vec<_> = tokens.iter().map(|t| call(&mesh, "GET", "/budget/read", Some(t))).collect();
    let release = async {
        let fetching = || async { (mesh.idp.jwks_fetches() > before).then_some(()) };
        eventually(Duration::from_secs(10), "the refetch for the new kid", fetching).await;
        mesh.idp.hold_jwks(false);
    };
    let (replies, ()) = tokio::join!(futures_util::future::join_all(burst), release);
    for reply in replies {
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(mesh.idp.jwks_fetches(), before + 1, "one fetch for the whole burst");
    // The old key is still published: its tokens still pass, from the cache or not.
    assert_eq!(call(&mesh, "GET", "/budget/read", Some(&first)).await.status, 200);

    // A burst of unknown kids within the refetch interval causes no further fetch.
    let attacker = JwtKey::generate().unwrap();
    let forged = attacker.sign(&mesh.idp.claims(&spec(REPORT_OID, &["Budget.Read"]))).unwrap();
    let burst: Vec<_> = (0..10).map(|_| call(&mesh, "GET", "/budget/read", Some(&forged))).collect();
    for reply in futures_util::future::join_all(burst).await {
        assert_eq!((reply.status, reply.denied().1), (401, "jwt_invalid".into()));
    }
    assert_eq!(mesh.idp.jwks_fetches(), before + 1, "rate limited: no fetch within refetch_interval");

    // JWKS endpoint down: the last good keys keep working.
    mesh.idp.set_jwks_down(true);
    assert_eq!(call(&mesh, "GET", "/budget/read", Some(&read(&mesh))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_loaded_is_503_until_the_endpoint_comes_up() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_full(&policy, env, true).await;
    let token = mesh.idp.token(&spec(REPORT_OID, &["Budget.Read"])).unwrap();
    let reply = call(&mesh, "GET", "/budget/read", Some(&token)).await;
    assert_eq!((reply.status, reply.denied()), (503, ("oauth".into(), "jwks_unavailable".into())));
    mesh.idp.set_jwks_down(false);
    eventually(Duration::from_secs(20), "keys loaded once the endpoint is up", || async {
        (call(&mesh, "GET", "/budget/read", Some(&token)).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_keys_and_changed_audiences_invalidate_cached_tokens() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    let old = mesh.idp.token(&spec(REPORT_OID, &["Budget.Read"])).unwrap();
    eventually(Duration::from_secs(10), "warm", || async {
        (call(&mesh, "GET", "/budget/read", Some(&old)).await.status == 200).then_some(())
    })
    .await;

    // The old key leaves the JWKS; the next refetch (for the new kid) drops it.
    mesh.idp.rotate(true).unwrap();
    let new = mesh.idp.token(&spec(REPORT_OID, &["Budget.Read"])).unwrap();
    assert_eq!(call(&mesh, "GET", "/budget/read", Some(&new)).await.status, 200);
    let reply = call(&mesh, "GET", "/budget/read", Some(&old)).await;
    assert_eq!((reply.status, reply.denied().1), (401, "jwt_invalid".into()), "a cached token of a removed key");

    // A reload that changes the audiences applies at once, cached tokens included.
    let jwt = super::mesh::jwt_yaml(&mesh.idp.authority()).replace(AUDIENCE, "api://something-else");
    std::fs::write(mesh.dir.path().join("jwt.yaml"), jwt).unwrap();
    mesh.set_allowed(&[super::mesh::REPORT, super::mesh::APPROVAL]).await;
    let reply = call(&mesh, "GET", "/budget/read", Some(&new)).await;
    assert_eq!((reply.status, reply.denied().1), (401, "jwt_wrong_audience".into()));
}

/// After the whole token table sent to the real binary (with debug logs on),
/// no token, and no token's signature, appears in the audit ring, the audit
/// file or anything the process printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_signature_reaches_the_audit_trail_or_the_logs() {
    use std::io::BufRead;
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env.clone()).await;
    let dir = mesh.dir.path();
    let svid = dir.join("secrecy-svid");
    let identity = mesh.ca.issue(&super::mesh::BACKEND.parse().unwrap(), Duration::from_secs(600)).unwrap();
    certs::dev::write_svid_files(&svid, &identity, mesh.ca.bundle_pem()).unwrap();
    let admin =
        proxy::config::sha256(super::mesh::ADMIN_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let yaml = format!(
        "identity: {{source: files, files: {{cert: '{svid}/svid.pem', key: '{svid}/svid_key.pem', bundle: '{svid}/svid_bundle.pem'}}}}
telemetry: {{listen: '127.0.0.1:0', log_format: json}}
inbound: {{listen: '127.0.0.1:0', upstream: 'http://{app}', allowed_callers: ['{report}']}}
policy: {{file: policy.yaml}}
audit: {{file: secrecy-audit.jsonl, stdout: true}}
mgmt: {{listen: '127.0.0.1:0', state_file: secrecy-state.json, keys: [{{name: ops, role: admin, sha256: '{admin}'}}]}}
{jwt}",
        svid = svid.display(),
        app = mesh.app.addr,
        report = super::mesh::REPORT,
        jwt = super::mesh::jwt_yaml(&mesh.idp.authority()),
    );
    let config = dir.join("secrecy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut command = super::support::bin();
    command.args(["run", "--config", config.to_str().unwrap()]).env("RUST_LOG", "debug");
    for (name, value) in &env.0 {
        command.env(name, value);
    }
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (started_tx, started) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let (printed, started_tx) = (printed.clone(), started_tx.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                if line.contains("a2a-sidecar started") {
                    let _ = started_tx.send(line.clone());
                }
                printed.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    let line = tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the sidecar started");
    let started: Value = serde_json::from_str(&line).unwrap();
    let inbound: std::net::SocketAddr = started["inbound"].as_str().unwrap().parse().unwrap();
    let mgmt: std::net::SocketAddr = started["mgmt"].as_str().unwrap().parse().unwrap();

    let (refused, accepted) = token_table(&mesh);
    let tls = mesh.client_tls(super::mesh::REPORT, &[b"http/1.1"]);
    let mut secrets = Vec::new();
    for (name, token, status) in
        refused.into_iter().map(|(n, t, s, _)| (n, t, s)).chain(accepted.into_iter().map(|(n, t)| (n, t, 200)))
    {
        let raw = format!(
            "GET /budget/read HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let out = super::support::raw_exchange(inbound, tls.clone(), raw.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(super::support::statuses(&out), [status], "{name}: {out}");
        // The whole token, and its signature (the part an attacker could replay with).
        if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
            secrets.push((name, signature.to_owned()));
        }
        secrets.push((name, token));
    }

    let (_, _, ring) =
        super::mgmt::call(mgmt, "GET", "/mgmt/audit?limit=1000", Some(super::mesh::ADMIN_KEY), None, &[]).await;
    let ring = ring.to_string();
    assert!(ring.contains("jwt_caller_mismatch") && ring.contains("insufficient_roles"), "the trail has the refusals");
    let file = dir.join("secrecy-audit.jsonl");
    let audit_file = || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        async move { (text.lines().count() >= 22).then_some(text) }
    };
    let audit_file = eventually(Duration::from_secs(10), "every request in the audit file", audit_file).await;
    let _ = child.kill();
    let _ = child.wait();
    let printed = printed.lock().unwrap().clone();
    assert!(printed.contains("\"level\":\"DEBUG\""), "debug logs were on");
    for (name, secret) in &secrets {
        for (place, text) in [("the audit ring", &ring), ("the audit file", &audit_file), ("stdout/stderr", &printed)] {
            assert!(!text.contains(secret.as_str()), "{name}: a token or its signature in {place}");
        }
    }
}

/// Binding by the entry's `entra_app_id` (the token's `azp`, or `appid` in v1
/// tokens), and `jwt.allow_unbound_tokens: true` letting any valid token
/// through for an entry with nothing to bind to, while bound entries still
/// refuse another app's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_by_app_id_and_unbound_tokens_when_allowed() {
    use super::mesh::{APPROVAL, REPORT};
    let mesh = Mesh::start().await;
    let policy = format!(
        "version: '1'
trust_domain: aim.microsoft.com
default_action: deny
policies:
  - name: budget-report
    spiffe_id: '{REPORT}'
    entra_app_id: report-client
    rules: [{{path: /bound, methods: [GET], action: allow, require_jwt: true}}]
  - name: budget-approval
    spiffe_id: '{APPROVAL}'
    rules: [{{path: /unbound, methods: [GET], action: allow, require_jwt: true}}]
"
    );
    std::fs::write(mesh.dir.path().join("binding-policy.yaml"), policy).unwrap();
    let yaml = mesh
        .sidecar_yaml("binding", mesh.app.addr)
        .replace("policy: {file: policy.yaml}", "policy: {file: binding-policy.yaml}")
        .replace("authority: ", "allow_unbound_tokens: true, authority: ");
    let sidecar = mesh.start_sidecar("binding", &yaml).await;
    let token = |client: &str, v1: bool| {
        let spec = TokenSpec { client_id: client.into(), v1, ..spec("00000000-0000-4000-8000-0000000000ff", &[]) };
        mesh.idp.token(&spec).unwrap()
    };
    let ask = |caller: &'static str, path: &'static str, token: String| {
        let raw =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        let tls = mesh.client_tls(caller, &[b"http/1.1"]);
        let inbound = sidecar.inbound_addr.unwrap();
        async move { super::support::raw_exchange(inbound, tls, raw.as_bytes(), Duration::from_secs(10)).await }
    };
    let statuses = super::support::statuses;
    assert_eq!(statuses(&ask(REPORT, "/bound", token("report-client", false)).await), [200], "azp");
    assert_eq!(statuses(&ask(REPORT, "/bound", token("report-client", true)).await), [200], "appid (v1)");
    let other = ask(REPORT, "/bound", token("approval-client", false)).await;
    assert_eq!(statuses(&other), [403], "{other}");
    assert!(other.contains(r#""reason":"jwt_caller_mismatch""#), "{other}");
    // Nothing to bind to, and unbound tokens allowed: any valid token of the tenant.
    assert_eq!(statuses(&ask(APPROVAL, "/unbound", token("anyone", false)).await), [200], "unbound");
    assert_eq!(mesh.app.paths(), ["/bound", "/bound", "/unbound"]);
}
