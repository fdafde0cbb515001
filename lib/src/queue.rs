//! The event queue in Redis: streams read through one consumer group, one
//! per shard (`TOLLGATE_REDIS_SHARDS`); each request appends to a shard it
//! draws at random, so that no stream is written by every request.
//!
//! The admission script appends entries: one per collect request (`t` =
//! `ev`: its key id, visitor id, event count and events as JSON), one per
//! metered request (`t` = `req`: the request log), one per presigned
//! upload (`t` = `up`: the upload log). A drain claims entries with
//! `claim.lua`, which moves them into the group's pending list, the
//! in-flight area; only after their Postgres commit does `ack.lua` remove
//! them. An entry whose run died stays pending and is reclaimed by the next
//! run once its visibility timeout has passed. Delivery is therefore
//! at-least-once, and the idempotent insert makes it exactly-once in Postgres.

use std::time::Duration;

use bytes::Bytes;

use crate::{
    redis_keys::{RedisKeys, DRAIN_GROUP},
    upstash::{Reply, Script, Upstash, UpstashError},
};

pub static CLAIM: Script = Script::new("claim", include_str!("scripts/claim.lua"));
pub static ACK: Script = Script::new("ack", include_str!("scripts/ack.lua"));
pub static UNLOCK: Script = Script::new("unlock", include_str!("scripts/unlock.lua"));
pub static QUEUE_STATUS: Script =
    Script::new("queue_status", include_str!("scripts/queue_status.lua"));

/// One claimed queue entry, as the admission script wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The shard whose stream holds it.
    pub shard: u16,
    /// The stream id, e.g. `1732222222222-0`; its first part is the enqueue
    /// time in ms. Unique within its shard.
    pub id: String,
    pub kind: EntryKind,
    pub key_id: Option<String>,
    pub visitor_id: Option<String>,
    /// How many events the entry holds.
    pub count: u64,
    /// The events, a JSON array (in their queued form when `shared` is set).
    pub events: Bytes,
    /// What the events share (`events::queued`); absent in entries queued
    /// as whole events.
    pub shared: Option<Bytes>,
    /// How many times the entry has been delivered, this time included.
    pub deliveries: i64,
}

/// What a queue entry holds, by its `t` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// `ev`: a collect request's events.
    Events,
    /// `req`: the request log of a metered request.
    Request,
    /// `up`: the upload log of a presigned upload.
    Upload,
    /// Anything else: the drain dead-letters it.
    Unknown(String),
}

