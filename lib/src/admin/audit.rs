//! The audit log: every management action, who made it (a root key through
//! `/api/keys`, or an operator at the CLI), what it was, to which key, and
//! when. Each change writes its entry in the transaction that makes the
//! change, so the log holds exactly the changes that happened.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::db::Db;

/// Who makes a management change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An operator with `DATABASE_URL`, at the CLI.
    Cli,
    /// A root key, through `/api/keys`.
    Root(Uuid),
}

impl Actor {
    /// `cli` or `root:<id>`, as the log stores it.
    pub fn name(&self) -> String {
        match self {
            Actor::Cli => "cli".to_owned(),
            Actor::Root(id) => format!("root:{id}"),
        }
    }

    fn root_key_id(&self) -> Option<Uuid> {
        match self {
            Actor::Cli => None,
            Actor::Root(id) => Some(*id),
        }
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `cli` or `root:<id>`.
    pub actor: String,
    /// e.g. `key.create`, `key.rotate`, `ban.add`, `root_key.revoke`.
    pub action: String,
    /// The API key acted on, if the action had one.
    pub key_id: Option<Uuid>,
    /// What changed: the fields sent, never a secret.
    pub detail: Value,
}

/// Records an action inside the transaction that makes it.
pub async fn record(
    db: &Db,
    tx: &mut PgConnection,
    actor: &Actor,
    action: &str,
    key_id: Option<Uuid>,
    detail: Value,
) -> anyhow::Result<()> {
    db.query(
        "INSERT INTO audit_log (root_key_id, actor, action, api_key_id, detail)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor.root_key_id())
    .bind(actor.name())
    .bind(action)
    .bind(key_id)
    .bind(detail)
    .execute(tx)
    .await
    .with_context(|| format!("recording `{action}` in the audit log"))?;
    Ok(())
}

/// Which entries to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only the actions on this key.
    pub key_id: Option<Uuid>,
    /// Only entries after this id (the previous page's last).
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1,000).
    pub limit: Option<u32>,
}

/// The log, oldest first.
pub async fn list(db: &Db, filter: &Filter) -> anyhow::Result<Vec<Entry>> {
    let limit = i64::from(filter.limit.unwrap_or(100).clamp(1, 1_000));
    let rows = db
        .query(
            "SELECT id, at, actor, action, api_key_id, detail FROM audit_log
              WHERE ($1::uuid IS NULL OR api_key_id = $1) AND id > coalesce($2, 0)
              ORDER BY id LIMIT $3",
        )
        .bind(filter.key_id)
        .bind(filter.after)
        .bind(limit)
        .fetch_all(db.executor())
        .await
        .context("reading the audit log")?;
    rows.iter()
        .map(|row| {
            Ok(Entry {
                id: row.try_get("id")?,
                at: row.try_get("at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                key_id: row.try_get("api_key_id")?,
                detail: row.try_get("detail")?,
            })
        })
        .collect()
}
