//! Engine and release versions, their SCALE form, and the compatibility rule.
//!
//! The chain stores its release as `SemVer { major: u8, minor: u8, patch: u8 }`, SCALE-encoded as
//! exactly three raw bytes. Everything that decides whether an engine may run goes through
//! [`Rule::compare`], so the rule can be swapped for chains that version differently.

use std::fmt;
use std::str::FromStr;

use parity_scale_codec::{Decode, DecodeAll, Encode};

/// A release or engine version as the chain stores it: three `u8` fields, SCALE-encoded in field order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct SemVer {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl SemVer {
    /// The value an unset `ValueQuery` storage item reads as; the engine treats it as "not our chain".
    pub const UNSET: SemVer = SemVer::new(0, 0, 0);

    pub const fn new(major: u8, minor: u8, patch: u8) -> Self {
        SemVer {
            major,
            minor,
            patch,
        }
    }

    /// Finds the first `X.Y.Z` in free text, as printed by `engine --version`
    /// (for example `chainflip-engine 1.3.2` or `fake-engine 1.1.0`).
    pub fn find_in(text: &str) -> Option<SemVer> {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .flat_map(|word| {
                // A word like "1.2.3.4" still yields its first three fields, "v1.2.3" was split at 'v'.
                let fields: Vec<&str> = word.split('.').collect();
                (0..fields.len().saturating_sub(2))
                    .map(move |i| format!("{}.{}.{}", fields[i], fields[i + 1], fields[i + 2]))
                    .collect::<Vec<_>>()
            })
            .find_map(|candidate| candidate.parse().ok())
    }
}

impl fmt::Display for SemVer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a string is not an `X.Y.Z` version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a version of the form X.Y.Z with each part 0..=255")]
pub struct ParseVersionError {
    pub input: String,
}

impl FromStr for SemVer {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseVersionError {
            input: s.to_string(),
        };
        let mut parts = s.trim().split('.');
        let mut next = || -> Result<u8, ParseVersionError> {
            let part = parts.next().ok_or_else(err)?;
            // Reject "+1", "01"-style ambiguity is accepted as plain decimal, but signs and empties are not.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            part.parse().map_err(|_| err())
        };
        let version = SemVer::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(version)
    }
}

/// Why the on-chain release could not be used. Every variant means "unknown release": the engine's
/// state is kept and nothing is started on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "release storage value is absent at this block (is this the right chain and storage key?)"
    )]
    Absent,
    #[error(
        "release storage value is 0.0.0 (unset): this does not look like a chain with releases"
    )]
    Unset,
    #[error("storage value 0x{value_hex} is {len} bytes, expected 3 (SCALE SemVer)")]
    WrongLength { value_hex: String, len: usize },
}

/// Decodes the raw storage value read at a block into a usable release.
///
/// `None` is an absent value. Decoding uses `DecodeAll`, so trailing bytes are an error rather than
/// silently ignored.
pub fn decode_release(value: Option<&[u8]>) -> Result<SemVer, ReleaseError> {
    let bytes = value.ok_or(ReleaseError::Absent)?;
    let wrong_length = || ReleaseError::WrongLength {
        value_hex: hex::encode(bytes),
        len: bytes.len(),
    };
    let mut input = bytes;
    let version = SemVer::decode_all(&mut input).map_err(|_| wrong_length())?;
    if version == SemVer::UNSET {
        return Err(ReleaseError::Unset);
    }
    Ok(version)
}

/// Where an engine stands against the on-chain release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compatibility {
    /// The engine may run now.
    Compatible,
    /// The engine is newer than the release: it must wait for an upgrade.
    NotYetCompatible,
    /// The engine is older than the release: a newer engine must take over.
    NoLongerCompatible,
}

impl Compatibility {
    /// The machine-readable name used in `check --json` and JSON logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Compatible => "compatible",
            Compatibility::NotYetCompatible => "not_yet_compatible",
            Compatibility::NoLongerCompatible => "no_longer_compatible",
        }
    }
}

/// Which fields of the version must match for an engine to be compatible with a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Rule {
    /// Chainflip's rule: major and minor must match, patch is ignored.
    #[default]
    MajorMinor,
    /// All three fields must match.
    Exact,
    /// Only the major field must match.
    Major,
}

