//! Benchmark drivers that wrk cannot be: filling the event queue directly,
//! and timing the drain against a plain `COPY` of the same rows into the
//! same tables. `bench/run.sh` calls them; each prints one JSON line.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection};
use tollgate::{
    apikeys::{self, NewKey, Tier},
    config::Config,
    drain,
    events::{AgentFields, Event, EventKind, GeoFields, MobileFields, ServerFields, WebFields},
    state::AppState,
};
use uuid::Uuid;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fills the queue with N events, drains them, then COPYs the same rows
    /// into an empty copy of the tables, and prints both rates.
    DrainVsCopy {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per queue entry, as one collect request carries them.
        #[arg(long, default_value_t = 50)]
        per_entry: u64,
        /// The Redis behind the Upstash URL, for filling the queue quickly.
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
        /// A Postgres server URL ending in a database to clone from; the
        /// bench creates and drops its own databases on that server.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Writes dirty usage counters for many keys straight to Redis, then
    /// times the metrics sync that moves them into Postgres.
    Sync {
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::DrainVsCopy {
            events,
            per_entry,
            redis_url,
            database_url,
        } => drain_vs_copy(events, per_entry, &redis_url, &database_url).await,
        Command::Sync {
            keys,
            redis_url,
            database_url,
        } => sync(keys, &redis_url, &database_url).await,
    }
}

async fn drain_vs_copy(
    events: u64,
    per_entry: u64,
    redis_url: &str,
    database_url: &str,
) -> anyhow::Result<()> {
    let (server, _) = database_url
        .rsplit_once('/')
        .context("DATABASE_URL names a database")?;
    let drain_db = fresh_database(server, "bench_drain").await?;
    let copy_db = fresh_database(server, "bench_copy").await?;

    let prefix = format!("bench:{}:", Uuid::new_v4().simple());
    let config = Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(drain_db.clone()),
        "TOLLGATE_KEY_PREFIX" => Some(prefix.clone()),
        "TOLLGATE_DRAIN_BUDGET" => Some("30m".into()),
        "TOLLGATE_UPSTASH_TIMEOUT" => Some("60s".into()),
        "TOLLGATE_DATABASE_MAX_CONNECTIONS" => Some("4".into()),
        other => std::env::var(other).ok(),
    })?;
    let state = AppState::new(config)?;
    state.db.migrate().await?;
    let key = NewKey::generate();
    apikeys::insert(&state.db, &key, "bench", Tier::Enterprise).await?;

    let filled = Instant::now();
    fill_queue(redis_url, &state, key.id, events, per_entry).await?;
    let fill_time = filled.elapsed();

    let statements_before = state.db.statements();
    let started = Instant::now();
    let mut report = drain::DrainReport::default();
    loop {
        let run = drain::run(&state).await?;
        report.inserted += run.inserted;
        report.batches += run.batches;
        report.dead_lettered += run.dead_lettered;
        report.claim_ms += run.claim_ms;
        report.store_ms += run.store_ms;
        report.ack_ms += run.ack_ms;
        if run.stopped == "empty" {
            break;
        }
    }
    let drain_time = started.elapsed();
    anyhow::ensure!(
        report.inserted == events,
        "the drain stored {} of {events} events",
        report.inserted
    );
    let statements = state.db.statements() - statements_before;

    let copy_time = copy_same_rows(&drain_db, &copy_db).await?;
    let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "fill_seconds": fill_time.as_secs_f64(),
            "drain_seconds": drain_time.as_secs_f64(),
            "drain_events_per_second": rate(events, drain_time),
            "drain_batches": report.batches,
            "drain_statements": statements,
            "drain_claim_ms": report.claim_ms,
            "drain_store_ms": report.store_ms,
            "drain_ack_ms": report.ack_ms,
            "copy_seconds": copy_time.as_secs_f64(),
            "copy_events_per_second": rate(events, copy_time),
        })
    );
    drop(state);
    drop_database(server, &drain_db).await?;
    drop_database(server, &copy_db).await?;
    Ok(())
}

