//! The scenarios: each target is started by the harness on loopback, with
//! its own dev CA (identity `source: dev` in the sidecars) and the dev IdP
//! for Layer 3.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certs::dev::DevCa;
use certs::{IdentityWatch, TrustDomain};
use proxy::cmd::dev_idp::{DevIdp, TokenSpec};

use crate::load::{RequestSpec, Target};
pub use crate::peers::Placement;
use crate::sidecar::Sidecar;

const TRUST_DOMAIN: &str = "bench.example";
const BACKEND: &str = "spiffe://bench.example/budget-backend";
const CALLER: &str = "spiffe://bench.example/budget-report";
const CALLER_OID: &str = "00000000-0000-4000-8000-0000000000b1";
const TENANT: &str = "bbbbbbbb-0000-4000-8000-000000000001";
const AUDIENCE: &str = "api://budget-backend";
/// `inbound-deny`'s paths (a number follows): no rule of `POLICY_ALL` matches them.
const SCAN_PATH: &str = "/budget/scan/";

/// Layer 1 plus the smallest Layer 2 (a policy is required with `inbound`).
const POLICY_L1: &str = "version: '5.0'
trust_domain: bench.example
default_action: deny
policies:
  - {name: budget-report, spiffe_id: 'spiffe://bench.example/budget-report', rules: [{path: '/*', methods: ['*'], action: allow}]}
";

/// Every layer: RBAC, a required JWT bound to the caller with a role, agent
/// state, risk and the finance tag (the reference policy's shape).
const POLICY_ALL: &str = "version: '5.0'
trust_domain: bench.example
default_action: deny
admin_governance: {enabled: true, target_agent_tag: finance}
policies:
  - name: budget-report
    spiffe_id: 'spiffe://bench.example/budget-report'
    entra_agent_id: '00000000-0000-4000-8000-0000000000b1'
    ca: {agent_state: enabled, agent_tag: finance}
    rules:
      - {path: /budget/read, methods: [GET, POST], action: allow, require_jwt: true, required_roles: [Budget.Read]}
      - {path: /budget/submit, methods: [POST], action: deny}
";

pub const NAMES: [&str; 12] = [
    "direct",
    "inbound-l1",
    "inbound-all",
    "inbound-pdp",
    "inbound-deny",
    "chain",
    "handshake",
    "rotation",
    "nginx",
    "haproxy",
    "envoy",
    "envoy-authz",
];
pub const PEERS: [&str; 4] = ["nginx", "haproxy", "envoy", "envoy-authz"];
/// Scenarios whose ratios are the issue's targets, measured next to each
/// other in every round (`inbound-all` against nginx and against `chain`,
/// `inbound-l1` against HAProxy): this machine's speed drifts over tens of
/// seconds, and adjacent runs share the drift where distant ones do not.
pub const ADJACENT: [&[&str]; 2] = [&["nginx", "inbound-all", "chain"], &["inbound-l1", "haproxy"]];

/// In `rotation`, the SVID lives 4 s (renewed at half-life: every 2 s) and
/// the policy file is rewritten every 5 s.
pub const ROTATION_SVID_TTL: Duration = Duration::from_secs(4);
/// `--tiny`'s `rotation` run takes well under a second, so it waits for the
/// next renewal halfway (see `main.rs`): a 3 s SVID keeps that wait at most
/// 1.5 s. Not shorter: `not_after` is truncated to the second and the expiry
/// watchdog fires at it, so 2 s would leave no margin before the renewal.
pub const TINY_ROTATION_SVID_TTL: Duration = Duration::from_secs(3);
pub const ROTATION_POLICY_EVERY: Duration = Duration::from_secs(5);
/// The lifetime of the SVIDs written as files (not renewed): longer than
/// any run (`--requests` runs stop after an hour).
const SVID_FILES_TTL: Duration = Duration::from_secs(24 * 3600);

