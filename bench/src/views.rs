//! The analytics views at scale: seeds a database of its own with events
//! of many keys by binary `COPY`, builds their rollups as a rebuild does
//! (`rollup::rebuild`, the drain's own `apply`), then times each view's
//! statement for the key with the most events, next to the events view as
//! it was before the rollups (aggregating the key's raw events at read
//! time) over the same range.
//!
//! The events follow a web-analytics shape (see [`Shape`]): a long tail of
//! paths, referring sites and countries, a few browsers and devices,
//! visitors of 1 to 10 events, most with a tracker's session id. They are
//! written day by day in time order across keys, as the drain writes them,
//! so a key's events are spread over the table as they would be.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sqlx::{Connection, PgConnection, Row};
use tollgate::{
    analytics::{self, views, View},
    config::DatabaseConfig,
    db::Db,
    events::{copy::BinaryRows, rollup},
    secret::Secret,
};
use uuid::Uuid;

/// How much to seed and how often to time each statement.
pub struct Sizes {
    /// Events over all keys.
    pub events: u64,
    /// Events of the key whose views are timed, over 30 days.
    pub big_key_events: u64,
    /// Keys sharing the other events, a few with many, most with few.
    pub keys: u64,
    /// Timed runs of each view's statement.
    pub samples: usize,
    /// Timed runs of the raw-event baseline, which takes seconds each.
    pub raw_samples: usize,
    /// Keep the database afterwards, to look at plans with `explain`.
    pub keep: bool,
}

/// Prints the plan (`EXPLAIN (ANALYZE, BUFFERS)`) of the events view for
/// the biggest key of a database a run kept (`--keep`), then times it as
/// the run does: to weigh an index or a rewrite without seeding again.
pub async fn explain(database_url: &str, samples: usize) -> anyhow::Result<()> {
    let (server, _) = database_url
        .rsplit_once('/')
        .context("DATABASE_URL names a database")?;
    let mut conn = PgConnection::connect(&format!("{server}/bench_views")).await?;
    let key: Uuid = sqlx::query_scalar(
        "SELECT api_key_id FROM event_rollup_daily GROUP BY 1 ORDER BY sum(events) DESC LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await?;
    let params = range(key, Utc::now().date_naive());
    let sql = views::sql(View::Events);
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
    let rows = analytics::bind(sqlx::query(&explain), &params)
        .fetch_all(&mut conn)
        .await?;
    for row in rows {
        eprintln!("{}", row.try_get::<String, _>(0)?);
    }
    let times = time_statement(&mut conn, &sql, &params, samples).await?;
    println!("{}", serde_json::json!({"events": times.json()}));
    Ok(())
}

/// The 30 days the events fall on, as the route would bind them.
fn range(key_id: Uuid, today: NaiveDate) -> views::Params {
    let first_day = today - TimeDelta::days(DAYS);
    views::Params {
        key_id,
        from: midnight(first_day),
        until: midnight(today),
        start: first_day,
        end: today - TimeDelta::days(1),
        pending: vec![],
        timezone: "UTC".to_owned(),
    }
}

/// The days the events fall on: the 30 full days before today (UTC).
const DAYS: i64 = 30;

/// The events view before rollups (commit 1b4c502): one index range scan
/// of the key's events in the range, aggregated several ways at read time.
const RAW_EVENTS: &str = "
WITH e AS MATERIALIZED (
    SELECT (occurred_at AT TIME ZONE $7)::date AS day,
           name, path, visitor_id, country, browser, device_type, referrer
    FROM events
    WHERE api_key_id = $1 AND occurred_at >= $2 AND occurred_at < $3
)
SELECT jsonb_build_object(
    'events', (SELECT count(*) FROM e),
    'visitors', (SELECT count(DISTINCT visitor_id) FROM e),
    'days', (SELECT coalesce(jsonb_agg(jsonb_build_object('day', day, 'events', n, 'visitors', v)), '[]')
             FROM (SELECT day, count(*) AS n, count(DISTINCT visitor_id) AS v FROM e GROUP BY day) d),
    'names', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', name, 'events', n) ORDER BY n DESC, name), '[]')
              FROM (SELECT name, count(*) AS n FROM e GROUP BY name ORDER BY n DESC, name LIMIT 50) t),
    'top_paths', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                  FROM (SELECT path AS v, count(*) AS n FROM e WHERE path IS NOT NULL
                        GROUP BY path ORDER BY n DESC, v LIMIT 10) t),
    'top_referrers', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                      FROM (SELECT site AS v, sum(n)::bigint AS n
                            FROM (SELECT nullif(substring(referrer FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]+)'), '') AS site,
                                         count(*) AS n
                                  FROM e WHERE referrer IS NOT NULL GROUP BY referrer) r
                            WHERE site IS NOT NULL
                            GROUP BY site ORDER BY n DESC, v LIMIT 10) t),
    'countries', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                  FROM (SELECT country AS v, count(*) AS n FROM e WHERE country IS NOT NULL
                        GROUP BY country ORDER BY n DESC, v LIMIT 10) t),
    'browsers', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                 FROM (SELECT browser AS v, count(*) AS n FROM e WHERE browser IS NOT NULL
                       GROUP BY browser ORDER BY n DESC, v LIMIT 10) t),
    'devices', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                FROM (SELECT device_type AS v, count(*) AS n FROM e WHERE device_type IS NOT NULL
                      GROUP BY device_type ORDER BY n DESC, v LIMIT 10) t),
    'applied', '[]'::jsonb)";

