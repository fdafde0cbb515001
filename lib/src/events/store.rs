//! Writing events to Postgres: one transaction per batch that stores each
//! new event with binary `COPY` and adds it to its key's rollups, exactly
//! once per (key, event id), with rows that cannot be stored set aside in
//! `dead_letter_events` so they never block the rest.
//!
//! The drain and collect's direct-to-Postgres fallback both write through
//! [`store`], so an event reaches the table the same way whichever path it
//! took.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures::future::BoxFuture;
use sqlx::{error::BoxDynError, PgConnection, Row};
use uuid::Uuid;

use super::{
    copy::{BinaryRows, JsonbText},
    rollup, Event,
};
use crate::db::Db;

/// An event with what the queue entry added: its key and visitor.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub api_key_id: Uuid,
    pub visitor_id: Option<String>,
    pub event: Event,
}

/// An event, or a queue entry, that could not be stored, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub event_id: Option<Uuid>,
    pub api_key_id: Option<Uuid>,
    pub payload: String,
    pub reason: String,
    pub attempts: i32,
}

/// What storing a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Rows newly inserted.
    pub inserted: u64,
    /// Rows already present (a redelivered or resent event).
    pub duplicates: u64,
    /// Rows set aside in `dead_letter_events`.
    pub dead_lettered: u64,
}

/// Stores events, isolating rows Postgres refuses: when the batch fails on
/// its data, it is split in halves until the failing rows stand alone; those
/// go to `dead_letter_events` with Postgres's reason. A failure that is not
/// about the data (connection lost, timeout) is returned, and the caller
/// retries the whole batch later; the insert is idempotent, so that is safe.
pub async fn store(
    db: &Db,
    events: &[StoredEvent],
    attempts: i32,
) -> Result<StoreOutcome, sqlx::Error> {
    ensure_partitions(db, events).await?;
    let mut dead = Vec::new();
    let inserted = insert_isolating(db, events, &mut dead).await?;
    let dead_lettered = dead_letter(
        db,
        &dead
            .into_iter()
            .map(|(event, reason)| DeadLetter {
                event_id: Some(event.event.id),
                api_key_id: Some(event.api_key_id),
                payload: serde_json::to_string(&event.event).unwrap_or_default(),
                reason,
                attempts,
            })
            .collect::<Vec<_>>(),
    )
    .await?;
    Ok(StoreOutcome {
        inserted,
        duplicates: events.len() as u64 - inserted - dead_lettered,
        dead_lettered,
    })
}

fn insert_isolating<'a>(
    db: &'a Db,
    events: &'a [StoredEvent],
    dead: &'a mut Vec<(StoredEvent, String)>,
) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
    Box::pin(async move {
        if events.is_empty() {
            return Ok(0);
        }
        match insert_committed(db, events).await {
            Ok(inserted) => Ok(inserted),
            Err(error) if is_data_error(&error) => {
                if let [single] = events {
                    tracing::warn!(event_id = %single.event.id, error = %error, "event dead-lettered");
                    dead.push((single.clone(), error.to_string()));
                    return Ok(0);
                }
                let (left, right) = events.split_at(events.len() / 2);
                Ok(insert_isolating(db, left, dead).await?
                    + insert_isolating(db, right, dead).await?)
            }
            Err(error) => Err(error),
        }
    })
}

async fn insert_committed(db: &Db, events: &[StoredEvent]) -> Result<u64, sqlx::Error> {
    let mut transaction = db.pool().begin().await?;
    let inserted = insert(db, &mut transaction, events).await?;
    transaction.commit().await?;
    Ok(inserted)
}

/// Whether Postgres refused the statement because of the rows it carried
/// (SQLSTATE class 22, data exception, or 23, integrity constraint), as
/// opposed to a failure that a retry may cure.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

