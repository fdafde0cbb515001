//! A key's analytics read with a root key (`analytics:read`), which names
//! the key by id instead of presenting it: the same views, the same cache
//! and the same exactness as the key's own reads (see the module above),
//! without the key cache. The caller has checked the key in Postgres and
//! passes its time zone and creation time.

use anyhow::Context;
use uuid::Uuid;

use super::{
    compute, counters, finish, lifetime, params, pending_batches, run, store, Answer, CacheStatus,
    Cached, Header, Miss, Query, ATTEMPTS,
};
use crate::{
    apikeys,
    error::ApiError,
    state::AppState,
    upstash::{Reply, Script},
};

static ANALYTICS_BY_ID: Script = Script::new(
    "analytics_by_id",
    include_str!("../scripts/analytics_by_id.lua"),
);

/// The key a root key reads, as Postgres has it.
#[derive(Debug, Clone)]
pub struct KeyById {
    pub id: Uuid,
    pub timezone: String,
    pub created_ms: i64,
}

/// Reads a view of the key, from the cache or computed, plus its live
/// counters; from Postgres alone when Upstash cannot be read.
pub async fn read(state: &AppState, key: &KeyById, query: &Query) -> Result<Answer, ApiError> {
    for attempt in 1..=ATTEMPTS {
        let miss = match lookup(state, key, query).await {
            Ok(Found::Hit { entry, live }) => {
                let cached: Cached =
                    serde_json::from_slice(&entry).context("decoding a cached analytics view")?;
                return Ok(Answer {
                    view: finish(state, query, key.id, cached, &live)?,
                    cache: CacheStatus::Hit,
                });
            }
            Ok(Found::Miss(miss)) => miss,
            Err(error) => {
                tracing::warn!(error = ?error, "analytics could not reach Upstash; reading Postgres alone");
                break;
            }
        };
        let cached = compute(state, query, &miss).await?;
        if store(state, query, &miss, &cached).await {
            return Ok(Answer {
                view: finish(state, query, key.id, cached, &miss.live)?,
                cache: CacheStatus::Miss,
            });
        }
        tracing::debug!(
            attempt,
            "a sync moved the counters during an analytics read; recomputing"
        );
    }
    postgres_alone(state, key, query).await
}

enum Found {
    Hit {
        entry: bytes::Bytes,
        live: super::Counters,
    },
    Miss(Miss),
}

async fn lookup(state: &AppState, key: &KeyById, query: &Query) -> anyhow::Result<Found> {
    let keys = &state.keys;
    let names = [
        keys.analytics_version(key.id),
        keys.analytics_cache(key.id, &query.cache_id()),
        keys.metrics(key.id),
        keys.metrics_pending(key.id),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let reads_counters = if query.view().reads_counters() {
        "1"
    } else {
        "0"
    };
    let reply: Vec<Reply> = state
        .upstash
        .eval_read_only(&ANALYTICS_BY_ID, &names, &[reads_counters.to_owned()])
        .await
        .context("running analytics_by_id.lua")?;
    Ok(match reply.as_slice() {
        [code, _, Reply::Bulk(entry), Reply::Array(live)] if code.as_str() == Some("hit") => {
            Found::Hit {
                entry: entry.clone(),
                live: counters(live)?,
            }
        }
        [code, version, Reply::Array(live), Reply::Array(pending)]
            if code.as_str() == Some("miss") =>
        {
            Found::Miss(Miss {
                key_id: key.id,
                version: version.as_str().unwrap_or_default().to_owned(),
                timezone: key.timezone.clone(),
                created_ms: Some(key.created_ms),
                live: counters(live)?,
                pending: pending_batches(pending)?,
            })
        }
        _ => anyhow::bail!("analytics_by_id.lua answered {reply:?}"),
    })
}

/// The view from Postgres alone, not cached: Redis could not be read, or
/// syncs kept moving the counters.
async fn postgres_alone(
    state: &AppState,
    key: &KeyById,
    query: &Query,
) -> Result<Answer, ApiError> {
    let zone = apikeys::zone(&key.timezone);
    let now = state.clock.now();
    let today = apikeys::key_day(now, zone);
    let range = query.range(today)?;
    let max_age = state.config.pipeline.event_max_age;
    let scanned = lifetime(range, Some(key.created_ms), zone, max_age);
    let params = params(key.id, scanned, today, &key.timezone, vec![]);
    let document = run(state, query.view(), &params).await?;
    let header = Header {
        key_id: key.id,
        generated_at: now,
        range,
        redis_read: false,
    };
    Ok(Answer {
        view: super::body(query, &header, document, &super::Unsynced::new())?,
        cache: CacheStatus::Bypass,
    })
}