impl EntryKind {
    fn parse(t: &[u8]) -> Self {
        match t {
            b"ev" => Self::Events,
            b"req" => Self::Request,
            b"up" => Self::Upload,
            other => Self::Unknown(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

/// A claimed batch.
#[derive(Debug, Default)]
pub struct Claim {
    /// Entries taken over from runs that died.
    pub reclaimed: u64,
    pub entries: Vec<Entry>,
}

/// How much one claim may take.
#[derive(Debug, Clone, Copy)]
pub struct ClaimBounds {
    /// Events to aim for (whole entries, so possibly a few more).
    pub target_events: u64,
    pub max_entries: u64,
    /// Bytes of events past which no further entry is taken.
    pub max_bytes: u64,
}

/// Claims entries within `bounds` from every shard at once: one script
/// call per shard, each with its share of the bounds, so that a claim
/// holds one shard's lock at a time, never the whole queue's.
pub async fn claim(
    upstash: &Upstash,
    keys: &RedisKeys,
    consumer: &str,
    visibility: Duration,
    bounds: ClaimBounds,
) -> Result<Claim, UpstashError> {
    let shards = u64::from(keys.shards());
    let share = ClaimBounds {
        target_events: bounds.target_events.div_ceil(shards).max(1),
        max_entries: bounds.max_entries.div_ceil(shards).max(1),
        max_bytes: bounds.max_bytes.div_ceil(shards).max(1),
    };
    let claims = futures::future::try_join_all(
        (0..keys.shards())
            .map(|shard| claim_shard(upstash, keys, shard, consumer, visibility, share)),
    )
    .await?;
    let mut claim = Claim::default();
    for shard in claims {
        claim.reclaimed += shard.reclaimed;
        claim.entries.extend(shard.entries);
    }
    Ok(claim)
}

async fn claim_shard(
    upstash: &Upstash,
    keys: &RedisKeys,
    shard: u16,
    consumer: &str,
    visibility: Duration,
    bounds: ClaimBounds,
) -> Result<Claim, UpstashError> {
    let reply: Reply = upstash
        .eval(
            &CLAIM,
            &[&keys.event_queue(shard)],
            &[
                DRAIN_GROUP.to_owned(),
                consumer.to_owned(),
                visibility.as_millis().to_string(),
                bounds.target_events.to_string(),
                bounds.max_entries.to_string(),
                bounds.max_bytes.to_string(),
            ],
        )
        .await?;
    let Reply::Array(mut parts) = reply else {
        return Err(shape("claim", &reply));
    };
    let (Some(Reply::Array(raw_entries)), Some(Reply::Int(reclaimed))) = (parts.pop(), parts.pop())
    else {
        return Err(UpstashError::Protocol(
            "claim returned an unexpected shape".into(),
        ));
    };
    let entries = raw_entries
        .into_iter()
        .map(|entry| parse_entry(shard, entry))
        .collect::<Result<_, _>>()?;
    Ok(Claim {
        reclaimed: reclaimed as u64,
        entries,
    })
}

fn parse_entry(shard: u16, reply: Reply) -> Result<Entry, UpstashError> {
    let Reply::Array(parts) = reply else {
        return Err(shape("entry", &reply));
    };
    let mut parts = parts.into_iter();
    let (Some(Reply::Bulk(id)), Some(Reply::Array(fields)), Some(Reply::Int(deliveries))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(UpstashError::Protocol(
            "a claimed entry has an unexpected shape".into(),
        ));
    };
    let mut entry = Entry {
        shard,
        id: String::from_utf8_lossy(&id).into_owned(),
        kind: EntryKind::Events,
        key_id: None,
        visitor_id: None,
        count: 0,
        events: Bytes::new(),
        shared: None,
        deliveries,
    };
    let mut fields = fields.into_iter();
    while let (Some(Reply::Bulk(name)), Some(Reply::Bulk(value))) = (fields.next(), fields.next()) {
        match name.as_ref() {
            b"t" => entry.kind = EntryKind::parse(&value),
            b"k" => entry.key_id = Some(String::from_utf8_lossy(&value).into_owned()),
            b"v" => entry.visitor_id = Some(String::from_utf8_lossy(&value).into_owned()),
            b"n" => {
                entry.count = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }
            b"e" => entry.events = value,
            b"c" => entry.shared = Some(value),
            _ => {}
        }
    }
    Ok(entry)
}

/// Acknowledges committed entries and deletes them from their streams, one
/// script call per shard.
pub async fn ack(
    upstash: &Upstash,
    keys: &RedisKeys,
    entries: &[Entry],
) -> Result<u64, UpstashError> {
    let mut by_shard: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    for entry in entries {
        let args = by_shard
            .entry(entry.shard)
            .or_insert_with(|| vec![DRAIN_GROUP.to_owned()]);
        args.push(entry.id.clone());
        args.push(entry.count.to_string());
        // What admit.lua added to the shard's queued_bytes for it.
        let bytes = match entry.kind {
            EntryKind::Events if entry.count > 0 => entry.events.len(),
            _ => 0,
        };
        args.push(bytes.to_string());
    }
    let acked = futures::future::try_join_all(by_shard.iter().map(|(shard, args)| async move {
        let queue = keys.event_queue(*shard);
        let stats = keys.shard_stats(*shard);
        upstash.eval::<i64>(&ACK, &[&queue, &stats], args).await
    }))
    .await?;
    Ok(acked.into_iter().map(|n| n.max(0) as u64).sum())
}

/// Takes the drain lock for `ttl` if no one holds it.
pub async fn lock(
    upstash: &Upstash,
    keys: &RedisKeys,
    token: &str,
    ttl: Duration,
) -> Result<bool, UpstashError> {
    let reply: Option<String> = upstash
        .command(
            &crate::upstash::Command::new("SET")
                .arg(keys.drain_lock())
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis()),
        )
        .await?;
    Ok(reply.is_some())
}

/// Releases the drain lock if `token` still holds it.
pub async fn unlock(upstash: &Upstash, keys: &RedisKeys, token: &str) -> Result<(), UpstashError> {
    let _: i64 = upstash
        .eval(&UNLOCK, &[&keys.drain_lock()], &[token.to_owned()])
        .await?;
    Ok(())
}

/// What Redis knows about the queue, over every shard.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QueueState {
    /// Entries (collect requests) not yet claimed by a drain.
    pub queued_entries: u64,
    /// Entries claimed and not yet acknowledged: in-flight batches.
    pub pending_entries: u64,
    /// Pending entries past their visibility timeout: their run died.
    pub expired_entries: u64,
    /// Enqueue time (ms since the epoch) of the oldest unclaimed entry.
    pub oldest_queued_ms: Option<i64>,
    /// Enqueue time of the oldest in-flight entry.
    pub oldest_pending_ms: Option<i64>,
    /// The shards' counters summed (queued_events, bots_dropped) and the
    /// last drain's statistics (last_drain_*).
    pub stats: Vec<(String, String)>,
}

/// Reads the queue's state: one script call per shard and one read of the
/// drain's statistics, all at once.
pub async fn state(
    upstash: &Upstash,
    keys: &RedisKeys,
    visibility: Duration,
) -> Result<QueueState, UpstashError> {
    let shards = futures::future::try_join_all(
        (0..keys.shards()).map(|shard| shard_state(upstash, keys, shard, visibility)),
    );
    let read_drain = crate::upstash::Command::new("HGETALL").arg(keys.event_stats());
    let drain = upstash.command::<Vec<String>>(&read_drain);
    let (shards, drain) = futures::future::try_join(shards, drain).await?;
    let mut total = QueueState::default();
    let mut counters: std::collections::BTreeMap<String, i64> = Default::default();
    for shard in shards {
        total.queued_entries += shard.queued_entries;
        total.pending_entries += shard.pending_entries;
        total.expired_entries += shard.expired_entries;
        total.oldest_queued_ms = earliest(total.oldest_queued_ms, shard.oldest_queued_ms);
        total.oldest_pending_ms = earliest(total.oldest_pending_ms, shard.oldest_pending_ms);
        for (name, value) in shard.stats {
            *counters.entry(name).or_default() += value.parse::<i64>().unwrap_or(0);
        }
    }
    total.stats = counters
        .into_iter()
        .map(|(name, n)| (name, n.max(0).to_string()))
        .chain(drain.chunks(2).filter_map(|pair| match pair {
            [name, value] => Some((name.clone(), value.clone())),
            _ => None,
        }))
        .collect();
    Ok(total)
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn shard_state(
    upstash: &Upstash,
    keys: &RedisKeys,
    shard: u16,
    visibility: Duration,
) -> Result<QueueState, UpstashError> {
    let reply: Reply = upstash
        .eval_read_only(
            &QUEUE_STATUS,
            &[&keys.event_queue(shard), &keys.shard_stats(shard)],
            &[DRAIN_GROUP.to_owned(), visibility.as_millis().to_string()],
        )
        .await?;
    let Reply::Array(parts) = reply else {
        return Err(shape("queue status", &reply));
    };
    let int = |reply: &Reply| match reply {
        Reply::Int(n) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let id_time = |reply: &Reply| {
        reply
            .as_str()
            .and_then(|id| id.split('-').next())
            .and_then(|ms| ms.parse().ok())
    };
    let [queued, pending, expired, oldest_queued, oldest_pending, Reply::Array(stats)] =
        parts.as_slice()
    else {
        return Err(UpstashError::Protocol(
            "queue status has an unexpected shape".into(),
        ));
    };
    let stats = stats
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, value] => Some((name.as_str()?.to_owned(), value.as_str()?.to_owned())),
            _ => None,
        })
        .collect();
    Ok(QueueState {
        queued_entries: int(queued),
        pending_entries: int(pending),
        expired_entries: int(expired),
        oldest_queued_ms: id_time(oldest_queued),
        oldest_pending_ms: id_time(oldest_pending),
        stats,
    })
}

fn shape(what: &str, reply: &Reply) -> UpstashError {
    UpstashError::Protocol(format!("{what} returned an unexpected reply: {reply:?}"))
}