/// Stores a batch inside the caller's transaction, exactly once per
/// (key, event id), and returns the number of rows inserted:
///
/// 1. lock the batch's keys (`rollup::lock_keys`), so that no other
///    transaction stores events of these keys until this one ends;
/// 2. find which of the ids are already in `event_ids`;
/// 3. `COPY` the new ids into `event_ids` and the new events into `events`,
///    in binary, Postgres's bulk load path;
/// 4. add the new events to their keys' rollups.
///
/// The lock is what makes the plain `COPY` safe: two drains (or a drain and
/// collect's direct path) holding the same new id cannot both pass step 2,
/// because the second one runs it only after the first has committed. A
/// crash anywhere rolls the whole transaction back, and the batch, still
/// pending in Redis, is stored again later.
async fn insert(
    db: &Db,
    transaction: &mut PgConnection,
    events: &[StoredEvent],
) -> Result<u64, sqlx::Error> {
    // A client may repeat an id within one batch; the first one wins, as it
    // would have had the two come in separate batches.
    let mut seen = HashSet::with_capacity(events.len());
    let batch: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| seen.insert((e.api_key_id, e.event.id)))
        .collect();
    let keys: Vec<Uuid> = batch.iter().map(|e| e.api_key_id).collect();
    rollup::lock_keys(db, transaction, &keys).await?;

    let ids: Vec<Uuid> = batch.iter().map(|e| e.event.id).collect();
    let stored: HashSet<(Uuid, Uuid)> = db
        .query(
            "SELECT i.api_key_id, i.id FROM event_ids i
             JOIN unnest($1::uuid[], $2::uuid[]) AS b(api_key_id, id)
               ON i.api_key_id = b.api_key_id AND i.id = b.id",
        )
        .bind(&keys)
        .bind(&ids)
        .fetch_all(&mut *transaction)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let fresh: Vec<&StoredEvent> = batch
        .into_iter()
        .filter(|e| !stored.contains(&(e.api_key_id, e.event.id)))
        .collect();
    if fresh.is_empty() {
        return Ok(0);
    }

    copy_in(transaction, ID_COPY, id_rows(&fresh)).await?;
    copy_in(transaction, EVENT_COPY, event_rows(&fresh)).await?;
    rollup::apply(db, transaction, &fresh).await?;
    Ok(fresh.len() as u64)
}

/// Stores events inside the caller's transaction, all or none: for
/// collect's direct path, which counts the request in the same
/// transaction. Validated events only; a row Postgres refuses fails the
/// whole transaction instead of being dead-lettered. Returns the rows
/// inserted. Call [`ensure_partitions`] first, before the transaction
/// begins: it needs a connection of its own.
pub async fn store_in(
    db: &Db,
    transaction: &mut PgConnection,
    events: &[StoredEvent],
) -> Result<u64, sqlx::Error> {
    insert(db, transaction, events).await
}

const ID_COPY: &str = "COPY event_ids (api_key_id, id, occurred_at) FROM STDIN (FORMAT binary)";

const EVENT_COPY: &str = "COPY events (
    id, api_key_id, type, name, occurred_at, received_at, session_id, user_id,
    visitor_id, properties, url, path, referrer, title, screen, language,
    utm_source, utm_medium, utm_campaign, utm_term, utm_content,
    app_version, os_version, device, service, environment, method, status,
    duration_ms, browser, browser_version, os, device_type,
    country, region, city, latitude, longitude) FROM STDIN (FORMAT binary)";

async fn copy_in(
    transaction: &mut PgConnection,
    statement: &str,
    rows: Result<BinaryRows, BoxDynError>,
) -> Result<(), sqlx::Error> {
    let rows = rows.map_err(sqlx::Error::Encode)?;
    let mut copy = transaction.copy_in_raw(statement).await?;
    copy.send(rows.finish()).await?;
    copy.finish().await?;
    Ok(())
}

fn id_rows(events: &[&StoredEvent]) -> Result<BinaryRows, BoxDynError> {
    let mut rows = BinaryRows::new();
    for stored in events {
        rows.row(3);
        rows.field(&stored.api_key_id)?;
        rows.field(&stored.event.id)?;
        rows.field(&stored.event.occurred_at)?;
    }
    Ok(rows)
}

