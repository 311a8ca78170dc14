//! What a sidecar would do with one request, and why: the question is run
//! through the same code as the data plane (Layer 1's allow-list,
//! [`request_target`] and [`pipeline::evaluate`]) with decision pieces that
//! are either an offline copy built from the configuration (`a2a-sidecar
//! explain`) or a running sidecar's own (`GET /mgmt/explain`).

use certs::SpiffeId;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{HeaderMap, Method};
use policy::{Layer, Reason, RiskLevel};
use std::fmt::Write as _;
use std::path::Path;

use crate::dataplane::inbound::request_target;
use crate::layers::allowlist::AllowList;
use crate::layers::governance::Governor;
use crate::layers::oauth::Oauth;
use crate::layers::pdp::Pdp;
use crate::layers::pipeline::{self, RequestFacts, Trace};
use crate::layers::rbac::{self, PolicyStore};

/// One request, and the facts only a live sidecar would have.
#[derive(Debug, Clone, Default)]
pub struct Question<'a> {
    pub caller: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The bearer token the request carries.
    pub token: Option<&'a str>,
    /// The tenant's signing keys (a JWKS document).
    pub jwks: Option<&'a Path>,
    /// The caller's certificate (PEM, the first one): an RFC 8705 token's
    /// `cnf.x5t#S256` is compared with it; without it, it is not compared.
    pub cert: Option<&'a Path>,
    /// What Graph reports for the caller (with `risk.source: graph`); `None`: unknown.
    pub graph_risk: Option<RiskLevel>,
    /// The caller's tag in Graph (with `tags.source: graph`); `None`: unknown.
    pub graph_tag: Option<String>,
}

/// RFC 8705 `x5t#S256` of the first certificate in a PEM file.
pub fn cert_thumbprint(path: &Path) -> Result<String, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let named = |e: &dyn std::fmt::Display| format!("--cert `{}`: {e}", path.display());
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(|e| named(&e))?
        .next()
        .ok_or_else(|| named(&"no certificate"))?
        .map_err(|e| named(&e))?;
    Ok(crate::layers::oauth::thumbprint_s256(&cert))
}

/// What became of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forwarded,
    /// A deny that `policy.mode: shadow` logs and lets through.
    ShadowForwarded(Reason),
    Denied(Reason),
}

impl Verdict {
    pub fn forwarded(self) -> bool {
        !matches!(self, Self::Denied(_))
    }
}

/// Each layer's verdict as text, and the outcome.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub text: String,
    pub verdict: Verdict,
}

/// The decision pieces a question is judged with: an offline copy built from
/// the configuration (`explain`), or a running sidecar's own (`GET /mgmt/explain`).
pub struct Parts<'a> {
    pub allowlist: &'a AllowList,
    pub policy: &'a PolicyStore,
    pub governor: &'a Governor,
    pub oauth: Option<&'a Oauth>,
    /// `inbound.allowed_callers` as configured (to say whether the allow-list came from /mgmt).
    pub configured: &'a [certs::IdPattern],
    pub options: policy::PathOptions,
    pub pdp: PdpPart<'a>,
}

/// The external AuthZEN PDP, as far as `explain` can use it.
#[derive(Clone, Copy)]
pub enum PdpPart<'a> {
    NotConfigured,
    /// Configured, but `a2a-sidecar explain` has no network: not asked.
    Offline,
    /// A running sidecar's: asked (or its cache) like the data plane does.
    Live(&'a Pdp),
}