pub async fn run(sizes: Sizes, database_url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        sizes.big_key_events <= sizes.events && sizes.keys >= 2,
        "the big key's events are part of all events, and other keys share the rest"
    );
    let (server, _) = database_url
        .rsplit_once('/')
        .context("DATABASE_URL names a database")?;
    let url = crate::fresh_database(server, "bench_views").await?;
    let db = Db::connect_lazy(&DatabaseConfig {
        url: Secret::new(url.clone()),
        max_connections: 3,
        transaction_pooler: false,
    })?;
    let mut conn = PgConnection::connect(&url).await?;
    let today = Utc::now().date_naive();
    let first_day = today - TimeDelta::days(DAYS);

    let keys: Vec<Uuid> = (0..sizes.keys).map(|_| Uuid::new_v4()).collect();
    seed_keys(&mut conn, &keys, first_day).await?;
    let counts = events_per_key(&sizes);

    let seeding = Instant::now();
    let copied = copy_events(&mut conn, &keys, &counts, first_day).await?;
    let seed_time = seeding.elapsed();
    anyhow::ensure!(
        copied == sizes.events,
        "copied {copied} of {} events",
        sizes.events
    );

    // The big key first and alone, then the others two at a time (the
    // machine's cores): a rebuild replays a key's events through the
    // drain's own rollup code.
    let rebuilding = Instant::now();
    rollup::rebuild(&db, keys[0]).await?;
    let big_rebuild_time = rebuilding.elapsed();
    futures::stream::iter(keys[1..].iter().map(|key| rollup::rebuild(&db, *key)))
        .buffer_unordered(2)
        .try_collect::<Vec<_>>()
        .await?;
    let rebuild_time = rebuilding.elapsed();
    // What autovacuum would have done by the time anyone reads a dashboard.
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;

    let params = range(keys[0], today);
    let mut timed = serde_json::Map::new();
    for view in View::ALL {
        let times = time_statement(&mut conn, &views::sql(view), &params, sizes.samples).await?;
        timed.insert(view.as_str().to_owned(), times.json());
    }
    let raw = time_statement(&mut conn, RAW_EVENTS, &params, sizes.raw_samples).await?;
    let sizes_json = table_sizes(&mut conn).await?;
    let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": sizes.events,
            "keys": sizes.keys,
            "big_key_events": sizes.big_key_events,
            "days": DAYS,
            "samples": sizes.samples,
            "raw_samples": sizes.raw_samples,
            "seed_seconds": seed_time.as_secs_f64(),
            "seed_events_per_second": rate(sizes.events, seed_time),
            "rebuild_seconds": rebuild_time.as_secs_f64(),
            "rebuild_events_per_second": rate(sizes.events, rebuild_time),
            "big_key_rebuild_seconds": big_rebuild_time.as_secs_f64(),
            "views": timed,
            "raw_events": raw.json(),
            "tables": sizes_json,
        })
    );
    drop(db);
    drop(conn);
    if !sizes.keep {
        crate::drop_database(server, &url).await?;
    }
    Ok(())
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

