//! Content addresses of skills.

use std::fmt;
use std::str::FromStr;

/// The blake3 digest of a component's bytes: a skill's identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SkillDigest([u8; 32]);

impl SkillDigest {
    /// Hash the exact bytes that will be inspected and compiled.
    pub fn of(bytes: &[u8]) -> Self {
        SkillDigest(*blake3::hash(bytes).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex characters, for display.
    pub fn short(&self) -> String {
        let mut hex = self.to_hex();
        hex.truncate(12);
        hex
    }
}

impl fmt::Display for SkillDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SkillDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SkillDigest({})", self.short())
    }
}

impl serde::Serialize for SkillDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for SkillDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A string that is not a skill digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a skill digest: expected 64 lowercase hex characters (blake3)")]
pub struct BadDigest(String);

impl FromStr for SkillDigest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, BadDigest> {
        let bad = || BadDigest(airlock_host_apis::escape(s, 80));
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        blake3::Hash::from_hex(s)
            .map(|h| SkillDigest(*h.as_bytes()))
            .map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_hex() {
        let d = SkillDigest::of(b"component");
        assert_eq!(d.to_hex().parse::<SkillDigest>(), Ok(d));
        assert_eq!(d.short().len(), 12);
    }

    #[test]
    fn malformed_digests_are_refused() {
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"0".repeat(65)] {
            assert!(bad.parse::<SkillDigest>().is_err(), "{bad}");
        }
    }
}
