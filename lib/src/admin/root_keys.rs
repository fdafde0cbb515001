//! Root keys (`rk_…`): the credentials of `/api/keys`, made at the CLI
//! (`tollgate root-keys create|list|revoke`), stored as SHA-256 hashes and
//! shown once, each with the scopes it may use.
//!
//! A root key acts on every tenant's keys, so it never ships to a browser
//! and the API checks it on every call against Postgres (no cache): a
//! revocation takes effect at the next call.

use std::{fmt, str::FromStr};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use super::{audit, Actor, AdminError};
use crate::{
    apikeys::{hash_secret, is_lower_hex, random_hex},
    db::Db,
    secret::Secret,
};

/// What a root key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Scope {
    /// List and read keys, their usage, bans and the audit log.
    #[serde(rename = "keys:read")]
    KeysRead,
    /// Create, update, revoke and rotate keys; set alert endpoints.
    #[serde(rename = "keys:write")]
    KeysWrite,
    /// Add and lift bans.
    #[serde(rename = "bans:write")]
    BansWrite,
    /// Read any key's analytics.
    #[serde(rename = "analytics:read")]
    AnalyticsRead,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::BansWrite,
        Scope::AnalyticsRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
            Scope::BansWrite => "bans:write",
            Scope::AnalyticsRead => "analytics:read",
        }
    }
}

impl FromStr for Scope {
    type Err = AdminError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                AdminError::Invalid(format!(
                    "unknown scope `{s}`; expected keys:read, keys:write, bans:write or analytics:read"
                ))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Random bytes in a root key, written as hex after `rk_`.
const ROOT_KEY_BYTES: usize = 24;

/// A root key as presented, checked for shape before any lookup: `rk_` and
/// 48 lowercase hex digits.
#[derive(Debug, Clone)]
pub struct PresentedRootKey(Secret);

impl PresentedRootKey {
    pub fn parse(value: &str) -> Option<Self> {
        let digits = value.strip_prefix("rk_")?;
        is_lower_hex(digits, ROOT_KEY_BYTES * 2).then(|| Self(Secret::new(value)))
    }

    /// The hex SHA-256 of the key, as the limiter names its bucket.
    pub fn hash_hex(&self) -> String {
        hex::encode(hash_secret(self.0.expose()))
    }
}

/// A root key that authenticated: who acts, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootKey {
    pub id: Uuid,
    pub scopes: Vec<Scope>,
}

impl RootKey {
    pub fn actor(&self) -> Actor {
        Actor::Root(self.id)
    }

    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// A root key as `root-keys list` shows it: never the secret or its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RootKeySummary {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A freshly made root key: its secret exists only here.
#[derive(Debug)]
pub struct NewRootKey {
    pub id: Uuid,
    pub secret: Secret,
}

/// Makes a root key with the given scopes (at least one).
pub async fn create(
    db: &Db,
    actor: &Actor,
    name: &str,
    scopes: &[Scope],
) -> Result<NewRootKey, AdminError> {
    let length = name.chars().count();
    if !(1..=200).contains(&length) || name.contains('\0') {
        return Err(AdminError::Invalid(format!(
            "a root key's name must be 1 to 200 characters without U+0000, got {length}"
        )));
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(AdminError::Invalid(
            "a root key needs at least one scope".to_owned(),
        ));
    }
    let key = NewRootKey {
        id: Uuid::now_v7(),
        secret: Secret::new(format!("rk_{}", random_hex(ROOT_KEY_BYTES))),
    };
    let names: Vec<&str> = scopes.iter().map(|scope| scope.as_str()).collect();
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    db.query("INSERT INTO root_keys (id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4)")
        .bind(key.id)
        .bind(name)
        .bind(hash_secret(key.secret.expose()).as_slice())
        .bind(&names)
        .execute(&mut *tx)
        .await
        .context("inserting the root key")?;
    let detail = json!({ "root_key_id": key.id, "name": name, "scopes": names });
    audit::record(db, &mut tx, actor, "root_key.create", None, detail).await?;
    tx.commit().await.context("committing the root key")?;
    Ok(key)
}

/// Every root key, oldest first.
pub async fn list(db: &Db) -> Result<Vec<RootKeySummary>, AdminError> {
    let rows = db
        .query(
            "SELECT id, name, scopes, created_at, revoked_at, last_used_at
               FROM root_keys ORDER BY id",
        )
        .fetch_all(db.executor())
        .await
        .context("listing root keys")?;
    rows.iter()
        .map(|row| {
            Ok(RootKeySummary {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                scopes: scopes(row.try_get("scopes")?)?,
                created_at: row.try_get("created_at")?,
                revoked_at: row.try_get("revoked_at")?,
                last_used_at: row.try_get("last_used_at")?,
            })
        })
        .collect::<anyhow::Result<_>>()
        .map_err(AdminError::Unexpected)
}

/// Revokes a root key: its next call is refused.
pub async fn revoke(db: &Db, actor: &Actor, id: Uuid) -> Result<(), AdminError> {
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    db.query(
        "UPDATE root_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING id",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .context("revoking the root key")?
    .ok_or(AdminError::NoSuchRootKey(id))?;
    let detail = json!({ "root_key_id": id });
    audit::record(db, &mut tx, actor, "root_key.revoke", None, detail).await?;
    tx.commit().await.context("committing the revocation")?;
    Ok(())
}

/// The root key a presented value belongs to, if one does and it is not
/// revoked; notes its use, to the minute: writing the row on every call
/// would put a busy key's calls in line behind each other's row lock.
pub async fn authenticate(
    db: &Db,
    presented: &PresentedRootKey,
) -> anyhow::Result<Option<RootKey>> {
    let row = db
        .query(
            "WITH found AS (
                SELECT id, scopes, last_used_at FROM root_keys
                 WHERE secret_hash = $1 AND revoked_at IS NULL
             ), touched AS (
                UPDATE root_keys r SET last_used_at = now()
                  FROM found
                 WHERE r.id = found.id
                   AND (found.last_used_at IS NULL
                        OR found.last_used_at < now() - interval '1 minute')
             )
             SELECT id, scopes FROM found",
        )
        .bind(hash_secret(presented.0.expose()).as_slice())
        .fetch_optional(db.executor())
        .await
        .context("looking the root key up")?;
    row.map(|row| {
        Ok(RootKey {
            id: row.try_get("id")?,
            scopes: scopes(row.try_get("scopes")?)?,
        })
    })
    .transpose()
}

fn scopes(names: Vec<String>) -> anyhow::Result<Vec<Scope>> {
    names
        .iter()
        .map(|name| name.parse().map_err(|e: AdminError| anyhow::anyhow!("{e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_key_is_rk_and_48_hex_digits() {
        let good = format!("rk_{}", "0a".repeat(24));
        assert!(PresentedRootKey::parse(&good).is_some());
        for bad in [
            "rk_".to_owned(),
            format!("rk_{}", "0A".repeat(24)),
            format!("rk_{}0", "0a".repeat(24)),
            format!("sk_{}", "0a".repeat(24)),
        ] {
            assert!(PresentedRootKey::parse(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn scopes_parse_from_their_names_only() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
        assert!("keys:admin".parse::<Scope>().is_err());
    }
}
