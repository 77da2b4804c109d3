//! A deployment's cap on what its staging uses of each host's link (`vw deploy --cap`):
//! a deploy option the planner's view applies to every link (`view`), so it is built
//! without the `host` feature too.

use serde::{Deserialize, Serialize};

/// A deployment's cap on what its staging uses of each host's link, so that it can
/// run beside live virtual clusters without starving them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageCap {
    /// This share of each host's link (more than 0, at most 1).
    Share(f64),
    /// This many bytes per second on every host's link.
    Rate(f64),
}

impl StageCap {
    /// On a link of `link` bytes per second: the bytes per second staging may use.
    pub fn on(self, link: f64) -> f64 {
        match self {
            StageCap::Share(share) => link * share,
            StageCap::Rate(rate) => rate.min(link),
        }
    }
}

impl std::str::FromStr for StageCap {
    type Err = String;

    /// `50%` (of each link) or a rate (`40Mbit`, `5MB`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(pct) = s.trim().strip_suffix('%') {
            let pct: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a share like 50% or a rate like 40Mbit"))?;
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(format!("`{s}`: a share of the link is more than 0% and at most 100%"));
            }
            return Ok(StageCap::Share(pct / 100.0));
        }
        let rate = crate::hosts::parse_rate(s)?;
        if !(rate >= 1.0 && rate.is_finite()) {
            return Err(format!("`{s}`: a cap is at least 1 byte per second"));
        }
        Ok(StageCap::Rate(rate))
    }
}

impl std::fmt::Display for StageCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageCap::Share(share) => write!(f, "{}% of each link", share * 100.0),
            StageCap::Rate(rate) => write!(f, "{:.1} Mbit/s", rate * 8.0 / 1e6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_is_a_share_or_a_rate_and_a_bad_one_says_why() {
        assert_eq!("50%".parse::<StageCap>(), Ok(StageCap::Share(0.5)));
        assert_eq!("40Mbit".parse::<StageCap>(), Ok(StageCap::Rate(5e6)));
        assert_eq!(StageCap::Share(0.5).on(1e6), 5e5);
        assert_eq!(StageCap::Rate(5e6).on(1e6), 1e6, "never above the link");
        for (bad, why) in [
            ("lots", "lots"),
            ("half%", "is not a share like 50%"),
            ("0%", "more than 0% and at most 100%"),
            ("150%", "more than 0% and at most 100%"),
        ] {
            let err = bad.parse::<StageCap>().expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
