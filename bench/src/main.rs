//! Benchmark drivers that wrk cannot be: filling the event queue directly,
//! timing the drain against a plain `COPY` of the same rows into the same
//! tables (and through PgBouncer against a direct connection), and counting
//! what requests with unknown keys cost.
//! `bench/run.sh` calls them; each prints one JSON line.

mod soak;
mod unknown_keys;
mod views;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

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
    /// into an empty copy of the tables, and prints both rates. With a
    /// pooled URL, fills and drains again through it into a third database.
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
        /// The same server through a transaction-mode pooler (PgBouncer),
        /// ending in any database name.
        #[arg(long)]
        pooled_database_url: Option<String>,
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
    /// The whole stack under mixed load with faults, then an audit of every
    /// answer against Postgres (see soak.rs). Exits 1 if a check fails.
    Soak {
        /// How long the load and the faults last, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Concurrent clients per route.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Where the `tollgate` and cron function binaries are.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        #[arg(long, default_value = ".tollgate/soak")]
        dir: PathBuf,
        #[arg(long, default_value = "target/soak/summary.md")]
        summary: PathBuf,
        #[arg(long, default_value_t = 6394)]
        redis_port: u16,
        /// Below 32768, outside the ephemeral range, so that no client
        /// socket left in TIME_WAIT can hold it.
        #[arg(long, default_value_t = 15494)]
        postgres_port: u16,
        #[arg(long, default_value_t = 18094)]
        upstash_port: u16,
        #[arg(long, default_value_t = 13094)]
        app_port: u16,
        /// Fault kinds to inject, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "queue,redis,drain,postgres,upstash,sync"
        )]
        faults: Vec<String>,
    },
    /// Sends full-size collect bodies through the collect handler and
    /// prints, for each, the bytes of its Upstash request and of its queue
    /// entry against the bytes of the body.
    Payload {
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Sends the same POST `requests` times, one after another on one
    /// connection (after a few to warm up), and prints the latency's p50
    /// and p99: what one client of the route waits.
    Latency {
        #[arg(long)]
        url: String,
        /// The request body.
        #[arg(long)]
        body: PathBuf,
        /// Sent as `Authorization: Bearer`.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 500)]
        requests: usize,
    },
    /// Sends collect requests with a valid key and with unknown ones
    /// through the collect handler, and prints what each costs in Upstash
    /// round trips and bytes and in Postgres statements (unknown_keys.rs).
    UnknownKeys {
        /// Measured requests per case, after each case's warm-up.
        #[arg(long, default_value_t = 200)]
        requests: u64,
        /// The app's `TOLLGATE_FAILED_AUTH_LIMIT`, to reach in the cut-off case.
        #[arg(long, default_value_t = 30)]
        failed_auth_limit: u32,
        /// The request body.
        #[arg(long)]
        body: PathBuf,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Seeds usage rows for many keys and events, a tenth of them the given
    /// key's, into the app's database, then times each analytics view's
    /// statement (p50) for that key and for typical keys.
    Analytics {
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// The key whose views the HTTP benchmark reads: it gets a tenth of
        /// the events, the others share the rest.
        #[arg(long)]
        key_id: Uuid,
        #[arg(long, default_value_t = 40)]
        samples: usize,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Seeds a database of its own with events of many keys by COPY, builds
    /// their rollups, and times every view for the biggest key against
    /// aggregating its raw events (views.rs).
    Views {
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// The events of the key whose views are timed, over 30 days.
        #[arg(long, default_value_t = 1_000_000)]
        big_key_events: u64,
        #[arg(long, default_value_t = 1_000)]
        keys: u64,
        #[arg(long, default_value_t = 40)]
        samples: usize,
        #[arg(long, default_value_t = 5)]
        raw_samples: usize,
        /// Keep the database (bench_views) afterwards.
        #[arg(long)]
        keep: bool,
        /// Only print the events view's plan and time it, on a database a
        /// run kept.
        #[arg(long)]
        explain: bool,
        /// A Postgres server URL ending in a database; the bench creates
        /// and drops its own database on that server.
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
            pooled_database_url,
        } => {
            drain_vs_copy(
                events,
                per_entry,
                &redis_url,
                &database_url,
                pooled_database_url.as_deref(),
            )
            .await
        }
        Command::Sync {
            keys,
            redis_url,
            database_url,
        } => sync(keys, &redis_url, &database_url).await,
        Command::Analytics {
            keys,
            events,
            key_id,
            samples,
            database_url,
        } => analytics(keys, events, key_id, samples, &database_url).await,
        Command::Views {
            explain: true,
            samples,
            database_url,
            ..
        } => views::explain(&database_url, samples).await,
        Command::Views {
            events,
            big_key_events,
            keys,
            samples,
            raw_samples,
            keep,
            database_url,
            ..
        } => {
            let sizes = views::Sizes {
                events,
                big_key_events,
                keys,
                samples,
                raw_samples,
                keep,
            };
            views::run(sizes, &database_url).await
        }
        Command::Latency {
            url,
            body,
            token,
            requests,
        } => latency(&url, &body, &token, requests).await,
        Command::Payload {
            redis_url,
            database_url,
        } => payload(&redis_url, &database_url).await,
        Command::UnknownKeys {
            requests,
            failed_auth_limit,
            body,
            database_url,
        } => unknown_keys::run(requests, failed_auth_limit, &body, &database_url).await,
        Command::Soak {
            seconds,
            clients,
            bin_dir,
            dir,
            summary,
            redis_port,
            postgres_port,
            upstash_port,
            app_port,
            faults,
        } => {
            let passed = soak::run(soak::Options {
                duration: Duration::from_secs(seconds),
                bin_dir,
                dir,
                redis_port,
                postgres_port,
                upstash_port,
                app_port,
                summary,
                clients,
                faults,
            })
            .await?;
            if !passed {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn drain_vs_copy(
    events: u64,
    per_entry: u64,
    redis_url: &str,
    database_url: &str,
    pooled_database_url: Option<&str>,
) -> anyhow::Result<()> {
    let (server, _) = database_url
        .rsplit_once('/')
        .context("DATABASE_URL names a database")?;
    let drain_db = fresh_database(server, "bench_drain").await?;
    let copy_db = fresh_database(server, "bench_copy").await?;

    let direct = timed_drain(TimedDrain {
        database_url: &drain_db,
        pooler: false,
        redis_url,
        events,
        per_entry,
    })
    .await?;
    let copy_time = copy_same_rows(&drain_db, &copy_db).await?;
    drop_database(server, &drain_db).await?;
    drop_database(server, &copy_db).await?;

    // The same drain through the pooler, into a database migrated directly
    // (the migrator's session lock cannot go through it).
    let pooled = match pooled_database_url {
        Some(pooled_url) => {
            let (pooled_server, _) = pooled_url
                .rsplit_once('/')
                .context("the pooled URL names a database")?;
            let direct_url = fresh_database(server, "bench_drain_pooled").await?;
            let drained = timed_drain(TimedDrain {
                database_url: &format!("{pooled_server}/bench_drain_pooled"),
                pooler: true,
                redis_url,
                events,
                per_entry,
            })
            .await?;
            drop_database(server, &direct_url).await?;
            Some(drained)
        }
        None => None,
    };

    let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "fill_seconds": direct.fill.as_secs_f64(),
            "drain_seconds": direct.drain.as_secs_f64(),
            "drain_events_per_second": rate(events, direct.drain),
            "drain_batches": direct.report.batches,
            "drain_statements": direct.statements,
            "drain_claim_ms": direct.report.claim_ms,
            "drain_store_ms": direct.report.store_ms,
            "drain_ack_ms": direct.report.ack_ms,
            "copy_seconds": copy_time.as_secs_f64(),
            "copy_events_per_second": rate(events, copy_time),
            "pooled": pooled.map(|pooled| serde_json::json!({
                "drain_seconds": pooled.drain.as_secs_f64(),
                "drain_events_per_second": rate(events, pooled.drain),
                "drain_batches": pooled.report.batches,
                "drain_statements": pooled.statements,
                "drain_claim_ms": pooled.report.claim_ms,
                "drain_store_ms": pooled.report.store_ms,
                "drain_ack_ms": pooled.report.ack_ms,
            })),
        })
    );
    Ok(())
}

/// One timed drain: where it stores, and what it drains.
struct TimedDrain<'a> {
    database_url: &'a str,
    /// Whether `database_url` goes through a transaction-mode pooler.
    pooler: bool,
    redis_url: &'a str,
    events: u64,
    per_entry: u64,
}

/// What a timed drain took and did.
struct Drained {
    fill: Duration,
    drain: Duration,
    report: drain::DrainReport,
    statements: u64,
}

/// Fills the queue with the events under a fresh key prefix, then drains
/// until the queue is empty into the migrated database, timing both.
async fn timed_drain(run: TimedDrain<'_>) -> anyhow::Result<Drained> {
    let prefix = format!("bench:{}:", Uuid::new_v4().simple());
    let pooler = if run.pooler { "transaction" } else { "none" };
    let config = Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(run.database_url.to_owned()),
        "TOLLGATE_DATABASE_POOLER" => Some(pooler.to_owned()),
        "TOLLGATE_KEY_PREFIX" => Some(prefix.clone()),
        "TOLLGATE_DRAIN_BUDGET" => Some("30m".into()),
        "TOLLGATE_UPSTASH_TIMEOUT" => Some("60s".into()),
        "TOLLGATE_DATABASE_MAX_CONNECTIONS" => Some("4".into()),
        other => std::env::var(other).ok(),
    })?;
    let state = AppState::new(config)?;
    let key = NewKey::generate();
    apikeys::insert(&state.db, &key, "bench", Tier::Enterprise).await?;

    let filled = Instant::now();
    fill_queue(run.redis_url, &state, key.id, run.events, run.per_entry).await?;
    let fill = filled.elapsed();

    let statements_before = state.db.statements();
    let started = Instant::now();
    let mut report = drain::DrainReport::default();
    loop {
        let batch = drain::run(&state).await?;
        report.add(&batch);
        if batch.stopped == tollgate::drain::Stopped::Empty {
            break;
        }
    }
    let drain = started.elapsed();
    anyhow::ensure!(
        report.inserted == run.events,
        "the drain stored {} of {} events",
        report.inserted,
        run.events
    );
    Ok(Drained {
        fill,
        drain,
        report,
        statements: state.db.statements() - statements_before,
    })
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
    // As admit.lua leaves them: each key's counters in its hash, its id in
    // the dirty set of the shard its requests drew.
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            let fields: Vec<(String, i64)> = [
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
            ]
            .into_iter()
            .map(|(counter, n)| (format!("{day}|{counter}"), n))
            .collect();
            pipe.cmd("HSET")
                .arg(state.keys.metrics(*id))
                .arg(&fields)
                .ignore();
            pipe.cmd("SADD")
                .arg(state.keys.metrics_dirty(state.keys.any_shard()))
                .arg(id.to_string())
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

