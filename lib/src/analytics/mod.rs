//! Analytics for one secret key: usage totals, daily series, providers,
//! file types and collected events, cached in Redis and exact to the last
//! request on every read, cached or not.
//!
//! # What is cached
//!
//! A view is the sum of three parts, and only the first two are cached:
//!
//! 1. the view's Postgres document (one statement, see [`views`]);
//! 2. the key's counters in sync batches that were pending in Redis and not
//!    yet applied in Postgres when that document was read;
//! 3. the key's live counters `mx:<key id>`, which no batch has taken yet.
//!
//! The cache entry `an:c:<key id>:<view and params>` holds parts 1 and 2
//! (a `Cached`: the document, those pending counters, the range resolved
//! then) under the key's version `an:ver:<key id>`. Every read is one call
//! of `analytics.lua`, which authenticates the key from the key cache and,
//! in the same atomic call, reads the version, the entry and part 3. On a
//! hit (the entry's version is the current one) the answer is the entry
//! plus the live counters just read: one Upstash round trip, no Postgres
//! statement, and exact to the last request counted.
//!
//! # Why the cached part stays right while the version holds
//!
//! Only `snapshot.lua` takes counters out of `mx:<key id>`, and whenever it
//! takes any it bumps the version in the same script. So while the version
//! is the one an entry was stored under, no batch holding this key's
//! counters has been created since the entry's Redis read, which means:
//!
//! - the live counters have only grown (requests `HINCRBY` them, `last`
//!   only moves forward), and none of them is in Postgres or in a batch, so
//!   adding them at read time counts each exactly once;
//! - Postgres's counters moved only by applying batches that were already
//!   pending at that read; each such batch is in part 2 unless the
//!   document's own statement found it applied (`sync_batches` is written
//!   in the transaction that applies a batch), so Postgres's later growth
//!   is what part 2 already counts, and part 1 plus part 2 is unchanged.
//!
//! # A miss
//!
//! On a miss the script also returns the key's pending batch counters
//! (`mx:pend:<key id>`). The view's statement reads the document and which
//! of those batches Postgres has applied; the rest become part 2, and
//! `analytics_store.lua` stores the entry for [`CACHE_TTL`] only if the
//! version is still the one read before the statement. The check guards
//! the sum against a race: a snapshot between the Redis read and the
//! statement could move live counters into a batch that Postgres then also
//! shows, so an entry computed under a version that has since moved is
//! recomputed (up to `ATTEMPTS` times, then answered from Postgres alone),
//! never served or stored. No list of cache keys is kept or deleted: a sync
//! retires every cached view of the key by bumping its version.
//!
//! # What a hit does not see
//!
//! Requests a route counts straight into Postgres (its fallback when
//! admit.lua surely did not count them, see `metrics::count_directly`)
//! bump no version, so a cached entry shows them only once it expires, at most
//! [`CACHE_TTL`] later. The events view has no live part: its cached
//! document shows the events drained by the time it was computed, and its
//! `generated_at` says when that was.
//!
//! # Formats
//!
//! The cache holds data, not a response: the view is assembled on each
//! read and written as JSON, or as CSV ([`csv`]) for `format=csv`.

pub mod by_id;
pub mod csv;
pub mod query;
pub mod views;

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::Row;
use uuid::Uuid;

pub use query::{Format, Query, View};
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

/// How long a view's Postgres part is served from the cache.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// How often a miss is recomputed when a sync keeps moving the counters
/// under it (a sync runs once a minute, so a second try all but always
/// wins); after that the view is answered from Postgres alone.
const ATTEMPTS: usize = 3;

/// Where an answer came from, for the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// The Postgres part from the cache, the live counters read with it.
    Hit,
    /// Computed, and cached.
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

/// A view's fields, and where they came from. The route writes them out in
/// the format asked for.
#[derive(Debug)]
pub struct Answer {
    pub view: Map<String, Value>,
    pub cache: CacheStatus,
}

