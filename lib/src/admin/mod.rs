//! Key and ban management: what `tollgate keys …`, `tollgate bans …`,
//! `tollgate root-keys …` and the `/api/keys` route do, through the same
//! functions, so the CLI and the API cannot drift apart.
//!
//! Every change is made in two steps. Postgres, the record, is changed first
//! and the function returns a [`Changed`] holding the change's result and a
//! [`RedisSync`]: the Redis commands that make the change take effect at once
//! (deleting key cache entries, setting or deleting ban markers). The caller
//! applies it with [`RedisSync::apply`] when it can reach Upstash. When it
//! cannot, the change still holds: cached keys expire within
//! [`crate::apikeys::CACHE_TTL`], and the CLI says what was skipped. Splitting the
//! steps this way keeps an Upstash outage, or a machine without Upstash
//! credentials, from blocking a change to the record.
//!
//! Every change is recorded in the audit log ([`audit`]) in its own
//! transaction, under the [`Actor`] that made it.

pub mod audit;
pub mod bans;
pub mod endpoints;
pub mod keys;
pub mod root_keys;
pub mod usage;

pub use audit::Actor;
pub use bans::*;
pub use keys::*;

use uuid::Uuid;

use crate::{
    redis_keys::RedisKeys,
    upstash::{Command, Upstash, UpstashError},
};

/// What a key or ban change can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The key id matches no key.
    #[error("no key with id {0}")]
    NoSuchKey(Uuid),
    /// A revoked key cannot be rotated: its new halves would not work either.
    #[error("key {0} is revoked; create a new key instead of rotating it")]
    KeyRevoked(Uuid),
    /// A name, limit or duration is out of range; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// Another ban on the same subject was added between our two statements.
    #[error("another ban on {0} was added at the same moment; run the command again")]
    ConcurrentBan(BanSubject),
    /// The root key id matches no root key.
    #[error("no root key with id {0}")]
    NoSuchRootKey(Uuid),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A Postgres change, done, and the Redis commands that make it take effect
/// at once.
#[derive(Debug)]
#[must_use = "apply `redis` to Upstash, or tell the operator it was skipped"]
pub struct Changed<T> {
    pub value: T,
    pub redis: RedisSync,
}

/// Redis commands that bring the caches and ban markers in line with a
/// change already made in Postgres. Applying them twice is harmless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisSync {
    commands: Vec<Command>,
}

impl RedisSync {
    /// The commands, in the order they run.
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// Runs the commands in one pipeline (one round trip); fails if any fails.
    pub async fn apply(&self, upstash: &Upstash) -> Result<(), UpstashError> {
        if self.commands.is_empty() {
            return Ok(());
        }
        for reply in upstash.pipeline(&self.commands).await? {
            reply?;
        }
        Ok(())
    }

    /// Bumps the generation of the key cache entries of both halves of a
    /// key, then deletes them: a refill that looked the key up before this
    /// change cannot write its stale answer back (see `fill_key.lua`).
    pub(crate) fn forget_key(keys: &RedisKeys, halves: &keys::StoredHalves) -> Self {
        let hashes = halves.cache_ids();
        let mut commands = Vec::new();
        for hash in &hashes {
            let generation = keys.key_generation(hash);
            commands.push(Command::new("INCR").arg(&generation));
            commands.push(
                Command::new("EXPIRE")
                    .arg(&generation)
                    .arg(KEY_GENERATION_TTL.as_secs()),
            );
        }
        commands.push(Command::new("DEL").args(hashes.iter().map(|hash| keys.key_cache(hash))));
        Self { commands }
    }
}

/// How long a key's cache generation outlives its last change: far longer
/// than any refill takes. One that expires reads as a change, which only
/// makes a refill look again.
const KEY_GENERATION_TTL: std::time::Duration = std::time::Duration::from_secs(86_400);
