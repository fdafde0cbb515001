//! Writing events to Postgres: one `INSERT … SELECT FROM UNNEST(…)` per
//! batch, idempotent on the event id, with rows that cannot be stored set
//! aside in `dead_letter_events` so they never block the rest.
//!
//! The drain and collect's direct-to-Postgres fallback both write through
//! [`store`], so an event reaches the table the same way whichever path it
//! took.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures::future::BoxFuture;
use uuid::Uuid;

use super::Event;
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
    ensure_partitions(db, events.iter().map(|e| e.event.occurred_at)).await?;
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
        match insert(db, db.pool(), events).await {
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

/// One statement for the whole batch; an event whose id is already stored
/// (redelivered, or resent by its client) is skipped. Returns the number of
/// rows inserted.
async fn insert<'e>(
    db: &Db,
    executor: impl sqlx::PgExecutor<'e>,
    events: &[StoredEvent],
) -> Result<u64, sqlx::Error> {
    // A client may repeat an id within one batch; the first one wins, as it
    // would have had the two come in separate batches.
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    let mut columns = Columns::with_capacity(events.len());
    for stored in events
        .iter()
        .filter(|e| seen.insert((e.api_key_id, e.event.id)))
    {
        columns.push(stored);
    }
    let result = db
        .query(
            // `fresh` claims each key's id in event_ids; only events whose
            // id was new for their key are inserted. (Key, id) pairs are
            // unique within a batch (see `insert`), so the join matches each
            // fresh one once, and the events insert
            // needs no ON CONFLICT (whose speculative insertion costs time).
            "WITH batch AS (
                SELECT * FROM UNNEST(
                    $1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[],
                    $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[],
                    $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                    $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
                    $22::text[], $23::text[], $24::text[], $25::text[], $26::text[], $27::text[],
                    $28::integer[], $29::float8[], $30::text[], $31::text[], $32::text[],
                    $33::text[], $34::text[], $35::text[], $36::text[], $37::float8[],
                    $38::float8[]
                ) AS t(id, api_key_id, type, name, occurred_at, received_at, session_id, user_id,
                    visitor_id, properties, url, path, referrer, title, screen, language,
                    utm_source, utm_medium, utm_campaign, utm_term, utm_content,
                    app_version, os_version, device, service, environment, method, status,
                    duration_ms, browser, browser_version, os, device_type,
                    country, region, city, latitude, longitude)
             ),
             fresh AS (
                INSERT INTO event_ids (api_key_id, id, occurred_at)
                SELECT api_key_id, id, occurred_at FROM batch
                ON CONFLICT (api_key_id, id) DO NOTHING
                RETURNING api_key_id, id
             )
             INSERT INTO events (
                id, api_key_id, type, name, occurred_at, received_at, session_id, user_id,
                visitor_id, properties, url, path, referrer, title, screen, language,
                utm_source, utm_medium, utm_campaign, utm_term, utm_content,
                app_version, os_version, device, service, environment, method, status,
                duration_ms, browser, browser_version, os, device_type,
                country, region, city, latitude, longitude)
             SELECT
                b.id, b.api_key_id, type, name, occurred_at, received_at, session_id, user_id,
                visitor_id, properties::jsonb, url, path, referrer, title, screen, language,
                utm_source, utm_medium, utm_campaign, utm_term, utm_content,
                app_version, os_version, device, service, environment, method, status,
                duration_ms, browser, browser_version, os, device_type,
                country, region, city, latitude, longitude
             FROM batch b JOIN fresh f ON f.api_key_id = b.api_key_id AND f.id = b.id",
        )
        .bind(columns.id)
        .bind(columns.api_key_id)
        .bind(columns.kind)
        .bind(columns.name)
        .bind(columns.occurred_at)
        .bind(columns.received_at)
        .bind(columns.session_id)
        .bind(columns.user_id)
        .bind(columns.visitor_id)
        .bind(columns.properties)
        .bind(columns.url)
        .bind(columns.path)
        .bind(columns.referrer)
        .bind(columns.title)
        .bind(columns.screen)
        .bind(columns.language)
        .bind(columns.utm_source)
        .bind(columns.utm_medium)
        .bind(columns.utm_campaign)
        .bind(columns.utm_term)
        .bind(columns.utm_content)
        .bind(columns.app_version)
        .bind(columns.os_version)
        .bind(columns.device)
        .bind(columns.service)
        .bind(columns.environment)
        .bind(columns.method)
        .bind(columns.status)
        .bind(columns.duration_ms)
        .bind(columns.browser)
        .bind(columns.browser_version)
        .bind(columns.os)
        .bind(columns.device_type)
        .bind(columns.country)
        .bind(columns.region)
        .bind(columns.city)
        .bind(columns.latitude)
        .bind(columns.longitude)
        .execute(executor)
        .await?;
    Ok(result.rows_affected())
}