/// Everything the scenarios run against, started once.
pub struct Stack {
    pub app: SocketAddr,
    pub l1: Sidecar,
    pub all: Sidecar,
    /// `all` plus an external AuthZEN PDP (`authzen.pdp`) that allows: the
    /// cost of a cached PDP decision.
    pub pdp: Sidecar,
    /// `all` with an audit sink (`audit.stdout`), for `inbound-deny`'s path
    /// scan: its own process, so the decisions the scan caches never count
    /// in `inbound-all`'s memory.
    pub deny: Sidecar,
    pub caller: Sidecar,
    pub rotating: Sidecar,
    pub rotating_policy: std::path::PathBuf,
    /// Present when installed (and not skipped).
    pub nginx: Option<Sidecar>,
    pub haproxy: Option<Sidecar>,
    pub envoy: Option<Sidecar>,
    pub envoy_authz: Option<Sidecar>,
    pub tls: Arc<rustls::ClientConfig>,
    pub request: RequestSpec,
    /// `inbound-deny`'s: a path no rule allows, a new one on every request.
    pub scan: RequestSpec,
    _idp: Arc<DevIdp>,
    // Last (fields drop in order): the sidecars stop before their files,
    // the app and the IdP go away.
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// `on`: where the app, the sidecars and the peers run (the load goes
    /// elsewhere) and with how many workers each; `rotation_ttl`: the
    /// lifetime of the `rotation` sidecar's SVIDs.
    pub fn start(on: Placement<'_>, with_peers: bool, rotation_ttl: Duration) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("a2a-bench").tempdir()?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(on.workers).thread_name("bench-app").enable_all();
        // Not the current thread (the harness's): only the app's workers.
        crate::sidecar::pin_threads(&mut builder, on.cpus);
        let runtime = builder.build()?;
        let (app, idp, pdp_addr) = runtime.block_on(async {
            let (app, _) = proxy::cmd::demo::sample_app::start().await?;
            let (idp, _, _) = proxy::cmd::dev_idp::start(&dir.path().join("idp")).await?;
            let pdp = allowing_pdp().await?;
            anyhow::Ok((app, idp, pdp))
        })?;
        let ca_dir = dir.path().join("ca");
        let ca = DevCa::init(&ca_dir, &TrustDomain::new(TRUST_DOMAIN)?)?;

        let write = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        write("policy-l1.yaml", POLICY_L1)?;
        write("policy-all.yaml", POLICY_ALL)?;
        let rotating_policy = write("policy-rotating.yaml", POLICY_ALL)?;
        // The SVIDs as files (`identity.files`, as a production build reads
        // them): any a2a-sidecar binary can serve these configs
        // (`A2A_BENCH_SIDECAR_BIN`). Only `rotation` needs the dev CA's renewals.
        let svid_files = |name: &str, id: &str| -> anyhow::Result<String> {
            let out = dir.path().join(name);
            certs::dev::write_svid_files(&out, &ca.issue(&id.parse()?, SVID_FILES_TTL)?, ca.bundle_pem())?;
            Ok(files_identity(&out))
        };
        let backend_identity = svid_files("svid-backend", BACKEND)?;
        let backend_yaml =
            |identity: &str, policy: &str, jwt: Option<&str>| backend_yaml(identity, app, policy, jwt, on.workers);
        let cpu = on.cpus;
        let l1 = backend_yaml(&backend_identity, "policy-l1.yaml", None);
        let l1 = Sidecar::spawn(&write("l1.yaml", &l1)?, cpu)?;
        let jwt =
            format!("jwt: {{tenant_id: '{TENANT}', audiences: ['{AUDIENCE}'], authority: '{}'}}\n", idp.authority());
        let all = backend_yaml(&backend_identity, "policy-all.yaml", Some(&jwt));
        let all = Sidecar::spawn(&write("all.yaml", &all)?, cpu)?;
        let authzen =
            format!("{jwt}authzen: {{pdp: {{url: 'http://{pdp_addr}/access/v1/evaluation', cache_ttl: 1h}}}}\n");
        let pdp = backend_yaml(&backend_identity, "policy-all.yaml", Some(&authzen));
        let pdp = Sidecar::spawn(&write("pdp.yaml", &pdp)?, cpu)?;
        // Every decision an event on stdout, as `deploy/k8s` configures it.
        let deny = backend_yaml(&backend_identity, "policy-all.yaml", Some(&format!("{jwt}audit: {{stdout: true}}\n")));
        let deny = Sidecar::spawn(&write("deny.yaml", &deny)?, cpu)?;
        let rotation_ttl = format!("{}ms", rotation_ttl.as_millis());
        let dev_identity = format!(
            "{{source: dev, dev: {{ca_dir: '{ca}', id: '{BACKEND}', ttl: {rotation_ttl}}}}}",
            ca = ca_dir.display()
        );
        let rotating = backend_yaml(&dev_identity, "policy-rotating.yaml", Some(&jwt));
        let rotating = Sidecar::spawn_here(&write("rotating.yaml", &rotating)?, cpu)?;
        let target = all.inbound.ok_or_else(|| anyhow::anyhow!("the backend sidecar has no inbound address"))?;
        let caller_identity = svid_files("svid-caller", CALLER)?;
        let caller = Sidecar::spawn(&write("caller.yaml", &caller_yaml(&caller_identity, target, on.workers))?, cpu)?;

        let token = idp.token(&TokenSpec {
            tenant: TENANT.into(),
            audiences: vec![AUDIENCE.into()],
            client_id: "budget-report-app".into(),
            oid: CALLER_OID.into(),
            roles: vec!["Budget.Read".into()],
            ttl: Duration::from_secs(3600),
            v1: false,
            cnf_x5t: None,
        })?;
        let peer = |name: &str, started: anyhow::Result<Sidecar>| {
            started.map_err(|e| eprintln!("skipping {name}: {e:#}")).ok()
        };
        let (mut nginx, mut haproxy, mut envoy, mut envoy_authz) = (None, None, None, None);
        if with_peers {
            nginx = peer("nginx", crate::peers::nginx(dir.path(), &ca, BACKEND, app, on));
            haproxy = peer("haproxy", crate::peers::haproxy(dir.path(), &ca, BACKEND, app, on));
            envoy = peer("envoy", crate::peers::envoy(dir.path(), &ca, BACKEND, app, on, None));
            let authz = envoy_authz_spec(&runtime, &idp, &token)?;
            envoy_authz = peer("envoy-authz", crate::peers::envoy(dir.path(), &ca, BACKEND, app, on, Some(&authz)));
        }
        let identity = IdentityWatch::fixed(Arc::new(ca.identity(&CALLER.parse()?, Duration::from_secs(3600), &[])?));
        let mut tls = certs::tls::client_config(identity, BACKEND.parse()?)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let request = RequestSpec::allowed("budget-backend", "/budget/read", token.into());
        let scan = request.scan(SCAN_PATH, hyper::StatusCode::FORBIDDEN);
        Ok(Self {
            _dir: dir,
            _runtime: runtime,
            app,
            l1,
            all,
            pdp,
            deny,
            caller,
            rotating,
            rotating_policy,
            nginx,
            haproxy,
            envoy,
            envoy_authz,
            tls: Arc::new(tls),
            request,
            scan,
            _idp: idp,
        })
    }

