//! The metrics sync: moves the write-behind usage counters from Redis into
//! Postgres, crash-safe and in bulk.
//!
//! 1. `snapshot.lua` atomically moves the counters of some dirty keys (read
//!    from one shard's dirty set) into a batch with an id, recorded as
//!    pending; each key's share of it waits in the key's `mx:pend:` hash.
//! 2. One Postgres transaction applies the whole batch, one `UNNEST` upsert
//!    per table, and inserts the batch id into `sync_batches`; a batch whose
//!    id is already there was applied before and is skipped.
//! 3. Only then is the batch deleted from Redis (`batch_done.lua`).
//!
//! A run that dies after 1 leaves the batch pending and the next run applies
//! it; one that dies after 2 leaves it pending too, and the next run finds
//! its id in `sync_batches` and only deletes it. Nothing is lost, nothing is
//! counted twice, while requests keep incrementing fresh hashes meanwhile.
//!
//! The hashes also carry the alerts the admission script recorded
//! (`<day>|al:…`, see `alerts`); the batch's transaction inserts them, each
//! at most once.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    fault,
    state::AppState,
    upstash::{Command, Reply, Script},
};

pub static SNAPSHOT: Script = Script::new("snapshot", include_str!("scripts/snapshot.lua"));
pub static BATCH_DONE: Script = Script::new("batch_done", include_str!("scripts/batch_done.lua"));

/// Dirty keys per batch: bounds how long the snapshot script holds the
/// locks of a shard's dirty set, and how many keys it declares (three each).
const BATCH_KEYS: u64 = 500;

/// What one sync run did.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct SyncReport {
    pub batches: u64,
    /// Batches found already applied (their run died before deleting them).
    pub already_applied: u64,
    /// Counter fields moved into Postgres.
    pub counters: u64,
    pub key_days: u64,
    pub statements: u64,
    pub duration_ms: u64,
    /// `empty` or `budget`.
    pub stopped: crate::drain::Stopped,
}

/// Counters of one key on one day, as the admission script keeps them.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct KeyDay {
    pub(crate) requests: i64,
    pub(crate) successful: i64,
    pub(crate) failed: i64,
    pub(crate) files: i64,
    pub(crate) bytes: i64,
    pub(crate) last_ms: i64,
    /// Per provider: uploads, bytes, last use.
    pub(crate) providers: BTreeMap<String, (i64, i64, i64)>,
    /// Uploads per content type.
    pub(crate) file_types: BTreeMap<String, i64>,
    /// Refused requests, by the minute (Unix minutes), route and code, kept
    /// in aggregate so that a refused flood costs counters, not rows.
    pub(crate) refusals: BTreeMap<(i64, String, String), i64>,
    /// Alerts recorded by the admission script, to insert once.
    pub(crate) alerts: Vec<crate::alerts::Mark>,
}

impl KeyDay {
    /// Whether the day has usage to record, beyond refusals.
    fn has_usage(&self) -> bool {
        self.requests != 0 || self.files != 0 || !self.providers.is_empty()
    }
}

