//! `entra.use_jwt_svid: true` against the real agent: the sidecar's
//! federation assertion is a JWT-SVID from SPIRE (for the configured
//! audience), and the dev IdP's token endpoint accepts it only when it
//! verifies against SPIRE's JWT keys, which it takes from SPIRE's OIDC
//! discovery provider and refetches when SPIRE rotates its signing key.

use std::time::{Duration, Instant};

use proxy::cmd::dev_idp::AppRegistration;

use super::harness::{Agent, EchoApp, OidcProvider, Server, Sidecar, http_get, poll};

const TENANT: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const CALLER_OID: &str = "00000000-0000-4000-8000-0000000000c1";

#[test]
fn the_entra_token_is_exchanged_for_a_jwt_svid_that_verifies_against_spires_keys() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // JWT-SVIDs of 30 s: the agent fetches new ones (signed by the key in force) every ~15 s.
    let server = Server::start_with(dir.path(), "td1.test", ("1h", "30s"));
    let oidc = OidcProvider::start(dir.path(), &server);
    let (idp, _, _idp_task) = runtime.block_on(proxy::cmd::dev_idp::start(&dir.path().join("idp"))).unwrap();
    idp.register_app("caller-client", AppRegistration { oid: CALLER_OID.into(), roles: vec!["Budget.Read".into()] });
    // Tokens of 62 s, renewed a minute early: the sidecar exchanges a fresh assertion every ~2 s.
    idp.set_token_expires_in(serde_json::json!(62));
    let authority = idp.authority();

    let token = server.join_token("/agent/node1");
    let mut backend = Sidecar::prepare(dir.path(), "backend");
    let mut caller = Sidecar::prepare(dir.path(), "caller");
    server.entry("/agent/node1", "/backend", &backend.binary, &[]);
    server.entry("/agent/node1", "/caller", &caller.binary, &[]);
    let agent = Agent::start(dir.path(), &server, &token);
    let app = EchoApp::start();
    let caller_id = server.id("/caller");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: '1'
trust_domain: td1.test
default_action: deny
policies:
  - {{name: caller, spiffe_id: '{caller_id}', entra_agent_id: '{CALLER_OID}', rules: [{{path: '/*', methods: ['*'], action: allow, require_jwt: true, required_roles: [Budget.Read]}}]}}
"
        ),
    )
    .unwrap();
    backend.start(&format!(
        "identity: {{source: workload_api, socket: '{endpoint}'}}
telemetry: {{listen: '127.0.0.1:0', log_format: json}}
inbound: {{listen: '127.0.0.1:0', upstream: 'http://{app}', allowed_callers: ['{caller_id}']}}
policy: {{file: '{policy}'}}
jwt: {{tenant_id: '{TENANT}', audiences: ['api://backend'], authority: '{authority}'}}
",
        endpoint = agent.endpoint(),
        app = app.addr,
        policy = policy.display(),
    ));
    caller.start(&format!(
        "identity: {{source: workload_api, socket: '{endpoint}'}}
telemetry: {{listen: '127.0.0.1:0', log_format: json}}
entra: {{client_id: caller-client, tenant_id: '{TENANT}', authority: '{authority}', use_jwt_svid: true, jwt_svid_audience: 'api://AzureADTokenExchange'}}
outbound:
  listen: '127.0.0.1:0'
  routes:
    - {{name: backend, upstream: 'https://{inbound}', server_id: '{backend_id}', entra_token: {{scope: 'api://backend/.default'}}}}
",
        endpoint = agent.endpoint(),
        inbound = backend.inbound.unwrap(),
        backend_id = server.id("/backend"),
    ));
    let started = Instant::now();
    backend.wait_ready(started);
    caller.wait_ready(started);

    // Before the IdP trusts SPIRE's keys, the exchange is refused: the route answers 503.
    let refused = http_get(caller.outbound.unwrap(), "backend", "/before").unwrap();
    assert_eq!(refused.0, 503, "{refused:?}");
    assert!(refused.1.contains("token_unavailable"), "{refused:?}");

    // Trust the trust domain's JWT keys through SPIRE's OIDC discovery provider.
    idp.trust_assertion_issuer(&oidc.issuer).unwrap();
    let served = poll(Duration::from_secs(30), "a token exchanged for the JWT-SVID", || {
        http_get(caller.outbound.unwrap(), "backend", "/with-token").filter(|(status, _)| *status == 200)
    });
    assert_eq!(served.1, caller_id, "the backend checked the token and forwarded");
    assert!(!caller.output().contains("eyJ"), "no token or assertion in the caller's logs");

    // SPIRE rotates its JWT signing key: the next JWT-SVIDs are signed by a key
    // the IdP has not seen; it refetches the provider's JWKS and still accepts.
    server.ok(&["localauthority", "jwt", "prepare"]);
    let prepared = server.ok(&["localauthority", "jwt", "show"]);
    let next = prepared
        .lines()
        .skip_while(|l| !l.contains("Prepared"))
        .find_map(|l| l.trim().strip_prefix("Authority ID:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no prepared JWT authority in {prepared}"))
        .to_owned();
    server.ok(&["localauthority", "jwt", "activate", "-authorityID", &next]);
    let first = idp.accepted_assertion_kids().first().cloned().unwrap();
    assert_ne!(first, next);
    let requests = std::cell::Cell::new(0u32);
    poll(Duration::from_secs(90), "an assertion signed by the new key accepted", || {
        let reply = http_get(caller.outbound.unwrap(), "backend", "/after-rotation");
        assert_eq!(reply.as_ref().map(|r| r.0), Some(200), "every request keeps its token: {reply:?}");
        requests.set(requests.get() + 1);
        idp.accepted_assertion_kids().contains(&next).then_some(())
    });
    eprintln!(
        "JWT-SVID exchange: served {:?} after start; SPIRE's JWT key rotated ({first} -> {next}), {} requests across it, none failed",
        started.elapsed(),
        requests.get()
    );
}
