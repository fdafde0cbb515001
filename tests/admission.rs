//! Admission: rate limits, quotas, bans and their escalation, all decided
//! by one script in one round trip.

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

fn event() -> Value {
    json!({"type": "server", "name": "call", "id": Uuid::new_v4()})
}

/// Sends one collect request with the secret key; returns status and body.
async fn call(app: &TestApp, key: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = app.collect(key, &event()).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        headers,
    )
}

/// An app for bursts of hundreds of requests at once, which queue up on two
/// cores: the admission timeout (500 ms) and the Upstash call timeout (2 s
/// in tests) would send late ones to the fallback, which is not what these
/// tests are about.
async fn spawn_for_bursts() -> TestApp {
    crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        env: vec![
            ("TOLLGATE_ADMISSION_TIMEOUT", "30s".to_owned()),
            ("TOLLGATE_UPSTASH_TIMEOUT", "30s".to_owned()),
        ],
        ..crate::helpers::TestOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_burst_of_500_concurrent_requests_against_a_limit_of_100_admits_exactly_100() {
    let app = Arc::new(spawn_for_bursts().await);
    let key = app.create_key().await;
    app.set_limits(&key, Some(100), Some(1_000_000), Some(1_000_000))
        .await;
    let secret = key.secret.expose().to_owned();
    // The limiter must not refill while the burst runs.
    app.state.freeze_redis_time();
    // Warm the caches so every request of the burst takes the one-trip path.
    let (status, _, _) = call(&app, &secret).await;
    assert_eq!(status, 202);
    // Let the one request's share of the limit come back.
    app.state.advance_redis_time(Duration::from_secs(60));

    let burst: Vec<_> = (0..500)
        .map(|_| {
            let app = Arc::clone(&app);
            let secret = secret.clone();
            tokio::spawn(async move { call(&app, &secret).await.0 })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    for request in burst {
        match request.await.unwrap() {
            202 => admitted += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(admitted, 100);
    // Refused, not banned: a burst is one violating minute at most.
    assert_eq!(refused, 400);
    app.state.advance_redis_time(Duration::from_secs(60));
    assert_eq!(call(&app, &secret).await.0, 202);
}

#[tokio::test]
async fn a_single_burst_of_300_against_100_is_refused_not_banned() {
    let app = Arc::new(spawn_for_bursts().await);
    let key = app.create_key().await;
    app.set_limits(&key, Some(100), Some(1_000_000), Some(1_000_000))
        .await;
    let secret = key.secret.expose().to_owned();
    app.state.freeze_redis_time();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for _ in 0..300 {
        *statuses.entry(call(&app, &secret).await.0).or_default() += 1;
    }
    assert_eq!(statuses, [(202, 100), (429, 200)].into());
    let bans: Vec<String> = app
        .redis(tollgate::upstash::Command::new("KEYS").arg(app.key("ban:*")))
        .await;
    assert!(bans.is_empty(), "{bans:?}");
    app.state.advance_redis_time(Duration::from_secs(60));
    assert_eq!(call(&app, &secret).await.0, 202);
}

#[tokio::test]
async fn a_flood_from_one_ip_with_a_publishable_key_bans_that_ip_and_not_the_key() {
    let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        env: vec![("TOLLGATE_PUBLIC_IP_RATE_LIMIT", "10".into())],
        ..Default::default()
    })
    .await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1_000), None, None).await;
    let (app, key) = (&app, &key);
    let from = |ip: &'static str| async move {
        app.http
            .post(format!("{}/api/collect", app.address))
            .bearer_auth(&key.publishable)
            .header("x-real-ip", ip)
            .json(&event())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // The flooder hammers for three minutes: each is a violation of its IP.
    for minute in 0..3 {
        let mut refused = 0;
        for _ in 0..30 {
            if from("198.51.100.66").await == 429 {
                refused += 1;
            }
        }
        assert!(refused >= 10, "minute {minute}: {refused} refused");
        if minute < 2 {
            app.state.advance_redis_time(Duration::from_secs(60));
        }
    }
    assert_eq!(
        from("198.51.100.66").await,
        403,
        "the flooding IP is banned"
    );
    // The tenant's other visitors and its secret key are untouched.
    assert_eq!(from("198.51.100.67").await, 202);
    assert_eq!(call(app, key.secret.expose()).await.0, 202);
    let key_bans: i64 = app
        .redis(
            tollgate::upstash::Command::new("EXISTS")
                .arg(app.state.keys.key_ban(&key.id.to_string())),
        )
        .await;
    assert_eq!(key_bans, 0);
}

#[tokio::test]
async fn admitted_and_refused_responses_carry_the_limit_headers() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(2), None, None).await;
    let secret = key.secret.expose();

    let (status, _, headers) = call(&app, secret).await;
    assert_eq!(status, 202);
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "1");
    assert!(headers.contains_key("x-ratelimit-reset"));
    assert_eq!(headers["ratelimit-policy"], "2;w=60");
    assert!(headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("limit=2, remaining=1, reset="));
    call(&app, secret).await;

    let (status, body, headers) = call(&app, secret).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry after {retry}");
}

