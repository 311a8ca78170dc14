//! The bounded values audit events and metrics share: which side of the
//! sidecar a request crossed, and what became of it (DESIGN 1.6, 1.7).

use serde::Serialize;

/// `direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Inbound,
    Outbound,
    /// An admin change, a policy reload.
    Mgmt,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Mgmt => "mgmt",
        }
    }
}

/// `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    #[default]
    Allow,
    Deny,
    /// A deny that `policy.mode: shadow` let through.
    ShadowDeny,
}

impl Decision {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::ShadowDeny => "shadow_deny",
        }
    }
}

impl std::str::FromStr for Decision {
    type Err = ();

    /// The contract's names exactly (`?decision=` of `GET /mgmt/audit`).
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            "shadow_deny" => Ok(Self::ShadowDeny),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_contracts() {
        for d in [Direction::Inbound, Direction::Outbound, Direction::Mgmt] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        for d in [Decision::Allow, Decision::Deny, Decision::ShadowDeny] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
            assert_eq!(d.as_str().parse::<Decision>(), Ok(d));
        }
        assert!("Allow".parse::<Decision>().is_err());
    }
}
