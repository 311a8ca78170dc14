//! Layer 3 beyond Entra, through a real sidecar: a Keycloak-shaped (ES256,
//! `realm_access.roles`) and an Auth0-shaped (EdDSA, a namespaced agent
//! claim, `permissions`) issuer next to the Entra dev IdP, each token routed
//! by its `iss` to its own issuer's keys; and RFC 8705 certificate-bound
//! tokens, across a new SVID.

use std::sync::Arc;
use std::time::Duration;

use certs::svid::Identity;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use proxy::cmd::dev_idp::TokenSpec;
use proxy::cmd::dev_idp::issuer::{self, AUTH0_AGENT_CLAIM, DevIssuer, IssuerToken, Shape};
use proxy::layers::oauth::thumbprint_s256;
use serde_json::{Value, json};

use super::mesh::{APPROVAL, AUDIENCE, BACKEND, Mesh, REPORT, REPORT_OID, TENANT};
use super::support::{Reply, read_reply, tls_connect};

const KC_AUDIENCE: &str = "budget-backend";
const A0_AUDIENCE: &str = "https://budget-backend.example";

fn policy() -> String {
    format!(
        "version: t1
trust_domain: aim.microsoft.com
default_action: deny
policies:
  - name: budget-report
    spiffe_id: '{REPORT}'
    entra_agent_id: '{REPORT_OID}'
    agent_id: budget-report
    rules:
      - {{path: /read, methods: [GET], action: allow, require_jwt: true, required_roles: [Budget.Read]}}
      - {{path: /bound, methods: [GET], action: allow, require_jwt: true, require_bound_token: true}}
  - name: budget-approval
    spiffe_id: '{APPROVAL}'
    agent_id: budget-approval
    issuers: [keycloak]
    rules:
      - {{path: /read, methods: [GET], action: allow, require_jwt: true}}
"
    )
}

struct Stand {
    mesh: Mesh,
    sidecar: proxy::app::App,
    keycloak: Arc<DevIssuer>,
    auth0: Arc<DevIssuer>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stand {
    async fn start() -> Self {
        // The mesh's own backend knows only Entra: this policy (which pins an
        // entry to `keycloak`) is for the sidecar under test alone.
        let mesh = Mesh::start().await;
        std::fs::write(mesh.dir.path().join("issuers-policy.yaml"), policy()).unwrap();
        let (keycloak, _, kc_task) = issuer::start(Shape::Keycloak, Algorithm::ES256).await.unwrap();
        let (auth0, _, a0_task) = issuer::start(Shape::Auth0, Algorithm::EdDSA).await.unwrap();
        let jwt = format!(
            "jwt:
  tenant_id: '{TENANT}'
  audiences: ['{AUDIENCE}']
  authority: '{authority}'
  refetch_interval: 1s
  issuers:
    - {{name: keycloak, issuer: '{kc}', audiences: ['{KC_AUDIENCE}'], algorithms: [ES256], roles_claim: realm_access.roles}}
    - name: auth0
      issuer: '{a0}'
      jwks_uri: '{a0_jwks}'
      audiences: ['{A0_AUDIENCE}']
      algorithms: [EdDSA, RS256]
      agent_claim: '{AUTH0_AGENT_CLAIM}'
      roles_claim: permissions
",
            authority = mesh.idp.authority(),
            kc = keycloak.issuer(),
            a0 = auth0.issuer(),
            a0_jwks = auth0.jwks_uri(),
        );
        let yaml = mesh
            .sidecar_yaml("issuers", mesh.app.addr)
            .replace(&super::mesh::jwt_yaml(&mesh.idp.authority()), &jwt)
            .replace("policy: {file: policy.yaml}", "policy: {file: issuers-policy.yaml}");
        assert!(yaml.contains("issuers:") && yaml.contains("issuers-policy.yaml"), "{yaml}");
        let sidecar = mesh.start_sidecar("issuers", &yaml).await;
        Self { mesh, sidecar, keycloak, auth0, _tasks: vec![kc_task, a0_task] }
    }

    /// A new SVID for `id` from the mesh's CA, and its `x5t#S256`.
    fn identity(&self, id: &str) -> (Arc<Identity>, String) {
        let identity = Arc::new(self.mesh.ca.identity(&id.parse().unwrap(), Duration::from_secs(600), &[]).unwrap());
        let leaf = identity.svid().chain().first().unwrap();
        let thumbprint = thumbprint_s256(leaf);
        (identity, thumbprint)
    }

    /// `GET path` on a fresh mTLS connection presenting `identity`.
    async fn get(&self, identity: &Arc<Identity>, path: &str, token: &str) -> Reply {
        let watch = certs::IdentityWatch::fixed(identity.clone());
        let mut config = certs::tls::client_config(watch, BACKEND.parse().unwrap()).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = tls_connect(self.sidecar.inbound_addr.unwrap(), Arc::new(config)).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header("host", "budget-backend")
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        read_reply(sender.send_request(request).await.unwrap()).await
    }

    fn entra(&self, roles: &[&str], cnf_x5t: Option<String>) -> String {
        self.mesh
            .idp
            .token(&TokenSpec {
                tenant: TENANT.into(),
                audiences: vec![AUDIENCE.into()],
                client_id: "client-report".into(),
                oid: REPORT_OID.into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                ttl: Duration::from_secs(600),
                v1: false,
                cnf_x5t,
            })
            .unwrap()
    }
}

fn spec<'a>(audience: &'a str, agent: &'a str, roles: &'a [&'a str], cnf_x5t: Option<&'a str>) -> IssuerToken<'a> {
    IssuerToken { audience, agent, roles, ttl: Duration::from_secs(600), cnf_x5t }
}