#[tokio::test]
async fn daily_and_monthly_quotas_stop_at_their_limit_and_the_day_resets() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1_000), Some(3), Some(5)).await;
    let secret = key.secret.expose();

    for _ in 0..3 {
        assert_eq!(call(&app, secret).await.0, 202, "within the daily quota");
    }
    let (status, body, headers) = call(&app, secret).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "daily_quota_exceeded");
    assert!(headers.contains_key("retry-after"));

    // The next day: two more fit the month, the third does not.
    app.state.advance_redis_time(Duration::from_secs(86_400));
    assert_eq!(call(&app, secret).await.0, 202);
    assert_eq!(call(&app, secret).await.0, 202);
    let (status, body, _) = call(&app, secret).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "monthly_quota_exceeded");
}

#[tokio::test]
async fn violations_escalate_to_five_minutes_then_a_day_then_for_good() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1), None, None).await;
    let secret = key.secret.expose();
    let ban_row = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM bans WHERE subject_type = 'key' AND subject = $1
             AND lifted_at IS NULL AND expires_at IS NULL",
        )
        .bind(key.id.to_string())
        .fetch_one(app.state.db.pool())
        .await
        .unwrap()
    };
    // Three minutes of hammering past the limit: each is a violation, and
    // the third bans.
    let violate_three_times = || async {
        for minute in 0..3 {
            assert_eq!(call(&app, secret).await.0, 202);
            assert_eq!(call(&app, secret).await.0, 429);
            if minute < 2 {
                assert_eq!(call(&app, secret).await.0, 429, "refused, not banned");
                app.state.advance_redis_time(Duration::from_secs(60));
            }
        }
    };

    violate_three_times().await;
    let (status, body, _) = call(&app, secret).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("banned"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("banned until"));
    app.state.advance_redis_time(Duration::from_secs(4 * 60));
    assert_eq!(
        call(&app, secret).await.0,
        403,
        "still banned after 4 minutes"
    );
    app.state.advance_redis_time(Duration::from_secs(2 * 60));

    violate_three_times().await;
    assert_eq!(call(&app, secret).await.0, 403);
    app.state.advance_redis_time(Duration::from_secs(23 * 3600));
    assert_eq!(
        call(&app, secret).await.0,
        403,
        "the second ban lasts a day"
    );
    app.state.advance_redis_time(Duration::from_secs(2 * 3600));
    assert_eq!(ban_row().await, 0);

    violate_three_times().await;
    let (status, body, _) = call(&app, secret).await;
    assert_eq!(status, 403);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("permanently"));
    assert_eq!(ban_row().await, 1, "a permanent ban is written to Postgres");
    app.state
        .advance_redis_time(Duration::from_secs(40 * 86_400));
    assert_eq!(call(&app, secret).await.0, 403);
}

#[tokio::test]
async fn a_permanent_ban_survives_a_redis_flush() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    sqlx::query("INSERT INTO bans (subject_type, subject, reason) VALUES ('key', $1, 'abuse')")
        .bind(key.id.to_string())
        .execute(app.state.db.pool())
        .await
        .unwrap();
    app.flush_redis().await;

    let (status, body, _) = call(&app, key.secret.expose()).await;

    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "banned");
    assert!(body["error"]["message"].as_str().unwrap().contains("abuse"));
}

#[tokio::test]
async fn after_a_flush_mid_day_the_quota_is_reseeded_from_postgres_and_still_holds() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1_000), Some(5), None).await;
    let secret = key.secret.expose();
    for _ in 0..3 {
        assert_eq!(call(&app, secret).await.0, 202);
    }
    let report = app.sync_metrics().await;
    assert_eq!(report["batches"], 1, "{report}");

    app.flush_redis().await;

    assert_eq!(call(&app, secret).await.0, 202);
    assert_eq!(call(&app, secret).await.0, 202);
    let (status, body, _) = call(&app, secret).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "daily_quota_exceeded");
}

#[tokio::test]
async fn publishable_keys_are_also_limited_per_client_ip() {
    let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        env: vec![("TOLLGATE_PUBLIC_IP_RATE_LIMIT", "3".into())],
        ..Default::default()
    })
    .await;
    let key = app.create_key().await;
    let from = |ip: &'static str| {
        app.http
            .post(format!("{}/api/collect", app.address))
            .bearer_auth(&key.publishable)
            .header("x-real-ip", ip)
            .json(&event())
            .send()
    };
    for _ in 0..3 {
        assert_eq!(from("198.51.100.1").await.unwrap().status(), 202);
    }
    let refused = from("198.51.100.1").await.unwrap();
    assert_eq!(refused.status(), 429);
    // Another client of the same key is not affected.
    assert_eq!(from("198.51.100.2").await.unwrap().status(), 202);
}

