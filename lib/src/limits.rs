//! The limits a key is held to: its tier's defaults, overridden by the key's
//! own values. The tier defaults live here and nowhere else.

use serde::{Deserialize, Serialize};

use crate::apikeys::Tier;

/// Requests per minute, per day and per month. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub per_minute: Option<u32>,
    pub per_day: Option<u64>,
    pub per_month: Option<u64>,
}

impl Tier {
    /// The tier's default limits.
    pub fn default_limits(self) -> Limits {
        match self {
            Tier::Free => Limits {
                per_minute: Some(60),
                per_day: Some(1_000),
                per_month: Some(10_000),
            },
            Tier::Pro => Limits {
                per_minute: Some(600),
                per_day: Some(50_000),
                per_month: Some(1_000_000),
            },
            Tier::Enterprise => Limits {
                per_minute: Some(6_000),
                per_day: None,
                per_month: None,
            },
        }
    }
}

/// A key's own overrides, as stored in `api_keys`; `None` takes the tier's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub per_minute: Option<u32>,
    pub per_day: Option<u64>,
    pub per_month: Option<u64>,
}

impl Limits {
    /// The tier's limits with the key's overrides applied.
    pub fn for_key(tier: Tier, overrides: Overrides) -> Self {
        let defaults = tier.default_limits();
        Self {
            per_minute: overrides.per_minute.or(defaults.per_minute),
            per_day: overrides.per_day.or(defaults.per_day),
            per_month: overrides.per_month.or(defaults.per_month),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_own_values_override_its_tiers() {
        let limits = Limits::for_key(
            Tier::Free,
            Overrides {
                per_minute: Some(5),
                per_day: None,
                per_month: Some(50),
            },
        );
        assert_eq!(
            limits,
            Limits {
                per_minute: Some(5),
                per_day: Some(1_000),
                per_month: Some(50)
            }
        );
    }

    #[test]
    fn enterprise_has_no_quota() {
        let limits = Tier::Enterprise.default_limits();
        assert_eq!(limits.per_minute, Some(6_000));
        assert_eq!((limits.per_day, limits.per_month), (None, None));
    }
}
