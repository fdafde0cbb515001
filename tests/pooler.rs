//! The app behind a real PgBouncer in transaction mode, which is what Neon's
//! pooled endpoint is and what a deployment's `DATABASE_URL` points at.
//!
//! Each test migrates its own database over a direct connection, as a
//! deployment does (`tollgate migrate` with the direct URL), then spawns the
//! app with `DATABASE_URL` on PgBouncer and `TOLLGATE_DATABASE_POOLER=transaction`.
//! Every check of what reached Postgres reads over the direct connection, and
//! PgBouncer's admin console shows that the app's traffic went through it.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection, Row};
use tollgate::{
    admin::{self, BanSubject, CreateKey, KeyChange, NewBan, Override},
    analytics::View,
    apikeys::Tier,
    config::DatabaseConfig,
    db::Db,
    secret::Secret,
};
use tollgate_cli::services::PGBOUNCER_POOL_SIZE;
use uuid::Uuid;

use crate::helpers::{
    fresh_database, providers, servers, sign, spawn_app_with, TestApp, TestOptions,
};

/// One test's database, reachable directly and through PgBouncer.
struct PooledDatabase {
    name: String,
    direct_url: String,
    pooled_url: String,
}

impl PooledDatabase {
    /// A fresh database, migrated over the direct connection.
    async fn create() -> Self {
        let pooled_base = servers().await.pooled_base.clone().expect(
            "TEST_POOLED_DATABASE_URL is not set: `tollgate services start` prints it \
             as POOLED_DATABASE_URL (scripts/test.sh exports it)",
        );
        let direct_url = fresh_database().await.expect("creating the test database");
        let name = direct_url
            .rsplit_once('/')
            .map(|(_, name)| name.to_owned())
            .expect("a database name");
        // The migrator holds a session lock, which PgBouncer cannot keep:
        // migrations run directly (here a no-op on the migrated template).
        let mut direct = PgConnection::connect(&direct_url).await.unwrap();
        tollgate::db::MIGRATOR.run(&mut direct).await.unwrap();
        direct.close().await.unwrap();
        Self {
            pooled_url: format!("{pooled_base}/{name}"),
            name,
            direct_url,
        }
    }

    /// A connection past PgBouncer, for the checks.
    async fn direct(&self) -> PgConnection {
        PgConnection::connect(&self.direct_url).await.unwrap()
    }

    /// What PgBouncer has counted for this database: transactions, and the
    /// server connections it holds open to it.
    async fn pooler_traffic(&self) -> PoolerTraffic {
        let mut console = admin_console().await;
        let stats = console_rows(&mut console, "SHOW STATS").await;
        let transactions = stats
            .iter()
            .find(|row| row["database"] == self.name)
            .map_or(0, |row| row["total_xact_count"].parse().unwrap());
        let servers = console_rows(&mut console, "SHOW SERVERS")
            .await
            .iter()
            .filter(|row| row["database"] == self.name)
            .count();
        console.close().await.unwrap();
        PoolerTraffic {
            transactions,
            servers,
        }
    }

    /// Asserts that the app's statements went through PgBouncer, which holds
    /// no more server connections than its pool, and that none of the app's
    /// sessions went around it.
    async fn assert_went_through_the_pooler(&self, before: &PoolerTraffic) {
        let after = self.pooler_traffic().await;
        assert!(
            after.transactions > before.transactions,
            "PgBouncer counted no transaction for {} ({before:?} then {after:?})",
            self.name
        );
        assert!(
            (1..=PGBOUNCER_POOL_SIZE as usize).contains(&after.servers),
            "PgBouncer holds {} server connections to {}",
            after.servers,
            self.name
        );
        // The app names its sessions `tollgate`: each such session on the
        // database is one of PgBouncer's, none went around it.
        let mut direct = self.direct().await;
        let app_sessions: Vec<i32> = sqlx::query_scalar(
            "SELECT client_port FROM pg_stat_activity
              WHERE datname = $1 AND application_name = 'tollgate'",
        )
        .bind(&self.name)
        .fetch_all(&mut direct)
        .await
        .unwrap();
        direct.close().await.unwrap();
        let mut console = admin_console().await;
        let pooled: Vec<i32> = console_rows(&mut console, "SHOW SERVERS")
            .await
            .iter()
            .filter(|row| row["database"] == self.name)
            .map(|row| row["local_port"].parse().unwrap())
            .collect();
        console.close().await.unwrap();
        let around: Vec<&i32> = app_sessions
            .iter()
            .filter(|port| !pooled.contains(port))
            .collect();
        assert!(
            around.is_empty(),
            "sessions of the app on {} from ports {around:?}, not PgBouncer's {pooled:?}",
            self.name
        );
    }