    /// Every process the harness started (for telling its CPU from others').
    pub fn processes(&self) -> Vec<&Sidecar> {
        let mut all = vec![&self.l1, &self.all, &self.pdp, &self.deny, &self.caller, &self.rotating];
        all.extend(self.nginx.as_ref());
        all.extend(self.haproxy.as_ref());
        all.extend(self.envoy.as_ref());
        all.extend(self.envoy_authz.as_ref());
        all
    }

    /// Scenario `name`: where its requests go, which, and whose CPU and memory count.
    pub fn scenario(&self, name: &str) -> Option<Scenario<'_>> {
        let mtls = |s: &Sidecar| s.inbound.map(|a| Target::Mtls(a, self.tls.clone()));
        let (target, sidecars) = match name {
            "direct" => (Target::Plain(self.app), vec![]),
            "inbound-l1" | "handshake" => (mtls(&self.l1)?, vec![&self.l1]),
            "inbound-all" => (mtls(&self.all)?, vec![&self.all]),
            "inbound-pdp" => (mtls(&self.pdp)?, vec![&self.pdp]),
            "inbound-deny" => (mtls(&self.deny)?, vec![&self.deny]),
            "chain" => (Target::Plain(self.caller.outbound?), vec![&self.caller, &self.all]),
            "rotation" => (mtls(&self.rotating)?, vec![&self.rotating]),
            "nginx" | "haproxy" | "envoy" | "envoy-authz" => {
                let peer = match name {
                    "nginx" => self.nginx.as_ref()?,
                    "haproxy" => self.haproxy.as_ref()?,
                    "envoy" => self.envoy.as_ref()?,
                    _ => self.envoy_authz.as_ref()?,
                };
                (mtls(peer)?, vec![peer])
            }
            _ => return None,
        };
        let request = if name == "inbound-deny" { &self.scan } else { &self.request };
        Some(Scenario { target, new_connection_per_request: name == "handshake", sidecars, request })
    }
}