impl Rule {
    /// Compatible when the fields the rule cares about match; otherwise the full (major, minor,
    /// patch) order says whether the engine is behind (no longer) or ahead (not yet).
    pub fn compare(self, engine: SemVer, release: SemVer) -> Compatibility {
        let matches = match self {
            Rule::MajorMinor => (engine.major, engine.minor) == (release.major, release.minor),
            Rule::Exact => engine == release,
            Rule::Major => engine.major == release.major,
        };
        if matches {
            Compatibility::Compatible
        } else if engine < release {
            Compatibility::NoLongerCompatible
        } else {
            Compatibility::NotYetCompatible
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::MajorMinor => "major-minor",
            Rule::Exact => "exact",
            Rule::Major => "major",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Compatibility::*;

    fn v(s: &str) -> SemVer {
        s.parse().unwrap()
    }

    #[test]
    fn scale_is_three_raw_bytes_in_field_order() {
        assert_eq!(v("1.1.0").encode(), vec![1, 1, 0]);
        assert_eq!(decode_release(Some(&[1, 1, 0])), Ok(v("1.1.0")));
        assert_eq!(decode_release(Some(&[255, 255, 255])), Ok(v("255.255.255")));
    }

    #[test]
    fn bad_storage_values_are_named_errors() {
        assert_eq!(decode_release(None), Err(ReleaseError::Absent));
        assert_eq!(decode_release(Some(&[0, 0, 0])), Err(ReleaseError::Unset));
        let two = decode_release(Some(&[1, 2])).unwrap_err();
        assert_eq!(
            two.to_string(),
            "storage value 0x0102 is 2 bytes, expected 3 (SCALE SemVer)"
        );
        assert!(matches!(
            decode_release(Some(&[1, 2, 3, 4])),
            Err(ReleaseError::WrongLength { len: 4, .. })
        ));
        assert!(matches!(
            decode_release(Some(&[])),
            Err(ReleaseError::WrongLength { len: 0, .. })
        ));
    }

    #[test]
    fn parses_and_prints_round_trip() {
        for s in ["0.0.0", "1.2.3", "255.255.255", "10.0.7"] {
            assert_eq!(v(s).to_string(), s);
        }
        for bad in [
            "", "1", "1.2", "1.2.3.4", "1.2.x", "256.0.0", "-1.0.0", "1..2", " 1.2. 3", "+1.2.3",
        ] {
            assert!(bad.parse::<SemVer>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn finds_version_in_version_output() {
        assert_eq!(SemVer::find_in("fake-engine 1.1.0\n"), Some(v("1.1.0")));
        assert_eq!(
            SemVer::find_in("chainflip-engine v1.3.2-abcdef"),
            Some(v("1.3.2"))
        );
        assert_eq!(
            SemVer::find_in("build 2 of 9999.1.2 then 1.2.3"),
            Some(v("1.2.3"))
        );
        assert_eq!(SemVer::find_in("no version here"), None);
    }

    #[test]
    fn major_minor_rule_ignores_patch() {
        let r = Rule::MajorMinor;
        assert_eq!(r.compare(v("1.1.0"), v("1.1.9")), Compatible);
        assert_eq!(r.compare(v("1.1.9"), v("1.1.0")), Compatible);
        assert_eq!(r.compare(v("1.0.5"), v("1.1.0")), NoLongerCompatible);
        assert_eq!(r.compare(v("1.2.0"), v("1.1.7")), NotYetCompatible);
        assert_eq!(r.compare(v("1.9.9"), v("2.0.0")), NoLongerCompatible);
        assert_eq!(r.compare(v("2.0.0"), v("1.255.255")), NotYetCompatible);
        assert_eq!(r.compare(v("0.1.0"), v("0.2.0")), NoLongerCompatible);
        assert_eq!(r.compare(v("0.0.1"), v("0.0.2")), Compatible);
        assert_eq!(r.compare(v("255.255.255"), v("255.255.0")), Compatible);
        assert_eq!(
            r.compare(v("255.254.255"), v("255.255.255")),
            NoLongerCompatible
        );
    }

    #[test]
    fn exact_and_major_rules() {
        assert_eq!(Rule::Exact.compare(v("1.1.0"), v("1.1.0")), Compatible);
        assert_eq!(
            Rule::Exact.compare(v("1.1.0"), v("1.1.1")),
            NoLongerCompatible
        );
        assert_eq!(
            Rule::Exact.compare(v("1.1.2"), v("1.1.1")),
            NotYetCompatible
        );
        assert_eq!(Rule::Major.compare(v("1.0.0"), v("1.9.9")), Compatible);
        assert_eq!(
            Rule::Major.compare(v("1.9.9"), v("2.0.0")),
            NoLongerCompatible
        );
        assert_eq!(Rule::Major.compare(v("0.9.0"), v("0.1.0")), Compatible);
    }
}