    /// One connection through PgBouncer, as the CLI connects, in pooler mode
    /// or not.
    fn single_connection(&self, transaction_pooler: bool) -> Db {
        Db::connect_lazy(&DatabaseConfig {
            url: Secret::new(self.pooled_url.clone()),
            max_connections: 1,
            transaction_pooler,
        })
        .unwrap()
    }

    /// Spawns the app on this database through PgBouncer, in pooler mode.
    async fn spawn_app(&self, mut options: TestOptions) -> TestApp {
        options.database_url = Some(self.pooled_url.clone());
        options
            .env
            .push(("TOLLGATE_DATABASE_POOLER", "transaction".to_owned()));
        // More connections than PgBouncer's pool has servers, so that
        // statements of the app's own connections compete for servers.
        options
            .env
            .insert(0, ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "8".to_owned()));
        spawn_app_with(options).await
    }
}

#[derive(Debug, Clone, Copy)]
struct PoolerTraffic {
    transactions: i64,
    servers: usize,
}

/// PgBouncer's admin console: the `pgbouncer` database on its port.
async fn admin_console() -> PgConnection {
    let base = servers().await.pooled_base.clone().expect("PgBouncer runs");
    PgConnection::connect(&format!("{base}/pgbouncer"))
        .await
        .expect("connecting to PgBouncer's admin console")
}

/// The rows of a console command, each column as text: the console speaks
/// only the simple protocol, which sends every value as text.
async fn console_rows(console: &mut PgConnection, command: &str) -> Vec<HashMap<String, String>> {
    sqlx::raw_sql(command)
        .fetch_all(console)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"))
        .iter()
        .map(|row| {
            row.columns()
                .iter()
                .map(|column| {
                    let name = sqlx::Column::name(column);
                    let value: Option<String> = row.try_get_unchecked(name).unwrap();
                    (name.to_owned(), value.unwrap_or_default())
                })
                .collect()
        })
        .collect()
}

/// Applies an admin command's Redis side, as the CLI does.
async fn apply(app: &TestApp, redis: &admin::RedisSync) {
    redis
        .apply(&app.state.upstash)
        .await
        .expect("applying the Redis side");
}

fn pageview(id: Uuid) -> Value {
    json!({
        "id": id,
        "type": "web",
        "name": "pageview",
        "url": "https://shop.example.com/pricing?utm_source=news&utm_medium=email",
        "referrer": "https://news.example.org/",
        "session_id": "s-1",
    })
}

async fn stored_events(database: &PooledDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut database.direct().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_drain_stores_collected_events_through_the_pooler() {
    let database = PooledDatabase::create().await;
    let app = database.spawn_app(TestOptions::default()).await;
    let before = database.pooler_traffic().await;
    let key = app.create_key().await;

    let ids: Vec<Uuid> = (0..120).map(|_| Uuid::new_v4()).collect();
    for chunk in ids.chunks(40) {
        let batch: Vec<Value> = chunk.iter().map(|id| pageview(*id)).collect();
        let response = app.collect(&key.publishable, &json!(batch)).await;
        assert_eq!(response.status(), 202);
    }
    let report = app.drain().await;
    // A second drain finds nothing left, and stores nothing twice.
    app.drain().await;

    assert_eq!(report["inserted"], 120, "{report}");
    assert_eq!(stored_events(&database).await, 120);
    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&mut database.direct().await)
        .await
        .unwrap();
    let mut sent = ids.clone();
    sent.sort();
    assert_eq!(stored, sent);
    database.assert_went_through_the_pooler(&before).await;
}

