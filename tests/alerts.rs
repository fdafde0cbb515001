//! Key expiry in admission, and usage alerts: detected by the admission
//! script, inserted once by the metrics sync, delivered by the cron as
//! Standard Webhooks to a receiver that verifies each one with the
//! `standardwebhooks` npm package.

use std::{process::Stdio, sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tollgate::{
    alerts::{self, WebhookSecret, WebhookUrl},
    apikeys::{hash_secret, NewKey},
    clock::FixedClock,
};
use uuid::Uuid;

use crate::helpers::{
    crash_function_at, providers, repo_root, sign, spawn_app_with, TestApp, TestOptions,
    CRON_SECRET,
};

/// The test receiver (`tests/webhook-receiver`): it verifies every delivery
/// with `new Webhook(secret).verify(body, headers)` and answers with the
/// given statuses in turn, the last one repeating.
struct Receiver {
    url: String,
    secret: String,
    http: reqwest::Client,
    _process: tokio::process::Child,
}

impl Receiver {
    async fn start(statuses: &str) -> Self {
        Self::start_on(WebhookSecret::generate().expose(), statuses, 0).await
    }

    /// On a given port (0: any free one).
    async fn start_on(secret: &str, statuses: &str, port: u16) -> Self {
        let dir = repo_root().join("tests/webhook-receiver");
        if !dir.join("node_modules/standardwebhooks").exists() {
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .expect("running npm ci (is Node.js installed? scripts/bootstrap.sh node)");
            assert!(status.success(), "npm ci failed in tests/webhook-receiver");
        }
        let mut process = tokio::process::Command::new("node")
            .arg("receiver.mjs")
            .arg(secret)
            .arg(statuses)
            .arg(port.to_string())
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the webhook receiver");
        let stdout = process.stdout.take().expect("the receiver's stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("the receiver's port");
        let port = serde_json::from_str::<Value>(&line).expect("the receiver's first line")["port"]
            .as_u64()
            .expect("a port");
        Self {
            url: format!("http://127.0.0.1:{port}/hooks"),
            secret: secret.to_owned(),
            http: reqwest::Client::new(),
            _process: process,
        }
    }

    /// The deployment's endpoint, as environment variables.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TOLLGATE_ALERT_WEBHOOK_URL", self.url.clone()),
            ("TOLLGATE_ALERT_WEBHOOK_SECRET", self.secret.clone()),
        ]
    }

    /// Every delivery so far: `{id, verified, error, status, payload}`.
    async fn received(&self) -> Vec<Value> {
        let url = self.url.replace("/hooks", "/received");
        self.http
            .get(url)
            .send()
            .await
            .expect("asking the receiver")
            .json()
            .await
            .expect("the receiver's list")
    }
}