/// Runs `question` through the same code as the data plane: Layer 1's
/// allow-list, [`request_target`] and [`pipeline::evaluate`].
pub async fn explain_with(sidecar: Parts<'_>, question: &Question<'_>) -> Result<Explanation, String> {
    let caller: SpiffeId = question.caller.parse().map_err(|e| format!("--caller `{}`: {e}", question.caller))?;
    let method =
        Method::from_bytes(question.method.as_bytes()).map_err(|_| format!("--method `{}`", question.method))?;
    let mut out = Text::default();
    out.line("request", None, &format!("{method} {} from {caller}", question.path));

    // Layer 1, as at the handshake and on every request (the chain itself is not checked offline).
    let patterns = sidecar.allowlist.patterns();
    let Some((i, pattern)) = patterns.iter().enumerate().find(|(_, p)| p.matches(&caller)) else {
        let why = "not_allowed: no allowed pattern matches (refused at the handshake)";
        out.line("mtls", Some(false), why);
        return Ok(out.done(Verdict::Denied(Reason::NotAllowed)));
    };
    let origin = if patterns.as_slice() == sidecar.configured {
        format!("inbound.allowed_callers[{i}]")
    } else {
        format!("the allow-list set through /mgmt, [{i}]")
    };
    out.line("mtls", Some(true), &format!("matches {origin} `{pattern}`"));

    let path = match request_target(&method, question.path, sidecar.options) {
        Ok(path) => path,
        Err(reason) => {
            out.line("http", Some(false), &reason.to_string());
            return Ok(out.done(Verdict::Denied(reason)));
        }
    };
    let forwarded_as = format!("canonical path `{}`, forwarded as `{}`", path.for_matching(), path.encoded());
    out.line("http", Some(true), &forwarded_as);

    let mut headers = HeaderMap::new();
    if let Some(token) = question.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "--token is not a header value")?;
        headers.insert(AUTHORIZATION, value);
    }
    let leaf_sha256 = match question.cert {
        Some(path) => Some(cert_thumbprint(path)?),
        None => None,
    };
    let loaded = sidecar.policy.current();
    let facts = RequestFacts {
        caller: &caller,
        method: method.as_str(),
        path: &path,
        headers: &headers,
        leaf_sha256: leaf_sha256.as_deref(),
        asserted: None,
        request_id: None,
    };
    let mut trace = Trace::default();
    let live = match sidecar.pdp {
        PdpPart::Live(pdp) => Some(pdp),
        PdpPart::NotConfigured | PdpPart::Offline => None,
    };
    let result = pipeline::evaluate(&loaded, sidecar.oauth, sidecar.governor, live, facts, None, &mut trace).await;
    let denied = result.err().map(|denial| denial.reason);
    let request = (&caller, &method, &path, question.cert.is_some());
    layer_lines(&mut out, &loaded, request, &trace, denied);
    if denied.is_none_or(|reason| reason.layer() == Layer::Pdp) {
        pdp_line(&mut out, sidecar.pdp, trace.pdp.as_ref());
    }
    let verdict = match denied.map(|reason| pipeline::apply_mode(loaded.mode, reason)) {
        None => Verdict::Forwarded,
        Some(Ok(reason)) => {
            out.line("mode", None, &format!("shadow: {reason} is logged and counted, and the request forwarded"));
            Verdict::ShadowForwarded(reason)
        }
        Some(Err(reason)) => Verdict::Denied(reason),
    };
    Ok(out.done(verdict))
}

