//! Secrets that must never reach a log line or a response.
//!
//! [`Secret`] prints as `[redacted]` in `Debug` and `Display`, so a config
//! struct or an error can be logged whole, and compares in constant time so
//! that checking a bearer token leaks nothing through timing.

use std::fmt;

use subtle::ConstantTimeEq;

/// A string whose value is hidden from `Debug` and `Display`.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value. Prefer parsing it straight from its source.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `candidate` in time that depends only on the lengths.
    pub fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(secret.to_string(), "[redacted]");
    }

    #[test]
    fn matches_only_the_exact_value() {
        let secret = Secret::new("token-1");
        assert!(secret.matches("token-1"));
        assert!(!secret.matches("token-2"));
        assert!(!secret.matches("token-1 "));
        assert!(!secret.matches(""));
    }
}