/// Syncs batches until nothing is dirty or the time budget is spent.
pub async fn sync(state: &AppState) -> anyhow::Result<SyncReport> {
    let started = Instant::now();
    let statements_before = state.db.statements();
    let mut report = SyncReport::default();
    loop {
        if started.elapsed() >= state.config.pipeline.drain_budget {
            report.stopped = crate::drain::Stopped::Budget;
            break;
        }
        let Some(batch) = next_batch(state).await? else {
            report.stopped = crate::drain::Stopped::Empty;
            break;
        };
        fault::point("sync:after-snapshot");
        let key_days = parse_batch(&batch.fields)?;
        let counters = (batch.fields.len() / 2) as i32;
        report.counters += counters as u64;
        report.key_days += key_days.len() as u64;
        if !apply(state, &batch.id, &key_days, counters).await? {
            report.already_applied += 1;
        }
        fault::point("sync:after-commit");
        report.batches += 1;
        fault::point("sync:before-delete");
        let mut keys = vec![
            state.keys.metrics_batches_pending(),
            state.keys.metrics_batch(&batch.id),
        ];
        keys.extend(
            batch
                .key_ids
                .iter()
                .map(|id| state.keys.metrics_pending(*id)),
        );
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let _: i64 = state
            .upstash
            .eval(&BATCH_DONE, &keys, std::slice::from_ref(&batch.id))
            .await
            .context("deleting an applied batch")?;
    }
    report.statements = state.db.statements() - statements_before;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// A sync batch: its id, its keys, and its counters as
/// `<key id>:<day>|<counter>`, value pairs.
struct Batch {
    id: String,
    key_ids: Vec<Uuid>,
    fields: Vec<Reply>,
}

/// The next batch to apply: one left pending by a run that died, or else a
/// new one taken from the first dirty shard that has keys.
async fn next_batch(state: &AppState) -> anyhow::Result<Option<Batch>> {
    let keys = &state.keys;
    let mut reads = vec![Command::new("SMEMBERS").arg(keys.metrics_batches_pending())];
    reads.extend((0..keys.shards()).map(|shard| {
        Command::new("SRANDMEMBER")
            .arg(keys.metrics_dirty(shard))
            .arg(BATCH_KEYS)
    }));
    let mut replies = state
        .upstash
        .pipeline(&reads)
        .await
        .context("reading the pending batches and the dirty keys")?
        .into_iter();
    let pending = texts(
        replies
            .next()
            .context("no reply for the pending batches")??,
    );
    if let Some(batch_id) = pending.into_iter().next() {
        return pending_batch(state, batch_id).await.map(Some);
    }
    for (shard, dirty) in (0..keys.shards()).zip(replies) {
        let ids: Vec<Uuid> = texts(dirty?)
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let batch_id = Uuid::new_v4().to_string();
        let mut names = vec![
            keys.metrics_batches_pending(),
            keys.metrics_batch(&batch_id),
            keys.metrics_dirty(shard),
        ];
        for id in &ids {
            names.extend([
                keys.metrics(*id),
                keys.metrics_pending(*id),
                keys.analytics_version(*id),
            ]);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut args = vec![batch_id.clone()];
        args.extend(ids.iter().map(Uuid::to_string));
        let fields: Vec<Reply> = state
            .upstash
            .eval(&SNAPSHOT, &names, &args)
            .await
            .context("snapshotting dirty counters")?;
        if !fields.is_empty() {
            let key_ids = fields
                .chunks(2)
                .filter_map(|pair| pair[0].as_str()?.split_once(':'))
                .filter_map(|(id, _)| Uuid::parse_str(id).ok())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            return Ok(Some(Batch {
                id: batch_id,
                key_ids,
                fields,
            }));
        }
    }
    Ok(None)
}

/// Reads back a batch a run left pending: its keys, then their shares.
async fn pending_batch(state: &AppState, batch_id: String) -> anyhow::Result<Batch> {
    let keys = &state.keys;
    let members: Vec<String> = state
        .upstash
        .command(&Command::new("SMEMBERS").arg(keys.metrics_batch(&batch_id)))
        .await
        .context("reading a pending batch's keys")?;
    let key_ids: Vec<Uuid> = members
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    let reads: Vec<Command> = key_ids
        .iter()
        .map(|id| Command::new("HGETALL").arg(keys.metrics_pending(*id)))
        .collect();
    let prefix = format!("{batch_id}|");
    let mut fields = vec![];
    for (id, reply) in key_ids.iter().zip(
        state
            .upstash
            .pipeline(&reads)
            .await
            .context("reading a pending batch")?,
    ) {
        for pair in texts(reply?).chunks(2) {
            if let [name, value] = pair {
                if let Some(field) = name.strip_prefix(&prefix) {
                    fields.push(Reply::Bulk(format!("{id}:{field}").into()));
                    fields.push(Reply::Bulk(value.clone().into()));
                }
            }
        }
    }
    Ok(Batch {
        id: batch_id,
        key_ids,
        fields,
    })
}

/// The strings of an array reply; anything else is none.
fn texts(reply: Reply) -> Vec<String> {
    match reply {
        Reply::Array(items) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    }
}

/// Groups the batch's `<key id>:<day>|<counter>` fields by key and day.
pub(crate) fn parse_batch(fields: &[Reply]) -> anyhow::Result<BTreeMap<(Uuid, NaiveDate), KeyDay>> {
    let mut key_days: BTreeMap<(Uuid, NaiveDate), KeyDay> = BTreeMap::new();
    for pair in fields.chunks(2) {
        let [name, value] = pair else { continue };
        let (Some(name), Some(value)) = (name.as_str(), value.as_str()) else {
            anyhow::bail!("a batch field is not text");
        };
        let value: i64 = value
            .parse()
            .with_context(|| format!("counter {name} = {value}"))?;
        let (member, counter) = name.split_once('|').context("a batch field has no `|`")?;
        let (key, day) = member
            .rsplit_once(':')
            .context("a batch member has no day")?;
        let key = Uuid::parse_str(key).with_context(|| format!("key id of {member}"))?;
        let day = NaiveDate::parse_from_str(day, "%Y-%m-%d")
            .with_context(|| format!("day of {member}"))?;
        let entry = key_days.entry((key, day)).or_default();
        match counter {
            "req" => entry.requests += value,
            "ok" => entry.successful += value,
            "fail" => entry.failed += value,
            "files" => entry.files += value,
            "bytes" => entry.bytes += value,
            "last" => entry.last_ms = entry.last_ms.max(value),
            other => {
                if let Some(alert) = other.strip_prefix("al:") {
                    match crate::alerts::Mark::parse(alert, value) {
                        Some(mark) => entry.alerts.push(mark),
                        // Skipped, never blocking the batch.
                        None => tracing::warn!(counter = other, "malformed alert; skipped"),
                    }
                } else if let Some(refusal) = other.strip_prefix("rf:") {
                    let mut parts = refusal.splitn(3, ':');
                    let (Some(Ok(minute)), Some(route), Some(code)) = (
                        parts.next().map(str::parse::<i64>),
                        parts.next(),
                        parts.next(),
                    ) else {
                        // As an unknown counter: skipped, never blocking the batch.
                        tracing::warn!(counter = other, "malformed refusal counter; skipped");
                        continue;
                    };
                    *entry
                        .refusals
                        .entry((minute, route.to_owned(), code.to_owned()))
                        .or_default() += value;
                } else if let Some(content_type) = other.strip_prefix("ft:") {
                    *entry.file_types.entry(content_type.to_owned()).or_default() += value;
                } else if let Some(rest) = other.strip_prefix("p:") {
                    let (provider, field) = rest.rsplit_once(':').context("a provider counter")?;
                    let slot = entry.providers.entry(provider.to_owned()).or_default();
                    match field {
                        "n" => slot.0 += value,
                        "b" => slot.1 += value,
                        "last" => slot.2 = slot.2.max(value),
                        _ => tracing::warn!(counter = other, "unknown provider counter; skipped"),
                    }
                } else {
                    tracing::warn!(counter = other, "unknown counter; skipped");
                }
            }
        }
    }
    Ok(key_days)
}

fn time(ms: i64) -> Option<DateTime<Utc>> {
    (ms > 0)
        .then(|| DateTime::from_timestamp_millis(ms))
        .flatten()
}

/// Applies one batch in one transaction. Returns false if the batch had
/// been applied before (and so was not applied again).
async fn apply(
    state: &AppState,
    batch_id: &str,
    key_days: &BTreeMap<(Uuid, NaiveDate), KeyDay>,
    counters: i32,
) -> anyhow::Result<bool> {
    let db = &state.db;
    let mut tx = db
        .pool()
        .begin()
        .await
        .context("starting the sync transaction")?;
    let fresh = db
        .query(
            "INSERT INTO sync_batches (batch_id, counters) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(batch_id)
        .bind(counters)
        .execute(&mut *tx)
        .await
        .context("recording the sync batch")?
        .rows_affected()
        == 1;
    if !fresh {
        tx.rollback().await.ok();
        return Ok(false);
    }

    // Per key and day.
    let (mut keys, mut days, mut reqs, mut oks, mut fails, mut files, mut bytes, mut lasts) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for ((key, day), c) in key_days.iter().filter(|(_, c)| c.has_usage()) {
        keys.push(*key);
        days.push(*day);
        reqs.push(c.requests);
        oks.push(c.successful);
        fails.push(c.failed);
        files.push(c.files);
        bytes.push(c.bytes);
        lasts.push(time(c.last_ms));
    }
    // Rows of keys deleted since are skipped rather than failing the batch.
    db.query(
        "INSERT INTO api_key_usage_daily AS u (api_key_id, day, total_requests, successful_requests,
                                               failed_requests, total_files, total_bytes, last_used_at)
         SELECT t.* FROM UNNEST($1::uuid[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[],
                                $6::bigint[], $7::bigint[], $8::timestamptz[])
              AS t(api_key_id, day, req, ok, fail, files, bytes, last)
         WHERE EXISTS (SELECT 1 FROM api_keys k WHERE k.id = t.api_key_id)
         ON CONFLICT (api_key_id, day) DO UPDATE SET
            total_requests = u.total_requests + EXCLUDED.total_requests,
            successful_requests = u.successful_requests + EXCLUDED.successful_requests,
            failed_requests = u.failed_requests + EXCLUDED.failed_requests,
            total_files = u.total_files + EXCLUDED.total_files,
            total_bytes = u.total_bytes + EXCLUDED.total_bytes,
            last_used_at = GREATEST(u.last_used_at, EXCLUDED.last_used_at)",
    )
    .bind(&keys)
    .bind(&days)
    .bind(&reqs)
    .bind(&oks)
    .bind(&fails)
    .bind(&files)
    .bind(&bytes)
    .bind(&lasts)
    .execute(&mut *tx)
    .await
    .context("upserting daily usage")?;

    // Totals per key, with the file-type counts merged into the JSON object.
    let mut totals: BTreeMap<Uuid, KeyDay> = BTreeMap::new();
    for ((key, _), c) in key_days.iter().filter(|(_, c)| c.has_usage()) {
        let t = totals.entry(*key).or_default();
        t.requests += c.requests;
        t.successful += c.successful;
        t.failed += c.failed;
        t.files += c.files;
        t.bytes += c.bytes;
        t.last_ms = t.last_ms.max(c.last_ms);
        for (content_type, n) in &c.file_types {
            *t.file_types.entry(content_type.clone()).or_default() += n;
        }
    }
    let mut ft_keys = vec![];
    let mut ft_types = vec![];
    let mut ft_counts = vec![];
    for (key, t) in &totals {
        for (content_type, n) in &t.file_types {
            ft_keys.push(*key);
            ft_types.push(content_type.as_str());
            ft_counts.push(*n);
        }
    }
    db.query(
        "WITH t AS (
            SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                                 $6::bigint[], $7::timestamptz[])
                AS t(id, req, ok, fail, files, bytes, last)
         ),
         ft AS (
            SELECT id, content_type, n FROM UNNEST($8::uuid[], $9::text[], $10::bigint[])
                AS f(id, content_type, n)
         )
         UPDATE api_keys k SET
            total_requests = k.total_requests + t.req,
            successful_requests = k.successful_requests + t.ok,
            failed_requests = k.failed_requests + t.fail,
            total_files = k.total_files + t.files,
            total_bytes = k.total_bytes + t.bytes,
            last_used_at = GREATEST(k.last_used_at, t.last),
            file_type_counts = coalesce((
                SELECT jsonb_object_agg(content_type, n) FROM (
                    SELECT content_type, sum(n)::bigint AS n FROM (
                        SELECT key AS content_type, value::bigint AS n
                        FROM jsonb_each_text(k.file_type_counts)
                        UNION ALL
                        SELECT content_type, n FROM ft WHERE ft.id = k.id
                    ) merged GROUP BY content_type
                ) summed
            ), '{}'::jsonb)
         FROM t WHERE k.id = t.id",
    )
    .bind(totals.keys().copied().collect::<Vec<_>>())
    .bind(totals.values().map(|t| t.requests).collect::<Vec<_>>())
    .bind(totals.values().map(|t| t.successful).collect::<Vec<_>>())
    .bind(totals.values().map(|t| t.failed).collect::<Vec<_>>())
    .bind(totals.values().map(|t| t.files).collect::<Vec<_>>())
    .bind(totals.values().map(|t| t.bytes).collect::<Vec<_>>())
    .bind(totals.values().map(|t| time(t.last_ms)).collect::<Vec<_>>())
    .bind(&ft_keys)
    .bind(&ft_types)
    .bind(&ft_counts)
    .execute(&mut *tx)
    .await
    .context("adding to the keys' totals")?;

    // Per key, provider and day; and per key and provider, all time.
    let (mut p_keys, mut p_names, mut p_days, mut p_n, mut p_b, mut p_last) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((key, day), c) in key_days {
        for (provider, (n, b, last)) in &c.providers {
            p_keys.push(*key);
            p_names.push(provider.as_str());
            p_days.push(*day);
            p_n.push(*n);
            p_b.push(*b);
            p_last.push(time(*last));
        }
    }
    if !p_keys.is_empty() {
        db.query(
            "INSERT INTO provider_usage_daily AS u (api_key_id, provider, day, uploads, bytes, last_used_at)
             SELECT t.* FROM UNNEST($1::uuid[], $2::text[], $3::date[], $4::bigint[], $5::bigint[],
                                    $6::timestamptz[]) AS t(api_key_id, provider, day, n, b, last)
             WHERE EXISTS (SELECT 1 FROM api_keys k WHERE k.id = t.api_key_id)
             ON CONFLICT (api_key_id, provider, day) DO UPDATE SET
                uploads = u.uploads + EXCLUDED.uploads,
                bytes = u.bytes + EXCLUDED.bytes,
                last_used_at = GREATEST(u.last_used_at, EXCLUDED.last_used_at)",
        )
        .bind(&p_keys)
        .bind(&p_names)
        .bind(&p_days)
        .bind(&p_n)
        .bind(&p_b)
        .bind(&p_last)
        .execute(&mut *tx)
        .await
        .context("upserting daily provider usage")?;
        db.query(
            "INSERT INTO provider_usage AS u (api_key_id, provider, uploads, bytes, last_used_at)
             SELECT api_key_id, provider, sum(n), sum(b), max(last)
             FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::timestamptz[])
                  AS t(api_key_id, provider, n, b, last)
             WHERE EXISTS (SELECT 1 FROM api_keys k WHERE k.id = t.api_key_id)
             GROUP BY api_key_id, provider
             ON CONFLICT (api_key_id, provider) DO UPDATE SET
                uploads = u.uploads + EXCLUDED.uploads,
                bytes = u.bytes + EXCLUDED.bytes,
                last_used_at = GREATEST(u.last_used_at, EXCLUDED.last_used_at)",
        )
        .bind(&p_keys)
        .bind(&p_names)
        .bind(&p_n)
        .bind(&p_b)
        .bind(&p_last)
        .execute(&mut *tx)
        .await
        .context("upserting provider usage")?;
    }
    // Refusals, in aggregate per key, minute, route and code.
    let (mut r_keys, mut r_minutes, mut r_routes, mut r_codes, mut r_counts) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((key, _), c) in key_days {
        for ((minute, route, code), n) in &c.refusals {
            r_keys.push(*key);
            r_minutes.push(DateTime::from_timestamp(minute * 60, 0));
            r_routes.push(route.as_str());
            r_codes.push(code.as_str());
            r_counts.push(*n);
        }
    }
    if !r_keys.is_empty() {
        db.query(
            "INSERT INTO api_refusals_minutely AS r (api_key_id, minute, route, code, refusals)
             SELECT api_key_id, minute, route, code, sum(n)
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[])
                  AS t(api_key_id, minute, route, code, n)
             WHERE EXISTS (SELECT 1 FROM api_keys k WHERE k.id = t.api_key_id)
             GROUP BY api_key_id, minute, route, code
             ON CONFLICT (api_key_id, minute, route, code) DO UPDATE SET
                refusals = r.refusals + EXCLUDED.refusals",
        )
        .bind(&r_keys)
        .bind(&r_minutes)
        .bind(&r_routes)
        .bind(&r_codes)
        .bind(&r_counts)
        .execute(&mut *tx)
        .await
        .context("adding up refusals")?;
    }
    // Alerts, once each: the batch's own retries never get here (its id
    // is in sync_batches), and a repeat from another batch (recorded again
    // after a Redis flush) meets its row already there.
    let alerts: Vec<crate::alerts::NewAlert> = key_days
        .iter()
        .flat_map(|((key, _), c)| {
            c.alerts
                .iter()
                .filter_map(|mark| mark.clone().into_alert(*key))
        })
        .collect();
    crate::alerts::insert(db, &mut *tx, &alerts, state.clock.now()).await?;
    tx.commit().await.context("committing the sync batch")?;
    Ok(true)
}