/// A stream entry as XRANGE gives it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

async fn payload(redis_url: &str, database_url: &str) -> anyhow::Result<()> {
    let (server, _) = database_url
        .rsplit_once('/')
        .context("DATABASE_URL names a database")?;
    let db_url = fresh_database(server, "bench_payload").await?;
    let prefix = format!("bench:{}:", Uuid::new_v4().simple());
    let config = Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(db_url.clone()),
        "TOLLGATE_KEY_PREFIX" => Some(prefix.clone()),
        "TOLLGATE_REDIS_SHARDS" => Some("1".into()),
        other => std::env::var(other).ok(),
    })?;
    let state = AppState::new(config)?;
    state.db.migrate().await?;
    let key = NewKey::generate();
    apikeys::insert(&state.db, &key, "bench", Tier::Enterprise).await?;
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let cart: Vec<serde_json::Value> = (0..60)
        .map(|n| serde_json::json!({"sku": format!("SKU-{n}"), "qty": n}))
        .collect();
    let shapes: [(&str, Vec<serde_json::Value>); 2] = [
        (
            "web events with properties, 1 MB",
            (0..500)
                .map(|i| serde_json::json!({"type": "web", "name": "pageview", "id": Uuid::new_v4(),
                    "url": format!("https://shop.example.com/products/{i}?utm_source=news&utm_medium=email"),
                    "referrer": "https://news.example.org/item?id=123", "title": "A product page",
                    "properties": {"plan": "pro", "cart": cart}}))
                .collect(),
        ),
        (
            "500 page views as the tracker sends them",
            (0..500)
                .map(|i| serde_json::json!({"type": "web", "name": "pageview", "id": Uuid::new_v4(),
                    "timestamp": chrono::Utc::now().to_rfc3339(),
                    "url": format!("https://shop.example.com/products/{i}?utm_source=news"),
                    "referrer": "https://news.example.org/", "title": "A product page",
                    "screen": "1920x1080", "language": "en-GB"}))
                .collect(),
        ),
    ];
    let mut out = vec![];
    for (shape, events) in shapes {
        let body = serde_json::to_vec(&serde_json::json!({"batch": events}))?;
        let request = http::Request::builder()
            .method("POST")
            .uri("/api/collect")
            .header("authorization", format!("Bearer {}", key.secret.expose()))
            .header("content-type", "application/json")
            .body(bytes::Bytes::from(body.clone()))?;
        // Warm the key cache first, so only the admission call is measured.
        let warm = request.clone();
        tollgate::routes::collect::handle(&state, warm).await;
        let _: () = redis::cmd("DEL")
            .arg(state.keys.event_queue(0))
            .query_async(&mut conn)
            .await?;
        let sent = state.upstash.bytes_sent();
        let response = tollgate::routes::collect::handle(&state, request).await;
        anyhow::ensure!(
            response.status() == 202,
            "collect answered {}",
            response.status()
        );
        let upstash_bytes = state.upstash.bytes_sent() - sent;
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(state.keys.event_queue(0))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await?;
        let stream_bytes: usize = entries
            .iter()
            .filter(|(_, fields)| fields.iter().any(|(f, v)| f == "t" && v == b"ev"))
            .flat_map(|(_, fields)| fields.iter().map(|(f, v)| f.len() + v.len()))
            .sum();
        out.push(serde_json::json!({
            "shape": shape,
            "body_bytes": body.len(),
            "upstash_bytes": upstash_bytes,
            "stream_bytes": stream_bytes,
        }));
    }
    println!("{}", serde_json::Value::from(out));
    drop(state);
    drop_database(server, &db_url).await?;
    Ok(())
}