/// An app whose alerts go to `receiver`, with more `env`.
async fn spawn_with(receiver: &Receiver, env: Vec<(&'static str, String)>) -> TestApp {
    let mut all = receiver.env();
    all.extend(env);
    spawn_app_with(TestOptions {
        env: all,
        ..TestOptions::default()
    })
    .await
}

/// Runs the delivery cron once and returns its report.
async fn deliver(app: &TestApp) -> Value {
    let response = app
        .http
        .get(format!("{}/api/cron/deliver-alerts", app.address))
        .bearer_auth(CRON_SECRET)
        .send()
        .await
        .expect("request to deliver-alerts");
    assert_eq!(response.status(), 200, "delivery failed");
    response.json().await.expect("delivery report")
}

async fn collect(app: &TestApp, key: &str) -> (u16, Value) {
    let event = json!({"type": "server", "name": "call", "id": Uuid::new_v4()});
    let response = app.collect(key, &event).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The alerts table, one row per alert: (type, scope, period, threshold, state, attempts).
async fn alert_rows(app: &TestApp) -> Vec<(String, String, String, i32, String, i32)> {
    sqlx::query_as(
        "SELECT type, scope, period, threshold, state, attempts FROM alerts
         ORDER BY type, scope, threshold",
    )
    .fetch_all(app.state.db.pool())
    .await
    .expect("reading alerts")
}

async fn set_expiry(app: &TestApp, key: &NewKey, sql_interval: &str) {
    sqlx::query(&format!(
        "UPDATE api_keys SET expires_at = now() + interval '{sql_interval}' WHERE id = $1"
    ))
    .bind(key.id)
    .execute(app.state.db.pool())
    .await
    .expect("setting expires_at");
}

#[tokio::test]
async fn a_key_past_its_expires_at_is_refused_as_expired_on_the_warm_path_without_postgres() {
    let app = spawn_app_with(TestOptions {
        env: providers(false),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    set_expiry(&app, &key, "1 hour").await;
    let secret = key.secret.expose();
    let upload = json!({"filename": "a.png", "content_type": "image/png", "size": 10}).to_string();
    // Warm: the cache holds the key, with its expiry.
    assert_eq!(collect(&app, secret).await.0, 202);
    assert_eq!(sign(&app, Some(secret), &upload).await.0, 200);

    // Two hours later by Redis's clock, which the script judges by.
    app.state.advance_redis_time(Duration::from_secs(2 * 3600));
    let (trips, statements) = (app.state.upstash.round_trips(), app.state.db.statements());
    let (status, body) = collect(&app, secret).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("expired_key"))
    );
    assert_eq!(
        body["error"]["message"],
        "this API key expired at its expires_at"
    );
    let (status, body) = sign(&app, Some(secret), &upload).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("expired_key"))
    );
    assert_eq!(app.state.upstash.round_trips() - trips, 2);
    assert_eq!(app.state.db.statements() - statements, 0);
}

#[tokio::test]
async fn an_expired_key_cannot_read_its_analytics_from_the_cache_either() {
    let app = spawn_app_with(TestOptions::default()).await;
    let key = app.create_key().await;
    set_expiry(&app, &key, "1 hour").await;
    let secret = key.secret.expose();
    assert_eq!(
        app.read_analytics(secret, "view=overview").await.status,
        200
    );
    app.state.advance_redis_time(Duration::from_secs(2 * 3600));
    let read = app.read_analytics(secret, "view=overview").await;
    assert_eq!(
        (read.status, read.json()["error"]["code"].as_str()),
        (401, Some("expired_key"))
    );
}

#[tokio::test]
async fn a_key_that_expired_is_refused_by_the_postgres_lookup_too() {
    let app = spawn_app_with(TestOptions {
        env: providers(false),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    set_expiry(&app, &key, "-1 second").await;
    // Cold: the lookup fills the cache and the app's clock refuses it.
    let (status, body) = collect(&app, key.secret.expose()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("expired_key"))
    );
    let upload = json!({"filename": "a.png", "content_type": "image/png", "size": 10}).to_string();
    let (status, body) = sign(&app, Some(key.secret.expose()), &upload).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("expired_key"))
    );
}

#[tokio::test]
async fn a_rotated_keys_previous_secret_works_during_the_overlap_and_expires_after_it() {
    let app = spawn_app_with(TestOptions::default()).await;
    let old = app.create_key().await;
    // A rotation with an hour of overlap, as the management API writes it.
    let new = NewKey::generate();
    sqlx::query(
        "UPDATE api_keys SET previous_secret_hash = secret_hash,
                previous_publishable_key = publishable_key,
                previous_expires_at = now() + interval '1 hour',
                secret_hash = $2, publishable_key = $3
         WHERE id = $1",
    )
    .bind(old.id)
    .bind(hash_secret(new.secret.expose()).as_slice())
    .bind(&new.publishable)
    .execute(app.state.db.pool())
    .await
    .unwrap();

    assert_eq!(collect(&app, old.secret.expose()).await.0, 202);
    assert_eq!(collect(&app, &old.publishable).await.0, 202);
    assert_eq!(collect(&app, new.secret.expose()).await.0, 202);

    app.state.advance_redis_time(Duration::from_secs(2 * 3600));
    for stale in [old.secret.expose(), old.publishable.as_str()] {
        let (status, body) = collect(&app, stale).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("expired_key"))
        );
    }
    assert_eq!(collect(&app, new.secret.expose()).await.0, 202);
}

