//! `spawn_app()` and the shared test set-up.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tokio::{net::TcpListener, sync::OnceCell};
use tollgate::{
    apikeys::{self, NewKey, Tier},
    clock::Clock,
    config::Config,
    state::AppState,
    upstash::{Command, Upstash},
};
use tollgate_cli::{
    dev,
    services::{Layout, Services},
    upstash_local,
};
use uuid::Uuid;

/// The Redis and Postgres servers every test shares.
#[derive(Debug, Clone)]
pub struct Servers {
    pub redis_url: String,
    /// The maintenance database, for creating per-test databases.
    pub admin_url: String,
    /// Base URL without a database name.
    pub postgres_base: String,
    /// The same server through PgBouncer in transaction mode, without a
    /// database name: from `TEST_POOLED_DATABASE_URL` when set.
    pub pooled_base: Option<String>,
}

static SERVERS: OnceCell<Servers> = OnceCell::const_new();

/// The shared servers: `TEST_REDIS_URL`, `TEST_DATABASE_URL` and
/// `TEST_POOLED_DATABASE_URL` when set (`make test` sets them), otherwise the
/// private test instances, started on first use.
pub async fn servers() -> &'static Servers {
    SERVERS
        .get_or_init(|| async {
            let (redis_url, database_url, pooled_url) = match (
                std::env::var("TEST_REDIS_URL"),
                std::env::var("TEST_DATABASE_URL"),
            ) {
                (Ok(redis), Ok(database)) => (
                    redis,
                    database,
                    std::env::var("TEST_POOLED_DATABASE_URL").ok(),
                ),
                _ => {
                    let mut layout = Layout::new(repo_root().join(".tollgate/test"));
                    layout.redis_port = 6392;
                    layout.postgres_port = 54392;
                    layout.pgbouncer_port = Layout::default_pgbouncer_port(54392);
                    let services = Services::start(&layout)
                        .await
                        .expect("starting the private test Redis, Postgres and PgBouncer");
                    (
                        services.redis_url,
                        services.database_url,
                        services.pooled_database_url,
                    )
                }
            };
            let base = |url: &str| {
                url.rsplit_once('/')
                    .map(|(base, _)| base.to_owned())
                    .expect("a database URL has a database name")
            };
            let postgres_base = base(&database_url);
            Servers {
                redis_url,
                admin_url: format!("{postgres_base}/postgres"),
                postgres_base,
                pooled_base: pooled_url.as_deref().map(base),
            }
        })
        .await
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A migrated database to clone, made once per migration set and month.
/// Cloning a template is much faster than migrating every test's database;
/// the month is part of its name because the migration makes the event
/// partitions around the month it runs in, which tests rely on.
async fn template_database(servers: &Servers) -> anyhow::Result<String> {
    let mut checksum: String = tollgate::db::MIGRATOR
        .iter()
        .map(|m| hex_prefix(&m.checksum))
        .collect();
    checksum.push_str(&chrono::Utc::now().format("%Y-%m").to_string());
    let name = format!("template_{}", &sha_hex(&checksum)[..16]);
    let mut admin = PgConnection::connect(&servers.admin_url).await?;
    // Tests run in parallel processes: one makes the template, the others wait.
    sqlx::query("SELECT pg_advisory_lock(727274)")
        .execute(&mut admin)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let building = format!("{name}_building");
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{building}\""))
            .execute(&mut admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE \"{building}\""))
            .execute(&mut admin)
            .await?;
        let url = format!("{}/{building}", servers.postgres_base);
        let mut conn = PgConnection::connect(&url).await?;
        tollgate::db::MIGRATOR.run(&mut conn).await?;
        conn.close().await?;
        // Renamed only when complete, so a crash never leaves a half template.
        sqlx::query(&format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
        ))
        .execute(&mut admin)
        .await?;
    }
    sqlx::query("SELECT pg_advisory_unlock(727274)")
        .execute(&mut admin)
        .await?;
    Ok(name)
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn sha_hex(text: &str) -> String {
    tollgate::apikeys::hash_secret(text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a fresh, migrated database for one test and returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    let servers = servers().await;
    let template = template_database(servers).await?;
    let name = format!("test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&servers.admin_url).await?;
    sqlx::query(&format!(
        "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
    ))
    .execute(&mut admin)
    .await
    .context("cloning the template database")?;
    Ok(format!("{}/{name}", servers.postgres_base))
}

/// A local Upstash REST server in front of the shared Redis.
#[derive(Debug, Clone)]
pub struct LocalUpstash {
    pub url: String,
    pub token: String,
    /// What it counted of the scripts it ran and refused.
    pub stats: Arc<upstash_local::Stats>,
}

/// Starts a strict local Upstash REST server on port 0 with a random token:
/// like Upstash, it refuses scripts without `allow-key-locking` and keys a
/// script did not declare.
pub async fn spawn_upstash_local() -> LocalUpstash {
    spawn_upstash_local_with(true, &[]).await
}

/// Like [`spawn_upstash_local`]; `strict` refuses the scripts Upstash would run
/// under its global lock, except those whose SHA-1 is in `allow_global_lock`.
pub async fn spawn_upstash_local_with(strict: bool, allow_global_lock: &[&str]) -> LocalUpstash {
    let servers = servers().await;
    spawn_upstash_local_over(&servers.redis_url, strict, allow_global_lock).await
}

/// Like [`spawn_upstash_local_with`], in front of the Redis at `redis_url`.
pub async fn spawn_upstash_local_over(
    redis_url: &str,
    strict: bool,
    allow_global_lock: &[&str],
) -> LocalUpstash {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let token = format!("test_{}", Uuid::new_v4().simple());
    let options = upstash_local::Options {
        strict,
        allow_global_lock: allow_global_lock
            .iter()
            .map(|sha| sha.to_string())
            .collect(),
        ..upstash_local::Options::new(token.clone(), redis_url.to_owned())
    };
    let stats = Arc::clone(&options.stats);
    tokio::spawn(upstash_local::serve(
        listener,
        options,
        std::future::pending(),
    ));
    LocalUpstash { url, token, stats }
}

/// What a test may change about the app it spawns.
#[derive(Debug, Default)]
pub struct TestOptions {
    /// Replaces the Upstash URL, e.g. with a closed port to simulate an outage.
    pub upstash_url: Option<String>,
    /// Replaces the database URL.
    pub database_url: Option<String>,
    /// Extra environment variables for `Config`.
    pub env: Vec<(&'static str, String)>,
    /// A clock to use instead of the system's.
    pub clock: Option<Arc<dyn Clock>>,
    /// A Redis of the test's own (see [`PrivateRedis`]) instead of the shared one.
    pub redis_url: Option<String>,
}

/// The cron secret every test app is configured with.
pub const CRON_SECRET: &str = "test-cron-secret-0123456789";

/// The app under test, listening on a random port.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub key_prefix: String,
    /// The environment the app was configured from, for spawning the real
    /// function binaries against the same Redis and database.
    pub env: Vec<(&'static str, String)>,
    /// The app's local Upstash server, with its script counters.
    pub upstash_local: LocalUpstash,
}

/// Spawns the app with its own database and key prefix.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

/// Spawns the app with some of its configuration replaced.
pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    let upstash = match &options.redis_url {
        Some(url) => spawn_upstash_local_over(url, true, &[]).await,
        None => spawn_upstash_local().await,
    };
    let database_url = match options.database_url {
        Some(url) => url,
        None => fresh_database().await.expect("creating the test database"),
    };
    let key_prefix = format!("test:{}:", Uuid::new_v4().simple());
    let mut env: Vec<(&'static str, String)> = vec![
        (
            "UPSTASH_REDIS_REST_URL",
            options.upstash_url.unwrap_or_else(|| upstash.url.clone()),
        ),
        ("UPSTASH_REDIS_REST_TOKEN", upstash.token.clone()),
        ("DATABASE_URL", database_url.clone()),
        ("CRON_SECRET", CRON_SECRET.to_owned()),
        ("TOLLGATE_KEY_PREFIX", key_prefix.clone()),
        ("TOLLGATE_UPSTASH_TIMEOUT", "2s".to_owned()),
    ];
    env.extend(options.env);
    let config = Config::from_lookup(|name| {
        env.iter()
            .rev()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    })
    .expect("test configuration is valid");
    let mut state = AppState::new(config).expect("building the app state");
    if let Some(clock) = options.clock {
        state = state.with_clock(clock);
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let app = dev::router(state.clone(), &repo_root().join("public"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    TestApp {
        address,
        http: reqwest::Client::new(),
        state,
        key_prefix,
        env,
        upstash_local: upstash,
    }
}

impl TestApp {
    /// `GET` a path of the app.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request to the app")
    }

    /// Reads an analytics view with a key, as a client does.
    pub async fn read_analytics(&self, key: &str, query: &str) -> AnalyticsRead {
        let response = self
            .http
            .get(format!("{}/api/analytics?{query}", self.address))
            .bearer_auth(key)
            .send()
            .await
            .expect("request to the app");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let (cache, content_type) = (header("x-cache"), header("content-type"));
        AnalyticsRead {
            status: response.status().as_u16(),
            cache,
            content_type,
            text: response.text().await.expect("the answer's body"),
        }
    }

    /// A fresh client to this app's local Upstash server.
    pub fn upstash_client(&self) -> Arc<Upstash> {
        Arc::clone(&self.state.upstash)
    }

    /// A Redis key under this test's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.key_prefix)
    }

    /// Runs one Redis command through the app's Upstash client.
    pub async fn redis<T: tollgate::upstash::FromReply>(&self, command: Command) -> T {
        self.state
            .upstash
            .command(&command)
            .await
            .expect("redis command")
    }
}

impl TestApp {
    /// Creates an API key (tier pro) and returns both halves.
    pub async fn create_key(&self) -> NewKey {
        let key = NewKey::generate();
        apikeys::insert(&self.state.db, &key, "test", Tier::Pro)
            .await
            .expect("inserting a key");
        key
    }

    /// `POST /api/collect` with a JSON body and the key as bearer.
    pub async fn collect(&self, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/collect", self.address))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request to collect")
    }

    /// Runs one drain through the cron route and returns its report.
    pub async fn drain(&self) -> serde_json::Value {
        let response = self
            .http
            .get(format!("{}/api/cron/process-events", self.address))
            .bearer_auth(CRON_SECRET)
            .send()
            .await
            .expect("request to process-events");
        assert_eq!(response.status(), 200, "drain failed");
        response.json().await.expect("drain report")
    }

    /// `GET /api/cron/queue-status` with the cron secret.
    pub async fn queue_status(&self) -> serde_json::Value {
        let response = self
            .http
            .get(format!("{}/api/cron/queue-status", self.address))
            .bearer_auth(CRON_SECRET)
            .send()
            .await
            .expect("request to queue-status");
        assert_eq!(response.status(), 200, "queue-status failed");
        response.json().await.expect("queue status")
    }

    /// How many rows the events table holds.
    pub async fn stored_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(self.state.db.pool())
            .await
            .expect("counting events")
    }
}

impl TestApp {
    /// Sets a key's own limits (None keeps the tier's), as `keys set-limits` does.
    pub async fn set_limits(
        &self,
        key: &NewKey,
        per_minute: Option<i32>,
        daily: Option<i64>,
        monthly: Option<i64>,
    ) {
        sqlx::query(
            "UPDATE api_keys SET rate_limit_per_minute = $2, daily_quota = $3, monthly_quota = $4
             WHERE id = $1",
        )
        .bind(key.id)
        .bind(per_minute)
        .bind(daily)
        .bind(monthly)
        .execute(self.state.db.pool())
        .await
        .expect("setting limits");
    }

    /// Deletes every Redis key of this test, as a flush would: the other
    /// tests share the server, so a real FLUSHALL is not an option.
    pub async fn flush_redis(&self) {
        let mut cursor = "0".to_owned();
        loop {
            let reply: tollgate::upstash::Reply = self
                .redis(
                    tollgate::upstash::Command::new("SCAN")
                        .arg(&cursor)
                        .arg("MATCH")
                        .arg(format!("{}*", self.key_prefix))
                        .arg("COUNT")
                        .arg(1000),
                )
                .await;
            let tollgate::upstash::Reply::Array(parts) = reply else {
                panic!("SCAN reply")
            };
            cursor = parts[0].as_str().expect("cursor").to_owned();
            if let tollgate::upstash::Reply::Array(keys) = &parts[1] {
                if !keys.is_empty() {
                    let names: Vec<&str> = keys.iter().filter_map(|k| k.as_str()).collect();
                    let _: i64 = self
                        .redis(tollgate::upstash::Command::new("DEL").args(names))
                        .await;
                }
            }
            if cursor == "0" {
                break;
            }
        }
    }

    /// Runs one metrics sync through the cron route and returns its report.
    pub async fn sync_metrics(&self) -> serde_json::Value {
        let response = self
            .http
            .get(format!("{}/api/cron/sync-metrics", self.address))
            .bearer_auth(CRON_SECRET)
            .send()
            .await
            .expect("request to sync-metrics");
        assert_eq!(response.status(), 200, "sync failed");
        response.json().await.expect("sync report")
    }
}

/// Runs a real cron function binary (e.g. `CARGO_BIN_EXE_cron-process-events`)
/// against the app's Redis and database with the fault switch set, calls its
/// route, and waits for it to die at the fault point.
pub async fn crash_function_at(app: &TestApp, binary: &str, route: &str, point: &str) {
    use std::{process::Stdio, time::Duration};
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("address").port()
    };
    let mut child = tokio::process::Command::new(binary)
        .envs(app.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("VERCEL_DEV_PORT", port.to_string())
        .env("TOLLGATE_FAULT_POINT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the function binary");
    let url = format!("http://127.0.0.1:{port}{route}");
    let mut answered = None;
    for _ in 0..200 {
        match app.http.get(&url).bearer_auth(CRON_SECRET).send().await {
            Ok(response) => {
                answered = Some(response.status());
                break;
            }
            // Refused: not listening yet. Closed mid-request: it died.
            Err(error) if error.is_connect() => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(_) => break,
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the function exits")
        .expect("waiting for the function");
    assert!(
        !status.success(),
        "{route} should have died at {point} (answered {answered:?})"
    );
}

/// Runs a node test folder under `tests/` (`node --test`), installing its
/// npm packages first when `package` is missing, and asserts that tests ran
/// and none failed.
pub async fn run_node_tests(folder: &str, package: &str, env: &[(&str, &str)]) {
    run_node_test_files(folder, package, &[], env).await
}

/// Like [`run_node_tests`], for some of the folder's test files only.
pub async fn run_node_test_files(
    folder: &str,
    package: &str,
    files: &[&str],
    env: &[(&str, &str)],
) {
    let dir = repo_root().join("tests").join(folder);
    if !dir.join("node_modules").join(package).exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("running npm ci (is Node.js installed? scripts/bootstrap.sh node)");
        assert!(status.success(), "npm ci failed in tests/{folder}");
    }
    let output = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .args(files)
        .current_dir(&dir)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("running node --test");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "tests/{folder} failed:\n{report}");
    assert!(report.contains("ℹ fail 0"), "{report}");
    assert!(!report.contains("ℹ pass 0"), "no test ran:\n{report}");
}

/// The Vercel Blob read-write token of test apps with Blob configured.
pub const RW_TOKEN: &str = "vercel_blob_rw_AbCdEf123456_0123456789abcdefghijklmnopqrstuv";

/// Storage provider settings: S3 (path style), and Vercel Blob if `blob`.
pub fn providers(blob: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("S3_ENDPOINT", "http://127.0.0.1:9000".to_owned()),
        ("S3_REGION", "us-east-1".to_owned()),
        ("S3_BUCKET", "uploads".to_owned()),
        ("S3_ACCESS_KEY_ID", "AKIAEXAMPLE".to_owned()),
        ("S3_SECRET_ACCESS_KEY", "secret-example-key".to_owned()),
        ("S3_FORCE_PATH_STYLE", "true".to_owned()),
    ];
    if blob {
        env.push(("BLOB_READ_WRITE_TOKEN", RW_TOKEN.to_owned()));
    }
    env
}

/// `POST /api/signed-url` with `body`; the status and the JSON answer.
pub async fn sign(app: &TestApp, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut request = app
        .http
        .post(format!("{}/api/signed-url", app.address))
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// A Redis server of one test's own, for tests that change what the whole
/// server does (its memory limit, its script cache); stopped when dropped.
pub struct PrivateRedis {
    pub url: String,
    _server: tokio::process::Child,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let server = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        for _ in 0..100 {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
                {
                    return Self {
                        url,
                        _server: server,
                    };
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {port} did not answer");
    }

    /// A connection that speaks to Redis directly, past the Upstash server.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the private Redis")
    }
}

/// One answer of the analytics route: its status, `X-Cache` and
/// `Content-Type` headers, and body.
pub struct AnalyticsRead {
    pub status: u16,
    pub cache: String,
    pub content_type: String,
    pub text: String,
}

impl AnalyticsRead {
    /// The body as JSON; `null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }
}