/// Keys with 30 days of usage on two providers each, so that the usage
/// views read what a busy key has.
async fn seed_keys(
    conn: &mut PgConnection,
    keys: &[Uuid],
    first_day: NaiveDate,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, secret_hash, publishable_key, tier, total_requests,
                               successful_requests, total_files, total_bytes, file_type_counts)
         SELECT id, 'views', sha256(id::text::bytea), 'pk_views_' || replace(id::text, '-', ''),
                'free', 300, 300, 60, 60000, '{\"image/png\": 40, \"application/pdf\": 20}'::jsonb
         FROM unnest($1::uuid[]) id",
    )
    .bind(keys)
    .execute(&mut *conn)
    .await
    .context("seeding keys")?;
    for sql in [
        "INSERT INTO api_key_usage_daily (api_key_id, day, total_requests, successful_requests,
                                          total_files, total_bytes)
         SELECT id, $1::date + d, 10, 10, 2, 2000 FROM api_keys, generate_series(0, 29) d",
        "INSERT INTO provider_usage (api_key_id, provider, uploads, bytes)
         SELECT id, p, 30, 30000 FROM api_keys, unnest(ARRAY['s3', 'blob']) p",
        "INSERT INTO provider_usage_daily (api_key_id, provider, day, uploads, bytes)
         SELECT id, p, $1::date + d, 1, 1000
         FROM api_keys, unnest(ARRAY['s3', 'blob']) p, generate_series(0, 29) d",
    ] {
        sqlx::query(sql)
            .bind(first_day)
            .execute(&mut *conn)
            .await
            .context("seeding usage")?;
    }
    // Partitions for the month before (the previous period), the days'
    // months and the next (a visit may run past midnight).
    sqlx::query("SELECT ensure_event_partitions(($1::date - 31), 4)")
        .bind(first_day)
        .execute(&mut *conn)
        .await
        .context("making the partitions")?;
    Ok(())
}

/// The events of each key: the big key's share, and the rest over the
/// other keys by a Zipf law (s = 0.7), so a few keys are large and most
/// small, as on a shared deployment.
fn events_per_key(sizes: &Sizes) -> Vec<u64> {
    let others = Zipf::new(sizes.keys as usize - 1, 0.7);
    let rest = sizes.events - sizes.big_key_events;
    let mut counts: Vec<u64> = std::iter::once(sizes.big_key_events)
        .chain((0..others.len()).map(|i| (rest as f64 * others.share(i)) as u64))
        .collect();
    let short = sizes.events - counts.iter().sum::<u64>();
    counts[1] += short;
    counts
}

