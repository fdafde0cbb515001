//! Deletion on request (GDPR): `tollgate events delete` removes a key's
//! events by user id, by visitor or before a date, corrects the key's
//! rollups, and records what it removed in `event_deletions`.
//!
//! The erased events' ids stay in `event_ids`: a queue entry redelivered
//! after the deletion is then still a duplicate and is not stored again.
//! Everything happens in one transaction under the key's rollup lock, so a
//! drain never sees the events gone and the rollups not yet corrected.

use std::fmt;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::rollup;
use crate::{apikeys, db::Db};

/// Which of a key's events to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// The events sent with this `user_id`.
    UserId(String),
    /// The events of this visitor id.
    Visitor(String),
    /// The events that occurred before this day began, in the key's time
    /// zone.
    Before(NaiveDate),
}

impl Criterion {
    /// A user or visitor id must not be empty: an empty id would match
    /// nothing and the request would seem honoured.
    pub fn user_id(id: &str) -> Result<Self, EraseError> {
        Self::non_empty(id, "--user-id").map(Criterion::UserId)
    }

    pub fn visitor(id: &str) -> Result<Self, EraseError> {
        Self::non_empty(id, "--visitor").map(Criterion::Visitor)
    }

    fn non_empty(id: &str, flag: &str) -> Result<String, EraseError> {
        let id = id.trim();
        if id.is_empty() {
            return Err(EraseError::Invalid(format!("{flag} must not be empty")));
        }
        Ok(id.to_owned())
    }

    /// Its name in `event_deletions.criterion`.
    pub fn name(&self) -> &'static str {
        match self {
            Criterion::UserId(_) => "user_id",
            Criterion::Visitor(_) => "visitor",
            Criterion::Before(_) => "before",
        }
    }

    /// What the log records of it: an id as its SHA-256, so the log does
    /// not keep the identifier it erased; a date as given.
    fn subject(&self) -> String {
        match self {
            Criterion::UserId(id) | Criterion::Visitor(id) => hex::encode(apikeys::hash_secret(id)),
            Criterion::Before(day) => day.to_string(),
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Criterion::UserId(id) => write!(f, "user id {id}"),
            Criterion::Visitor(id) => write!(f, "visitor {id}"),
            Criterion::Before(day) => write!(f, "before {day}"),
        }
    }
}

/// What a deletion can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("no key with id {0}")]
    NoSuchKey(Uuid),
    /// The request is malformed; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A row of `event_deletions`: what one deletion removed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Erased {
    pub id: i64,
    pub api_key_id: Uuid,
    pub criterion: &'static str,
    pub subject: String,
    pub events_removed: i64,
    pub deleted_at: DateTime<Utc>,
    /// The first day whose rollups were recomputed, if any events remain.
    pub rebuilt_from: Option<NaiveDate>,
}

/// Deletes a key's events matching `criterion`, corrects its rollups and
/// records the deletion, in one transaction.
pub async fn erase(db: &Db, key_id: Uuid, criterion: &Criterion) -> Result<Erased, EraseError> {
    let mut transaction = db.pool().begin().await.context("starting a transaction")?;
    rollup::lock_keys(db, &mut transaction, &[key_id])
        .await
        .context("locking the key's rollups")?;
    let timezone: String = db
        .query("SELECT timezone FROM api_keys WHERE id = $1")
        .bind(key_id)
        .fetch_optional(&mut *transaction)
        .await
        .context("reading the key")?
        .ok_or(EraseError::NoSuchKey(key_id))?
        .try_get("timezone")
        .context("reading the key's time zone")?;

    let removed = delete_events(db, &mut transaction, key_id, criterion, &timezone).await?;
    if let Criterion::Before(day) = criterion {
        // Days before the date lose every event, so they lose their
        // rollups too; the rebuild below only recomputes days that keep
        // events.
        rollup::clear_days(db, &mut transaction, key_id, rollup::Days::Before(*day))
            .await
            .with_context(|| format!("deleting the rollups before {day}"))?;
    }
    let rebuilt = rollup::rebuild_in(db, &mut transaction, key_id)
        .await
        .context("rebuilding the key's rollups")?;

    let row = db
        .query(
            "INSERT INTO event_deletions (api_key_id, criterion, subject, events_removed)
             VALUES ($1, $2, $3, $4)
             RETURNING id, deleted_at",
        )
        .bind(key_id)
        .bind(criterion.name())
        .bind(criterion.subject())
        .bind(removed)
        .fetch_one(&mut *transaction)
        .await
        .context("recording the deletion")?;
    transaction
        .commit()
        .await
        .context("committing the deletion")?;
    Ok(Erased {
        id: row.try_get("id").context("reading the deletion's id")?,
        api_key_id: key_id,
        criterion: criterion.name(),
        subject: criterion.subject(),
        events_removed: removed,
        deleted_at: row
            .try_get("deleted_at")
            .context("reading the deletion's time")?,
        rebuilt_from: rebuilt.from,
    })
}

async fn delete_events(
    db: &Db,
    conn: &mut sqlx::PgConnection,
    key_id: Uuid,
    criterion: &Criterion,
    timezone: &str,
) -> anyhow::Result<i64> {
    let query = match criterion {
        Criterion::UserId(id) => db
            .query("DELETE FROM events WHERE api_key_id = $1 AND user_id = $2")
            .bind(key_id)
            .bind(id),
        Criterion::Visitor(id) => db
            .query("DELETE FROM events WHERE api_key_id = $1 AND visitor_id = $2")
            .bind(key_id)
            .bind(id),
        Criterion::Before(day) => db
            .query("DELETE FROM events WHERE api_key_id = $1 AND occurred_at < $2")
            .bind(key_id)
            .bind(apikeys::day_start(*day, apikeys::zone(timezone))),
    };
    let result = query
        .execute(conn)
        .await
        .with_context(|| format!("deleting the events of {criterion}"))?;
    Ok(result.rows_affected() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_id_is_refused_with_the_flag_named() {
        for (made, flag) in [
            (Criterion::user_id("  "), "--user-id"),
            (Criterion::visitor(""), "--visitor"),
        ] {
            let error = made.unwrap_err().to_string();
            assert!(error.contains(flag), "{error}");
        }
    }

    #[test]
    fn the_log_keeps_a_hash_of_an_id_and_a_date_as_given() {
        let user = Criterion::user_id("alice@example.com").unwrap();
        assert_eq!(user.subject().len(), 64);
        assert!(!user.subject().contains("alice"));
        let before = Criterion::Before(NaiveDate::from_ymd_opt(2031, 3, 1).unwrap());
        assert_eq!(before.subject(), "2031-03-01");
    }
}
