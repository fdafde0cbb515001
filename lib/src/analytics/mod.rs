//! Analytics for one secret key: usage totals, daily series, providers,
//! file types and collected events, cached in Redis and exact to the last
//! request.
//!
//! A read is one call of `analytics.lua`, which authenticates the key from
//! the key cache and answers from the result cache when it can: a hit is one
//! Upstash round trip. On a miss the script also returns the usage counters
//! the sync has not moved to Postgres yet (the key's live counter hashes
//! and its share of any pending sync batch); the view's one Postgres
//! statement adds them to the synced totals, and `analytics_store.lua`
//! caches the result for [`CACHE_TTL`].
//!
//! Invalidation is by version: the sync's snapshot bumps the key's version,
//! and a cached result counts only under the version it was computed under,
//! so no list of cache keys is kept or deleted. The version also guards the sum against a race: if a snapshot
//! moved counters between the Redis read and the Postgres read, Postgres
//! may already show counters that the Redis read also returned, so a result
//! computed under a version that has since moved is recomputed, not served.

pub mod query;
pub mod views;

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::NaiveDate;
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

pub use query::{Query, View};
use views::{Params, Unsynced};

use crate::{
    apikeys::{self, PresentedKey},
    auth::{self, KeyRejection},
    error::ApiError,
    metrics,
    state::AppState,
    upstash::{Reply, Script},
};

pub static ANALYTICS: Script = Script::new("analytics", include_str!("../scripts/analytics.lua"));
pub static STORE: Script = Script::new(
    "analytics_store",
    include_str!("../scripts/analytics_store.lua"),
);

/// The longest a view's statement may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a computed view is served from the cache.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// How often a miss is recomputed when a sync keeps moving the counters
/// under it (a sync runs once a minute, so a second try all but always
/// wins); after that the view is answered from Postgres alone.
const ATTEMPTS: usize = 3;

/// Where an answer came from, for the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// Redis was unreachable: computed from Postgres alone, not cached.
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// A view as JSON, and where it came from.
#[derive(Debug)]
pub struct Answer {
    pub body: Bytes,
    pub cache: CacheStatus,
}

/// What `analytics.lua` found.
enum Lookup {
    KeyNotCached,
    /// The cache entry is another key id's than the one the keys were named after.
    Rekey(Uuid),
    Refused(ApiError),
    Hit(Bytes),
    Miss(Miss),
}

struct Miss {
    key_id: Uuid,
    version: String,
    /// The key's time zone, by which days are counted.
    timezone: String,
    /// When the key was created, to clamp ranges to its lifetime.
    created_ms: Option<i64>,
    /// The key's live counters, in the sync batch format.
    live: Vec<Reply>,
    /// Pending sync batches: id and this key's fields in it.
    pending: Vec<(String, Vec<Reply>)>,
}

/// The first read of `analytics.lua`, made while admission runs beside it
/// (see `routes/analytics.rs`), when this instance already knows the key's
/// id: a hit then costs the time of one round trip, not two.
pub struct Prefetched {
    key_id: Uuid,
    lookup: anyhow::Result<Lookup>,
}

/// Starts the first read of a view, if the key's id is known here.
pub async fn prefetch(state: &AppState, key: &PresentedKey, query: &Query) -> Option<Prefetched> {
    let key_id = state.key_ids.get(&key.cache_id())?;
    Some(Prefetched {
        key_id,
        lookup: lookup(state, key, key_id, query).await,
    })
}