#[tokio::test]
async fn the_metrics_sync_and_every_analytics_view_run_through_the_pooler() {
    let database = PooledDatabase::create().await;
    let app = database
        .spawn_app(TestOptions {
            env: providers(false),
            ..TestOptions::default()
        })
        .await;
    let before = database.pooler_traffic().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    let upload = json!({"filename": "a.png", "content_type": "image/png", "size": 1000});
    for _ in 0..5 {
        let (status, body) = sign(&app, Some(secret), &upload.to_string()).await;
        assert_eq!(status, 200, "{body}");
    }
    let event = app
        .collect(&key.publishable, &pageview(Uuid::new_v4()))
        .await;
    assert_eq!(event.status(), 202);
    app.drain().await;

    let report = app.sync_metrics().await;

    assert!(report["counters"].as_u64().unwrap_or(0) > 0, "{report}");
    let (total, files): (i64, i64) =
        sqlx::query_as("SELECT total_requests, total_files FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(&mut database.direct().await)
            .await
            .unwrap();
    assert_eq!((total, files), (6, 5));
    for view in View::ALL {
        let response = app
            .http
            .get(format!(
                "{}/api/analytics?view={}",
                app.address,
                view.as_str()
            ))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let cache = response
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "view={}: {body}", view.as_str());
        // A miss: the view was read from Postgres, through the pooler.
        assert_eq!(cache.as_deref(), Some("miss"), "view={}", view.as_str());
    }
    database.assert_went_through_the_pooler(&before).await;
}

#[tokio::test]
async fn key_and_ban_commands_run_through_the_pooler() {
    let database = PooledDatabase::create().await;
    // As `tollgate keys` and `tollgate bans` connect: one connection, in
    // pooler mode, to the URL they are given.
    let db = database.single_connection(true);
    let app = database.spawn_app(TestOptions::default()).await;
    let keys = &app.state.keys;
    let before = database.pooler_traffic().await;

    let key = admin::create_key(
        &db,
        &admin::Actor::Cli,
        CreateKey {
            name: "pooled".to_owned(),
            owner: Some(admin::OwnerId::parse("ops").unwrap()),
            tier: Tier::Pro,
            rate_limit: None,
            daily: Some(500),
            monthly: None,
            origins: Vec::new(),
            timezone: Some("Europe/Berlin".to_owned()),
            expires_at: None,
            metadata: Default::default(),
        },
    )
    .await
    .expect("create");
    let updated = admin::update_key(
        &db,
        keys,
        &admin::Actor::Cli,
        key.id,
        KeyChange {
            rate_limit: Some(Override::Value(7)),
            daily: Some(Override::Default),
            ..KeyChange::default()
        },
    )
    .await
    .expect("update");
    assert_eq!(updated.value.overrides.per_minute, Some(7));
    assert_eq!(updated.value.overrides.per_day, None);
    apply(&app, &updated.redis).await;
    let rotated = admin::rotate_key(&db, keys, &admin::Actor::Cli, key.id, None)
        .await
        .expect("rotate");
    assert_ne!(rotated.value.key.publishable, key.publishable);
    apply(&app, &rotated.redis).await;
    let listed = admin::list_keys(&db, &admin::KeyFilter::default())
        .await
        .expect("list");
    assert_eq!(listed.keys.len(), 1);
    assert_eq!(
        admin::get_key(&db, key.id).await.expect("get").name,
        "pooled"
    );

    let subject = BanSubject::Ip("203.0.113.9".parse().unwrap());
    let banned = admin::add_ban(
        &db,
        keys,
        &admin::Actor::Cli,
        NewBan {
            subject,
            reason: "abuse".to_owned(),
            duration: None,
        },
    )
    .await
    .expect("ban");
    apply(&app, &banned.redis).await;
    assert_eq!(admin::list_bans(&db, false).await.expect("bans").len(), 1);
    let lifted = admin::lift_ban(&db, keys, &admin::Actor::Cli, subject)
        .await
        .expect("lift");
    assert!(lifted.value.is_some());
    apply(&app, &lifted.redis).await;
    assert!(admin::list_bans(&db, false).await.expect("bans").is_empty());
    let revoked = admin::revoke_key(&db, keys, &admin::Actor::Cli, key.id)
        .await
        .expect("revoke");
    apply(&app, &revoked.redis).await;

    let mut direct = database.direct().await;
    let (status, rate_limit, daily): (String, Option<i32>, Option<i64>) = sqlx::query_as(
        "SELECT status, rate_limit_per_minute, daily_quota FROM api_keys WHERE id = $1",
    )
    .bind(key.id)
    .fetch_one(&mut direct)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), rate_limit, daily),
        ("revoked", Some(7), None)
    );
    let publishable: String =
        sqlx::query_scalar("SELECT publishable_key FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(&mut direct)
            .await
            .unwrap();
    assert_eq!(publishable, rotated.value.key.publishable);
    database.assert_went_through_the_pooler(&before).await;
}