#[tokio::test]
async fn a_burst_of_500_across_the_80_percent_line_delivers_exactly_one_alert() {
    let receiver = Receiver::start("200").await;
    // Load-tolerant timeouts: a burst of hundreds queues up on two cores.
    let app = Arc::new(
        spawn_with(
            &receiver,
            vec![
                ("TOLLGATE_ADMISSION_TIMEOUT", "30s".to_owned()),
                ("TOLLGATE_UPSTASH_TIMEOUT", "30s".to_owned()),
            ],
        )
        .await,
    );
    let key = app.create_key().await;
    app.set_limits(&key, Some(100_000), Some(600), Some(1_000_000))
        .await;
    let secret = key.secret.expose().to_owned();
    assert_eq!(collect(&app, &secret).await.0, 202);

    let burst: Vec<_> = (0..500)
        .map(|_| {
            let (app, secret) = (Arc::clone(&app), secret.clone());
            tokio::spawn(async move { collect(&app, &secret).await.0 })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 202);
    }
    app.sync_metrics().await;
    app.sync_metrics().await;
    assert_eq!(
        alert_rows(&app).await,
        vec![(
            "quota.threshold".into(),
            "day".into(),
            chrono::Utc::now().format("%Y-%m-%d").to_string(),
            80,
            "pending".into(),
            0
        )]
    );
    let report = deliver(&app).await;
    assert_eq!(report["delivered"], 1, "{report}");
    assert_eq!(deliver(&app).await["sent"], 0);

    let received = receiver.received().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["verified"], true, "{received:?}");
    let payload = &received[0]["payload"];
    assert_eq!(payload["type"], "quota.threshold");
    assert_eq!(
        payload["data"],
        json!({"key_id": key.id, "owner_id": null, "quota": "daily",
               "period": chrono::Utc::now().format("%Y-%m-%d").to_string(),
               "threshold": 80, "limit": 600, "used": 480})
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(payload["timestamp"].as_str().unwrap()).is_ok(),
        "{payload}"
    );
    assert!(received[0]["id"].as_str().unwrap().starts_with("msg_"));
}