/// `(status, layer, reason)`; `reason` is `allowed` for a 200.
fn outcome(reply: &Reply) -> (u16, String) {
    if reply.status == 200 {
        return (200, "allowed".into());
    }
    (reply.status, reply.denied().1)
}

/// Signs `claims` with `issuer`'s current key (a token it never issued).
fn forged(issuer: &DevIssuer, claims: &Value) -> String {
    issuer.key().unwrap().sign(claims).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_three_issuers_each_verified_by_their_own_keys_and_claim_shapes() {
    let stand = Stand::start().await;
    let (report, _) = stand.identity(REPORT);
    let read = &["Budget.Read"][..];
    let kc = |agent: &str, roles: &[&str]| stand.keycloak.token(&spec(KC_AUDIENCE, agent, roles, None)).unwrap();
    let a0 = |agent: &str, roles: &[&str]| stand.auth0.token(&spec(A0_AUDIENCE, agent, roles, None)).unwrap();

    let cases: Vec<(&str, String, (u16, &str))> = vec![
        ("entra", stand.entra(read, None), (200, "allowed")),
        ("keycloak: azp, realm_access.roles, ES256", kc("budget-report", read), (200, "allowed")),
        ("auth0: namespaced agent claim, permissions, EdDSA", a0("budget-report", read), (200, "allowed")),
        ("keycloak: another agent's token", kc("budget-approval", read), (403, "jwt_caller_mismatch")),
        ("keycloak: agent IDs compare exactly", kc("Budget-Report", read), (403, "jwt_caller_mismatch")),
        ("keycloak: role missing", kc("budget-report", &[]), (403, "insufficient_roles")),
        ("auth0: role missing", a0("budget-report", &["Budget.Write"]), (403, "insufficient_roles")),
    ];
    for (name, token, want) in &cases {
        let got = outcome(&stand.get(&report, "/read", token).await);
        assert_eq!((got.0, got.1.as_str()), *want, "{name}");
    }

    // Refused before any key is tried, or by the wrong issuer's keys.
    let mut claims = stand.keycloak.claims(&spec(KC_AUDIENCE, "budget-report", read, None));
    let (stranger, _, _task) = issuer::start(Shape::Keycloak, Algorithm::ES256).await.unwrap();
    let unknown_issuer = stranger.token(&spec(KC_AUDIENCE, "budget-report", read, None)).unwrap();
    claims["iss"] = json!(stand.auth0.issuer());
    claims["aud"] = json!(A0_AUDIENCE);
    claims[AUTH0_AGENT_CLAIM] = json!("budget-report");
    // Keycloak's key signs a token that names Auth0: Auth0's keys lack it.
    let other_issuers_key = forged(&stand.keycloak, &claims);
    let auth0_fetches = stand.auth0.jwks_fetches();
    let entra_key = stand.mesh.idp.current_key().unwrap();
    // Entra's RSA key, RS256 (which Auth0 allows): still not Auth0's key.
    let entra_signed_for_auth0 = entra_key.sign(&claims).unwrap();
    // ES256 is not allowed for Auth0 here, RS256 not for Keycloak.
    let mut kc_claims = stand.keycloak.claims(&spec(KC_AUDIENCE, "budget-report", read, None));
    let rs256_for_keycloak = entra_key.sign(&kc_claims).unwrap();
    kc_claims["realm_access"] = json!({"roles": "Budget.Read"});
    let roles_a_string = forged(&stand.keycloak, &kc_claims);
    kc_claims["realm_access"] = json!({"roles": ["Budget.Read", 7]});
    let roles_not_all_strings = forged(&stand.keycloak, &kc_claims);
    let refused = [
        ("an issuer not configured", unknown_issuer, (401, "jwt_wrong_issuer")),
        ("another issuer's key (ES256 not allowed for auth0)", other_issuers_key, (401, "jwt_invalid")),
        ("another issuer's key (an allowed algorithm)", entra_signed_for_auth0, (401, "jwt_invalid")),
        ("an algorithm the issuer does not allow", rs256_for_keycloak, (401, "jwt_invalid")),
        ("roles claim a string", roles_a_string, (401, "jwt_invalid")),
        ("roles claim with a number", roles_not_all_strings, (401, "jwt_invalid")),
    ];
    for (name, token, want) in &refused {
        let got = outcome(&stand.get(&report, "/read", token).await);
        assert_eq!((got.0, got.1.as_str()), *want, "{name}");
    }
    assert!(stand.auth0.jwks_fetches() > auth0_fetches, "an unknown kid makes only the named issuer refetch");

    // budget-approval's entry takes tokens from Keycloak only: the same agent
    // ID in an Auth0 token is refused.
    let (approval, _) = stand.identity(APPROVAL);
    let got = outcome(&stand.get(&approval, "/read", &kc("budget-approval", &[])).await);
    assert_eq!(got, (200, "allowed".into()), "keycloak, a pinned issuer");
    let got = outcome(&stand.get(&approval, "/read", &a0("budget-approval", &[])).await);
    assert_eq!(got, (401, "jwt_wrong_issuer".into()), "auth0, not a pinned issuer");

    // The Keycloak-shaped issuer rotates: the new key is fetched on first sight.
    stand.keycloak.rotate().unwrap();
    let got = outcome(&stand.get(&report, "/read", &kc("budget-report", read)).await);
    assert_eq!(got, (200, "allowed".into()), "rotated key");

    // /mgmt/oauth-status lists every issuer with its keys.
    let mgmt = stand.sidecar.mgmt_addr.unwrap();
    let status = super::support::http(
        mgmt,
        "GET",
        "x",
        "/mgmt/oauth-status",
        &[("x-spiffe-admin-key", super::mesh::VIEWER_KEY)],
    )
    .await;
    let names: Vec<String> =
        status.json()["issuers"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["entra", "keycloak", "auth0"], "{}", status.body);
    assert!(status.json()["issuers"].as_array().unwrap().iter().all(|i| i["key_count"].as_u64() > Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_token_only_works_on_a_connection_with_that_certificate() {
    let stand = Stand::start().await;
    let (report, thumbprint) = stand.identity(REPORT);
    let kc = |cnf: Option<&str>| stand.keycloak.token(&spec(KC_AUDIENCE, "budget-report", &[], cnf)).unwrap();

    // `require_bound_token: true` on /bound.
    let (_, elsewhere) = stand.identity(APPROVAL);
    for (name, token, want) in [
        ("unbound", kc(None), (401, "jwt_not_bound")),
        ("bound to this SVID", kc(Some(&thumbprint)), (200, "allowed")),
        ("bound to another certificate", kc(Some(&elsewhere)), (401, "jwt_not_bound")),
        ("entra, bound to this SVID", stand.entra(&[], Some(thumbprint.clone())), (200, "allowed")),
        ("entra, unbound", stand.entra(&[], None), (401, "jwt_not_bound")),
    ] {
        let got = outcome(&stand.get(&report, "/bound", &token).await);
        assert_eq!((got.0, got.1.as_str()), want, "{name}");
    }

    // A bound token is checked on every rule, required or not (RFC 8705 3):
    // a stolen one is useless on another connection.
    let read = &["Budget.Read"][..];
    let stolen = stand.keycloak.token(&spec(KC_AUDIENCE, "budget-report", read, Some(&elsewhere))).unwrap();
    assert_eq!(outcome(&stand.get(&report, "/read", &stolen).await), (401, "jwt_not_bound".into()));
    let mut claims = stand.keycloak.claims(&spec(KC_AUDIENCE, "budget-report", read, None));
    for cnf in [
        json!("x5t"),
        json!({"x5t#S256": 7}),
        json!({"x5t#S256": "short"}),
        json!({"x5t#S256": format!("{thumbprint}=")}),
    ] {
        claims["cnf"] = cnf.clone();
        let got = outcome(&stand.get(&report, "/read", &forged(&stand.keycloak, &claims)).await);
        assert_eq!(got, (401, "jwt_not_bound".into()), "malformed cnf {cnf}");
    }
    // Another confirmation method (DPoP's `jkt`) cannot be checked here: the
    // token is refused, not used as a plain bearer token (alone or next to x5t#S256).
    let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
    for cnf in [json!({"jkt": jkt}), json!({"jkt": jkt, "x5t#S256": thumbprint})] {
        claims["cnf"] = cnf.clone();
        let got = outcome(&stand.get(&report, "/read", &forged(&stand.keycloak, &claims)).await);
        assert_eq!(got, (401, "jwt_not_bound".into()), "{cnf}");
    }

    // A new SVID (a rotation): the token bound to the old one no longer
    // works, one bound to the new one does.
    let old = kc(Some(&thumbprint));
    let (rotated, new_thumbprint) = stand.identity(REPORT);
    assert_ne!(thumbprint, new_thumbprint);
    assert_eq!(outcome(&stand.get(&rotated, "/bound", &old).await), (401, "jwt_not_bound".into()));
    assert_eq!(outcome(&stand.get(&rotated, "/bound", &kc(Some(&new_thumbprint))).await), (200, "allowed".into()));
}