/// Generates the events day by day on a thread of their own and COPYs each
/// day's rows, in time order, while the next day is generated.
async fn copy_events(
    conn: &mut PgConnection,
    keys: &[Uuid],
    counts: &[u64],
    first_day: NaiveDate,
) -> anyhow::Result<u64> {
    let (sender, mut days) = tokio::sync::mpsc::channel::<(u64, Vec<u8>)>(2);
    let keys = keys.to_vec();
    let counts = counts.to_vec();
    let generator = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let shape = Shape::new();
        let mut rng = StdRng::seed_from_u64(15);
        for day in 0..DAYS {
            let date = first_day + TimeDelta::days(day);
            let mut events = vec![];
            for (key, count) in counts.iter().enumerate() {
                // The key's events spread evenly over the days.
                let today =
                    count * (day as u64 + 1) / DAYS as u64 - count * day as u64 / DAYS as u64;
                shape.day_of(&mut rng, key as u32, date, today, &mut events);
            }
            events.sort_unstable_by_key(|e| e.at);
            let rows = shape.rows(&mut rng, &keys, &events)?;
            if sender.blocking_send((events.len() as u64, rows)).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut copied = 0;
    while let Some((n, rows)) = days.recv().await {
        let mut copy = conn.copy_in_raw(EVENT_COPY).await?;
        copy.send(rows).await?;
        copy.finish().await?;
        copied += n;
    }
    generator.await??;
    Ok(copied)
}

const EVENT_COPY: &str = "COPY events (
    id, api_key_id, type, name, occurred_at, received_at, session_id, visitor_id,
    url, path, referrer, utm_source, utm_medium, utm_campaign,
    browser, os, device_type, country) FROM STDIN (FORMAT binary)";

/// One generated event, by index into [`Shape`]'s tables.
struct Generated {
    at: DateTime<Utc>,
    key: u32,
    visitor: u64,
    /// The tracker's session id; `None` for events without one (server
    /// events, and visitors whose visits come from 30 idle minutes).
    session: Option<u64>,
    web: bool,
    name: u8,
    path: u16,
    referrer: Option<u8>,
    utm: Option<(u8, u8, u8)>,
    country: u8,
    browser: u8,
    device: u8,
}

/// The distribution of the seeded events, written down in BENCHMARKS.md.
struct Shape {
    paths: Vec<String>,
    path_pick: Zipf,
    sites: Vec<String>,
    site_pick: Zipf,
    countries: Vec<&'static str>,
    country_pick: Zipf,
    browser_pick: Zipf,
    other_name_pick: Zipf,
    utm_source_pick: Zipf,
    utm_campaign_pick: Zipf,
    visit_length_pick: Zipf,
}

const NAMES: [&str; 10] = [
    "pageview",
    "click",
    "signup",
    "add_to_cart",
    "purchase",
    "outbound",
    "download",
    "search",
    "share",
    "video_play",
];
const BROWSERS: [&str; 8] = [
    "Chrome",
    "Safari",
    "Edge",
    "Firefox",
    "Samsung Internet",
    "Opera",
    "Chrome WebView",
    "Yandex",
];
const OSES: [&str; 3] = ["Windows", "iOS", "Android"];
const DEVICES: [&str; 3] = ["desktop", "smartphone", "tablet"];
const UTM_SOURCES: [&str; 12] = [
    "google",
    "newsletter",
    "twitter",
    "facebook",
    "linkedin",
    "reddit",
    "bing",
    "youtube",
    "producthunt",
    "partner",
    "instagram",
    "tiktok",
];
const UTM_MEDIUMS: [&str; 5] = ["cpc", "email", "social", "referral", "display"];
const COUNTRIES: &str = "US DE GB FR IN CA BR NL ES IT JP AU PL SE CH BE AT MX RU TR \
    KR ID CZ DK NO FI PT IE AR IL SG ZA UA RO HU GR NZ CO CL PH VN TH MY EG NG PK BD \
    HK TW SA AE KE MA PE BG HR SK LT SI EE";