async fn latency(
    url: &str,
    body: &std::path::Path,
    token: &str,
    requests: usize,
) -> anyhow::Result<()> {
    let body = std::fs::read(body).with_context(|| format!("reading {}", body.display()))?;
    // One connection, kept: the latency of a route, not of connecting.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()?;
    let mut times = Vec::with_capacity(requests);
    for i in 0..requests + 20 {
        let started = Instant::now();
        let response = http
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status();
        response.bytes().await?;
        anyhow::ensure!(status.is_success(), "{url} answered {status}");
        if i >= 20 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({"requests": requests, "p50_ms": at(0.5), "p99_ms": at(0.99)})
    );
    Ok(())
}

/// Seeds the app's own database, then times every view's statement.
async fn analytics(
    keys: u64,
    events: u64,
    key_id: Uuid,
    samples: usize,
    database_url: &str,
) -> anyhow::Result<()> {
    use tollgate::analytics::{views, View};
    let mut db = PgConnection::connect(database_url).await?;
    let started = Instant::now();
    // Keys with 30 days of usage on two providers each.
    sqlx::query(
        "INSERT INTO api_keys (id, name, secret_hash, publishable_key, tier, total_requests,
                               successful_requests, total_files, total_bytes, file_type_counts)
         SELECT gen_random_uuid(), 'seed', sha256(('seed-' || i || '-' || $2)::bytea),
                'pk_seed_' || i || '_' || $2, 'free', 300, 300, 60, 60000,
                '{\"image/png\": 40, \"application/pdf\": 20}'::jsonb
         FROM generate_series(1, $1) i",
    )
    .bind(keys as i64)
    .bind(Uuid::new_v4().simple().to_string())
    .execute(&mut db)
    .await
    .context("seeding keys")?;
    for sql in [
        "INSERT INTO api_key_usage_daily (api_key_id, day, total_requests, successful_requests,
                                          total_files, total_bytes)
         SELECT k.id, current_date - d, 10, 10, 2, 2000 FROM api_keys k, generate_series(0, 29) d
         WHERE k.name = 'seed' ON CONFLICT DO NOTHING",
        "INSERT INTO provider_usage (api_key_id, provider, uploads, bytes)
         SELECT k.id, p, 30, 30000 FROM api_keys k, unnest(ARRAY['s3', 'blob']) p
         WHERE k.name = 'seed' ON CONFLICT DO NOTHING",
        "INSERT INTO provider_usage_daily (api_key_id, provider, day, uploads, bytes)
         SELECT k.id, p, current_date - d, 1, 1000
         FROM api_keys k, unnest(ARRAY['s3', 'blob']) p, generate_series(0, 29) d
         WHERE k.name = 'seed' ON CONFLICT DO NOTHING",
    ] {
        sqlx::query(sql)
            .execute(&mut db)
            .await
            .context("seeding usage")?;
    }
    // Events of the last 30 days: a tenth for the benchmark's key, the rest
    // spread over the seeded keys, in partitions made first as the drain
    // would (the migration's reach back depends on the day it ran).
    let own = events / 10;
    sqlx::query("SELECT ensure_event_partitions((now() - interval '30 days')::date, 3)")
        .execute(&mut db)
        .await
        .context("making the seed's partitions")?;
    sqlx::query(
        "WITH k AS (SELECT array_agg(id) AS ids, count(*) AS n FROM api_keys WHERE name = 'seed')
         INSERT INTO events (id, api_key_id, type, name, occurred_at, received_at, url, path,
                             referrer, visitor_id, country, browser, device_type)
         SELECT gen_random_uuid(),
                CASE WHEN i <= $2 THEN $3 ELSE k.ids[1 + i % k.n] END,
                'web', (ARRAY['pageview', 'pageview', 'pageview', 'signup', 'click'])[1 + i % 5],
                now() - random() * interval '29 days', now(),
                'https://shop.example/p' || (i % 40), '/p' || (i % 40),
                'https://ref' || (i % 15) || '.example/', md5((i % 20000)::text),
                (ARRAY['DE', 'FR', 'US', 'GB', 'BR'])[1 + i % 5],
                (ARRAY['Chrome', 'Firefox', 'Safari'])[1 + i % 3],
                (ARRAY['desktop', 'smartphone'])[1 + i % 2]
         FROM k, generate_series(1, $1) i",
    )
    .bind(events as i64)
    .bind(own as i64)
    .bind(key_id)
    .execute(&mut db)
    .await
    .context("seeding events")?;
    sqlx::query("ANALYZE").execute(&mut db).await?;
    let seeded_in = started.elapsed().as_secs_f64();

    let typical: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM api_keys WHERE name = 'seed' ORDER BY random() LIMIT $1",
    )
    .bind(samples as i64)
    .fetch_all(&mut db)
    .await?;
    let today = chrono::Utc::now().date_naive();
    let mut views_out = serde_json::Map::new();
    for view in View::ALL {
        let sql = views::sql(view);
        let mut big = vec![];
        for _ in 0..samples {
            big.push(time_view(&mut db, &sql, key_id, today).await?);
        }
        let mut small = vec![];
        for key in &typical {
            small.push(time_view(&mut db, &sql, *key, today).await?);
        }
        views_out.insert(
            view.as_str().to_owned(),
            serde_json::json!({ "big_key_p50_ms": p50(&mut big), "typical_key_p50_ms": p50(&mut small) }),
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "keys": keys,
            "events": events,
            "big_key_events": own,
            "seeded_seconds": seeded_in,
            "views": views_out,
        })
    );
    Ok(())
}