#[tokio::test]
async fn with_upstash_down_collect_and_signed_url_write_straight_to_postgres_through_the_pooler() {
    let database = PooledDatabase::create().await;
    let mut env = providers(false);
    env.push(("TOLLGATE_FAIL_OPEN_ROUTES", "collect,signed-url".to_owned()));
    let app = database
        .spawn_app(TestOptions {
            upstash_url: Some("http://127.0.0.1:1".into()),
            env,
            ..TestOptions::default()
        })
        .await;
    let before = database.pooler_traffic().await;
    let key = app.create_key().await;

    let id = Uuid::new_v4();
    let response = app.collect(&key.publishable, &pageview(id)).await;
    assert_eq!(response.status(), 202);
    let upload = json!({"filename": "a.png", "content_type": "image/png", "size": 10});
    let (status, body) = sign(&app, Some(key.secret.expose()), &upload.to_string()).await;
    assert_eq!(status, 200, "{body}");

    let mut direct = database.direct().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE id = $1")
        .bind(id)
        .fetch_one(&mut direct)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let counters: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, value FROM operational_counters
          WHERE name IN ('direct_to_postgres_events', 'fail_open_admissions') ORDER BY name",
    )
    .fetch_all(&mut direct)
    .await
    .unwrap();
    assert_eq!(
        counters,
        [
            ("direct_to_postgres_events".to_owned(), 1),
            ("fail_open_admissions".to_owned(), 1)
        ]
    );
    let total: i64 = sqlx::query_scalar("SELECT total_requests FROM api_keys WHERE id = $1")
        .bind(key.id)
        .fetch_one(&mut direct)
        .await
        .unwrap();
    assert_eq!(total, 1, "collect's direct path counts its request");
    database.assert_went_through_the_pooler(&before).await;
}

/// Waits until `n` clients of `database` wait for a server connection.
async fn wait_for_waiting_clients(database: &PooledDatabase, n: usize) {
    wait_for_pool(database, "cl_waiting", n).await;
}

/// Waits until `n` server connections to `database` are idle in the pool.
async fn wait_for_idle_servers(database: &PooledDatabase, n: usize) {
    wait_for_pool(database, "sv_idle", n).await;
}