/// Reads a view for the key presented, from the cache or freshly computed,
/// starting from a read made beside admission if there is one.
pub async fn read(
    state: &AppState,
    key: &PresentedKey,
    client_ip: Option<&str>,
    query: &Query,
    prefetched: Option<Prefetched>,
) -> Result<Answer, ApiError> {
    let (mut key_id, mut first) = match prefetched {
        Some(Prefetched { key_id, lookup }) => (key_id, Some(lookup)),
        None => match crate::admission::resolve(state, key, client_ip).await {
            Ok(crate::admission::Resolved::Id(id)) => (id, None),
            Ok(crate::admission::Resolved::Refused(error)) => return Err(error),
            Err(error) => {
                tracing::warn!(error = ?error, "analytics could not reach Upstash; reading Postgres alone");
                return bypass(state, key, query).await;
            }
        },
    };
    let mut refreshed = false;
    let mut rekeyed = false;
    let mut attempt = 0;
    loop {
        let looked_up = match first.take() {
            Some(prefetched) => prefetched,
            None => lookup(state, key, key_id, query).await,
        };
        let lookup = match looked_up {
            Ok(lookup) => lookup,
            Err(error) => {
                tracing::warn!(error = ?error, "analytics could not reach Upstash; reading Postgres alone");
                return bypass(state, key, query).await;
            }
        };
        let miss = match lookup {
            Lookup::Hit(body) => {
                return Ok(Answer {
                    body,
                    cache: CacheStatus::Hit,
                })
            }
            Lookup::Refused(error) => return Err(error),
            Lookup::Rekey(id) if !rekeyed => {
                rekeyed = true;
                state.key_ids.remember(&key.cache_id(), id);
                key_id = id;
                continue;
            }
            Lookup::KeyNotCached if !refreshed => {
                refreshed = true;
                crate::admission::refill(state, key, false, None, client_ip)
                    .await
                    .map_err(unavailable)?;
                continue;
            }
            Lookup::KeyNotCached | Lookup::Rekey(_) => {
                return Err(
                    anyhow::anyhow!("the key cache entry changed under the read twice").into(),
                )
            }
            Lookup::Miss(miss) => miss,
        };
        attempt += 1;
        let body = compute(state, query, &miss).await?;
        let stored: i64 = state
            .upstash
            .eval(
                &STORE,
                &[
                    &state.keys.analytics_version(miss.key_id),
                    &state.keys.analytics_cache(miss.key_id, &query.cache_id()),
                ],
                &[
                    miss.version.clone(),
                    String::from_utf8_lossy(&body).into_owned(),
                    CACHE_TTL.as_secs().to_string(),
                ],
            )
            .await
            .unwrap_or_else(|error| {
                // Unknown whether the version moved: not trusted.
                tracing::warn!(error = ?error, "could not cache an analytics result");
                0
            });
        if stored == 1 {
            return Ok(Answer {
                body,
                cache: CacheStatus::Miss,
            });
        }
        if attempt == ATTEMPTS {
            // Syncs kept moving the counters (or Upstash stopped answering):
            // the synced numbers alone, which no race can double.
            return bypass(state, key, query).await;
        }
        tracing::debug!(
            attempt,
            "a sync moved the counters during an analytics read; recomputing"
        );
    }
}

