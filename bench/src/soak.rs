//! The soak test: the whole stack under mixed load for a set time while
//! Redis, Postgres, the local Upstash server and the crons are broken on a
//! schedule, then an audit of every answer the clients saw against what
//! Postgres holds.
//!
//! The stack runs as separate processes, as in production: a private Redis
//! (with its append-only file, as Upstash keeps data) and Postgres, the
//! local Upstash server, and `tollgate dev` serving the routes. The faults:
//! Redis killed (SIGKILL) and restarted twice, Postgres crashed (SIGQUIT,
//! an immediate shutdown) and restarted once, the Upstash server stopped
//! (SIGSTOP) for 2 s, and the real drain and sync function binaries killed
//! in the middle of a batch through their fault switch.
//!
//! What must hold afterwards, once the queue is drained and the counters
//! synced: every event answered 202 is in Postgres exactly once; each key's
//! request counters equal what its clients saw succeed and fail; no daily
//! quota admitted more than its limit; and no well-formed request got a 5xx
//! except where the route's own policy says so (signed-url is fail-closed
//! while Upstash is unreachable; an analytics miss needs Postgres).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::Rng;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tollgate::{
    admin::{self, CreateKey},
    apikeys::{NewKey, Tier},
    config::Config,
    db::Db,
};
use tollgate_cli::services::{Layout, Services};
use uuid::Uuid;

/// What `tollgate-bench soak` is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    /// Where `tollgate`, `cron-process-events` and `cron-sync-metrics` are.
    pub bin_dir: PathBuf,
    /// The private services' folder; wiped first.
    pub dir: PathBuf,
    pub redis_port: u16,
    pub postgres_port: u16,
    pub upstash_port: u16,
    pub app_port: u16,
    /// Where the markdown summary goes.
    pub summary: PathBuf,
    /// Concurrent clients per route, scaled down for the short variant.
    pub clients: usize,
    /// The kinds of fault to inject (`queue`, `redis`, `postgres`,
    /// `upstash`, `drain`, `sync`); all of them unless narrowed to find a
    /// culprit.
    pub faults: Vec<String>,
}

const CRON_SECRET: &str = "soak-cron-secret-0123456789abcdef";
const UPSTASH_TOKEN: &str = "soak-upstash-token";
/// The keys signed-url clients use, and how many of them are held tight.
const UPLOAD_KEYS: usize = 50;
const TIGHT_KEYS: usize = 5;
/// The daily quota is below the per-minute burst, so the quota (not a ban
/// for repeated rate-limit violations) is what stops these keys.
const TIGHT_PER_MINUTE: u32 = 30;
const TIGHT_PER_DAY: u64 = 25;

/// A fault, from when it began to when its service answered again.
#[derive(Debug, Clone)]
struct Fault {
    name: &'static str,
    from: f64,
    until: f64,
    /// Which dependency it took away.
    takes: Takes,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Takes {
    Redis,
    Postgres,
    Upstash,
    Nothing,
}

/// One answer a client saw.
#[derive(Debug, Clone)]
struct Answer {
    at: f64,
    route: &'static str,
    /// The key's index: 0 is the collect key, 1.. the upload keys.
    key: usize,
    /// 0 when the request got no answer at all.
    status: u16,
    well_formed: bool,
    /// Whether the route counts this answer in the key's usage.
    counted: bool,
    /// Event ids a 202 accepted.
    accepted: Vec<Uuid>,
    code: String,
}

#[derive(Default)]
struct Log {
    answers: Mutex<Vec<Answer>>,
    faults: Mutex<Vec<Fault>>,
}

/// Runs the soak and returns whether every check held.
pub async fn run(options: Options) -> anyhow::Result<bool> {
    let started = Instant::now();
    let layout = Layout {
        dir: options.dir.clone(),
        redis_port: options.redis_port,
        postgres_port: options.postgres_port,
        pgbouncer_port: None,
        durable: true,
    };
    Services::stop(&layout).await.ok();
    std::fs::remove_dir_all(&options.dir).ok();
    let services = Services::start(&layout).await?;
    // The private Redis and Postgres are stopped however the soak ends; its
    // other processes die with their handles.
    let result = soak(&options, &layout, &services, started).await;
    Services::stop(&layout).await.ok();
    result
}

async fn soak(
    options: &Options,
    layout: &Layout,
    services: &Services,
    started: Instant,
) -> anyhow::Result<bool> {
    let env = environment(options, services);
    let config = Config::from_lookup(|name| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    })?;
    let db = Db::connect_lazy(&config.database)?;
    db.migrate().await?;
    let keys = create_keys(&db).await?;

