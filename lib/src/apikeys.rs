//! API keys: generation, hashing and storage.
//!
//! A key has two halves. The secret key (`sk_…`) authenticates servers and
//! SDKs; Postgres keeps only its SHA-256, so it is shown once, at creation.
//! The publishable key (`pk_…`) ships in web pages to authenticate event
//! collection, so it is stored as it is.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{db::Db, secret::Secret};

/// The plan a key is on; its limits come from the tier unless overridden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
}

impl Tier {
    /// The name stored in Postgres and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "free" => Ok(Tier::Free),
            "pro" => Ok(Tier::Pro),
            "enterprise" => Ok(Tier::Enterprise),
            other => Err(format!(
                "unknown tier `{other}`; expected free, pro or enterprise"
            )),
        }
    }
}

/// A freshly generated key pair, before or just after it is stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: Uuid,
    pub secret: Secret,
    pub publishable: String,
}

impl NewKey {
    /// Generates a key pair: 192 random bits for the secret, 96 for the
    /// publishable key, from the thread-local CSPRNG.
    pub fn generate() -> Self {
        Self {
            id: Uuid::now_v7(),
            secret: Secret::new(format!("sk_{}", random_hex(24))),
            publishable: format!("pk_{}", random_hex(12)),
        }
    }
}

/// The SHA-256 of a secret key, as stored and as looked up.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Stores a key with the given name and tier, unless a key with its id
/// already exists. Returns whether it was inserted.
pub async fn insert(db: &Db, key: &NewKey, name: &str, tier: Tier) -> anyhow::Result<bool> {
    let inserted = db
        .query(
            "INSERT INTO api_keys (id, name, secret_hash, publishable_key, tier)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(key.id)
        .bind(name)
        .bind(hash_secret(key.secret.expose()).as_slice())
        .bind(&key.publishable)
        .bind(tier.as_str())
        .execute(db.pool())
        .await?
        .rows_affected();
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_their_prefixes_and_differ() {
        let a = NewKey::generate();
        let b = NewKey::generate();
        assert!(a.secret.expose().starts_with("sk_"));
        assert_eq!(a.secret.expose().len(), 3 + 48);
        assert!(a.publishable.starts_with("pk_"));
        assert_ne!(a.secret.expose(), b.secret.expose());
        assert_ne!(a.publishable, b.publishable);
    }

    #[test]
    fn the_hash_is_sha256() {
        assert_eq!(
            hex::encode(hash_secret("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tiers_parse_from_their_names() {
        for tier in [Tier::Free, Tier::Pro, Tier::Enterprise] {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
        }
        assert!("gold".parse::<Tier>().is_err());
    }
}