impl Shape {
    fn new() -> Self {
        let sections = ["blog", "docs", "products", "help", "changelog", "guides"];
        let paths = [
            "/",
            "/pricing",
            "/features",
            "/about",
            "/signup",
            "/login",
            "/contact",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain((7..300).map(|i| format!("/{}/{i}", sections[i % sections.len()])))
        .collect();
        let sites = [
            "www.google.com",
            "news.ycombinator.com",
            "t.co",
            "www.bing.com",
            "duckduckgo.com",
            "www.reddit.com",
            "www.linkedin.com",
            "github.com",
            "www.facebook.com",
            "l.instagram.com",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain((10..100).map(|i| format!("blog{i}.example.org")))
        .collect();
        Self {
            paths,
            path_pick: Zipf::new(300, 1.1),
            sites,
            site_pick: Zipf::new(100, 1.2),
            countries: COUNTRIES.split_whitespace().collect(),
            country_pick: Zipf::new(60, 1.3),
            browser_pick: Zipf::new(BROWSERS.len(), 1.5),
            other_name_pick: Zipf::new(NAMES.len() - 1, 1.0),
            utm_source_pick: Zipf::new(UTM_SOURCES.len(), 1.0),
            utm_campaign_pick: Zipf::new(20, 1.0),
            visit_length_pick: Zipf::new(10, 1.0),
        }
    }

    /// Appends `count` events of one key on one day: visitors arriving at
    /// random times, each with 1 to 10 events about a minute apart.
    fn day_of(
        &self,
        rng: &mut StdRng,
        key: u32,
        day: NaiveDate,
        count: u64,
        out: &mut Vec<Generated>,
    ) {
        let mut left = count;
        while left > 0 {
            let visitor: u64 = rng.random();
            let session = rng.random_bool(0.9).then(|| rng.random());
            let referrer = rng
                .random_bool(0.55)
                .then(|| self.site_pick.pick(rng) as u8);
            let utm = (referrer.is_some() && rng.random_bool(0.25)).then(|| {
                (
                    self.utm_source_pick.pick(rng) as u8,
                    rng.random_range(0..UTM_MEDIUMS.len()) as u8,
                    self.utm_campaign_pick.pick(rng) as u8,
                )
            });
            let country = self.country_pick.pick(rng) as u8;
            let browser = self.browser_pick.pick(rng) as u8;
            let device = match rng.random_range(0..100) {
                0..55 => 0,
                55..95 => 1,
                _ => 2,
            };
            let length = (self.visit_length_pick.pick(rng) as u64 + 1).min(left);
            let mut at = midnight(day) + TimeDelta::seconds(rng.random_range(0..86_400));
            for step in 0..length {
                if step > 0 {
                    let gap = -60.0 * (1.0 - rng.random::<f64>()).ln();
                    at += TimeDelta::milliseconds((gap * 1000.0) as i64);
                }
                // One event in twenty is a server event of the same key.
                let web = rng.random_bool(0.95);
                let name = if web && rng.random_bool(0.75) {
                    0
                } else {
                    1 + self.other_name_pick.pick(rng) as u8
                };
                out.push(Generated {
                    at,
                    key,
                    visitor,
                    session: session.filter(|_| web),
                    web,
                    name,
                    path: self.path_pick.pick(rng) as u16,
                    // The referrer and UTM values arrive with the first event.
                    referrer: referrer.filter(|_| step == 0),
                    utm: utm.filter(|_| step == 0),
                    country,
                    browser,
                    device,
                });
            }
            left -= length;
        }
    }

    /// The events as rows of [`EVENT_COPY`].
    fn rows(
        &self,
        rng: &mut StdRng,
        keys: &[Uuid],
        events: &[Generated],
    ) -> anyhow::Result<Vec<u8>> {
        let mut rows = BinaryRows::new();
        let none: Option<&str> = None;
        for e in events {
            // Time-ordered, as collect's `Uuid::now_v7` ids are, so the
            // primary key grows at its end as it does in production.
            let ms = e.at.timestamp_millis() as u64;
            let id = uuid::Builder::from_unix_timestamp_millis(ms, &rng.random()).into_uuid();
            rows.row(18);
            let encode = |rows: &mut BinaryRows| -> Result<(), sqlx::error::BoxDynError> {
                rows.field(&id)?;
                rows.field(&keys[e.key as usize])?;
                rows.field(&if e.web { "web" } else { "server" })?;
                rows.field(&NAMES[e.name as usize])?;
                rows.field(&e.at)?;
                rows.field(&e.at)?;
                rows.field(&e.session.map(|s| format!("{s:016x}")))?;
                if !e.web {
                    for _ in 0..11 {
                        rows.field(&none)?;
                    }
                    return Ok(());
                }
                rows.field(&Some(format!("{:016x}", e.visitor)))?;
                let path = &self.paths[e.path as usize];
                rows.field(&format!("https://site{}.example{path}", e.key))?;
                rows.field(&path.as_str())?;
                rows.field(
                    &e.referrer
                        .map(|r| format!("https://{}/", self.sites[r as usize])),
                )?;
                let (source, medium, campaign) = match e.utm {
                    Some((s, m, c)) => (
                        Some(UTM_SOURCES[s as usize]),
                        Some(UTM_MEDIUMS[m as usize]),
                        Some(format!("campaign_{c}")),
                    ),
                    None => (None, None, None),
                };
                rows.field(&source)?;
                rows.field(&medium)?;
                rows.field(&campaign)?;
                rows.field(&BROWSERS[e.browser as usize])?;
                rows.field(&OSES[e.device.min(2) as usize])?;
                rows.field(&DEVICES[e.device as usize])?;
                rows.field(&self.countries[e.country as usize])?;
                Ok(())
            };
            encode(&mut rows).map_err(|e| anyhow::anyhow!("encoding a row: {e}"))?;
        }
        Ok(rows.finish())
    }
}

/// Index `i` of `n` with weight 1 / (i + 1)^s: the long tail of web
/// analytics, where the first few values take most events.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|i| {
                total += 1.0 / (i as f64).powf(s);
                total
            })
            .collect();
        Self { cumulative }
    }

    fn len(&self) -> usize {
        self.cumulative.len()
    }

    fn total(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(1.0)
    }

    /// The share of index `i`.
    fn share(&self, i: usize) -> f64 {
        let before = if i == 0 { 0.0 } else { self.cumulative[i - 1] };
        (self.cumulative[i] - before) / self.total()
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        let x = rng.random::<f64>() * self.total();
        self.cumulative
            .partition_point(|&c| c < x)
            .min(self.len() - 1)
    }
}

