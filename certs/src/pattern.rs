//! SPIFFE ID patterns for allow-lists and expected peer IDs.
//!
//! A pattern is a SPIFFE ID whose path segments may be `*` (exactly one
//! segment) or, as the last segment, `**` (one or more segments). The trust
//! domain is always matched exactly: a wildcard there would let any federated
//! domain claim the name.

use std::fmt;
use std::str::FromStr;

use crate::spiffe_id::{IdError, SpiffeId, TrustDomain, validate_segment};

/// Why a string is not a valid SPIFFE ID pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("wildcards are not allowed in the trust domain")]
    WildcardTrustDomain,
    #[error("`**` must be the last segment")]
    DoubleStarNotLast,
    #[error("segment `{0}` mixes a wildcard with other characters")]
    PartialWildcard(String),
    #[error(transparent)]
    Id(#[from] IdError),
}

/// A parsed SPIFFE ID pattern.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdPattern {
    text: String,
    trust_domain: TrustDomain,
    segments: Vec<Segment>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: one or more segments (always last).
    Rest,
}

impl IdPattern {
    /// A pattern that matches exactly one ID.
    pub fn exact(id: &SpiffeId) -> Self {
        Self {
            text: id.to_string(),
            trust_domain: id.trust_domain(),
            segments: id.segments().map(|s| Segment::Literal(s.to_owned())).collect(),
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// True when the pattern has no wildcard.
    pub fn is_exact(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain_name() != self.trust_domain.as_str() {
            return false;
        }
        let mut ids = id.segments();
        for segment in &self.segments {
            match segment {
                Segment::Rest => return ids.next().is_some(),
                Segment::One => {
                    if ids.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if ids.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        ids.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for IdPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > crate::spiffe_id::MAX_ID_LEN {
            return Err(IdError::TooLong.into());
        }
        let rest = s.strip_prefix("spiffe://").ok_or(IdError::WrongScheme)?;
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if td.contains('*') {
            return Err(PatternError::WildcardTrustDomain);
        }
        let trust_domain = TrustDomain::new(td)?;
        if path.ends_with('/') {
            return Err(IdError::TrailingSlash.into());
        }
        let raw: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('/').skip(1).collect() };
        let last = raw.len().saturating_sub(1);
        let segments =
            raw.iter().enumerate().map(|(i, seg)| parse_segment(seg, i == last)).collect::<Result<_, _>>()?;
        Ok(Self { text: s.to_owned(), trust_domain, segments })
    }
}

fn parse_segment(seg: &str, is_last: bool) -> Result<Segment, PatternError> {
    match seg {
        "*" => Ok(Segment::One),
        "**" if is_last => Ok(Segment::Rest),
        "**" => Err(PatternError::DoubleStarNotLast),
        _ if seg.contains('*') => Err(PatternError::PartialWildcard(seg.to_owned())),
        _ => {
            validate_segment(seg)?;
            Ok(Segment::Literal(seg.to_owned()))
        }
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdPattern({})", self.text)
    }
}

#[cfg(test)]
mod tests;
