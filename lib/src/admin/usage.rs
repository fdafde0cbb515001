//! A key's usage today and this month, exact to the last request counted,
//! as `GET /api/keys?id=…` and `tollgate keys get` show it.
//!
//! It is the sum the analytics views make (see `analytics/mod.rs`): what
//! Postgres holds, plus the key's counters in sync batches Postgres has not
//! applied, plus its live counters. The Redis part is read with the key's
//! analytics version before the Postgres statement and the version read
//! again after it; a sync in between (which bumps the version) makes the
//! sum be taken again, so no counter is missed or counted twice.

use anyhow::Context;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use crate::{
    analytics::{self, views::Unsynced},
    apikeys,
    db::Db,
    limits::Limits,
    redis_keys::RedisKeys,
    upstash::{Command, Reply, Script, Upstash},
};

static KEY_USAGE: Script = Script::new("key_usage", include_str!("../scripts/key_usage.lua"));

/// How often the sum is taken again when a sync keeps moving the counters.
const ATTEMPTS: usize = 3;

/// Requests counted in one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeriodUsage {
    /// The day (`2026-12-07`) or month (`2026-12`), in the key's time zone.
    pub period: String,
    pub requests: i64,
    /// Admitted, valid requests: what the quotas count.
    pub successful: i64,
    pub failed: i64,
    pub files: i64,
    pub bytes: i64,
    /// The period's quota, if the key has one.
    pub quota: Option<u64>,
}

/// A key's usage today and this month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUsage {
    pub today: PeriodUsage,
    pub month: PeriodUsage,
    /// Whether the unsynced counters in Redis are included; false when
    /// Upstash could not be read, and the figures are Postgres's alone.
    pub exact: bool,
}

/// Where the usage is read from.
pub struct Sources<'a> {
    pub db: &'a Db,
    pub upstash: Option<&'a Upstash>,
    pub keys: &'a RedisKeys,
}

/// The key's usage at `now`, in its time zone.
pub async fn of(
    sources: &Sources<'_>,
    key_id: Uuid,
    timezone: &str,
    limits: &Limits,
    now: DateTime<Utc>,
) -> anyhow::Result<KeyUsage> {
    let today = apikeys::key_day(now, apikeys::zone(timezone));
    let month_start = today.with_day(1).context("the first of the month")?;
    let Some(upstash) = sources.upstash else {
        return postgres_only(sources.db, key_id, today, month_start, limits).await;
    };
    let keys = [
        sources.keys.analytics_version(key_id),
        sources.keys.metrics(key_id),
        sources.keys.metrics_pending(key_id),
    ];
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    for _ in 0..ATTEMPTS {
        let read: Result<Reply, _> = upstash.eval_read_only(&KEY_USAGE, &names, &[]).await;
        let Ok(Reply::Array(parts)) = read else {
            tracing::warn!(
                ?read,
                "reading a key's unsynced counters failed; Postgres alone"
            );
            return postgres_only(sources.db, key_id, today, month_start, limits).await;
        };
        let [version, live, pending] = parts.as_slice() else {
            anyhow::bail!("key_usage.lua answered {} parts", parts.len());
        };
        let version = version.as_str().unwrap_or("0").to_owned();
        let mut pending_batches: Vec<(String, String, String)> = Vec::new();
        for (name, value) in fields(pending)? {
            let (batch, field) = name
                .split_once('|')
                .context("a pending counter has no batch id")?;
            pending_batches.push((batch.to_owned(), field.to_owned(), value));
        }
        let batch_ids: Vec<&str> = pending_batches.iter().map(|(b, _, _)| b.as_str()).collect();
        let (mut usage, applied) =
            stored(sources.db, key_id, today, month_start, &batch_ids).await?;
        let after: Option<String> = upstash
            .command(&Command::new("GET").arg(&keys[0]))
            .await
            .context("reading the key's analytics version")?;
        if after.as_deref().unwrap_or("0") != version {
            continue;
        }
        let unapplied: Vec<(String, String)> = pending_batches
            .into_iter()
            .filter(|(batch, _, _)| !applied.contains(batch))
            .map(|(_, field, value)| (field, value))
            .collect();
        let live = fields(live)?;
        let unsynced = analytics::unsynced(key_id, live.iter().chain(&unapplied))?;
        add(&mut usage, &unsynced, today);
        usage.today.quota = limits.per_day;
        usage.month.quota = limits.per_month;
        usage.exact = true;
        return Ok(usage);
    }
    postgres_only(sources.db, key_id, today, month_start, limits).await
}

