//! The drain: moves queued events from Redis into Postgres in bulk.
//!
//! Each round claims a batch (`queue::claim`), stores its events in one
//! transaction through the event [`Sink`] (Postgres: `events::store`), and
//! only then acknowledges it (`queue::ack`). A crash
//! anywhere leaves the batch pending in Redis, where the next run reclaims
//! it after the visibility timeout; the insert skips events already stored,
//! so nothing is lost and nothing is doubled. A lock keeps overlapping runs
//! from claiming side by side, but correctness never depends on it.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    events::{
        queued, rollup,
        sink::{PostgresSink, Sink},
        store::{self, DeadLetter, StoreOutcome, StoredEvent},
    },
    fault,
    logs::{self, RequestLog, UploadLog},
    queue::{self, Entry, EntryKind},
    state::AppState,
    upstash::Command,
};

/// The one consumer name drains read under. Reclaiming goes by idle time,
/// not by consumer, so runs need no names of their own (and leave none behind).
const CONSUMER: &str = "drainer";
/// Batches start at this many events and adapt to how long a commit takes.
const FIRST_BATCH: u64 = 1_000;
const MIN_BATCH: u64 = 100;
const MAX_BATCH: u64 = 10_000;
/// A batch whose store took less than this doubles; more than `SLOW` halves.
const FAST: Duration = Duration::from_millis(1_000);
const SLOW: Duration = Duration::from_millis(4_000);
/// Tries of one batch's store before the run gives up and leaves it pending.
const STORE_TRIES: u32 = 3;

/// What one drain run did.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct DrainReport {
    /// Events claimed from the queue.
    pub drained: u64,
    pub inserted: u64,
    /// Events already in Postgres (redelivered after a crash, or resent).
    pub duplicates: u64,
    pub dead_lettered: u64,
    /// Queue entries taken over from runs that died.
    pub reclaimed: u64,
    pub batches: u64,
    pub duration_ms: u64,
    /// Where the time went: claiming from Redis, storing in Postgres,
    /// acknowledging in Redis.
    pub claim_ms: u64,
    pub store_ms: u64,
    pub ack_ms: u64,
    /// True when another run held the lock and this one did nothing.
    pub skipped: bool,
    /// Why the run stopped.
    pub stopped: Stopped,
}

impl DrainReport {
    /// Adds the counts and times of a part of the run (or of another run).
    pub fn add(&mut self, part: &DrainReport) {
        self.drained += part.drained;
        self.inserted += part.inserted;
        self.duplicates += part.duplicates;
        self.dead_lettered += part.dead_lettered;
        self.reclaimed += part.reclaimed;
        self.batches += part.batches;
        self.claim_ms += part.claim_ms;
        self.store_ms += part.store_ms;
        self.ack_ms += part.ack_ms;
    }
}

/// Why a drain or sync run stopped.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stopped {
    /// Nothing was left to do.
    #[default]
    Empty,
    /// The time budget was spent; the next run goes on.
    Budget,
    /// Another run held the lock, so this one did nothing.
    Locked,
}