/// Layers 2 to 4: each that ran, up to the one that denied.
/// `request`: the caller, method, canonical path, and whether a certificate was given.
fn layer_lines(
    out: &mut Text,
    loaded: &rbac::Loaded,
    request: (&SpiffeId, &Method, &policy::CanonicalPath, bool),
    trace: &Trace,
    denied: Option<Reason>,
) {
    let (caller, method, path, cert_given) = request;
    let denied_at = denied.map(Reason::layer);
    let ran = |layer: Layer| {
        let order = [Layer::Rbac, Layer::Oauth, Layer::Risk, Layer::Tags];
        let at = |l| order.iter().position(|o| *o == l);
        denied_at.is_none_or(|d| at(layer) <= at(d))
    };
    let verdict = |layer: Layer| denied_at != Some(layer);
    let reason = |layer: Layer| denied.filter(|r| r.layer() == layer).unwrap_or(Reason::Allowed);

    let who = trace.entry.as_deref().map_or_else(|| "no caller entry".to_owned(), |e| format!("entry `{e}`"));
    let ids = trace.policy_ids.join(", ");
    out.line("rbac", Some(verdict(Layer::Rbac)), &format!("{} ({who}; policy ids: [{ids}])", reason(Layer::Rbac)));
    if !ran(Layer::Oauth) {
        return;
    }
    let detail = match denied.filter(|r| r.layer() == Layer::Oauth) {
        Some(Reason::JwtRequired) => {
            // The rule that asked for it, for its roles.
            let verdict = loaded.engine.decide(policy::engine::Request {
                caller,
                method: method.as_str(),
                path: path.for_matching(),
            });
            let rule = verdict.entry.and_then(|e| loaded.engine.doc().entries.get(e)).zip(verdict.rule);
            let roles = rule.and_then(|(e, r)| e.rules.get(r)).map(|r| r.required_roles.join(", ")).unwrap_or_default();
            let roles = if roles.is_empty() { "none".to_owned() } else { roles };
            format!("jwt_required: the rule requires a bearer JWT (roles: {roles}) bound to this caller")
        }
        Some(reason) => format!("{reason}: {}", trace.jwt.error.as_deref().unwrap_or("refused")),
        None if trace.jwt.valid => {
            let azp = trace.jwt.azp.as_deref().unwrap_or("?");
            let issuer = trace.jwt.issuer.as_deref().unwrap_or("?");
            let bound = match (trace.jwt.bound, cert_given) {
                (false, _) => "",
                (true, true) => ", bound to the given certificate",
                // No connection here: a certificate binding is compared only with --cert.
                (true, false) => ", bound to a certificate (not compared without --cert)",
            };
            format!("valid token (issuer {issuer}, agent {azp}, roles {:?}{bound})", trace.jwt.roles)
        }
        None => "no JWT required by the matched rule".to_owned(),
    };
    out.line("oauth", Some(verdict(Layer::Oauth)), &detail);
    if !ran(Layer::Risk) {
        return;
    }
    let level = trace.risk_level.unwrap_or("not looked up");
    out.line("risk", Some(verdict(Layer::Risk)), &format!("{} (level {level})", reason(Layer::Risk)));
    if !ran(Layer::Tags) {
        return;
    }
    let tag = trace.caller_tag.as_deref().map_or_else(|| "not looked up or unknown".to_owned(), |t| format!("`{t}`"));
    out.line("tags", Some(verdict(Layer::Tags)), &format!("{} (caller tag {tag})", reason(Layer::Tags)));
}

/// After Layers 2-4 allowed: what the external PDP said, if it was asked.
fn pdp_line(out: &mut Text, part: PdpPart<'_>, asked: Option<&crate::layers::pdp::PdpAudit>) {
    match (part, asked) {
        (PdpPart::NotConfigured, _) => {}
        (PdpPart::Offline, _) => out.line("pdp", None, "not asked (offline: `explain` makes no network calls)"),
        (PdpPart::Live(_), None) => out.line("pdp", None, "not asked (`rules: marked` and the rule has no ask_pdp)"),
        (PdpPart::Live(pdp), Some(audit)) => {
            let cached = if audit.cached { ", cached" } else { "" };
            match (audit.decision, audit.error) {
                (Some(decision), _) => {
                    let reason = if decision { Reason::Allowed } else { Reason::PdpDenied };
                    out.line("pdp", Some(decision), &format!("{reason} (decision {decision}{cached})"));
                }
                (None, error) => {
                    let error = error.unwrap_or("no answer");
                    let open = pdp.config().fail_open;
                    let what = if open { "allowed: fail_open" } else { "pdp_unavailable" };
                    out.line("pdp", Some(open), &format!("{what} (no usable answer: {error})"));
                }
            }
        }
    }
}

/// The printed lines: `<layer> <allow|DENY> <detail>`.
#[derive(Default)]
struct Text(String);

impl Text {
    fn line(&mut self, name: &str, allow: Option<bool>, detail: &str) {
        let verdict = match allow {
            Some(true) => "allow ",
            Some(false) => "DENY  ",
            None => "",
        };
        let _ = writeln!(self.0, "{name:<9}{verdict}{detail}");
    }

    fn done(self, verdict: Verdict) -> Explanation {
        Explanation { text: self.0, verdict }
    }
}
