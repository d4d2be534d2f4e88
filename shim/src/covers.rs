//! The versions one engine program covers.
//!
//! Chainflip's engines since 1.4 are one runner linked against two engine libraries (old and new)
//! that switches between them inside its own process: one program, two versions. The 1.0–1.3
//! engines are one program per version. [`Covers`] holds either, so every decision about an engine
//! speaks of all it can serve rather than of a single version.

use std::fmt;

use crate::version::{Compatibility, Rule, SemVer};

/// The versions an engine covers: never empty, sorted oldest first, no duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Covers(Vec<SemVer>);

impl Covers {
    /// An engine of one version (the 1.0–1.3 layout, or a runner whose libraries are not known).
    pub fn one(version: SemVer) -> Self {
        Covers(vec![version])
    }

    /// The versions given, sorted and deduplicated; `None` when there are none.
    pub fn new(mut versions: Vec<SemVer>) -> Option<Self> {
        versions.sort();
        versions.dedup();
        (!versions.is_empty()).then_some(Covers(versions))
    }

    /// Every version covered, oldest first.
    pub fn versions(&self) -> &[SemVer] {
        &self.0
    }

    pub fn oldest(&self) -> SemVer {
        self.0[0]
    }

    /// The version the engine is named by in log lines and metrics, and the one that decides
    /// which of several compatible engines starts.
    pub fn newest(&self) -> SemVer {
        self.0[self.0.len() - 1]
    }

    /// True when the engine covers more than one version.
    pub fn is_several(&self) -> bool {
        self.0.len() > 1
    }

    /// Compatible when any version covered is; otherwise the newest decides: older than the
    /// release means no longer compatible (everything covered is older), newer means not yet (the
    /// engine can serve a release the chain has yet to reach).
    pub fn compare(&self, rule: Rule, release: SemVer) -> Compatibility {
        if self
            .0
            .iter()
            .any(|&v| rule.compare(v, release) == Compatibility::Compatible)
        {
            Compatibility::Compatible
        } else {
            rule.compare(self.newest(), release)
        }
    }

    /// The list written out, e.g. `2.2.8, 2.3.0`.
    pub fn list(&self) -> String {
        self.0
            .iter()
            .map(SemVer::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `1.1.0` for one version; `2.3.0 (covers 2.2.8, 2.3.0)` for several, so a line that names an
/// engine by its newest version still says what else it serves.
impl fmt::Display for Covers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_several() {
            write!(f, "{} (covers {})", self.newest(), self.list())
        } else {
            write!(f, "{}", self.newest())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Compatibility::*;

    fn covers(list: &[&str]) -> Covers {
        Covers::new(list.iter().map(|s| s.parse().unwrap()).collect()).unwrap()
    }

    fn v(s: &str) -> SemVer {
        s.parse().unwrap()
    }

    #[test]
    fn sorted_without_duplicates_and_never_empty() {
        assert_eq!(covers(&["2.3.0", "2.2.8", "2.3.0"]).list(), "2.2.8, 2.3.0");
        assert_eq!(Covers::new(vec![]), None);
    }

    #[test]
    fn compatible_when_any_version_is() {
        let runner = covers(&["2.2.8", "2.3.0"]);
        let rule = Rule::MajorMinor;
        assert_eq!(runner.compare(rule, v("2.2.0")), Compatible);
        assert_eq!(runner.compare(rule, v("2.3.5")), Compatible);
        assert_eq!(runner.compare(rule, v("2.4.0")), NoLongerCompatible);
        assert_eq!(runner.compare(rule, v("2.1.9")), NotYetCompatible);
        // A gap between the versions covered: the chain has yet to reach the newer one.
        let gapped = covers(&["2.2.0", "2.4.0"]);
        assert_eq!(gapped.compare(rule, v("2.3.0")), NotYetCompatible);
    }

    #[test]
    fn one_version_compares_as_the_rule_does() {
        let rule = Rule::MajorMinor;
        for release in ["1.0.0", "1.1.4", "1.2.0"] {
            assert_eq!(
                Covers::one(v("1.1.0")).compare(rule, v(release)),
                rule.compare(v("1.1.0"), v(release))
            );
        }
    }

    #[test]
    fn named_by_the_newest_and_the_list_when_several() {
        assert_eq!(covers(&["1.1.0"]).to_string(), "1.1.0");
        assert_eq!(
            covers(&["2.2.8", "2.3.0"]).to_string(),
            "2.3.0 (covers 2.2.8, 2.3.0)"
        );
    }
}