/// Milliseconds one run of a view's statement takes for a key, last 30 days.
async fn time_view(
    db: &mut PgConnection,
    sql: &str,
    key_id: Uuid,
    today: chrono::NaiveDate,
) -> anyhow::Result<f64> {
    let params = tollgate::analytics::views::Params {
        key_id,
        from: chrono::Utc::now() - chrono::Duration::days(30),
        until: chrono::Utc::now(),
        start: today - chrono::Duration::days(29),
        end: today,
        pending: vec![],
        timezone: "UTC".to_owned(),
    };
    let started = Instant::now();
    tollgate::analytics::bind(sqlx::query(sql), &params)
        .fetch_one(&mut *db)
        .await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn p50(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
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
    let now = chrono::Utc::now();
    let mut left = events;
    // Each entry is one visitor's visit: its events are one session, and
    // the drain's rollups track as many sessions as there are entries.
    let mut visit = 0u64;
    while left > 0 {
        let mut pipe = redis::pipe();
        for _ in 0..200 {
            if left == 0 {
                break;
            }
            let n = left.min(per_entry);
            left -= n;
            visit += 1;
            let batch: Vec<Event> = (0..n).map(|i| sample_event(now, i, visit)).collect();
            pipe.cmd("XADD")
                .arg(state.keys.event_queue(state.keys.any_shard()))
                .arg("*")
                .arg("k")
                .arg(key_id.to_string())
                .arg("v")
                .arg(format!("{:040x}", u128::from(visit) * 7919))
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

/// A typical web page view, as collect stores it: the `i`th event of a visit.
fn sample_event(now: chrono::DateTime<chrono::Utc>, i: u64, visit: u64) -> Event {
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
        session_id: Some(format!("s-{visit}")),
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