/// Stores events inside the caller's transaction, all or none: for
/// collect's direct path, which counts the request in the same
/// transaction. Validated events only; a row Postgres refuses fails the
/// whole transaction instead of being dead-lettered. Returns the rows
/// inserted.
pub async fn store_in(
    db: &Db,
    transaction: &mut sqlx::PgConnection,
    events: &[StoredEvent],
) -> Result<u64, sqlx::Error> {
    ensure_partitions(db, events.iter().map(|e| e.event.occurred_at)).await?;
    insert(db, &mut *transaction, events).await
}

/// The batch turned column-wise, as `UNNEST` takes it.
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    api_key_id: Vec<Uuid>,
    kind: Vec<&'static str>,
    name: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
    received_at: Vec<DateTime<Utc>>,
    session_id: Vec<Option<String>>,
    user_id: Vec<Option<String>>,
    visitor_id: Vec<Option<String>>,
    properties: Vec<Option<String>>,
    url: Vec<Option<String>>,
    path: Vec<Option<String>>,
    referrer: Vec<Option<String>>,
    title: Vec<Option<String>>,
    screen: Vec<Option<String>>,
    language: Vec<Option<String>>,
    utm_source: Vec<Option<String>>,
    utm_medium: Vec<Option<String>>,
    utm_campaign: Vec<Option<String>>,
    utm_term: Vec<Option<String>>,
    utm_content: Vec<Option<String>>,
    app_version: Vec<Option<String>>,
    os_version: Vec<Option<String>>,
    device: Vec<Option<String>>,
    service: Vec<Option<String>>,
    environment: Vec<Option<String>>,
    method: Vec<Option<String>>,
    status: Vec<Option<i32>>,
    duration_ms: Vec<Option<f64>>,
    browser: Vec<Option<String>>,
    browser_version: Vec<Option<String>>,
    os: Vec<Option<String>>,
    device_type: Vec<Option<String>>,
    country: Vec<Option<String>>,
    region: Vec<Option<String>>,
    city: Vec<Option<String>>,
    latitude: Vec<Option<f64>>,
    longitude: Vec<Option<f64>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        let mut columns = Self::default();
        columns.id.reserve(n);
        columns.name.reserve(n);
        columns
    }

    fn push(&mut self, stored: &StoredEvent) {
        let e = stored.event.clone();
        self.id.push(e.id);
        self.api_key_id.push(stored.api_key_id);
        self.kind.push(e.kind.as_str());
        self.name.push(e.name);
        self.occurred_at.push(e.occurred_at);
        self.received_at.push(e.received_at);
        self.session_id.push(e.session_id);
        self.user_id.push(e.user_id);
        self.visitor_id.push(stored.visitor_id.clone());
        self.properties.push(e.properties);
        self.url.push(e.web.url);
        self.path.push(e.web.path);
        self.referrer.push(e.web.referrer);
        self.title.push(e.web.title);
        self.screen.push(e.web.screen);
        self.language.push(e.web.language);
        self.utm_source.push(e.web.utm_source);
        self.utm_medium.push(e.web.utm_medium);
        self.utm_campaign.push(e.web.utm_campaign);
        self.utm_term.push(e.web.utm_term);
        self.utm_content.push(e.web.utm_content);
        self.app_version.push(e.mobile.app_version);
        self.os_version.push(e.mobile.os_version);
        self.device.push(e.mobile.device);
        self.service.push(e.server.service);
        self.environment.push(e.server.environment);
        self.method.push(e.server.method);
        self.status.push(e.server.status);
        self.duration_ms.push(e.server.duration_ms);
        self.browser.push(e.agent.browser);
        self.browser_version.push(e.agent.browser_version);
        self.os.push(e.agent.os);
        self.device_type.push(e.agent.device_type);
        self.country.push(e.geo.country);
        self.region.push(e.geo.region);
        self.city.push(e.geo.city);
        self.latitude.push(e.geo.latitude);
        self.longitude.push(e.geo.longitude);
    }
}

/// Makes sure a partition exists for every month the events fall in. Months
/// already seen by this process are skipped, so a steady drain pays nothing.
async fn ensure_partitions(
    db: &Db,
    times: impl Iterator<Item = DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let months: BTreeSet<NaiveDate> = times
        .filter_map(|t| NaiveDate::from_ymd_opt(t.year(), t.month(), 1))
        .filter(|month| !db.knows_partition(*month))
        .collect();
    for month in months {
        db.query("SELECT ensure_event_partitions($1, 1)")
            .bind(month)
            .execute(db.pool())
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
        .execute(db.pool())
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
    .execute(db.pool())
    .await?;
    Ok(letters.len() as u64)
}

/// Drops the monthly partitions that ended before `cutoff`, returning their
/// names. The drain calls it when retention is configured.
pub async fn drop_partitions_before(
    db: &Db,
    cutoff: NaiveDate,
) -> Result<Vec<String>, sqlx::Error> {
    use sqlx::Row;
    let rows = db
        .query("SELECT drop_event_partitions_before($1) AS dropped")
        .bind(cutoff)
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(|row| row.try_get("dropped")).collect()
}
