//! The outcome of evaluating a request: which layer decided and why.
//! The names are the contract's `layer` and `reason` values (DESIGN 1.3).

use std::fmt;
use std::sync::Arc;

/// The layer (or stage) that produced an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layer {
    /// An allowed request: no layer denied.
    #[default]
    None,
    /// Request framing and paths, before any policy.
    Http,
    Mtls,
    Rbac,
    Oauth,
    Risk,
    Tags,
    /// Outbound routing.
    Route,
    /// The target sidecar or the local app.
    Upstream,
    /// The sidecar's own identity.
    Identity,
    /// An external AuthZEN PDP, asked after Layers 2-4 allow.
    Pdp,
}

/// Why. Each belongs to one layer (see [`Reason::layer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reason {
    #[default]
    Allowed,
    // http
    BadPath,
    AbsoluteForm,
    MethodNotAllowed,
    // mtls (layer 1)
    NotAllowed,
    UntrustedChain,
    NoClientCert,
    BadSvid,
    CertExpired,
    /// A handshake that failed before any certificate was judged (a protocol
    /// error, no common version or cipher, a peer that hung up).
    HandshakeError,
    // rbac (layer 2)
    NoCallerPolicy,
    NoMatchingRule,
    RuleDenied,
    // oauth (layer 3)
    JwtRequired,
    JwtInvalid,
    JwtExpired,
    JwtNotYetValid,
    JwtWrongAudience,
    JwtWrongIssuer,
    JwtCallerMismatch,
    /// RFC 8705: the token is not bound to the certificate of this connection.
    JwtNotBound,
    InsufficientRoles,
    JwksUnavailable,
    // risk (layer 4a)
    AgentDisabled,
    HighRiskAgentBlocked,
    RiskUnavailable,
    // tags (layer 4b)
    AgentTagMismatch,
    MissingRequiredTag,
    TagsUnavailable,
    // pdp (external AuthZEN decision point)
    PdpDenied,
    PdpUnavailable,
    // route
    NoRoute,
    // upstream
    UpstreamUnavailable,
    UpstreamIdentityMismatch,
    UpstreamRejectedIdentity,
    UpstreamError,
    UpstreamTimeout,
    // identity
    NotReady,
    TokenUnavailable,
}

/// A decision: allow, or deny by one layer for one reason, with the policy
/// IDs that decided (empty for layers without policies). The IDs are shared:
/// a cached decision is handed out on every request without copying them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub layer: Layer,
    pub reason: Reason,
    pub policy_ids: Arc<[String]>,
}

impl Decision {
    pub fn allow() -> Self {
        Self { allow: true, layer: Layer::None, reason: Reason::Allowed, policy_ids: Arc::default() }
    }

    pub fn deny(reason: Reason) -> Self {
        Self { allow: false, layer: reason.layer(), reason, policy_ids: Arc::default() }
    }
}

/// A certificate refused at the handshake, as the contract names it.
impl From<certs::tls::Reason> for Reason {
    fn from(reason: certs::tls::Reason) -> Self {
        match reason {
            certs::tls::Reason::NotAllowed => Self::NotAllowed,
            certs::tls::Reason::UntrustedChain => Self::UntrustedChain,
            certs::tls::Reason::NoClientCert => Self::NoClientCert,
            certs::tls::Reason::BadSvid => Self::BadSvid,
            certs::tls::Reason::CertExpired => Self::CertExpired,
        }
    }
}