/// Drains until the queue is empty or the time budget is spent.
pub async fn run(state: &AppState) -> anyhow::Result<DrainReport> {
    let started = Instant::now();
    let config = &state.config.pipeline;
    let (upstash, keys) = (&*state.upstash, &state.keys);
    let mut report = DrainReport::default();

    let token = Uuid::new_v4().to_string();
    let lock_ttl = config.drain_budget + Duration::from_secs(15);
    if !queue::lock(upstash, keys, &token, lock_ttl)
        .await
        .context("taking the drain lock")?
    {
        report.skipped = true;
        report.stopped = Stopped::Locked;
        return Ok(report);
    }

    let result = drain_batches(state, started, &mut report).await;
    if let Err(error) = queue::unlock(upstash, keys, &token).await {
        tracing::warn!(error = %error, "could not release the drain lock; it expires by itself");
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    result?;

    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let _: () = upstash
        .command(
            &Command::new("HSET")
                .arg(keys.event_stats())
                .arg("last_drain_at")
                .arg(state.clock.now().timestamp_millis())
                .arg("last_drain_events")
                .arg(report.inserted + report.duplicates + report.dead_lettered)
                .arg("last_drain_ms")
                .arg(report.duration_ms)
                .arg("last_drain_rate")
                .arg(format!("{:.1}", report.drained as f64 / seconds)),
        )
        .await
        .context("recording the drain's statistics")?;
    Ok(report)
}

async fn drain_batches(
    state: &AppState,
    started: Instant,
    report: &mut DrainReport,
) -> anyhow::Result<()> {
    let config = &state.config.pipeline;
    let db = &state.db;
    let now = state.clock.now();
    store::create_partitions_ahead(db, now, 1)
        .await
        .context("creating the next months' partitions")?;
    if let Some(retention) = config.event_retention {
        let cutoff = (now - chrono::Duration::from_std(retention)?).date_naive();
        let dropped = store::drop_partitions_before(db, cutoff)
            .await
            .context("dropping partitions past retention")?;
        if !dropped.is_empty() {
            tracing::info!(?dropped, %cutoff, "dropped event partitions past retention");
        }
    }
    // Best effort: a retention that fails (a lock, a timeout) is tried
    // again next run and never holds the events back.
    if let Some(retention) = config.log_retention {
        let cutoff = now - chrono::Duration::from_std(retention)?;
        match crate::logs::delete_before(db, cutoff).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, %cutoff, "deleted log rows past retention"),
            Err(error) => tracing::warn!(error = ?error, "log retention failed; draining on"),
        }
    }
    // A session whose events are older than any event can still be (collect
    // refuses events past the maximum age; twice that leaves room for a
    // queue held up) can no longer be continued, and is only kept for that.
    let stale = now - chrono::Duration::from_std(config.event_max_age * 2)?;
    match rollup::prune_sessions(db, stale).await {
        Ok(0) => {}
        Ok(pruned) => tracing::info!(pruned, %stale, "pruned sessions that can no longer continue"),
        Err(error) => tracing::warn!(error = ?error, "pruning sessions failed; draining on"),
    }

    // A pipeline of three: while one batch is stored, the batch committed
    // before it is acknowledged and the next one is claimed, so Postgres
    // does not wait on Redis. Only committed batches are acknowledged, so
    // the guarantees hold; a batch claimed ahead and left unstored (the run
    // failed) is reclaimed by a later run after the visibility timeout.
    let sink = PostgresSink::new(db);
    let mut target = FIRST_BATCH;
    let mut claimed = claim_batch(state, target, report).await?;
    let mut committed: Vec<Entry> = Vec::new();
    loop {
        if claimed.entries.is_empty() {
            acknowledge(state, &committed, report).await?;
            report.stopped = Stopped::Empty;
            return Ok(());
        }
        let claim_next = started.elapsed() < config.drain_budget;
        let mut stored_report = DrainReport::default();
        let mut acked_report = DrainReport::default();
        let mut next_report = DrainReport::default();
        let (stored, acked, next) = tokio::join!(
            store_batch(state, &sink, &claimed, &mut stored_report),
            acknowledge(state, &committed, &mut acked_report),
            async {
                if claim_next {
                    Some(claim_batch(state, target, &mut next_report).await)
                } else {
                    None
                }
            },
        );
        for part in [&stored_report, &acked_report, &next_report] {
            report.add(part);
        }
        let store_time = stored?;
        acked?;
        committed = claimed.entries;

        target = if store_time < FAST {
            (target * 2).min(MAX_BATCH)
        } else if store_time > SLOW {
            (target / 2).max(MIN_BATCH)
        } else {
            target
        };
        claimed = match next {
            Some(next) => next?,
            None => {
                acknowledge(state, &committed, report).await?;
                report.stopped = Stopped::Budget;
                return Ok(());
            }
        };
    }
}

/// A claimed batch: its queue entries, and the rows they hold.
struct Claimed {
    entries: Vec<Entry>,
    rows: Rows,
}

/// Claims the next batch of entries, of about `target` events, and decodes
/// them (while the batch before is being stored).
async fn claim_batch(
    state: &AppState,
    target: u64,
    report: &mut DrainReport,
) -> anyhow::Result<Claimed> {
    let config = &state.config.pipeline;
    let started = Instant::now();
    let claim = queue::claim(
        &state.upstash,
        &state.keys,
        CONSUMER,
        config.drain_visibility,
        queue::ClaimBounds {
            target_events: target,
            max_entries: MAX_BATCH,
            max_bytes: config.drain_batch_bytes,
        },
    )
    .await
    .context("claiming a batch")?;
    report.claim_ms += started.elapsed().as_millis() as u64;
    fault::point("drain:after-claim");
    report.reclaimed += claim.reclaimed;
    let rows = decode(&claim.entries);
    Ok(Claimed {
        entries: claim.entries,
        rows,
    })
}