#[tokio::test]
async fn a_threshold_lost_in_a_redis_flush_is_recorded_again_and_delivered_once() {
    let receiver = Receiver::start("200").await;
    let app = spawn_with(&receiver, vec![]).await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1_000), Some(10), None).await;
    let secret = key.secret.expose();
    for _ in 0..7 {
        assert_eq!(collect(&app, secret).await.0, 202);
    }
    app.sync_metrics().await;
    // The eighth crosses 80 %; Redis loses it, and its alert, before a sync.
    assert_eq!(collect(&app, secret).await.0, 202);
    app.flush_redis().await;
    // Reseeded from Postgres (7), the next request crosses again.
    assert_eq!(collect(&app, secret).await.0, 202);
    // A sync that dies after its commit, then the runs that finish it.
    crash_function_at(
        &app,
        env!("CARGO_BIN_EXE_cron-sync-metrics"),
        "/api/cron/sync-metrics",
        "sync:after-commit",
    )
    .await;
    app.sync_metrics().await;
    app.sync_metrics().await;
    let rows = alert_rows(&app).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].3), ("quota.threshold", 80));

    // Flushed again: the reseed (now 8) meets 80 % at once and records it
    // again; Postgres drops the repeat.
    app.flush_redis().await;
    assert_eq!(collect(&app, secret).await.0, 202);
    let fields: Vec<String> = app
        .redis(tollgate::upstash::Command::new("HKEYS").arg(app.state.keys.metrics(key.id)))
        .await;
    assert!(
        fields
            .iter()
            .any(|f| f.contains("|al:quota.threshold:day:")),
        "{fields:?}"
    );
    app.sync_metrics().await;
    assert_eq!(alert_rows(&app).await.len(), 1);

    assert_eq!(deliver(&app).await["delivered"], 1);
    let received = receiver.received().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["payload"]["data"]["used"], 8);
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_same_webhook_id_three_times() {
    let receiver = Receiver::start("500,503,204").await;
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let mut env = receiver.env();
    env.push(("TOLLGATE_ALERT_THRESHOLDS", "100".to_owned()));
    let app = spawn_app_with(TestOptions {
        env,
        clock: Some(clock.clone()),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1_000), Some(1), None).await;
    assert_eq!(collect(&app, key.secret.expose()).await.0, 202);
    app.sync_metrics().await;

    let first = deliver(&app).await;
    assert_eq!(
        (first["sent"].as_u64(), first["retrying"].as_u64()),
        (Some(1), Some(1))
    );
    // Not due again until its backoff has passed.
    assert_eq!(deliver(&app).await["sent"], 0);
    for _ in 0..2 {
        clock.set(clock_now(&clock) + chrono::TimeDelta::hours(1));
        deliver(&app).await;
    }
    let received = receiver.received().await;
    assert_eq!(received.len(), 3, "{received:?}");
    let ids: Vec<&str> = received.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert!(
        received.iter().all(|r| r["verified"] == true),
        "{received:?}"
    );

    let rows = alert_rows(&app).await;
    assert_eq!((rows[0].4.as_str(), rows[0].5), ("delivered", 3));
    let attempts: Vec<(i32, Option<i32>, String)> = sqlx::query_as(
        "SELECT attempt, status, url FROM alert_attempts WHERE alert_id = $1 ORDER BY attempt",
    )
    .bind(ids[0])
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(
        attempts,
        vec![
            (1, Some(500), receiver.url.clone()),
            (2, Some(503), receiver.url.clone()),
            (3, Some(204), receiver.url.clone())
        ]
    );
}

fn clock_now(clock: &FixedClock) -> chrono::DateTime<chrono::Utc> {
    use tollgate::clock::Clock;
    clock.now()
}

#[tokio::test]
async fn an_alert_without_a_2xx_for_24_hours_fails_and_queue_status_counts_it() {
    let receiver = Receiver::start("500").await;
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let app = spawn_app_with(TestOptions {
        env: receiver.env(),
        clock: Some(clock.clone()),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    alerts::record_ban(
        &app.state.db,
        app.state.db.executor(),
        key.id,
        "abuse",
        None,
        clock_now(&clock),
    )
    .await
    .unwrap();
    let alerts_status = |status: Value| status["alerts"].clone();
    assert_eq!(
        alerts_status(app.queue_status().await),
        json!({"pending": 1, "failed": 0, "undeliverable": 0})
    );
    assert_eq!(deliver(&app).await["retrying"], 1);
    clock.set(clock_now(&clock) + chrono::TimeDelta::hours(25));
    let report = deliver(&app).await;
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(
        alerts_status(app.queue_status().await),
        json!({"pending": 0, "failed": 1, "undeliverable": 0})
    );
    assert_eq!(receiver.received().await.len(), 2);
}

#[tokio::test]
async fn a_key_banned_by_the_escalation_fires_key_banned_once() {
    let receiver = Receiver::start("200").await;
    let app = spawn_with(&receiver, vec![]).await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1), None, None).await;
    let secret = key.secret.expose();
    // Three minutes past the limit: the third violation bans the key.
    for minute in 0..3 {
        assert_eq!(collect(&app, secret).await.0, 202);
        assert_eq!(collect(&app, secret).await.0, 429);
        if minute < 2 {
            app.state.advance_redis_time(Duration::from_secs(60));
        }
    }
    assert_eq!(collect(&app, secret).await.0, 403);
    assert_eq!(collect(&app, secret).await.0, 403);
    app.sync_metrics().await;
    assert_eq!(deliver(&app).await["delivered"], 1);

    let received = receiver.received().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["verified"], true);
    let payload = &received[0]["payload"];
    assert_eq!(payload["type"], "key.banned");
    assert_eq!(payload["data"]["key_id"], json!(key.id));
    assert_eq!(payload["data"]["reason"], "rate limit violations");
    let banned_at =
        chrono::DateTime::parse_from_rfc3339(payload["data"]["banned_at"].as_str().unwrap())
            .unwrap();
    let until =
        chrono::DateTime::parse_from_rfc3339(payload["data"]["until"].as_str().unwrap()).unwrap();
    assert_eq!(until - banned_at, chrono::TimeDelta::minutes(5));
}