/// Counter fields as Redis holds them: `<day>|<counter>` and its value.
pub(crate) type Counters = Vec<(String, String)>;

/// What the cache keeps of a view: the part no request changes while the
/// key's version holds (see the module doc).
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    /// The view's Postgres document, without its `applied` list.
    document: Value,
    /// The key's counters in the batches that were pending in Redis and
    /// not yet applied in Postgres when the document was read.
    pending: Counters,
    /// The range the document covers, resolved against the key's today
    /// when it was read.
    range: Option<(NaiveDate, NaiveDate)>,
    /// When the document was read.
    computed_at: DateTime<Utc>,
}

/// What `analytics.lua` found.
enum Lookup {
    KeyNotCached,
    /// The cache entry is another key id's than the one the keys were named after.
    Rekey(Uuid),
    Refused(ApiError),
    Hit(Hit),
    Miss(Miss),
}

struct Hit {
    key_id: Uuid,
    /// The cache entry, a [`Cached`] as JSON.
    entry: Bytes,
    /// The key's live counters, read with the entry.
    live: Counters,
}

struct Miss {
    key_id: Uuid,
    version: String,
    /// The key's time zone, by which days are counted.
    timezone: String,
    /// When the key was created, to clamp ranges to its lifetime.
    created_ms: Option<i64>,
    /// The key's live counters.
    live: Counters,
    /// Pending sync batches: id and this key's counters in it.
    pending: Vec<(String, Counters)>,
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

/// Reads a view for the key presented: its Postgres part from the cache or
/// freshly computed, plus the live counters, starting from a read made
/// beside admission if there is one.
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
            Lookup::Hit(hit) => {
                let cached: Cached = serde_json::from_slice(&hit.entry)
                    .context("decoding a cached analytics view")?;
                return Ok(Answer {
                    view: finish(state, query, hit.key_id, cached, &hit.live)?,
                    cache: CacheStatus::Hit,
                });
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
        let cached = compute(state, query, &miss).await?;
        if store(state, query, &miss, &cached).await {
            return Ok(Answer {
                view: finish(state, query, miss.key_id, cached, &miss.live)?,
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

/// Caches a computed Postgres part under the version it was computed
/// under. False when that version has moved on (the part may overlap the
/// counters read with it, so it must not be used), or when it is unknown.
async fn store(state: &AppState, query: &Query, miss: &Miss, cached: &Cached) -> bool {
    let entry = match serde_json::to_string(cached) {
        Ok(entry) => entry,
        Err(error) => {
            tracing::error!(error = ?error, "could not encode an analytics cache entry");
            return false;
        }
    };
    let stored: anyhow::Result<i64> = state
        .upstash
        .eval(
            &STORE,
            &[
                &state.keys.analytics_version(miss.key_id),
                &state.keys.analytics_cache(miss.key_id, &query.cache_id()),
            ],
            &[miss.version.clone(), entry, CACHE_TTL.as_secs().to_string()],
        )
        .await
        .map_err(Into::into);
    match stored {
        Ok(stored) => stored == 1,
        Err(error) => {
            // Unknown whether the version moved: not trusted.
            tracing::warn!(error = ?error, "could not cache an analytics result");
            false
        }
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
            &[
                key_id.to_string(),
                reads_counters.to_owned(),
                state.redis_time_offset_ms().to_string(),
                state
                    .redis_time_frozen_ms()
                    .map(|ms| ms.to_string())
                    .unwrap_or_default(),
            ],
        )
        .await
        .context("running analytics.lua")?;
    let code = reply.first().and_then(Reply::as_str).unwrap_or_default();
    let id = |reply: &Reply| {
        Uuid::parse_str(reply.as_str().unwrap_or_default()).context("the key id of analytics.lua")
    };
    Ok(match (code, reply.as_slice()) {
        ("miss_key", _) => Lookup::KeyNotCached,
        ("invalid_key", _) => Lookup::Refused(KeyRejection::Unknown.into()),
        ("revoked_key", _) => Lookup::Refused(KeyRejection::Revoked.into()),
        ("expired_key", _) => Lookup::Refused(KeyRejection::Expired.into()),
        ("wrong_kind", _) => Lookup::Refused(KeyRejection::NotSecret.into()),
        ("rekey", [_, key_id]) => Lookup::Rekey(id(key_id)?),
        ("hit", [_, key_id, _, Reply::Bulk(entry), Reply::Array(live)]) => Lookup::Hit(Hit {
            key_id: id(key_id)?,
            entry: entry.clone(),
            live: counters(live)?,
        }),
        (
            "miss",
            [_, key_id, version, zone, Reply::Array(live), Reply::Array(pending), created],
        ) => Lookup::Miss(Miss {
            key_id: id(key_id)?,
            version: version.as_str().unwrap_or_default().to_owned(),
            timezone: zone.as_str().unwrap_or("UTC").to_owned(),
            created_ms: created.as_str().and_then(|ms| ms.parse().ok()),
            live: counters(live)?,
            pending: pending_batches(pending)?,
        }),
        _ => anyhow::bail!("analytics.lua answered {reply:?}"),
    })
}

/// The field and value pairs of an `HGETALL` reply.
pub(crate) fn counters(fields: &[Reply]) -> anyhow::Result<Counters> {
    fields
        .chunks(2)
        .map(|pair| match pair {
            [name, value] => Some((name.as_str()?.to_owned(), value.as_str()?.to_owned())),
            _ => None,
        })
        .map(|pair| pair.context("a counter field is not text"))
        .collect()
}

/// The key's shares of pending batches (`<batch id>|<day>|<counter>`,
/// value), grouped by batch.
fn pending_batches(fields: &[Reply]) -> anyhow::Result<Vec<(String, Counters)>> {
    let mut batches: std::collections::BTreeMap<String, Counters> = Default::default();
    for (name, value) in counters(fields)? {
        let (batch, field) = name
            .split_once('|')
            .context("a pending counter has no batch id")?;
        batches
            .entry(batch.to_owned())
            .or_default()
            .push((field.to_owned(), value));
    }
    Ok(batches.into_iter().collect())
}

/// The key's counters by day, from `<day>|<counter>` fields.
pub(crate) fn unsynced<'a>(
    key_id: Uuid,
    fields: impl Iterator<Item = &'a (String, String)>,
) -> anyhow::Result<Unsynced> {
    // In the sync batch format (`<key id>:<day>|<counter>`), so that one
    // parser reads counters wherever they are.
    let batch: Vec<Reply> = fields
        .flat_map(|(name, value)| {
            [
                Reply::Bulk(format!("{key_id}:{name}").into()),
                Reply::Bulk(value.clone().into()),
            ]
        })
        .collect();
    Ok(metrics::parse_batch(&batch)
        .context("reading the unsynced counters")?
        .into_iter()
        .map(|((_, day), counters)| (day, counters))
        .collect())
}

/// Computes a view's Postgres part: its statement's document, and the
/// counters of the pending batches the statement found not applied.
async fn compute(state: &AppState, query: &Query, miss: &Miss) -> Result<Cached, ApiError> {
    let zone = apikeys::zone(&miss.timezone);
    let computed_at = state.clock.now();
    let today = apikeys::key_day(computed_at, zone);
    let range = query.range(today)?;
    let max_age = state.config.pipeline.event_max_age;
    let scanned = lifetime(range, miss.created_ms, zone, max_age);
    let batch_ids: Vec<String> = miss.pending.iter().map(|(id, _)| id.clone()).collect();
    let params = params(miss.key_id, scanned, today, &miss.timezone, batch_ids);
    let mut document = run(state, query.view(), &params).await?;
    let applied: Vec<String> = document
        .as_object_mut()
        .and_then(|fields| fields.remove("applied"))
        .map(serde_json::from_value)
        .transpose()
        .context("reading the applied batches")?
        .unwrap_or_default();
    let pending = miss
        .pending
        .iter()
        .filter(|(batch_id, _)| !applied.contains(batch_id))
        .flat_map(|(_, fields)| fields.iter().cloned())
        .collect();
    Ok(Cached {
        document,
        pending,
        range,
        computed_at,
    })
}

/// A view from its Postgres part and the live counters read with it.
fn finish(
    state: &AppState,
    query: &Query,
    key_id: Uuid,
    cached: Cached,
    live: &Counters,
) -> Result<Map<String, Value>, ApiError> {
    let unsynced = unsynced(key_id, cached.pending.iter().chain(live))?;
    // Counter views are exact now; the events view is as of its document.
    let generated_at = match query.view().reads_counters() {
        true => state.clock.now(),
        false => cached.computed_at,
    };
    let header = Header {
        key_id,
        generated_at,
        range: cached.range,
        redis_read: true,
    };
    body(query, &header, cached.document, &unsynced)
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
    let key_id = auth::require_active(&cached, state.clock.now())?;
    let zone = apikeys::zone(&cached.timezone);
    let now = state.clock.now();
    let today = apikeys::key_day(now, zone);
    // Redis's bans cannot be asked; Postgres's can.
    crate::fallback::check_limits_directly(state, key_id, None, today, None, unavailable).await?;
    let range = query.range(today)?;
    let max_age = state.config.pipeline.event_max_age;
    let scanned = lifetime(range, cached.created_ms, zone, max_age);
    let params = params(key_id, scanned, today, &cached.timezone, vec![]);
    let document = run(state, query.view(), &params).await?;
    let header = Header {
        key_id,
        generated_at: now,
        range,
        redis_read: false,
    };
    Ok(Answer {
        view: body(query, &header, document, &Unsynced::new())?,
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
    pending: Vec<String>,
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
        pending,
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

/// What a view says about itself, beside its fields.
struct Header {
    key_id: Uuid,
    /// The time the view's numbers are as of.
    generated_at: DateTime<Utc>,
    /// The view's inclusive range, if it has one.
    range: Option<(NaiveDate, NaiveDate)>,
    /// Whether the counters Redis holds were read and added.
    redis_read: bool,
}

fn body(
    query: &Query,
    header: &Header,
    document: Value,
    unsynced: &Unsynced,
) -> Result<Map<String, Value>, ApiError> {
    let fields = views::assemble(query.view(), document, unsynced, header.range)
        .context("assembling an analytics view")?;
    let mut out = Map::new();
    out.insert("view".into(), query.view().as_str().into());
    out.insert("key_id".into(), header.key_id.to_string().into());
    out.insert(
        "generated_at".into(),
        serde_json::to_value(header.generated_at).unwrap_or_default(),
    );
    if let Some((start, end)) = header.range {
        out.insert("start".into(), start.to_string().into());
        out.insert("end".into(), end.to_string().into());
    }
    if query.view().reads_counters() {
        // False only when Redis was unreachable: the numbers are then those
        // synced to Postgres, up to a minute behind.
        out.insert("includes_unsynced".into(), header.redis_read.into());
    }
    out.extend(fields);
    Ok(out)
}

/// Writes a view out in a format: its body and its content type.
pub fn render(
    view: &Map<String, Value>,
    format: Format,
) -> Result<(Bytes, &'static str), ApiError> {
    Ok(match format {
        Format::Json => (
            serde_json::to_vec(view)
                .context("encoding an analytics view")?
                .into(),
            "application/json",
        ),
        Format::Csv => (
            csv::write(view).context("writing an analytics view as CSV")?,
            csv::CONTENT_TYPE,
        ),
    })
}

fn unavailable(error: anyhow::Error) -> ApiError {
    tracing::error!(error = ?error, "analytics could not check the key");
    ApiError::Unavailable {
        message: "neither Upstash nor Postgres could check the key".into(),
        retry_after: Duration::from_secs(10),
    }
}
