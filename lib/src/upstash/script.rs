//! Lua scripts compiled into the binary and run by SHA-1.

use std::sync::OnceLock;

/// A Lua script: its source is compiled in, its SHA-1 computed once.
#[derive(Debug)]
pub struct Script {
    name: &'static str,
    source: &'static str,
    sha1: OnceLock<String>,
}

impl Script {
    /// Declares a script, usually as
    /// `static X: Script = Script::new("x", include_str!("x.lua"));`.
    pub const fn new(name: &'static str, source: &'static str) -> Self {
        Self {
            name,
            source,
            sha1: OnceLock::new(),
        }
    }

    /// The name used in logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Lua source.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The hex SHA-1 of the source, which `EVALSHA` takes.
    pub fn sha1(&self) -> &str {
        self.sha1
            .get_or_init(|| sha1_smol::Sha1::from(self.source).digest().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sha1_is_that_of_the_source() {
        // SHA-1 of "return 1", as `SCRIPT LOAD` reports it.
        let script = Script::new("one", "return 1");
        assert_eq!(script.sha1(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
