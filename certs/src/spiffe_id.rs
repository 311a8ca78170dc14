//! SPIFFE IDs and trust domains, parsed per the SPIFFE ID specification.
//!
//! The rules follow the spec (and go-spiffe, its reference implementation):
//! scheme `spiffe://` in lower case, a trust domain of `[a-z0-9._-]`, path
//! segments of `[A-Za-z0-9._-]` that are neither empty, `.` nor `..`, no
//! percent-encoding, query, fragment, userinfo or port, and 2048 bytes at most.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest SPIFFE ID accepted, in bytes (SPIFFE ID spec, 2.3).
pub const MAX_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must start with `spiffe://`")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain has a character outside `[a-z0-9._-]`: `{0}`")]
    BadTrustDomainChar(char),
    #[error("path has an empty segment")]
    EmptySegment,
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    #[error("path has a character outside `[A-Za-z0-9._-]`: `{0}`")]
    BadPathChar(char),
    #[error("path must not end with `/`")]
    TrailingSlash,
}

/// A SPIFFE trust domain such as `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

/// A SPIFFE ID such as `spiffe://example.org/ns/prod/sa/api`.
///
/// Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    text: Arc<str>,
    /// Byte index where the path starts (== text.len() when there is no path).
    path_start: usize,
}

impl TrustDomain {
    /// Parses a trust domain name, or the ID of a trust domain (`spiffe://td`).
    pub fn new(name: &str) -> Result<Self, IdError> {
        let name = name.strip_prefix(SCHEME).unwrap_or(name);
        validate_trust_domain(name)?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<td>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl SpiffeId {
    pub fn trust_domain_name(&self) -> &str {
        // Invariant: text starts with SCHEME and the trust domain ends at path_start.
        self.text.get(SCHEME.len()..self.path_start).unwrap_or_default()
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().into())
    }

    /// The path, `""` or starting with `/`.
    pub fn path(&self) -> &str {
        self.text.get(self.path_start..).unwrap_or_default()
    }

    /// The path split into its segments (none for a trust-domain ID).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self { text: s.into(), path_start: SCHEME.len() + td_len })
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    match td.chars().find(|c| !is_trust_domain_char(*c)) {
        Some(c) => Err(IdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

/// Validates an ID path: `""` or `/seg(/seg)*`.
pub(crate) fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(IdError::TrailingSlash);
    }
    path.split('/').skip(1).try_for_each(validate_segment)
}

pub(crate) fn validate_segment(segment: &str) -> Result<(), IdError> {
    match segment {
        "" => Err(IdError::EmptySegment),
        "." | ".." => Err(IdError::DotSegment),
        _ => match segment.chars().find(|c| !is_path_char(*c)) {
            Some(c) => Err(IdError::BadPathChar(c)),
            None => Ok(()),
        },
    }
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.text)
    }
}

/// Lets maps keyed by trust domain be searched by name (orders like `str`).
impl std::borrow::Borrow<str> for TrustDomain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

#[cfg(test)]
mod tests;