async fn lookup(
    state: &AppState,
    key: &PresentedKey,
    key_id: Uuid,
    query: &Query,
) -> anyhow::Result<Lookup> {
    let keys = &state.keys;
    let names = [
        keys.key_cache(&key.cache_id()),
        keys.analytics_version(key_id),
        keys.analytics_cache(key_id, &query.cache_id()),
        keys.metrics(key_id),
        keys.metrics_pending(key_id),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let reads_counters = if query.view().reads_counters() {
        "1"
    } else {
        "0"
    };
    let reply: Vec<Reply> = state
        .upstash
        .eval_read_only(
            &ANALYTICS,
            &names,
            &[key_id.to_string(), reads_counters.to_owned()],
        )
        .await
        .context("running analytics.lua")?;
    let code = reply.first().and_then(Reply::as_str).unwrap_or_default();
    Ok(match (code, reply.as_slice()) {
        ("miss_key", _) => Lookup::KeyNotCached,
        ("invalid_key", _) => Lookup::Refused(KeyRejection::Unknown.into()),
        ("revoked_key", _) => Lookup::Refused(KeyRejection::Revoked.into()),
        ("wrong_kind", _) => Lookup::Refused(KeyRejection::NotSecret.into()),
        ("rekey", [_, id]) => Lookup::Rekey(
            Uuid::parse_str(id.as_str().unwrap_or_default())
                .context("the key id of analytics.lua")?,
        ),
        ("hit", [_, _, _, Reply::Bulk(body)]) => Lookup::Hit(body.clone()),
        ("miss", [_, id, version, zone, Reply::Array(live), Reply::Array(pending), created]) => {
            let text = |reply: &Reply| reply.as_str().unwrap_or_default().to_owned();
            let key_id = Uuid::parse_str(&text(id)).context("the key id of analytics.lua")?;
            Lookup::Miss(Miss {
                key_id,
                version: text(version),
                timezone: zone.as_str().unwrap_or("UTC").to_owned(),
                created_ms: created.as_str().and_then(|ms| ms.parse().ok()),
                live: batch_fields(key_id, live),
                pending: pending_batches(key_id, pending)?,
            })
        }
        _ => anyhow::bail!("analytics.lua answered {reply:?}"),
    })
}

/// Counter fields (`<day>|<counter>`, value) in the sync batch format
/// (`<key id>:<day>|<counter>`, value).
fn batch_fields(key_id: Uuid, fields: &[Reply]) -> Vec<Reply> {
    fields
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, value] => Some([
                Reply::Bulk(format!("{key_id}:{}", name.as_str()?).into()),
                value.clone(),
            ]),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The key's shares of pending batches (`<batch id>|<day>|<counter>`,
/// value), grouped by batch, in the sync batch format.
fn pending_batches(key_id: Uuid, fields: &[Reply]) -> anyhow::Result<Vec<(String, Vec<Reply>)>> {
    let mut batches: std::collections::BTreeMap<String, Vec<Reply>> = Default::default();
    for pair in fields.chunks(2) {
        let [name, value] = pair else { continue };
        let (batch, field) = name
            .as_str()
            .and_then(|name| name.split_once('|'))
            .context("a pending counter has no batch id")?;
        let fields = batches.entry(batch.to_owned()).or_default();
        fields.push(Reply::Bulk(format!("{key_id}:{field}").into()));
        fields.push(value.clone());
    }
    Ok(batches.into_iter().collect())
}

/// Computes a view: its Postgres statement plus the unsynced counters.
async fn compute(state: &AppState, query: &Query, miss: &Miss) -> Result<Bytes, ApiError> {
    let zone = apikeys::zone(&miss.timezone);
    let today = apikeys::key_day(state.clock.now(), zone);
    let range = query.range(today)?;
    let max_age = state.config.pipeline.event_max_age;
    let scanned = lifetime(range, miss.created_ms, zone, max_age);
    let params = params(miss.key_id, scanned, today, &miss.timezone, &miss.pending);
    let mut document = run(state, query.view(), &params).await?;
    let applied: Vec<String> = document
        .get_mut("applied")
        .map(Value::take)
        .map(serde_json::from_value)
        .transpose()
        .context("reading the applied batches")?
        .unwrap_or_default();

    let mut fields = miss.live.clone();
    for (batch_id, batch_fields) in &miss.pending {
        if !applied.contains(batch_id) {
            fields.extend(batch_fields.iter().cloned());
        }
    }
    let unsynced: Unsynced = metrics::parse_batch(&fields)
        .context("reading the unsynced counters")?
        .into_iter()
        .filter(|((key, _), _)| *key == miss.key_id)
        .map(|((_, day), counters)| (day, counters))
        .collect();
    body(state, query, &params, document, &unsynced, range, true)
}

/// A read whose admission could not be decided (Upstash down or slow):
/// answered from Postgres alone, after the key's checks there (active, not
/// banned), never from anything read in Redis beside the failed admission.
pub async fn read_unadmitted(
    state: &AppState,
    key: &PresentedKey,
    query: &Query,
) -> Result<Answer, ApiError> {
    bypass(state, key, query).await
}

/// Redis is down, or the sync kept racing a miss: the key is checked in
/// Postgres (active, not banned) and the view computed from Postgres alone,
/// without the unsynced counters, and not cached.
async fn bypass(state: &AppState, key: &PresentedKey, query: &Query) -> Result<Answer, ApiError> {
    let cached = apikeys::lookup(&state.db, key, state.clock.now())
        .await
        .map_err(unavailable)?;
    let key_id = auth::require_active(&cached)?;
    let zone = apikeys::zone(&cached.timezone);
    let today = apikeys::key_day(state.clock.now(), zone);
    // Redis's bans cannot be asked; Postgres's can.
    crate::fallback::check_limits_directly(state, key_id, None, today, None, unavailable).await?;
    let range = query.range(today)?;
    let max_age = state.config.pipeline.event_max_age;
    let scanned = lifetime(range, cached.created_ms, zone, max_age);
    let params = params(key_id, scanned, today, &cached.timezone, &[]);
    let document = run(state, query.view(), &params).await?;
    let body = body(
        state,
        query,
        &params,
        document,
        &Unsynced::new(),
        range,
        false,
    )?;
    Ok(Answer {
        body,
        cache: CacheStatus::Bypass,
    })
}

/// The part of a range Postgres reads: the range starting no earlier than
/// the key's first day (in its time zone), so no read scans days the key
/// cannot have data for. A range wholly before the key's first day shrinks
/// to its last day. The answer still covers the range asked for, its days
/// outside the lifetime zero. The end is left as asked: the events view's
/// previous period is the range's length before its start, and a range
/// into the future must keep its length.
fn lifetime(
    range: Option<(NaiveDate, NaiveDate)>,
    created_ms: Option<i64>,
    zone: chrono_tz::Tz,
    max_age: Duration,
) -> Option<(NaiveDate, NaiveDate)> {
    let (start, end) = range?;
    let first = created_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|created| apikeys::key_day(created, zone));
    // Events may be stamped up to `max_age` before they arrive (an app's
    // offline queue, a backfill on a new key), and are stored so.
    let first = first.map(|first| first - chrono::Duration::from_std(max_age).unwrap_or_default());
    let start = first.map_or(start, |first| start.max(first)).min(end);
    Some((start, end))
}

