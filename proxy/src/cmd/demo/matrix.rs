//! The enforcement matrix: every layer allowing and denying, live changes
//! through `/mgmt`, the Graph emulator and the policy file, and rotations of
//! SVIDs and signing keys under traffic.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{
    APPROVAL, AUDIENCE, Caller, GITHUB, GOOGLE, KEYCLOAK_AGENT, KEYCLOAK_AUDIENCE, MENUS, REPORT, SVID_TTL, Stack,
    TENANT, send,
};
use crate::app::App;
use crate::cmd::dev_idp::TokenSpec;
use crate::cmd::dev_idp::issuer::IssuerToken;

/// How long a live change (policy file, Graph tag) may take to show.
const PROPAGATION: Duration = Duration::from_secs(10);

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub case: &'static str,
    pub caller: &'static str,
    pub request: String,
    /// `"<status> <reason>"`, or several such separated by `" | "` when
    /// more than one outcome is right.
    pub expected: String,
    pub got: String,
    pub layer: String,
    pub reason: String,
    /// The call's latency; for a live change, the time until it took effect.
    pub latency: Duration,
}

impl Outcome {
    pub fn matched(&self) -> bool {
        self.expected.split(" | ").any(|expected| expected == self.got)
    }
}

/// Progress of [`run_matrix`].
pub enum Event<'a> {
    Started(&'static str),
    Finished(&'a Outcome),
}

/// One call through a caller's outbound sidecar, and what it should get.
struct Case {
    name: &'static str,
    caller: Caller,
    method: &'static str,
    path: &'static str,
    status: u16,
    reason: &'static str,
}

const fn case(
    name: &'static str,
    caller: Caller,
    request: (&'static str, &'static str),
    want: (u16, &'static str),
) -> Case {
    Case { name, caller, method: request.0, path: request.1, status: want.0, reason: want.1 }
}

impl Case {
    fn expected(&self) -> String {
        format!("{} {}", self.status, self.reason)
    }
}

/// What one call got: status, layer, reason, latency.
struct Reply {
    status: u16,
    layer: String,
    reason: String,
    latency: Duration,
}

impl Reply {
    fn got(&self) -> String {
        format!("{} {}", self.status, self.reason)
    }
}

impl Stack {
    async fn call(&self, caller: Caller, method: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let started = Instant::now();
        let (status, body) =
            send(self.outbound(caller)?, method, "budget-backend", path, headers, String::new()).await?;
        let latency = started.elapsed();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let field = |k: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
        let (layer, reason) =
            if status < 300 { ("none".into(), "allowed".into()) } else { (field("layer"), field("reason")) };
        Ok(Reply { status, layer, reason, latency })
    }

    /// Calls once and compares.
    async fn check(&self, case: &Case, headers: &[(&str, &str)]) -> anyhow::Result<Outcome> {
        let reply = self.call(case.caller, case.method, case.path, headers).await?;
        Ok(outcome(case, &reply, reply.latency))
    }

    /// Calls until the expected answer comes (a live change propagating) or
    /// [`PROPAGATION`] passes; the latency is the time it took.
    async fn check_until(&self, case: &Case) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        loop {
            let reply = self.call(case.caller, case.method, case.path, &[]).await?;
            let done = reply.got() == case.expected();
            if done || started.elapsed() > PROPAGATION {
                return Ok(outcome(case, &reply, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn outcome(case: &Case, reply: &Reply, latency: Duration) -> Outcome {
    Outcome {
        case: case.name,
        caller: case.caller.name,
        request: format!("{} {}", case.method, case.path),
        expected: case.expected(),
        got: reply.got(),
        layer: reply.layer.clone(),
        reason: reply.reason.clone(),
        latency,
    }
}

/// Runs the matrix, reporting each case to `progress` as it starts and ends.
/// Every change it makes is undone before it returns.
pub async fn run_matrix(stack: &Stack, mut progress: impl FnMut(Event<'_>)) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();

    macro_rules! step {
        ($name:expr, $body:expr) => {{
            progress(Event::Started($name));
            let outcome: Outcome = $body;
            progress(Event::Finished(&outcome));
            outcomes.push(outcome);
        }};
    }
    let read = ("GET", "/budget/read");
    let submit = ("POST", "/budget/submit");
    let allowed = (200, "allowed");

    // Layers 1-4 all allow; the federated trust domain is accepted at Layer 1.
    let c = case("all five layers allow", REPORT, read, allowed);
    step!(c.name, stack.check(&c, &[]).await?);
    let c = case("federated trust domain (gcp)", GOOGLE, read, allowed);
    step!(c.name, stack.check(&c, &[]).await?);

    // Layer 1: the allow-list, changed live through /mgmt.
    let not_allowed = (502, "upstream_rejected_identity");
    let c = case("L1 mtls: not in the allow-list", MENUS, read, not_allowed);
    step!(c.name, stack.check(&c, &[]).await?);
    let c = case("L1: added via /mgmt, RBAC denies", MENUS, read, (403, "rule_denied"));
    step!(c.name, {
        stack.set_allowed(&[REPORT, APPROVAL, GOOGLE, GITHUB, MENUS]).await?;
        stack.check(&c, &[]).await?
    });
    // Removal closes the caller's open connections; a request that still
    // finds its pooled connection open meets the per-request Layer 1 check.
    let c = case("L1: removed via /mgmt", MENUS, read, not_allowed);
    step!(c.name, {
        stack.set_allowed(&super::ALLOWED).await?;
        let mut outcome = stack.check(&c, &[]).await?;
        outcome.expected.push_str(" | 403 not_allowed");
        outcome
    });

    // Layer 2: RBAC (Cedar compiled from the reference YAML), on canonical paths.
    for c in [
        case("L2 rbac: deny rule", REPORT, submit, (403, "rule_denied")),
        case("L2 rbac: no rule matches", REPORT, ("GET", "/budget/admin"), (403, "no_matching_rule")),
        case("path: encoded slash refused", REPORT, ("GET", "/budget%2Fread"), (400, "bad_path")),
        case("path: dot-segments resolved", REPORT, ("GET", "/admin/../budget/read"), allowed),
    ] {
        step!(c.name, stack.check(&c, &[]).await?);
    }

    // Layer 3: Entra JWTs obtained by federation, roles, and a key rotation.
    let c = case("L3 oauth: role Budget.Submit", APPROVAL, submit, allowed);
    step!(c.name, stack.check(&c, &[]).await?);
    let c = case("L3: no Entra token", GITHUB, read, (401, "jwt_required"));
    step!(c.name, stack.check(&c, &[]).await?);
    let c = case("L3: app's own token invalid", REPORT, read, (401, "jwt_invalid"));
    step!(c.name, stack.check(&c, &[("authorization", "Bearer not-a-jwt")]).await?);
    let c = case("L3: JWKS key rotated", REPORT, read, allowed);
    step!(c.name, stack.new_signing_key(&c).await?);

    // Layer 3 beyond Entra: a second issuer, routed by `iss`; and tokens
    // bound to the caller's certificate (RFC 8705).
    let c = case("L3 any IdP: Keycloak token", REPORT, read, allowed);
    step!(c.name, {
        let roles = REPORT.roles;
        let spec =
            IssuerToken { audience: KEYCLOAK_AUDIENCE, agent: KEYCLOAK_AGENT, roles, ttl: TOKEN_TTL, cnf_x5t: None };
        let token = stack.keycloak.token(&spec)?;
        stack.with_app_token(&c, token, None).await?
    });
    let c = case("L3 RFC 8705: bound to its SVID", REPORT, read, allowed);
    step!(c.name, stack.bound_token(&c, REPORT).await?);
    let c = case("L3 RFC 8705: another's SVID", REPORT, read, (401, "jwt_not_bound"));
    step!(c.name, stack.bound_token(&c, APPROVAL).await?);

    // A policy hot reload: budget-report's submit rule now needs a role it lacks.
    let c = case("policy reload: needs a role", REPORT, submit, (403, "insufficient_roles"));
    step!(c.name, {
        let edited = super::POLICY.replace(REPORT_SUBMIT_DENY, REPORT_SUBMIT_WITH_ROLE);
        anyhow::ensure!(edited != super::POLICY, "the reference policy has no budget-report submit rule to edit");
        stack.write_policy(&edited)?;
        stack.check_until(&c).await?
    });
    let c = case("policy reload: restored", REPORT, submit, (403, "rule_denied"));
    step!(c.name, {
        stack.write_policy(super::POLICY)?;
        stack.check_until(&c).await?
    });

    // Layer 4a: an operator's risk push through /mgmt wins over Graph.
    let c = case("L4a risk: pushed high (/mgmt)", REPORT, read, (403, "high_risk_agent_blocked"));
    step!(c.name, {
        stack.push_risk(REPORT, serde_json::json!("high")).await?;
        stack.check(&c, &[]).await?
    });
    let c = case("L4a: push removed (null)", REPORT, read, allowed);
    step!(c.name, {
        stack.push_risk(REPORT, serde_json::Value::Null).await?;
        stack.check(&c, &[]).await?
    });

    // Layer 4b: the caller's custom security attribute, changed in Graph.
    let oid = REPORT.oid.unwrap_or_default();
    let c = case("L4b tags: Graph tag changed", REPORT, read, (403, "agent_tag_mismatch"));
    step!(c.name, {
        stack.idp.set_graph_attribute(oid, "AgentIdentity", "Department", "marketing");
        stack.check_until(&c).await?
    });
    let c = case("L4b: Graph tag restored", REPORT, read, allowed);
    step!(c.name, {
        stack.idp.set_graph_attribute(oid, "AgentIdentity", "Department", "finance");
        stack.check_until(&c).await?
    });

    // After Layers 1-4 allowed: the external AuthZEN PDP (layer `pdp`).
    let c = case("pdp: the external PDP denies", REPORT, read, (403, "pdp_denied"));
    step!(c.name, {
        stack.pdp.deny(REPORT.id);
        stack.check_until(&c).await?
    });
    let c = case("pdp: PDP down, fails closed", REPORT, read, (503, "pdp_unavailable"));
    step!(c.name, {
        stack.pdp.break_down();
        stack.check_until(&c).await?
    });
    let c = case("pdp: the PDP allows again", REPORT, read, allowed);
    step!(c.name, {
        stack.pdp.allow();
        stack.check_until(&c).await?
    });
    // The sidecar as a PDP: its policy, asked over AuthZEN (`authzen.listen`).
    step!("AuthZEN: backend as the PDP", stack.evaluate("AuthZEN: backend as the PDP", REPORT, submit, false).await?);

    step!("SVID rotation under traffic", stack.traffic_across_rotation().await?);
    Ok(outcomes)
}

/// budget-report's submit rule in the reference policy, and its replacement.
const REPORT_SUBMIT_DENY: &str = "      - path: \"/budget/submit\"
        methods: [\"POST\"]
        action: deny
";
const REPORT_SUBMIT_WITH_ROLE: &str = "      - path: \"/budget/submit\"
        methods: [\"POST\"]
        action: allow
        require_jwt: true
        required_roles: [\"Budget.Submit\"]
";

/// Tokens the demo's app mints itself live this long.
const TOKEN_TTL: Duration = Duration::from_secs(600);

impl Stack {
    /// The token the app sent in row `case` (where it sent its own), and the
    /// certificate (DER) its sidecar presented then, if that mattered.
    pub fn app_token(&self, case: &str) -> Option<(String, Option<Vec<u8>>)> {
        let tokens = self.app_tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.iter().rev().find(|t| t.case == case).map(|t| (t.token.clone(), t.cert.clone()))
    }

    /// The app sends `token` itself (its sidecar passes it on); recorded for `explain`.
    async fn with_app_token(&self, case: &Case, token: String, cert: Option<Vec<u8>>) -> anyhow::Result<Outcome> {
        let bearer = format!("Bearer {token}");
        let outcome = self.check(case, &[("authorization", &bearer)]).await?;
        let recorded = super::AppToken { case: case.name, token, cert };
        self.app_tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(recorded);
        Ok(outcome)
    }

    /// The leaf certificate (DER) `caller`'s sidecar presents now.
    fn presented(&self, caller: Caller) -> anyhow::Result<Vec<u8>> {
        let app =
            self.callers.iter().find(|(c, _)| c.name == caller.name).map(|(_, app)| app).context("no such caller")?;
        let identity = app.identity.current().context("the caller has no SVID")?;
        Ok(identity.svid().chain().first().context("an SVID without a certificate")?.to_vec())
    }

    /// The case's caller presents a token bound (RFC 8705) to the SVID
    /// `bound_to`'s sidecar presents now. SVIDs rotate every few seconds
    /// here: a rotation between minting and the call is retried.
    async fn bound_token(&self, case: &Case, bound_to: Caller) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        loop {
            let bound = self.presented(bound_to)?;
            let own = if bound_to.name == case.caller.name { bound.clone() } else { self.presented(case.caller)? };
            let x5t = crate::layers::oauth::thumbprint_s256(&bound);
            let token = self.token_bound_to(case.caller, x5t)?;
            let outcome = self.with_app_token(case, token, Some(own)).await?;
            if outcome.matched() || started.elapsed() > PROPAGATION {
                return Ok(outcome);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks budget-backend's own AuthZEN PDP about `caller` doing `request`;
    /// the row shows the decision and its reason.
    async fn evaluate(
        &self,
        name: &'static str,
        caller: Caller,
        request: (&'static str, &'static str),
        decision: bool,
    ) -> anyhow::Result<Outcome> {
        let want_reason = if decision { "allowed" } else { "rule_denied" };
        let addr = self.backend.authzen_addr.context("budget-backend has no authzen listener")?;
        let body = serde_json::json!({
            "subject": {"type": "spiffe_id", "id": caller.id},
            "action": {"name": request.0},
            "resource": {"type": "http_path", "id": request.1},
        });
        let headers = [("x-spiffe-admin-key", self.admin_key.as_str()), ("content-type", "application/json")];
        let started = Instant::now();
        let path = "/access/v1/evaluation";
        let (status, answer) = send(addr, "POST", "localhost", path, &headers, body.to_string()).await?;
        anyhow::ensure!(status == 200, "POST {path}: {status} {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        let field = |k: &str| answer.pointer(k).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
        let got = answer.get("decision").and_then(serde_json::Value::as_bool);
        Ok(Outcome {
            case: name,
            caller: caller.name,
            request: format!("AuthZEN {} {}", request.0, request.1),
            expected: format!("{decision} {want_reason}"),
            got: format!("{} {}", got.map_or("?".to_owned(), |d| d.to_string()), field("/context/reason")),
            layer: field("/context/layer"),
            reason: field("/context/reason"),
            latency: started.elapsed(),
        })
    }

    /// A token like the one the caller's sidecar obtains by federation
    /// (`None` for a caller without an Entra identity).
    pub fn token_for(&self, caller: Caller) -> anyhow::Result<Option<String>> {
        caller.oid.map(|_| self.token_bound(caller, None)).transpose()
    }

    /// As [`Self::token_for`], bound to the certificate with this `x5t#S256`.
    fn token_bound_to(&self, caller: Caller, x5t: String) -> anyhow::Result<String> {
        self.token_bound(caller, Some(x5t))
    }

    fn token_bound(&self, caller: Caller, cnf_x5t: Option<String>) -> anyhow::Result<String> {
        let oid = caller.oid.context("the caller has no Entra identity")?;
        Ok(self.idp.token(&TokenSpec {
            tenant: TENANT.into(),
            audiences: vec![AUDIENCE.into()],
            client_id: super::client_id(caller),
            oid: oid.into(),
            roles: caller.roles.iter().map(|r| (*r).to_owned()).collect(),
            ttl: TOKEN_TTL,
            v1: false,
            cnf_x5t,
        })?)
    }

    async fn set_allowed(&self, callers: &[Caller]) -> anyhow::Result<()> {
        let ids: Vec<&str> = callers.iter().map(|c| c.id).collect();
        self.mgmt_call("PUT", "/mgmt/mtls-policy", serde_json::json!({ "allowed_ids": ids })).await
    }

    async fn push_risk(&self, caller: Caller, level: serde_json::Value) -> anyhow::Result<()> {
        self.mgmt_call("PUT", "/mgmt/agent-risk", serde_json::json!({ "spiffe_id": caller.id, "risk_level": level }))
            .await
    }

    /// Replaces the policy file whole (the sidecar polls it).
    fn write_policy(&self, text: &str) -> anyhow::Result<()> {
        let partial = self.policy_file.with_extension("partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, &self.policy_file)?;
        Ok(())
    }

    /// The IdP rotates its signing key; the app presents a token signed by
    /// the new key, whose `kid` makes the sidecar refetch the JWKS once.
    async fn new_signing_key(&self, case: &Case) -> anyhow::Result<Outcome> {
        let fetches = self.idp.jwks_fetches();
        self.idp.rotate(false)?;
        let caller = case.caller;
        let token = self.token_for(caller)?.context("the caller has no Entra identity")?;
        let bearer = format!("Bearer {token}");
        let reply = self.call(caller, case.method, case.path, &[("authorization", &bearer)]).await?;
        let mut outcome = outcome(case, &reply, reply.latency);
        if self.idp.jwks_fetches() == fetches {
            outcome.got.push_str(", keys not refetched");
        }
        Ok(outcome)
    }

    /// Calls for longer than an SVID lives: every call must succeed while
    /// the backend's and the callers' SVIDs are replaced.
    async fn traffic_across_rotation(&self) -> anyhow::Result<Outcome> {
        let serial = |app: &App| app.identity.current().map(|i| i.svid().serial().to_owned());
        let before = serial(&self.backend);
        let started = Instant::now();
        let (mut ok, mut total) = (0u32, 0u32);
        while started.elapsed() < SVID_TTL + Duration::from_millis(500) {
            for caller in [REPORT, GOOGLE] {
                total += 1;
                if self.call(caller, "GET", "/budget/read", &[]).await.is_ok_and(|r| r.status == 200) {
                    ok += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rotated = serial(&self.backend) != before;
        let want = "all 200, rotated";
        Ok(Outcome {
            case: "SVID rotation under traffic",
            caller: "report + google",
            request: format!("{total} x GET /budget/read"),
            expected: want.into(),
            got: if ok == total && rotated { want.into() } else { format!("{ok}/{total} ok, rotated: {rotated}") },
            layer: "none".into(),
            reason: "allowed".into(),
            latency: started.elapsed(),
        })
    }
}

/// The result table: a header, a row per case as it completes (with the
/// running case shown on a terminal), and a summary.
pub struct Table {
    live: bool,
}

const WIDTH: usize = 188;

impl Table {
    /// Prints the header.
    pub fn start() -> Self {
        println!(
            "{:<34} {:<20} {:<28} {:<50} {:<5} {:<9} {:<28} {:>9}",
            "case", "caller", "request", "expected", "got", "layer", "reason", "latency"
        );
        println!("{}", "-".repeat(WIDTH));
        Self { live: std::io::stderr().is_terminal() }
    }

    pub fn show(&mut self, event: Event<'_>) {
        match event {
            Event::Started(case) if self.live => eprint!("\r  running: {case} ..."),
            Event::Started(_) => {}
            Event::Finished(o) => {
                if self.live {
                    eprint!("\r\x1b[2K");
                }
                let mark = if o.matched() { "" } else { "  <- MISMATCH: got " };
                // The status; cases without one (the rotation run) say whether they held.
                let got = match o.got.split(' ').next() {
                    Some(status) if status.parse::<u16>().is_ok() => status,
                    _ if o.matched() => "ok",
                    _ => "fail",
                };
                println!(
                    "{:<34} {:<20} {:<28} {:<50} {:<5} {:<9} {:<28} {:>7.1}ms{mark}{}",
                    o.case,
                    o.caller,
                    o.request,
                    o.expected,
                    got,
                    o.layer,
                    o.reason,
                    o.latency.as_secs_f64() * 1000.0,
                    if o.matched() { "" } else { &o.got },
                );
            }
        }
    }

    /// Prints the summary line; true when every case matched.
    pub fn summary(&self, outcomes: &[Outcome]) -> bool {
        let failed = outcomes.iter().filter(|o| !o.matched()).count();
        println!("{}", "-".repeat(WIDTH));
        println!("{} cases, {} matched, {failed} failed", outcomes.len(), outcomes.len() - failed);
        failed == 0
    }
}