/// What one scenario measures.
pub struct Scenario<'a> {
    pub target: Target,
    /// `handshake`: a new connection (a full mTLS handshake) for every request.
    pub new_connection_per_request: bool,
    /// The processes whose CPU and memory count.
    pub sidecars: Vec<&'a Sidecar>,
    pub request: &'a RequestSpec,
}

/// An AuthZEN PDP on 127.0.0.1:0 that allows every evaluation (its
/// answers are cached by the sidecar, so it is asked about once).
async fn allowing_pdp() -> anyhow::Result<SocketAddr> {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = service_fn(|_request: hyper::Request<hyper::body::Incoming>| async {
                let body = http_body_util::Full::new(bytes::Bytes::from_static(br#"{"decision": true}"#));
                let mut response = hyper::Response::new(body);
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
                Ok::<_, std::convert::Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    Ok(addr)
}

/// Envoy's `jwt_authn` gets the IdP's current JWKS inline and the token's issuer.
fn envoy_authz_spec(
    runtime: &tokio::runtime::Runtime,
    idp: &DevIdp,
    token: &str,
) -> anyhow::Result<crate::peers::EnvoyAuthz> {
    use base64::Engine;
    let authority: SocketAddr = idp.authority().trim_start_matches("http://").parse()?;
    let jwks = runtime
        .block_on(crate::sidecar::http_get(authority, &format!("/{TENANT}/discovery/v2.0/keys")))
        .ok_or_else(|| anyhow::anyhow!("the dev IdP served no JWKS"))?;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    Ok(crate::peers::EnvoyAuthz {
        issuer: claims.get("iss").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned(),
        audience: AUDIENCE.to_owned(),
        jwks: String::from_utf8(jwks.to_vec())?,
        caller: CALLER.to_owned(),
    })
}

/// A new version of the rotating policy, same rules (`n` makes the file differ).
pub fn rotating_policy(n: u32) -> String {
    POLICY_ALL.replacen("version: '5.0'", &format!("version: '5.{n}'"), 1)
}

/// The `identity` of a config whose SVID, key and bundle are PEM files in `dir`.
fn files_identity(dir: &Path) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    format!(
        "{{source: files, files: {{cert: '{}', key: '{}', bundle: '{}'}}}}",
        file("svid.pem"),
        file("svid_key.pem"),
        file("svid_bundle.pem")
    )
}

fn backend_yaml(identity: &str, app: SocketAddr, policy: &str, jwt: Option<&str>, workers: usize) -> String {
    format!(
        "identity: {identity}
runtime: {{worker_threads: {workers}}}
telemetry: {{listen: '127.0.0.1:0', log_format: text}}
inbound: {{listen: '127.0.0.1:0', upstream: 'http://{app}', allowed_callers: ['{CALLER}']}}
policy: {{file: {policy}}}
{jwt}",
        jwt = jwt.unwrap_or_default()
    )
}

fn caller_yaml(identity: &str, target: SocketAddr, workers: usize) -> String {
    format!(
        "identity: {identity}
runtime: {{worker_threads: {workers}}}
telemetry: {{listen: '127.0.0.1:0', log_format: text}}
outbound:
  listen: '127.0.0.1:0'
  routes:
    - {{name: budget-backend, upstream: 'https://{target}', server_id: '{BACKEND}'}}
"
    )
}