/// Milliseconds per run of a statement, client side on loopback (so
/// Postgres time plus a local round trip), after one untimed run that
/// reads the pages into memory.
struct Times(Vec<f64>);

impl Times {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(at).copied().unwrap_or(0.0)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"p50_ms": self.percentile(0.5), "p95_ms": self.percentile(0.95)})
    }
}

async fn time_statement(
    conn: &mut PgConnection,
    sql: &str,
    params: &views::Params,
    samples: usize,
) -> anyhow::Result<Times> {
    let mut times = vec![];
    for run in 0..=samples {
        let started = Instant::now();
        analytics::bind(sqlx::query(sql), params)
            .fetch_one(&mut *conn)
            .await?;
        if run > 0 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(Times(times))
}

/// Rows and bytes (with indexes) of the event tables and the rollups.
async fn table_sizes(conn: &mut PgConnection) -> anyhow::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for table in [
        "events",
        "event_rollup_daily",
        "event_rollup_values",
        "event_sessions",
    ] {
        // A partitioned table's size is its partitions' (it has none of
        // its own); a plain table has no partition tree.
        let (rows, bytes): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {table}),
                    pg_total_relation_size('{table}')
                    + (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint
                         FROM pg_partition_tree('{table}'))"
        ))
        .fetch_one(&mut *conn)
        .await?;
        out.insert(
            table.into(),
            serde_json::json!({"rows": rows, "bytes": bytes}),
        );
    }
    Ok(out.into())
}