/// The events as rows of [`EVENT_COPY`], field for field in its column order.
fn event_rows(events: &[&StoredEvent]) -> Result<BinaryRows, BoxDynError> {
    let mut rows = BinaryRows::new();
    for stored in events {
        let e = &stored.event;
        rows.row(38);
        rows.field(&e.id)?;
        rows.field(&stored.api_key_id)?;
        rows.field(&e.kind.as_str())?;
        rows.field(&e.name)?;
        rows.field(&e.occurred_at)?;
        rows.field(&e.received_at)?;
        rows.field(&e.session_id)?;
        rows.field(&e.user_id)?;
        rows.field(&stored.visitor_id)?;
        rows.field(&e.properties.as_deref().map(JsonbText))?;
        rows.field(&e.web.url)?;
        rows.field(&e.web.path)?;
        rows.field(&e.web.referrer)?;
        rows.field(&e.web.title)?;
        rows.field(&e.web.screen)?;
        rows.field(&e.web.language)?;
        rows.field(&e.web.utm_source)?;
        rows.field(&e.web.utm_medium)?;
        rows.field(&e.web.utm_campaign)?;
        rows.field(&e.web.utm_term)?;
        rows.field(&e.web.utm_content)?;
        rows.field(&e.mobile.app_version)?;
        rows.field(&e.mobile.os_version)?;
        rows.field(&e.mobile.device)?;
        rows.field(&e.server.service)?;
        rows.field(&e.server.environment)?;
        rows.field(&e.server.method)?;
        rows.field(&e.server.status)?;
        rows.field(&e.server.duration_ms)?;
        rows.field(&e.agent.browser)?;
        rows.field(&e.agent.browser_version)?;
        rows.field(&e.agent.os)?;
        rows.field(&e.agent.device_type)?;
        rows.field(&e.geo.country)?;
        rows.field(&e.geo.region)?;
        rows.field(&e.geo.city)?;
        rows.field(&e.geo.latitude)?;
        rows.field(&e.geo.longitude)?;
    }
    Ok(rows)
}

/// Makes sure a partition exists for every month the events fall in. Months
/// already seen by this process are skipped, so a steady drain pays nothing.
pub async fn ensure_partitions(db: &Db, events: &[StoredEvent]) -> Result<(), sqlx::Error> {
    let months: BTreeSet<NaiveDate> = events
        .iter()
        .map(|e| e.event.occurred_at)
        .filter_map(|t| NaiveDate::from_ymd_opt(t.year(), t.month(), 1))
        .filter(|month| !db.knows_partition(*month))
        .collect();
    for month in months {
        db.query("SELECT ensure_event_partitions($1, 1)")
            .bind(month)
            .execute(db.executor())
            .await?;
        db.remember_partition(month);
    }
    Ok(())
}

/// Creates this month's and the next `ahead` months' partitions; the drain
/// runs it so that partitions exist before events need them.
pub async fn create_partitions_ahead(
    db: &Db,
    now: DateTime<Utc>,
    ahead: i32,
) -> Result<(), sqlx::Error> {
    db.query("SELECT ensure_event_partitions($1, $2)")
        .bind(now.date_naive())
        .bind(ahead + 1)
        .execute(db.executor())
        .await?;
    Ok(())
}

/// Records rows that cannot be stored, in one statement. A row dead-lettered
/// again (its batch was redelivered) only has its attempt count raised.
pub async fn dead_letter(db: &Db, letters: &[DeadLetter]) -> Result<u64, sqlx::Error> {
    if letters.is_empty() {
        return Ok(0);
    }
    let event_ids: Vec<Option<Uuid>> = letters.iter().map(|l| l.event_id).collect();
    let key_ids: Vec<Option<Uuid>> = letters.iter().map(|l| l.api_key_id).collect();
    let payloads: Vec<&str> = letters.iter().map(|l| l.payload.as_str()).collect();
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    let attempts: Vec<i32> = letters.iter().map(|l| l.attempts).collect();
    db.query(
        "INSERT INTO dead_letter_events (event_id, api_key_id, payload, reason, attempts)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::integer[])
         ON CONFLICT (api_key_id, event_id) WHERE event_id IS NOT NULL DO UPDATE
            SET attempts = GREATEST(dead_letter_events.attempts, EXCLUDED.attempts),
                reason = EXCLUDED.reason,
                last_failed_at = now()",
    )
    .bind(event_ids)
    .bind(key_ids)
    .bind(payloads)
    .bind(reasons)
    .bind(attempts)
    .execute(db.executor())
    .await?;
    Ok(letters.len() as u64)
}

/// Drops the monthly partitions that ended before `cutoff`, returning their
/// names. The drain calls it when retention is configured.
pub async fn drop_partitions_before(
    db: &Db,
    cutoff: NaiveDate,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = db
        .query("SELECT drop_event_partitions_before($1) AS dropped")
        .bind(cutoff)
        .fetch_all(db.executor())
        .await?;
    rows.iter().map(|row| row.try_get("dropped")).collect()
}