#[tokio::test]
async fn keys_expiring_within_seven_days_hear_once_from_the_cron() {
    let receiver = Receiver::start("200").await;
    let app = spawn_with(&receiver, vec![]).await;
    let soon = app.create_key().await;
    let later = app.create_key().await;
    let revoked = app.create_key().await;
    set_expiry(&app, &soon, "3 days").await;
    set_expiry(&app, &later, "10 days").await;
    set_expiry(&app, &revoked, "1 day").await;
    sqlx::query("UPDATE api_keys SET status = 'revoked', owner = 'acme' WHERE id = $1")
        .bind(revoked.id)
        .execute(app.state.db.pool())
        .await
        .unwrap();

    let report = deliver(&app).await;
    assert_eq!(
        (report["expiring"].as_u64(), report["delivered"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(deliver(&app).await["expiring"], 0);

    let received = receiver.received().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["verified"], true);
    let data = &received[0]["payload"]["data"];
    assert_eq!(data["key_id"], json!(soon.id));
    let expires_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM api_keys WHERE id = $1")
            .bind(soon.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(data["expires_at"], alerts::rfc3339(expires_at));
}

#[tokio::test]
async fn an_owners_endpoint_gets_its_alerts_signed_with_its_own_secret() {
    let deployment = Receiver::start("200").await;
    let app = spawn_with(&deployment, vec![]).await;
    let key = app.create_key().await;
    sqlx::query("UPDATE api_keys SET owner = 'acme' WHERE id = $1")
        .bind(key.id)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    // The secret is made by tollgate and shown once; the owner's receiver
    // verifies with it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/hooks")).unwrap();
    let first = alerts::set_endpoint(&app.state.db, app.state.db.executor(), "acme", &url)
        .await
        .unwrap();
    let secret = alerts::set_endpoint(&app.state.db, app.state.db.executor(), "acme", &url)
        .await
        .unwrap();
    assert_ne!(
        first.expose(),
        secret.expose(),
        "setting it again makes a new secret"
    );
    let owners = Receiver::start_on(secret.expose(), "200", port).await;
    let shown = alerts::get_endpoint(&app.state.db, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown.url, owners.url);

    let at = chrono::Utc::now();
    let until = at + chrono::TimeDelta::hours(1);
    let recorded = |at| {
        alerts::record_ban(
            &app.state.db,
            app.state.db.executor(),
            key.id,
            "abuse",
            Some(until),
            at,
        )
    };
    assert!(recorded(at).await.unwrap());
    assert!(
        !recorded(at).await.unwrap(),
        "the same ban is recorded once"
    );
    assert_eq!(deliver(&app).await["delivered"], 1);

    let received = owners.received().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["verified"], true, "{received:?}");
    assert_eq!(
        received[0]["payload"]["data"],
        json!({"key_id": key.id, "owner_id": "acme", "reason": "abuse",
               "banned_at": alerts::rfc3339(at), "until": alerts::rfc3339(until)})
    );
    assert!(deployment.received().await.is_empty());
    assert!(
        alerts::delete_endpoint(&app.state.db, app.state.db.executor(), "acme")
            .await
            .unwrap()
    );
    assert!(alerts::get_endpoint(&app.state.db, "acme")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn an_alert_with_no_endpoint_waits_a_day_then_is_undeliverable() {
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let app = spawn_app_with(TestOptions {
        clock: Some(clock.clone()),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    alerts::record_ban(
        &app.state.db,
        app.state.db.executor(),
        key.id,
        "abuse",
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let report = deliver(&app).await;
    assert_eq!(
        (report["sent"].as_u64(), report["undeliverable"].as_u64()),
        (Some(0), Some(0))
    );
    clock.set(clock_now(&clock) + chrono::TimeDelta::hours(25));
    assert_eq!(deliver(&app).await["undeliverable"], 1);
    assert_eq!(app.queue_status().await["alerts"]["undeliverable"], 1);
}

#[tokio::test]
async fn deliver_alerts_takes_the_cron_secret() {
    let app = spawn_app_with(TestOptions::default()).await;
    let response = app.get("/api/cron/deliver-alerts").await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn through_the_api_an_owners_endpoint_hears_of_a_ban_on_its_key_signed_with_the_secret_shown_once(
) {
    use tollgate::admin::{
        audit,
        root_keys::{self, Scope},
        Actor,
    };
    let deployment = Receiver::start("200").await;
    let app = spawn_with(&deployment, vec![]).await;
    let root = root_keys::create(&app.state.db, &Actor::Cli, "backend", &Scope::ALL)
        .await
        .unwrap()
        .secret
        .expose()
        .to_owned();
    let api = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = app
            .http
            .request(method, format!("{}{path}", app.address))
            .bearer_auth(&root);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/hooks");

    for (body, field) in [
        (json!({"url": url}), "owner_id"),
        (json!({"owner_id": "acme"}), "url"),
        (
            json!({"owner_id": "acme", "url": "ftp://hooks.acme.test/"}),
            "url",
        ),
        (
            json!({"owner_id": "acme", "url": format!("https://a.test/{}", "x".repeat(2048))}),
            "url",
        ),
        (json!({"owner_id": "", "url": url}), "owner_id"),
        (
            json!({"owner_id": "acme", "url": url, "secret": "whsec_mine"}),
            "secret",
        ),
    ] {
        let (status, answer) = api(
            reqwest::Method::PUT,
            "/api/keys/webhooks",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {answer}"
        );
    }
    let (status, set) = api(
        reqwest::Method::PUT,
        "/api/keys/webhooks",
        Some(json!({"owner_id": "acme", "url": url})),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    let secret = set["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let (status, shown) = api(
        reqwest::Method::GET,
        "/api/keys/webhooks?owner_id=acme",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(shown["endpoint"]["url"], url.as_str());
    assert!(
        !shown.to_string().contains(&secret),
        "the secret is shown once"
    );
    let owners = Receiver::start_on(&secret, "200", port).await;

    let (status, created) = api(
        reqwest::Method::POST,
        "/api/keys",
        Some(json!({"name": "acme prod", "owner_id": "acme", "tier": "pro"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key_id = created["key"]["id"].as_str().unwrap().to_owned();
    let (status, banned) = api(
        reqwest::Method::POST,
        "/api/keys/bans",
        Some(json!({"key_id": key_id, "reason": "chargeback", "duration_seconds": 3600})),
    )
    .await;
    assert_eq!(status, 201, "{banned}");
    assert_eq!(deliver(&app).await["delivered"], 1);
    assert_eq!(deliver(&app).await["delivered"], 0, "delivered once");

    let received = owners.received().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["verified"], true, "{received:?}");
    assert_eq!(received[0]["payload"]["type"], "key.banned");
    assert_eq!(received[0]["payload"]["data"]["key_id"], key_id.as_str());
    assert_eq!(received[0]["payload"]["data"]["reason"], "chargeback");
    assert!(
        deployment.received().await.is_empty(),
        "the owner's, not the deployment's"
    );

    let (status, deleted) = api(
        reqwest::Method::DELETE,
        "/api/keys/webhooks?owner_id=acme",
        None,
    )
    .await;
    assert_eq!((status, &deleted["deleted"]), (200, &json!(true)));
    let (status, _) = api(
        reqwest::Method::GET,
        "/api/keys/webhooks?owner_id=acme",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let actions: Vec<String> = audit::list(&app.state.db, &audit::Filter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(
        actions,
        [
            "root_key.create",
            "webhook.set",
            "key.create",
            "ban.add",
            "webhook.delete"
        ]
    );
}