fn params(
    key_id: Uuid,
    range: Option<(NaiveDate, NaiveDate)>,
    today: NaiveDate,
    timezone: &str,
    pending: &[(String, Vec<Reply>)],
) -> Params {
    let (start, end) = range.unwrap_or((today, today));
    let zone = apikeys::zone(timezone);
    let midnight = |day: NaiveDate| apikeys::day_start(day, zone);
    Params {
        key_id,
        from: midnight(start),
        until: midnight(end + chrono::Duration::days(1)),
        start,
        end,
        pending: pending.iter().map(|(id, _)| id.clone()).collect(),
        timezone: zone.name().to_owned(),
    }
}

/// Runs a view's statement.
async fn run(state: &AppState, view: View, params: &Params) -> Result<Value, ApiError> {
    let sql = views::sql(view);
    // Under a statement timeout, in a read-only transaction (a pooler in
    // transaction mode keeps `SET LOCAL` to it): no view, however large the
    // key, holds a connection longer than that.
    let failed = |error: sqlx::Error| {
        tracing::error!(error = ?error, view = view.as_str(), "an analytics query failed");
        let timed_out = error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "57014");
        ApiError::Unavailable {
            message: if timed_out {
                format!("the view took over {STATEMENT_TIMEOUT:?} to compute; retry with a shorter range")
            } else {
                "Postgres is unreachable, so analytics cannot be read".into()
            },
            retry_after: Duration::from_secs(10),
        }
    };
    let mut transaction = state
        .db
        .pool()
        .begin_with(format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
            STATEMENT_TIMEOUT.as_millis()
        ))
        .await
        .map_err(failed)?;
    let row = bind(state.db.query(&sql), params)
        .fetch_one(&mut *transaction)
        .await
        .map_err(failed)?;
    transaction.commit().await.map_err(failed)?;
    Ok(row
        .try_get::<sqlx::types::Json<Value>, _>(0)
        .context("reading an analytics document")?
        .0)
}

/// Binds a view's parameters, in the order [`Params`] documents.
pub fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    params: &Params,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(params.key_id)
        .bind(params.from)
        .bind(params.until)
        .bind(params.start)
        .bind(params.end)
        .bind(params.pending.clone())
        .bind(params.timezone.clone())
}

fn body(
    state: &AppState,
    query: &Query,
    params: &Params,
    document: Value,
    unsynced: &Unsynced,
    range: Option<(NaiveDate, NaiveDate)>,
    redis_read: bool,
) -> Result<Bytes, ApiError> {
    let fields = views::assemble(query.view(), document, unsynced, range)
        .context("assembling an analytics view")?;
    let mut out = serde_json::Map::new();
    out.insert("view".into(), query.view().as_str().into());
    out.insert("key_id".into(), params.key_id.to_string().into());
    out.insert(
        "generated_at".into(),
        serde_json::to_value(state.clock.now()).unwrap_or_default(),
    );
    if let Some((start, end)) = range {
        out.insert("start".into(), start.to_string().into());
        out.insert("end".into(), end.to_string().into());
    }
    if query.view().reads_counters() {
        // False only when Redis was unreachable: the numbers are then those
        // synced to Postgres, up to a minute behind.
        out.insert("includes_unsynced".into(), redis_read.into());
    }
    out.extend(fields);
    Ok(Bytes::from(
        serde_json::to_vec(&out).context("encoding an analytics view")?,
    ))
}

fn unavailable(error: anyhow::Error) -> ApiError {
    tracing::error!(error = ?error, "analytics could not check the key");
    ApiError::Unavailable {
        message: "neither Upstash nor Postgres could check the key".into(),
        retry_after: Duration::from_secs(10),
    }
}