async fn postgres_only(
    db: &Db,
    key_id: Uuid,
    today: NaiveDate,
    month_start: NaiveDate,
    limits: &Limits,
) -> anyhow::Result<KeyUsage> {
    let (mut usage, _) = stored(db, key_id, today, month_start, &[]).await?;
    usage.today.quota = limits.per_day;
    usage.month.quota = limits.per_month;
    Ok(usage)
}

/// What Postgres holds for today and the month, and which of the pending
/// batches it has applied, in one statement.
async fn stored(
    db: &Db,
    key_id: Uuid,
    today: NaiveDate,
    month_start: NaiveDate,
    batch_ids: &[&str],
) -> anyhow::Result<(KeyUsage, Vec<String>)> {
    let row = db
        .query(
            "SELECT
                coalesce(sum(total_requests) FILTER (WHERE day = $2), 0)::bigint AS d_req,
                coalesce(sum(successful_requests) FILTER (WHERE day = $2), 0)::bigint AS d_ok,
                coalesce(sum(failed_requests) FILTER (WHERE day = $2), 0)::bigint AS d_fail,
                coalesce(sum(total_files) FILTER (WHERE day = $2), 0)::bigint AS d_files,
                coalesce(sum(total_bytes) FILTER (WHERE day = $2), 0)::bigint AS d_bytes,
                coalesce(sum(total_requests), 0)::bigint AS m_req,
                coalesce(sum(successful_requests), 0)::bigint AS m_ok,
                coalesce(sum(failed_requests), 0)::bigint AS m_fail,
                coalesce(sum(total_files), 0)::bigint AS m_files,
                coalesce(sum(total_bytes), 0)::bigint AS m_bytes,
                (SELECT coalesce(array_agg(batch_id), '{}') FROM sync_batches
                  WHERE batch_id = ANY($4)) AS applied
               FROM api_key_usage_daily
              WHERE api_key_id = $1 AND day BETWEEN $3 AND $2",
        )
        .bind(key_id)
        .bind(today)
        .bind(month_start)
        .bind(batch_ids)
        .fetch_one(db.executor())
        .await
        .context("reading the key's usage")?;
    let period = |prefix: &str, name: String| -> anyhow::Result<PeriodUsage> {
        Ok(PeriodUsage {
            period: name,
            requests: row.try_get(format!("{prefix}_req").as_str())?,
            successful: row.try_get(format!("{prefix}_ok").as_str())?,
            failed: row.try_get(format!("{prefix}_fail").as_str())?,
            files: row.try_get(format!("{prefix}_files").as_str())?,
            bytes: row.try_get(format!("{prefix}_bytes").as_str())?,
            quota: None,
        })
    };
    let usage = KeyUsage {
        today: period("d", today.format("%Y-%m-%d").to_string())?,
        month: period("m", today.format("%Y-%m").to_string())?,
        exact: false,
    };
    Ok((usage, row.try_get("applied")?))
}

/// Adds the key's unsynced counters to today's and the month's figures.
fn add(usage: &mut KeyUsage, unsynced: &Unsynced, today: NaiveDate) {
    for (day, counters) in unsynced {
        let mut periods = vec![];
        if *day == today {
            periods.push(&mut usage.today);
        }
        if (day.year(), day.month()) == (today.year(), today.month()) && *day <= today {
            periods.push(&mut usage.month);
        }
        for period in periods {
            period.requests += counters.requests;
            period.successful += counters.successful;
            period.failed += counters.failed;
            period.files += counters.files;
            period.bytes += counters.bytes;
        }
    }
}

/// The field and value pairs of an `HGETALL` reply.
fn fields(reply: &Reply) -> anyhow::Result<Vec<(String, String)>> {
    match reply {
        Reply::Array(items) => analytics::counters(items),
        _ => Ok(vec![]),
    }
}
