//! Layer 4a's vocabulary: a caller's risk level, as Entra ID Protection
//! reports it and operators push it. One parser for the configuration,
//! `/mgmt` and Graph.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RiskLevel {
    /// Not at risk (Graph: no entry, or dismissed / remediated / confirmed safe).
    None,
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

impl FromStr for RiskLevel {
    type Err = String;

    /// Exactly `none`, `low`, `medium` or `high` (Graph's spelling).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "low" => Ok(Self::Low),
            "medium" => Ok(Self::Medium),
            "high" => Ok(Self::High),
            other => Err(format!("`{other}` is not one of none, low, medium, high")),
        }
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for RiskLevel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for RiskLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_read_and_print_alike() {
        for level in [RiskLevel::None, RiskLevel::Low, RiskLevel::Medium, RiskLevel::High] {
            assert_eq!(level.as_str().parse::<RiskLevel>(), Ok(level));
            assert_eq!(serde_json::to_string(&level).unwrap(), format!("\"{level}\""));
            assert_eq!(serde_json::from_str::<RiskLevel>(&format!("\"{level}\"")).unwrap(), level);
        }
        assert!("High".parse::<RiskLevel>().is_err(), "Graph's spelling only");
        assert!("hidden".parse::<RiskLevel>().unwrap_err().contains("none, low, medium, high"));
        assert!(RiskLevel::High > RiskLevel::Medium && RiskLevel::Low > RiskLevel::None);
    }
}