/// Waits until a column of `database`'s row in `SHOW POOLS` reads `n`.
async fn wait_for_pool(database: &PooledDatabase, column: &str, n: usize) {
    let mut console = admin_console().await;
    for _ in 0..500 {
        let value = console_rows(&mut console, "SHOW POOLS")
            .await
            .iter()
            .find(|row| row["database"] == database.name)
            .map_or(0, |row| row[column].parse().unwrap());
        if value == n {
            console.close().await.unwrap();
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{column} of {} never reached {n}", database.name);
}

/// A client of PgBouncer inside a transaction, and the Postgres backend
/// that serves it: PgBouncer keeps a server for a client until its
/// transaction ends.
async fn hold_a_server(database: &PooledDatabase) -> (PgConnection, i32) {
    let mut client = PgConnection::connect(&database.pooled_url).await.unwrap();
    // The simple protocol: one round trip, nothing prepared.
    let row = sqlx::raw_sql("BEGIN; SELECT pg_backend_pid()")
        .fetch_one(&mut client)
        .await
        .unwrap();
    (client, row.get(0))
}

#[tokio::test]
async fn pgbouncer_serves_a_database_with_at_most_its_pool_of_server_connections() {
    let database = PooledDatabase::create().await;
    let mut holders = Vec::new();
    for _ in 0..PGBOUNCER_POOL_SIZE {
        holders.push(hold_a_server(&database).await);
    }
    let backends: Vec<i32> = holders.iter().map(|(_, pid)| *pid).collect();

    // One client more than the pool: it waits for a server, and gets one
    // of the same backends once a transaction ends.
    let url = database.pooled_url.clone();
    let extra = tokio::spawn(async move {
        let mut client = PgConnection::connect(&url).await.unwrap();
        // A query without arguments goes by the simple protocol.
        let row = client.fetch_one("SELECT pg_backend_pid()").await.unwrap();
        row.get::<i32, _>(0)
    });
    wait_for_waiting_clients(&database, 1).await;
    let (first, _) = holders.remove(0);
    sqlx::raw_sql("COMMIT")
        .execute(&mut { first })
        .await
        .unwrap();
    let served_by = extra.await.unwrap();

    assert!(
        backends.contains(&served_by),
        "backend {served_by} is not one of the pool's {backends:?}"
    );
    let servers = database.pooler_traffic().await.servers;
    assert_eq!(servers, PGBOUNCER_POOL_SIZE as usize);
}

#[tokio::test]
async fn a_named_statement_reused_across_transactions_fails_behind_the_pooler_unless_pooler_mode_is_on(
) {
    for transaction_pooler in [false, true] {
        // A database of its own, so that PgBouncer starts with no server
        // connection to it.
        let database = PooledDatabase::create().await;
        let db = database.single_connection(transaction_pooler);
        let sql = "SELECT $1::int4 + 1, pg_backend_pid()";
        // Prepared and run on the one server connection there is.
        let first = db.query(sql).bind(1).fetch_one(db.pool()).await.unwrap();
        assert_eq!(first.get::<i32, _>(0), 2);
        // Another client's transaction takes that server connection once it
        // is back in the pool (were it still busy, PgBouncer would open a
        // second one for the holder), so the next statement runs on a new one.
        wait_for_idle_servers(&database, 1).await;
        let (holder, held) = hold_a_server(&database).await;
        assert_eq!(held, first.get::<i32, _>(1));

        let second = db.query(sql).bind(2).fetch_one(db.pool()).await;

        if transaction_pooler {
            assert_eq!(second.unwrap().get::<i32, _>(0), 3);
        } else {
            let error = second.expect_err("the named statement is on the other server");
            let code = error.as_database_error().and_then(|e| e.code());
            // invalid_sql_statement_name: `prepared statement "sqlx_s_1" does not exist`
            assert_eq!(code.as_deref(), Some("26000"), "{error}");
        }
        holder.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_statement_outside_a_transaction_keeps_its_server_from_parse_to_execute() {
    let database = PooledDatabase::create().await;
    let db = database.single_connection(true);
    let mut holders = Vec::new();
    for _ in 0..PGBOUNCER_POOL_SIZE {
        holders.push(hold_a_server(&database).await.0);
    }
    // The statement waits for a server first in line, another client's
    // BEGIN second.
    let statement = tokio::spawn(async move {
        db.query("SELECT $1::int4")
            .bind(7)
            .fetch_one(db.executor())
            .await
            .map(|row| row.get::<i32, _>(0))
    });
    wait_for_waiting_clients(&database, 1).await;
    let url = database.pooled_url.clone();
    let other = tokio::spawn(async move {
        let mut client = PgConnection::connect(&url).await.unwrap();
        client.execute("BEGIN").await.unwrap();
        client
    });
    wait_for_waiting_clients(&database, 2).await;

    // A server frees up: the statement is parsed there, and PgBouncer gives
    // the server to the other client as soon as the parse's round trip ends.
    sqlx::raw_sql("COMMIT")
        .execute(&mut holders[2])
        .await
        .unwrap();
    let other = other.await.unwrap();
    // The statement's execution gets the next free server.
    sqlx::raw_sql("COMMIT")
        .execute(&mut holders[0])
        .await
        .unwrap();

    assert_eq!(statement.await.unwrap().unwrap(), 7);
    drop(other);
}