    let mut upstash = spawn(
        &options.bin_dir.join("tollgate"),
        &[
            "upstash-local",
            "--port",
            &options.upstash_port.to_string(),
            "--token",
            UPSTASH_TOKEN,
            "--redis-url",
            &services.redis_url,
            // As strict as Upstash: a script without `allow-key-locking`,
            // or touching a key it did not declare, is refused.
            "--strict",
        ],
        &env,
        &layout.dir.join("upstash.log"),
    )?;
    let mut app = spawn(
        &options.bin_dir.join("tollgate"),
        &["dev", "--port", &options.app_port.to_string(), "--no-crons"],
        &env,
        &layout.dir.join("app.log"),
    )?;
    let base = format!("http://127.0.0.1:{}", options.app_port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    wait_healthy(&http, &base).await?;
    let pids = (app.id().unwrap_or(0), upstash.id().unwrap_or(0));

    let log = Arc::new(Log::default());
    let clock = Instant::now();
    let now = move || clock.elapsed().as_secs_f64();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    eprintln!("soak: load for {:?} with faults", options.duration);
    let mut tasks = vec![];
    for _ in 0..options.clients {
        tasks.push(tokio::spawn(collect_client(
            http.clone(),
            base.clone(),
            keys[0].publishable.clone(),
            Arc::clone(&log),
            Arc::clone(&stop),
            now,
        )));
        tasks.push(tokio::spawn(upload_client(
            http.clone(),
            base.clone(),
            keys.clone(),
            Arc::clone(&log),
            Arc::clone(&stop),
            now,
        )));
    }
    tasks.push(tokio::spawn(analytics_client(
        http.clone(),
        base.clone(),
        keys.clone(),
        Arc::clone(&log),
        Arc::clone(&stop),
        now,
    )));
    let hold_crons = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tasks.push(tokio::spawn(crons(
        http.clone(),
        base.clone(),
        Arc::clone(&stop),
        Arc::clone(&hold_crons),
    )));
    // Memory after the warm-up, for the comparison at the end.
    tokio::time::sleep(Duration::from_secs(3).min(options.duration / 10)).await;
    let rss_start = (rss_kib(pids.0), rss_kib(pids.1));

    let faults = Faults {
        layout,
        env: &env,
        bin_dir: &options.bin_dir,
        upstash_pid: pids.1,
        log: &log,
        now: &now,
        http: &http,
        kinds: &options.faults,
        hold_crons: &hold_crons,
        base: &base,
    };
    faults.run(options.duration).await?;
    let rss_end = (rss_kib(pids.0), rss_kib(pids.1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await.ok();
    }

    eprintln!("soak: draining and syncing what is left");
    settle(&http, &base).await?;
    let mut audit = audit(&db, &keys, &log).await?;
    audit.memory_flat = flat(rss_start.0, rss_end.0) && flat(rss_start.1, rss_end.1);
    let summary = audit.summary(
        options,
        started.elapsed(),
        (rss_start, rss_end),
        &log.faults.lock().unwrap(),
    );
    println!("{summary}");
    if let Some(dir) = options.summary.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&options.summary, &summary)?;

    app.kill().await.ok();
    upstash.kill().await.ok();
    drop(db);
    Ok(audit.passed())
}

fn environment(options: &Options, services: &Services) -> Vec<(&'static str, String)> {
    vec![
        (
            "UPSTASH_REDIS_REST_URL",
            format!("http://127.0.0.1:{}", options.upstash_port),
        ),
        ("UPSTASH_REDIS_REST_TOKEN", UPSTASH_TOKEN.to_owned()),
        ("DATABASE_URL", services.database_url.clone()),
        ("REDIS_URL", services.redis_url.clone()),
        ("CRON_SECRET", CRON_SECRET.to_owned()),
        // A killed drain's entries come back after this, within the run.
        ("TOLLGATE_DRAIN_VISIBILITY", "10s".to_owned()),
        // Small, so that holding the drain back fills it within seconds
        // (the `queue` fault): collect then writes straight to Postgres.
        ("TOLLGATE_QUEUE_MAX_BYTES", "128KiB".to_owned()),
        // Every simulated browser shares 127.0.0.1.
        ("TOLLGATE_PUBLIC_IP_RATE_LIMIT", "1000000000".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
        ("S3_ENDPOINT", "http://127.0.0.1:9000".to_owned()),
        ("S3_REGION", "us-east-1".to_owned()),
        ("S3_BUCKET", "soak".to_owned()),
        ("S3_ACCESS_KEY_ID", "AKIASOAK".to_owned()),
        ("S3_SECRET_ACCESS_KEY", "soak-secret".to_owned()),
        ("S3_FORCE_PATH_STYLE", "true".to_owned()),
    ]
}

/// Key 0 collects; keys 1..=50 upload, the first five of them held tight.
/// Their days are counted in a time zone where it is now about noon, so the
/// audit's one daily quota per key holds whenever the soak runs: a run
/// across the keys' midnight would start a second day of quota.
async fn create_keys(db: &Db) -> anyhow::Result<Vec<NewKey>> {
    let zone = noon_zone(chrono::Utc::now());
    let mut keys = vec![];
    for i in 0..=UPLOAD_KEYS {
        let tight = (1..=TIGHT_KEYS).contains(&i);
        keys.push(
            admin::create_key(
                db,
                &admin::Actor::Cli,
                CreateKey {
                    name: format!("soak-{i}"),
                    owner: None,
                    tier: Tier::Enterprise,
                    rate_limit: Some(if tight { TIGHT_PER_MINUTE } else { 1_000_000 }),
                    daily: Some(if tight { TIGHT_PER_DAY } else { 1_000_000_000 }),
                    monthly: Some(1_000_000_000),
                    origins: vec![],
                    timezone: Some(zone.clone()),
                    expires_at: None,
                    metadata: Default::default(),
                },
            )
            .await?,
        );
    }
    Ok(keys)
}

/// A fixed-offset IANA zone (no DST) whose local time at `now` is in the
/// hour after noon. `Etc/GMT-5` is UTC+5: the sign is POSIX's, reversed.
fn noon_zone(now: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::Timelike;
    let ahead = (12 - now.hour() as i32).clamp(-12, 14);
    match ahead {
        0 => "Etc/UTC".to_owned(),
        n if n > 0 => format!("Etc/GMT-{n}"),
        n => format!("Etc/GMT+{}", -n),
    }
}

/// Starts a process of the stack, its warnings and errors in `log`.
fn spawn(
    binary: &Path,
    args: &[&str],
    env: &[(&'static str, String)],
    log: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

async fn wait_healthy(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(response) = http.get(format!("{base}/api/health")).send().await {
            if response.status() == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the app did not become healthy at {base}")
}

/// The status and JSON body a client saw; status 0 when it got no answer.
async fn read_answer(result: reqwest::Result<reqwest::Response>) -> (u16, Value) {
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// The `error.code` of an answer, or "" for a success.
fn error_code(answer: &Value) -> String {
    answer["error"]["code"].as_str().unwrap_or("").to_owned()
}

fn record(log: &Log, answer: Answer) {
    log.answers.lock().unwrap().push(answer);
}

/// A browser-like client: batches of 1 to 5 events with their own ids; one
/// request in a hundred is not JSON, one in a hundred carries a bad event.
async fn collect_client(
    http: reqwest::Client,
    base: String,
    pk: String,
    log: Arc<Log>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    now: impl Fn() -> f64,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (body, ids, bad_event, not_json) = {
            let mut rng = rand::rng();
            let n = rng.random_range(1..=5);
            let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
            let mut events: Vec<Value> = ids
                .iter()
                .map(|id| json!({"id": id, "type": "web", "name": "pageview", "url": "https://soak.example/p"}))
                .collect();
            let roll = rng.random_range(0..100);
            let bad_event = roll == 0;
            if bad_event {
                events.push(json!({"type": "web"}));
            }
            let not_json = roll == 1;
            let body = if not_json {
                "{\"batch\": [".to_owned()
            } else {
                json!({ "batch": events }).to_string()
            };
            (body, ids, bad_event, not_json)
        };
        let at = now();
        let result = http
            .post(format!("{base}/api/collect"))
            .bearer_auth(&pk)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
            )
            .body(body)
            .send()
            .await;
        let (status, answer) = read_answer(result).await;
        let accepted = if status == 202 {
            let accepted = answer["accepted"].as_u64().unwrap_or(0) as usize;
            // The bad event is last, so the accepted ones are the first ids.
            ids.iter().take(accepted).copied().collect()
        } else {
            vec![]
        };
        let code = error_code(&answer);
        record(
            &log,
            Answer {
                at,
                route: "collect",
                key: 0,
                status,
                well_formed: !not_json && !bad_event,
                // A body that does not parse is refused before admission.
                counted: !(status == 400 && not_json) && status != 0 && status < 500,
                accepted,
                code,
            },
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// A server-side client: uploads for one of the 50 keys at random, one in
/// fifty with a file name the route refuses. The tight keys are asked far
/// more often than their limits allow.
async fn upload_client(
    http: reqwest::Client,
    base: String,
    keys: Vec<NewKey>,
    log: Arc<Log>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    now: impl Fn() -> f64,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (key, bad) = {
            let mut rng = rand::rng();
            let key = if rng.random_bool(0.3) {
                rng.random_range(1..=TIGHT_KEYS)
            } else {
                rng.random_range(1..=UPLOAD_KEYS)
            };
            (key, rng.random_range(0..50) == 0)
        };
        let filename = if bad { "../escape.png" } else { "photo.png" };
        let at = now();
        let result = http
            .post(format!("{base}/api/signed-url"))
            .bearer_auth(keys[key].secret.expose())
            .json(&json!({"filename": filename, "content_type": "image/png", "size": 1234}))
            .send()
            .await;
        let (status, answer) = read_answer(result).await;
        let code = error_code(&answer);
        record(
            &log,
            Answer {
                at,
                route: "signed-url",
                key,
                status,
                well_formed: !bad,
                counted: status != 0 && status < 500,
                accepted: vec![],
                code,
            },
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// A dashboard: a view of a random upload key, five times a second.
async fn analytics_client(
    http: reqwest::Client,
    base: String,
    keys: Vec<NewKey>,
    log: Arc<Log>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    now: impl Fn() -> f64,
) {
    let views = ["overview", "daily", "providers", "file-types", "events"];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (key, view) = {
            let mut rng = rand::rng();
            (
                rng.random_range(1..=UPLOAD_KEYS),
                views[rng.random_range(0..views.len())],
            )
        };
        let at = now();
        let result = http
            .get(format!("{base}/api/analytics?view={view}"))
            .bearer_auth(keys[key].secret.expose())
            .send()
            .await;
        let (status, answer) = read_answer(result).await;
        let code = error_code(&answer);
        record(
            &log,
            Answer {
                at,
                route: "analytics",
                key,
                status,
                well_formed: true,
                counted: false,
                accepted: vec![],
                code,
            },
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The two minute crons, run every 5 s (twelve times their schedule) so
/// that many runs meet the faults.
/// The crons every 5 s, as Vercel would run them every minute; the drain
/// sit out while `hold_crons` is set: while the queue fills, and while a
/// fault kills a cron function, whose run must not find the queue or the
/// counters taken, or the drain lock held, by a cron run beside it.
async fn crons(
    http: reqwest::Client,
    base: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    hold_crons: Arc<std::sync::atomic::AtomicBool>,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for route in ["process-events", "sync-metrics"] {
            if hold_crons.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let _ = http
                .get(format!("{base}/api/cron/{route}"))
                .bearer_auth(CRON_SECRET)
                .send()
                .await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

struct Faults<'a> {
    layout: &'a Layout,
    env: &'a [(&'static str, String)],
    bin_dir: &'a Path,
    upstash_pid: u32,
    log: &'a Log,
    now: &'a (dyn Fn() -> f64 + Sync),
    http: &'a reqwest::Client,
    kinds: &'a [String],
    hold_crons: &'a std::sync::atomic::AtomicBool,
    /// The app's address, for queue-status.
    base: &'a str,
}

impl Faults<'_> {
    /// Injects the faults at fixed fractions of the run, then waits out the
    /// rest of it.
    async fn run(&self, duration: Duration) -> anyhow::Result<()> {
        let schedule: [(f64, &str); 7] = [
            (0.05, "queue"),
            (0.15, "redis"),
            (0.30, "drain"),
            (0.45, "postgres"),
            (0.60, "upstash"),
            (0.70, "sync"),
            (0.85, "redis"),
        ];
        let begin = Instant::now();
        for (fraction, fault) in schedule {
            if !self.kinds.iter().any(|kind| kind == fault) {
                continue;
            }
            let at = duration.mul_f64(fraction);
            if let Some(wait) = at.checked_sub(begin.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            eprintln!("soak: {fault} fault at {:.0} s", (self.now)());
            match fault {
                "redis" => self.restart_redis().await?,
                "postgres" => self.restart_postgres().await?,
                "upstash" => self.stall_upstash().await?,
                "queue" => self.fill_queue().await?,
                "drain" => {
                    self.holding_crons(self.kill_function(
                        "cron-process-events",
                        "process-events",
                        "drain:after-insert",
                    ))
                    .await?
                }
                _ => {
                    self.holding_crons(self.kill_function(
                        "cron-sync-metrics",
                        "sync-metrics",
                        "sync:after-commit",
                    ))
                    .await?
                }
            }
        }
        if let Some(rest) = duration.checked_sub(begin.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        Ok(())
    }

    fn note(&self, name: &'static str, from: f64, takes: Takes) {
        self.log.faults.lock().unwrap().push(Fault {
            name,
            from,
            until: (self.now)(),
            takes,
        });
    }

    async fn restart_redis(&self) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.layout.dir.join("redis.pid"))?;
        let from = (self.now)();
        signal("KILL", pid.trim().parse()?)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Services::start(self.layout).await?;
        self.note("Redis killed (SIGKILL) and restarted", from, Takes::Redis);
        Ok(())
    }

    async fn restart_postgres(&self) -> anyhow::Result<()> {
        let pid_file = std::fs::read_to_string(self.layout.dir.join("pg/postmaster.pid"))?;
        let pid: u32 = pid_file.lines().next().unwrap_or("").trim().parse()?;
        let from = (self.now)();
        // SIGQUIT is Postgres's immediate shutdown: a crash, recovered from
        // the write-ahead log at the next start.
        signal("QUIT", pid)?;
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Services::start(self.layout).await?;
        self.note(
            "Postgres crashed (SIGQUIT) and restarted",
            from,
            Takes::Postgres,
        );
        Ok(())
    }

    /// Runs `fault` with the crons held.
    async fn holding_crons<T>(&self, fault: impl std::future::Future<Output = T>) -> T {
        use std::sync::atomic::Ordering;
        self.hold_crons.store(true, Ordering::Relaxed);
        let result = fault.await;
        self.hold_crons.store(false, Ordering::Relaxed);
        result
    }

    /// Holds the drain back until the queue reaches its capacity and collect
    /// has written straight to Postgres, for at most 45 s (the short soak's
    /// four clients on a busy debug build fill it slowly).
    async fn fill_queue(&self) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        let from = (self.now)();
        let direct = || async {
            let status: serde_json::Value = self
                .http
                .get(format!("{}/api/cron/queue-status", self.base))
                .bearer_auth(CRON_SECRET)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(
                status["fallbacks"]["queue_full_events"]
                    .as_i64()
                    .unwrap_or(0),
            )
        };
        let before = direct().await?;
        self.hold_crons.store(true, Ordering::Relaxed);
        let mut reached = false;
        for _ in 0..90 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if direct().await.unwrap_or(before) > before {
                reached = true;
                break;
            }
        }
        self.hold_crons.store(false, Ordering::Relaxed);
        anyhow::ensure!(reached, "the queue never reached its capacity in 45 s");
        self.note(
            "drain held back until the queue reached its capacity",
            from,
            Takes::Nothing,
        );
        Ok(())
    }

    async fn stall_upstash(&self) -> anyhow::Result<()> {
        let from = (self.now)();
        signal("STOP", self.upstash_pid)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        signal("CONT", self.upstash_pid)?;
        self.note(
            "local Upstash server stalled 2 s (SIGSTOP)",
            from,
            Takes::Upstash,
        );
        Ok(())
    }

    /// Runs a cron function binary with its fault switch on until it dies
    /// there (a run with nothing to do exits cleanly, so it may take a few).
    async fn kill_function(&self, binary: &str, route: &str, point: &str) -> anyhow::Result<()> {
        let from = (self.now)();
        // A try only counts when the run found nothing to do; a run that
        // found the lock held by a cron run still going waits for it, up to
        // a deadline.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut tries = 0;
        while tries < 20 && Instant::now() < deadline {
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                listener.local_addr()?.port()
            };
            let mut child = Command::new(self.bin_dir.join(binary))
                .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("VERCEL_DEV_PORT", port.to_string())
                .env("TOLLGATE_FAULT_POINT", point)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {binary}"))?;
            let url = format!("http://127.0.0.1:{port}/api/cron/{route}");
            let mut answered = false;
            let mut locked = false;
            for _ in 0..200 {
                match self.http.get(&url).bearer_auth(CRON_SECRET).send().await {
                    Err(error) if error.is_connect() => {
                        tokio::time::sleep(Duration::from_millis(25)).await
                    }
                    Ok(response) => {
                        answered = true;
                        let report: serde_json::Value = response.json().await.unwrap_or_default();
                        locked = report["stopped"] == "locked";
                        break;
                    }
                    // The connection closed mid-request: it died.
                    Err(_) => break,
                }
            }
            if !answered {
                let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
                    .await
                    .context("waiting for the function to die")??;
                use std::os::unix::process::ExitStatusExt;
                // The fault switch aborts (SIGABRT); anything else is a
                // failure to start, not the fault.
                anyhow::ensure!(
                    status.signal() == Some(6),
                    "{binary} ended with {status} without answering, not at {point}"
                );
                let name = if route == "process-events" {
                    "drain killed after its insert, before its ack"
                } else {
                    "sync killed after its commit, before its delete"
                };
                self.note(name, from, Takes::Nothing);
                return Ok(());
            }
            // It answered: another run held the lock, or there was nothing
            // to do at that point. Again.
            if !locked {
                tries += 1;
            }
            child.kill().await.ok();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("{binary} never reached {point} ({tries} runs found nothing to do)")
    }
}

fn signal(name: &str, pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Drains and syncs until nothing is left: the queue empty, nothing in
/// flight (a killed drain's entries come back after the visibility
/// timeout), and no counters left to move.
async fn settle(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let mut quiet = 0;
    for _ in 0..120 {
        let drain: Value = cron(http, base, "process-events").await?;
        let sync: Value = cron(http, base, "sync-metrics").await?;
        let status: Value = cron(http, base, "queue-status").await?;
        let idle = drain["drained"] == 0
            && sync["counters"] == 0
            && status["queue"]["requests"] == 0
            && status["in_flight"]["requests"] == 0;
        quiet = if idle { quiet + 1 } else { 0 };
        if quiet == 2 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!("the queue and the counters did not settle in two minutes")
}

async fn cron(http: &reqwest::Client, base: &str, route: &str) -> anyhow::Result<Value> {
    let response = http
        .get(format!("{base}/api/cron/{route}"))
        .bearer_auth(CRON_SECRET)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "{route} answered {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// What the audit found.
struct Audit {
    requests: usize,
    by_route: BTreeMap<&'static str, usize>,
    events_accepted: usize,
    events_stored: usize,
    lost: Vec<Uuid>,
    duplicated: Vec<Uuid>,
    /// Stored though the client saw no 202 (its request timed out or failed
    /// after the write): not a loss, reported for the record.
    unacknowledged: usize,
    /// Keys whose counters differ from what their clients saw.
    miscounted: Vec<String>,
    /// Tight keys that admitted more than their daily quota.
    over_admitted: Vec<String>,
    refused_by_limits: usize,
    /// 5xx answers: when, route, status, code, and whether a fault explains it.
    server_errors: Vec<(f64, &'static str, u16, String, bool)>,
    unanswered: usize,
    /// Whether the processes' memory stayed within bounds (set after the run).
    memory_flat: bool,
}

/// Memory counts as flat when the end is within twice the start plus 64 MiB:
/// allocators keep what a burst took, a leak keeps growing.
fn flat(start: u64, end: u64) -> bool {
    end <= start * 2 + 64 * 1024
}

impl Audit {
    fn passed(&self) -> bool {
        self.memory_flat
            && self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.miscounted.is_empty()
            && self.over_admitted.is_empty()
            && self.server_errors.iter().all(|e| e.4)
            && self.unanswered == 0
    }

    fn summary(
        &self,
        options: &Options,
        took: Duration,
        rss: ((u64, u64), (u64, u64)),
        faults: &[Fault],
    ) -> String {
        let mut out = vec![];
        out.push(format!(
            "Soak of {} s under load ({} clients per route), {} s in all with set-up and settling; {}.\n",
            options.duration.as_secs(),
            options.clients,
            took.as_secs(),
            if self.passed() { "**passed**" } else { "**FAILED**" }
        ));
        out.push("| check | result |".into());
        out.push("|---|---|".into());
        let routes: Vec<String> = self
            .by_route
            .iter()
            .map(|(route, n)| format!("{route} {n}"))
            .collect();
        out.push(format!(
            "| requests | {} ({}) |",
            self.requests,
            routes.join(", ")
        ));
        out.push(format!(
            "| events accepted (202) / stored | {} / {} |",
            self.events_accepted, self.events_stored
        ));
        out.push(format!("| lost | {} |", self.lost.len()));
        out.push(format!("| duplicated | {} |", self.duplicated.len()));
        out.push(format!(
            "| stored without a 202 (client saw an error) | {} |",
            self.unacknowledged
        ));
        out.push(format!(
            "| keys whose counters differ from their clients | {} |",
            self.miscounted.len()
        ));
        out.push(format!(
            "| over-admitted (daily quota {TIGHT_PER_DAY} on {TIGHT_KEYS} keys) | {} ({} requests refused by limits) |",
            self.over_admitted.len(),
            self.refused_by_limits
        ));
        let unexplained = self.server_errors.iter().filter(|e| !e.4).count();
        out.push(format!(
            "| 5xx | {} ({} explained by a fault and the route's policy, {} not) |",
            self.server_errors.len(),
            self.server_errors.len() - unexplained,
            unexplained
        ));
        out.push(format!("| requests with no answer | {} |", self.unanswered));
        out.push(format!(
            "| RSS of `tollgate dev` start → end | {} → {} MiB |",
            rss.0 .0 / 1024,
            rss.1 .0 / 1024
        ));
        out.push(format!(
            "| RSS of the Upstash server start → end | {} → {} MiB |",
            rss.0 .1 / 1024,
            rss.1 .1 / 1024
        ));
        out.push(String::new());
        out.push(format!("Faults injected ({}):\n", faults.len()));
        for fault in faults {
            out.push(format!(
                "- {:.1} s – {:.1} s: {}",
                fault.from, fault.until, fault.name
            ));
        }
        if !self.server_errors.is_empty() {
            out.push(String::new());
            out.push("5xx answers, grouped by second, route, status and code:\n".into());
            let mut grouped: BTreeMap<(u64, &str, u16, &str, bool), usize> = BTreeMap::new();
            for (at, route, status, code, explained) in &self.server_errors {
                *grouped
                    .entry((*at as u64, route, *status, code.as_str(), *explained))
                    .or_default() += 1;
            }
            for ((second, route, status, code, explained), n) in grouped {
                out.push(format!(
                    "- {second} s: {n} × {route} {status} `{code}`{}",
                    if explained {
                        ""
                    } else {
                        " — **not explained by a fault**"
                    }
                ));
            }
        }
        for (label, ids) in [("Lost", &self.lost), ("Duplicated", &self.duplicated)] {
            if !ids.is_empty() {
                let shown: Vec<String> = ids.iter().take(20).map(Uuid::to_string).collect();
                out.push(format!("\n{label} event ids: {}", shown.join(", ")));
            }
        }
        for (label, list) in [
            ("Miscounted", &self.miscounted),
            ("Over-admitted", &self.over_admitted),
        ] {
            if !list.is_empty() {
                out.push(format!("\n{label}:\n"));
                out.extend(list.iter().map(|line| format!("- {line}")));
            }
        }
        out.join("\n") + "\n"
    }
}

async fn audit(db: &Db, keys: &[NewKey], log: &Log) -> anyhow::Result<Audit> {
    let answers = log.answers.lock().unwrap().clone();
    let faults = log.faults.lock().unwrap().clone();
    let mut by_route = BTreeMap::new();
    for answer in &answers {
        *by_route.entry(answer.route).or_default() += 1;
    }

    // Events: every id a 202 accepted, against the rows of the collect key.
    let accepted: HashSet<Uuid> = answers
        .iter()
        .flat_map(|a| a.accepted.iter().copied())
        .collect();
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, count(*) FROM events WHERE api_key_id = $1 GROUP BY id")
            .bind(keys[0].id)
            .fetch_all(db.pool())
            .await?;
    let stored: HashMap<Uuid, i64> = rows.into_iter().collect();
    let mut lost: Vec<Uuid> = accepted
        .iter()
        .filter(|id| !stored.contains_key(id))
        .copied()
        .collect();
    lost.sort();
    let mut duplicated: Vec<Uuid> = stored
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    duplicated.sort();
    let unacknowledged = stored.keys().filter(|id| !accepted.contains(id)).count();

    // Counters: what each key's clients saw counted, against Postgres.
    let mut seen: HashMap<usize, (i64, i64)> = HashMap::new();
    for answer in answers.iter().filter(|a| a.counted) {
        let slot = seen.entry(answer.key).or_default();
        if answer.status < 400 {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    }
    let mut miscounted = vec![];
    for (index, key) in keys.iter().enumerate() {
        let (ok, failed): (i64, i64) = sqlx::query_as(
            "SELECT successful_requests, failed_requests FROM api_keys WHERE id = $1",
        )
        .bind(key.id)
        .fetch_one(db.pool())
        .await?;
        let expected = seen.get(&index).copied().unwrap_or_default();
        if (ok, failed) != expected {
            miscounted.push(format!(
                "key {index} ({}): Postgres has {ok} successful and {failed} failed, the clients saw {} and {}",
                key.id, expected.0, expected.1
            ));
        }
    }

    // Quotas: admitted uploads of each tight key per day.
    let mut over_admitted = vec![];
    for index in 1..=TIGHT_KEYS {
        let admitted = answers
            .iter()
            .filter(|a| a.route == "signed-url" && a.key == index && a.status == 200)
            .count() as u64;
        if admitted > TIGHT_PER_DAY {
            over_admitted.push(format!(
                "key {index}: {admitted} uploads admitted against a daily quota of {TIGHT_PER_DAY}"
            ));
        }
    }
    let refused_by_limits = answers.iter().filter(|a| a.status == 429).count();
    // A quota check that never met a full quota proves nothing.
    for index in 1..=TIGHT_KEYS {
        let refused = answers
            .iter()
            .any(|a| a.key == index && a.code == "daily_quota_exceeded");
        if !refused {
            over_admitted.push(format!(
                "key {index}: its daily quota was never reached, so it was not tested"
            ));
        }
    }

    // 5xx: explained when the route's policy answers 503 for the dependency
    // a fault took away (with a few seconds for clients to reconnect).
    // Only a 503 `unavailable` can be a policy; a 500 is always a bug, and
    // bad input never earns a 5xx.
    let explained = |answer: &Answer| {
        answer.status == 503
            && answer.code == "unavailable"
            && answer.well_formed
            && faults.iter().any(|fault| {
                let during = answer.at >= fault.from - 1.0 && answer.at <= fault.until + 3.0;
                let policy = match (answer.route, fault.takes) {
                    // Fail-closed while Upstash is unreachable.
                    ("signed-url", Takes::Redis | Takes::Upstash) => true,
                    // A miss needs Postgres; so does a key the cache lacks.
                    ("analytics" | "signed-url" | "collect", Takes::Postgres) => true,
                    _ => false,
                };
                during && policy
            })
    };
    let server_errors = answers
        .iter()
        .filter(|a| a.status >= 500)
        .map(|a| (a.at, a.route, a.status, a.code.clone(), explained(a)))
        .collect();
    let unanswered = answers.iter().filter(|a| a.status == 0).count();

    Ok(Audit {
        requests: answers.len(),
        by_route,
        events_accepted: accepted.len(),
        events_stored: stored.len(),
        lost,
        duplicated,
        unacknowledged,
        miscounted,
        over_admitted,
        refused_by_limits,
        server_errors,
        unanswered,
        memory_flat: true,
    })
}