impl Layer {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Http => "http",
            Self::Mtls => "mtls",
            Self::Rbac => "rbac",
            Self::Oauth => "oauth",
            Self::Risk => "risk",
            Self::Tags => "tags",
            Self::Route => "route",
            Self::Upstream => "upstream",
            Self::Identity => "identity",
            Self::Pdp => "pdp",
        }
    }
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::BadPath => "bad_path",
            Self::AbsoluteForm => "absolute_form",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotAllowed => "not_allowed",
            Self::UntrustedChain => "untrusted_chain",
            Self::NoClientCert => "no_client_cert",
            Self::BadSvid => "bad_svid",
            Self::CertExpired => "cert_expired",
            Self::HandshakeError => "handshake_error",
            Self::NoCallerPolicy => "no_caller_policy",
            Self::NoMatchingRule => "no_matching_rule",
            Self::RuleDenied => "rule_denied",
            Self::JwtRequired => "jwt_required",
            Self::JwtInvalid => "jwt_invalid",
            Self::JwtExpired => "jwt_expired",
            Self::JwtNotYetValid => "jwt_not_yet_valid",
            Self::JwtWrongAudience => "jwt_wrong_audience",
            Self::JwtWrongIssuer => "jwt_wrong_issuer",
            Self::JwtCallerMismatch => "jwt_caller_mismatch",
            Self::JwtNotBound => "jwt_not_bound",
            Self::InsufficientRoles => "insufficient_roles",
            Self::JwksUnavailable => "jwks_unavailable",
            Self::AgentDisabled => "agent_disabled",
            Self::HighRiskAgentBlocked => "high_risk_agent_blocked",
            Self::RiskUnavailable => "risk_unavailable",
            Self::AgentTagMismatch => "agent_tag_mismatch",
            Self::MissingRequiredTag => "missing_required_tag",
            Self::TagsUnavailable => "tags_unavailable",
            Self::PdpDenied => "pdp_denied",
            Self::PdpUnavailable => "pdp_unavailable",
            Self::NoRoute => "no_route",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamIdentityMismatch => "upstream_identity_mismatch",
            Self::UpstreamRejectedIdentity => "upstream_rejected_identity",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::NotReady => "not_ready",
            Self::TokenUnavailable => "token_unavailable",
        }
    }

    pub const fn layer(self) -> Layer {
        match self {
            Self::Allowed => Layer::None,
            Self::BadPath | Self::AbsoluteForm | Self::MethodNotAllowed => Layer::Http,
            Self::NotAllowed
            | Self::UntrustedChain
            | Self::NoClientCert
            | Self::BadSvid
            | Self::CertExpired
            | Self::HandshakeError => Layer::Mtls,
            Self::NoCallerPolicy | Self::NoMatchingRule | Self::RuleDenied => Layer::Rbac,
            Self::JwtRequired
            | Self::JwtInvalid
            | Self::JwtExpired
            | Self::JwtNotYetValid
            | Self::JwtWrongAudience
            | Self::JwtWrongIssuer
            | Self::JwtCallerMismatch
            | Self::JwtNotBound
            | Self::InsufficientRoles
            | Self::JwksUnavailable => Layer::Oauth,
            Self::AgentDisabled | Self::HighRiskAgentBlocked | Self::RiskUnavailable => Layer::Risk,
            Self::AgentTagMismatch | Self::MissingRequiredTag | Self::TagsUnavailable => Layer::Tags,
            Self::PdpDenied | Self::PdpUnavailable => Layer::Pdp,
            Self::NoRoute => Layer::Route,
            Self::UpstreamUnavailable
            | Self::UpstreamIdentityMismatch
            | Self::UpstreamRejectedIdentity
            | Self::UpstreamError
            | Self::UpstreamTimeout => Layer::Upstream,
            Self::NotReady | Self::TokenUnavailable => Layer::Identity,
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The contract's names (audit events, deny bodies).
impl serde::Serialize for Layer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_keeps_its_name_and_is_layer_1() {
        use certs::tls::Reason as Tls;
        for tls in [Tls::NotAllowed, Tls::UntrustedChain, Tls::NoClientCert, Tls::BadSvid, Tls::CertExpired] {
            let reason = Reason::from(tls);
            assert_eq!(reason.as_str(), tls.as_str());
            assert_eq!(reason.layer(), Layer::Mtls);
        }
    }
}