/// Stores a claimed batch: its events through the sink, its request and
/// upload logs, and its unreadable entries as dead letters. Returns how
/// long the store took, by which the next batch is sized.
async fn store_batch(
    state: &AppState,
    sink: &impl Sink,
    Claimed { entries, rows }: &Claimed,
    report: &mut DrainReport,
) -> anyhow::Result<Duration> {
    let db = &state.db;
    let attempts = entries.iter().map(|e| e.deliveries).max().unwrap_or(1);
    let started = Instant::now();
    let outcome = store_with_retries(sink, &rows.events, attempts as i32).await?;
    logs::insert_requests(db, &rows.requests)
        .await
        .context("inserting the request log")?;
    logs::insert_uploads(db, &rows.uploads)
        .await
        .context("inserting the upload log")?;
    let store_time = started.elapsed();
    fault::point("drain:after-insert");
    let dead = store::dead_letter(db, &rows.malformed)
        .await
        .context("dead-lettering malformed queue entries")?;
    report.batches += 1;
    report.drained += entries.iter().map(|e| e.count).sum::<u64>();
    report.store_ms += store_time.as_millis() as u64;
    report.inserted += outcome.inserted;
    report.duplicates += outcome.duplicates;
    report.dead_lettered += outcome.dead_lettered + dead;
    Ok(store_time)
}

/// Acknowledges committed entries, if there are any.
async fn acknowledge(
    state: &AppState,
    entries: &[Entry],
    report: &mut DrainReport,
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    fault::point("drain:before-ack");
    let started = Instant::now();
    queue::ack(&state.upstash, &state.keys, entries)
        .await
        .context("acknowledging a committed batch")?;
    report.ack_ms += started.elapsed().as_millis() as u64;
    Ok(())
}

/// A claimed batch, turned into rows for each table.
#[derive(Default)]
struct Rows {
    events: Vec<StoredEvent>,
    requests: Vec<(Uuid, RequestLog)>,
    uploads: Vec<(Uuid, UploadLog)>,
    /// Entries that cannot be read (it should not happen, short of a version
    /// mismatch): each becomes a dead letter as a whole.
    malformed: Vec<DeadLetter>,
}

fn decode(entries: &[Entry]) -> Rows {
    let mut rows = Rows::default();
    for entry in entries {
        let key = entry
            .key_id
            .as_deref()
            .and_then(|id| Uuid::parse_str(id).ok());
        let problem = match (key, &entry.kind) {
            (None, _) => format!("queue entry {} has no valid key id", entry.id),
            (Some(api_key_id), EntryKind::Events) => {
                match queued::decode(&entry.events, entry.shared.as_deref()) {
                    Ok(batch) => {
                        rows.events
                            .extend(batch.into_iter().map(|event| StoredEvent {
                                api_key_id,
                                visitor_id: entry.visitor_id.clone(),
                                event,
                            }));
                        continue;
                    }
                    Err(error) => format!(
                        "queue entry {} is not a JSON array of events: {error}",
                        entry.id
                    ),
                }
            }
            (Some(api_key_id), EntryKind::Request) => match serde_json::from_slice(&entry.events) {
                Ok(log) => {
                    rows.requests.push((api_key_id, log));
                    continue;
                }
                Err(error) => format!("queue entry {} is not a request log: {error}", entry.id),
            },
            (Some(api_key_id), EntryKind::Upload) => match serde_json::from_slice(&entry.events) {
                Ok(log) => {
                    rows.uploads.push((api_key_id, log));
                    continue;
                }
                Err(error) => format!("queue entry {} is not an upload log: {error}", entry.id),
            },
            (Some(_), EntryKind::Unknown(other)) => {
                format!("queue entry {} has unknown type `{other}`", entry.id)
            }
        };
        rows.malformed.push(DeadLetter {
            event_id: None,
            api_key_id: key,
            payload: String::from_utf8_lossy(&entry.events).into_owned(),
            reason: problem,
            attempts: entry.deliveries as i32,
        });
    }
    rows
}

/// Stores a batch, retrying failures that are not about its data with
/// backoff. The batch stays in flight meanwhile; if every try fails, the run
/// ends and a later run reclaims the batch.
async fn store_with_retries(
    sink: &impl Sink,
    events: &[StoredEvent],
    attempts: i32,
) -> anyhow::Result<StoreOutcome> {
    let mut delay = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        tries += 1;
        match sink.store(events, attempts).await {
            Ok(outcome) => return Ok(outcome),
            Err(error) if tries < STORE_TRIES => {
                tracing::warn!(error = %error, tries, "storing a batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            Err(error) => {
                return Err(error).context(format!(
                    "storing a batch of {} events failed {tries} times; it stays queued",
                    events.len()
                ))
            }
        }
    }
}