#[tokio::test]
async fn admitted_requests_are_logged_through_the_queue_and_refusals_counted() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1), None, None).await;
    call(&app, key.secret.expose()).await;
    call(&app, key.secret.expose()).await;

    app.drain().await;
    app.sync_metrics().await;

    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT outcome, status FROM api_requests_log ORDER BY created_at, status")
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(rows, vec![("admitted".to_owned(), 202)]);
    let refusals: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT route, code, refusals FROM api_refusals_minutely")
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(
        refusals,
        vec![("collect".to_owned(), "rate_limited".to_owned(), 1)]
    );
}

#[tokio::test]
async fn a_full_redis_counts_no_request_twice_and_lets_no_limit_pass() {
    let redis = crate::helpers::PrivateRedis::start().await;
    let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        redis_url: Some(redis.url.clone()),
        env: vec![("TOLLGATE_ADMISSION_RESOLVE", "300ms".into())],
        ..Default::default()
    })
    .await;
    let (capped, open, banned) = (
        app.create_key().await,
        app.create_key().await,
        app.create_key().await,
    );
    app.set_limits(&capped, Some(1_000), Some(3), None).await;
    for _ in 0..3 {
        assert_eq!(call(&app, capped.secret.expose()).await.0, 202);
    }
    assert_eq!(call(&app, capped.secret.expose()).await.0, 429);
    for _ in 0..2 {
        assert_eq!(call(&app, open.secret.expose()).await.0, 202);
    }
    assert_eq!(call(&app, banned.secret.expose()).await.0, 202);
    sqlx::query("INSERT INTO bans (subject_type, subject, reason) VALUES ('key', $1, 'abuse')")
        .bind(banned.id.to_string())
        .execute(app.state.db.pool())
        .await
        .unwrap();
    app.drain().await;
    app.sync_metrics().await;

    // Redis is full: every write, and so every admission, is refused.
    let mut direct = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "noeviction", "maxmemory", "1"][..])
        .query_async(&mut direct)
        .await
        .unwrap();
    let (status, body, _) = call(&app, capped.secret.expose()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("daily_quota_exceeded")),
        "the quota Postgres shows used up still holds"
    );
    let (status, body, _) = call(&app, banned.secret.expose()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("banned"))
    );
    for _ in 0..3 {
        assert_eq!(call(&app, open.secret.expose()).await.0, 202);
    }

    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"][..])
        .query_async(&mut direct)
        .await
        .unwrap();
    app.drain().await;
    app.sync_metrics().await;
    let usage = |key: Uuid| {
        let db = app.state.db.pool().clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT total_requests, successful_requests FROM api_keys WHERE id = $1",
            )
            .bind(key)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let stored = |key: Uuid| {
        let db = app.state.db.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE api_key_id = $1")
                .bind(key)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    // Nothing refused while Redis was full was stored or counted.
    assert_eq!(usage(capped.id).await, (4, 3));
    assert_eq!(stored(capped.id).await, 3);
    assert_eq!(stored(banned.id).await, 1);
    // The open key's events were all stored, once. Its three requests while
    // Redis was full are not counted: the script may have run for them, so
    // counting them again could count them twice.
    assert_eq!(stored(open.id).await, 5);
    assert_eq!(usage(open.id).await, (2, 2));
}

#[tokio::test]
async fn a_script_that_fails_part_way_is_counted_once_and_its_events_stored_once() {
    let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        env: vec![("TOLLGATE_ADMISSION_RESOLVE", "300ms".into())],
        ..Default::default()
    })
    .await;
    let key = app.create_key().await;
    assert_eq!(call(&app, key.secret.expose()).await.0, 202);
    app.drain().await;
    // Every queue shard is now something a stream command refuses, so the
    // script fails at its first XADD, after it has counted the request.
    let shards = app.state.keys.event_queues();
    for shard in &shards {
        let _: i64 = app
            .redis(tollgate::upstash::Command::new("DEL").arg(shard))
            .await;
        let _: () = app
            .redis(
                tollgate::upstash::Command::new("SET")
                    .arg(shard)
                    .arg("not a stream"),
            )
            .await;
    }
    let id = Uuid::new_v4();
    let response = app
        .collect(
            key.secret.expose(),
            &json!({"type": "server", "name": "call", "id": id}),
        )
        .await;
    assert_eq!(response.status(), 202, "stored straight in Postgres");
    for shard in &shards {
        let _: i64 = app
            .redis(tollgate::upstash::Command::new("DEL").arg(shard))
            .await;
    }

    app.drain().await;
    app.sync_metrics().await;
    let (requests, stored): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT total_requests FROM api_keys WHERE id = $1),
                (SELECT count(*) FROM events WHERE api_key_id = $1)",
    )
    .bind(key.id)
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!((requests, stored), (2, 2), "each request and event once");
}