/// Counts one request straight into Postgres's usage tables, on the key's
/// day: for a route's fallback when the admission script surely did not
/// count it (Upstash unreachable, or the call settled as not run). The
/// daily row is written before the key's, the order the sync takes too, so
/// that concurrent writers wait for each other instead of deadlocking.
pub async fn count_directly(
    db: &crate::db::Db,
    connection: &mut sqlx::PgConnection,
    key_id: Uuid,
    day: NaiveDate,
    at: DateTime<Utc>,
    successful: bool,
) -> anyhow::Result<()> {
    let (ok, failed) = if successful { (1i64, 0i64) } else { (0, 1) };
    db.query(
        "INSERT INTO api_key_usage_daily AS u (api_key_id, day, total_requests,
                                              successful_requests, failed_requests, last_used_at)
         VALUES ($1, $2, 1, $4, $5, $3)
         ON CONFLICT (api_key_id, day) DO UPDATE SET
            total_requests = u.total_requests + 1,
            successful_requests = u.successful_requests + EXCLUDED.successful_requests,
            failed_requests = u.failed_requests + EXCLUDED.failed_requests,
            last_used_at = GREATEST(u.last_used_at, EXCLUDED.last_used_at)",
    )
    .bind(key_id)
    .bind(day)
    .bind(at)
    .bind(ok)
    .bind(failed)
    .execute(&mut *connection)
    .await
    .context("counting a request straight into Postgres, by day")?;
    db.query(
        "UPDATE api_keys SET total_requests = total_requests + 1,
                             successful_requests = successful_requests + $3,
                             failed_requests = failed_requests + $4,
                             last_used_at = GREATEST(last_used_at, $2)
         WHERE id = $1",
    )
    .bind(key_id)
    .bind(at)
    .bind(ok)
    .bind(failed)
    .execute(&mut *connection)
    .await
    .context("counting a request straight into Postgres, in total")?;
    Ok(())
}