/// Ten counters per key, as one upload a day leaves them: requests,
/// successes, failures, files, bytes, last use, and the provider's and the
/// file type's counts.
async fn sync(keys: u64, redis_url: &str, database_url: &str) -> anyhow::Result<()> {
    let (server, _) = database_url
        .rsplit_once('/')
        .context("DATABASE_URL names a database")?;
    let db_url = fresh_database(server, "bench_sync").await?;
    let prefix = format!("bench:{}:", Uuid::new_v4().simple());
    let config = Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(db_url.clone()),
        "TOLLGATE_KEY_PREFIX" => Some(prefix.clone()),
        "TOLLGATE_DRAIN_BUDGET" => Some("30m".into()),
        "TOLLGATE_UPSTASH_TIMEOUT" => Some("60s".into()),
        other => std::env::var(other).ok(),
    })?;
    let state = AppState::new(config)?;
    let ids: Vec<Uuid> = (0..keys).map(|_| Uuid::now_v7()).collect();
    state
        .db
        .query(
            "INSERT INTO api_keys (id, name, secret_hash, publishable_key, tier)
             SELECT id, 'bench', sha256(id::text::bytea), 'pk_' || id, 'pro' FROM UNNEST($1::uuid[]) AS t(id)",
        )
        .bind(&ids)
        .execute(state.db.pool())
        .await?;

    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let now_ms = chrono::Utc::now().timestamp_millis();
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            let member = format!("{id}:{day}");
            pipe.cmd("HSET")
                .arg(format!("{prefix}mx:{member}"))
                .arg(&[
                    ("req", 3),
                    ("ok", 2),
                    ("fail", 1),
                    ("files", 2),
                    ("bytes", 2048),
                    ("last", now_ms),
                    ("p:s3:n", 2),
                    ("p:s3:b", 2048),
                    ("p:s3:last", now_ms),
                    ("ft:image/png", 2),
                ])
                .ignore();
            pipe.cmd("SADD")
                .arg(format!("{prefix}mx:dirty"))
                .arg(&member)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }

    let started = Instant::now();
    let report = tollgate::metrics::sync(&state).await?;
    let seconds = started.elapsed().as_secs_f64();
    let total: i64 = sqlx::query_scalar("SELECT sum(total_requests)::bigint FROM api_keys")
        .fetch_one(state.db.pool())
        .await?;
    anyhow::ensure!(
        total == 3 * keys as i64,
        "synced {total} requests, expected {}",
        3 * keys
    );
    println!(
        "{}",
        serde_json::json!({
            "keys": keys,
            "counters": report.counters,
            "batches": report.batches,
            "statements": report.statements,
            "seconds": seconds,
        })
    );
    drop(state);
    drop_database(server, &db_url).await?;
    Ok(())
}

/// Appends entries exactly as the admission script does, straight to Redis, so the
/// fill costs seconds rather than the collect benchmark's minutes.
async fn fill_queue(
    redis_url: &str,
    state: &AppState,
    key_id: Uuid,
    events: u64,
    per_entry: u64,
) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let queue = state.keys.event_queue();
    let now = chrono::Utc::now();
    let mut left = events;
    while left > 0 {
        let mut pipe = redis::pipe();
        for _ in 0..200 {
            if left == 0 {
                break;
            }
            let n = left.min(per_entry);
            left -= n;
            let batch: Vec<Event> = (0..n).map(|i| sample_event(now, i)).collect();
            pipe.cmd("XADD")
                .arg(&queue)
                .arg("*")
                .arg("k")
                .arg(key_id.to_string())
                .arg("v")
                .arg(format!("{:040x}", i128::from(n as i64) * 7919))
                .arg("n")
                .arg(n)
                .arg("e")
                .arg(serde_json::to_string(&batch)?)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    Ok(())
}

/// A typical web page view, as collect stores it.
fn sample_event(now: chrono::DateTime<chrono::Utc>, i: u64) -> Event {
    Event {
        id: Uuid::now_v7(),
        kind: EventKind::Web,
        name: if i.is_multiple_of(5) {
            "signup".into()
        } else {
            "pageview".into()
        },
        occurred_at: now - chrono::Duration::milliseconds(i as i64),
        received_at: now,
        session_id: Some(format!("s-{}", i % 1000)),
        user_id: None,
        properties: Some(r#"{"plan":"pro","experiment":"b"}"#.into()),
        web: WebFields {
            url: Some(format!(
                "https://shop.example.com/products/{}?utm_source=news",
                i % 100
            )),
            path: Some(format!("/products/{}", i % 100)),
            referrer: Some("https://news.example.org/".into()),
            title: Some("Product".into()),
            screen: Some("1920x1080".into()),
            language: Some("en-GB".into()),
            utm_source: Some("news".into()),
            ..WebFields::default()
        },
        mobile: MobileFields::default(),
        server: ServerFields::default(),
        agent: AgentFields {
            browser: Some("Chrome".into()),
            browser_version: Some("120.0.0.0".into()),
            os: Some("Windows 10".into()),
            device_type: Some("desktop".into()),
        },
        geo: GeoFields {
            country: Some("DE".into()),
            region: Some("BE".into()),
            city: Some("Berlin".into()),
            latitude: Some(52.52),
            longitude: Some(13.405),
        },
    }
}

/// Exports what the drain stored and loads it with `COPY` into the other
/// database's empty tables, timing only the load.
async fn copy_same_rows(from: &str, to: &str) -> anyhow::Result<Duration> {
    let mut source = PgConnection::connect(from).await?;
    let mut target = PgConnection::connect(to).await?;
    let mut timed = Duration::ZERO;
    for table in ["event_ids", "events"] {
        let mut data = Vec::new();
        let mut out = source
            .copy_out_raw(&format!(
                "COPY (SELECT * FROM {table}) TO STDOUT (FORMAT binary)"
            ))
            .await?;
        while let Some(chunk) = out.try_next().await? {
            data.extend_from_slice(&chunk);
        }
        drop(out);
        let started = Instant::now();
        let mut copy = target
            .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
            .await?;
        for chunk in data.chunks(1 << 20) {
            copy.send(chunk).await?;
        }
        copy.finish().await?;
        timed += started.elapsed();
    }
    Ok(timed)
}

async fn fresh_database(server: &str, name: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(&format!("{server}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let url = format!("{server}/{name}");
    let mut conn = PgConnection::connect(&url).await?;
    tollgate::db::MIGRATOR.run(&mut conn).await?;
    Ok(url)
}

async fn drop_database(server: &str, url: &str) -> anyhow::Result<()> {
    let name = url.rsplit_once('/').map(|(_, n)| n).unwrap_or_default();
    let mut admin = PgConnection::connect(&format!("{server}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}
