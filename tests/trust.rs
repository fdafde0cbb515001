//! Authentication under hostile clients: malformed and unknown keys cost
//! almost nothing, a client IP that keeps guessing is cut off before any
//! lookup, a revoke cannot be undone by a refill racing it, and the
//! operators' route is the operators'.

use serde_json::{json, Value};
use tollgate::{admin, apikeys};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, TestApp, TestOptions, CRON_SECRET};

/// A well-formed secret key that no key has.
fn unknown_secret() -> String {
    format!("sk_{}", Uuid::new_v4().simple()) + "0123456789abcdef"
}

/// A batch of `n` page views, about 200 bytes each.
fn batch(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({"type": "web", "name": "pageview", "id": Uuid::new_v4(),
                       "url": format!("https://shop.example/products/{i}?ref=newsletter"),
                       "properties": {"plan": "pro", "i": i}})
            })
            .collect(),
    )
}

async fn collect_from(app: &TestApp, key: &str, ip: &str, body: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/api/collect", app.address))
        .bearer_auth(key)
        .header("x-real-ip", ip)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Round trips, bytes sent to Upstash, and Postgres statements, so far.
fn costs(app: &TestApp) -> (u64, u64, u64) {
    (
        app.state.upstash.round_trips(),
        app.state.upstash.bytes_sent(),
        app.state.db.statements(),
    )
}

fn since(before: (u64, u64, u64), after: (u64, u64, u64)) -> (u64, u64, u64) {
    (after.0 - before.0, after.1 - before.1, after.2 - before.2)
}

#[tokio::test]
async fn a_malformed_key_is_refused_before_the_body_is_read_or_anything_is_asked() {
    let app = spawn_app().await;
    let body = batch(50);
    for malformed in [
        "sk_0123",
        "pk_NOTHEX0000000000000000000",
        "sk_\u{202e}",
        "rk_live",
    ] {
        let before = costs(&app);
        let (status, answer) = collect_from(&app, malformed, "203.0.113.1", &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some("invalid_key"))
        );
        assert_eq!(since(before, costs(&app)), (0, 0, 0), "{malformed}");
    }
    // So is a malformed key in the body of a beacon, which carries no header.
    let before = costs(&app);
    let response = app
        .http
        .post(format!("{}/api/collect", app.address))
        .body(r#"{"key":"pk_short","type":"web","name":"pageview"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(since(before, costs(&app)), (0, 0, 0));
}

#[tokio::test]
async fn an_unknown_key_costs_a_fifth_of_a_valid_ones_bytes_and_nothing_once_remembered() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let body = batch(100);

    // Warm the valid key, then measure one request of it.
    assert_eq!(
        collect_from(&app, &key.publishable, "203.0.113.2", &body)
            .await
            .0,
        202
    );
    let before = costs(&app);
    assert_eq!(
        collect_from(&app, &key.publishable, "203.0.113.2", &body)
            .await
            .0,
        202
    );
    let (_, valid_bytes, _) = since(before, costs(&app));

    let unknown = unknown_secret();
    let before = costs(&app);
    let (status, answer) = collect_from(&app, &unknown, "203.0.113.2", &body).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("invalid_key"))
    );
    let (_, unknown_bytes, statements) = since(before, costs(&app));
    assert!(
        unknown_bytes * 5 <= valid_bytes,
        "an unknown key sent {unknown_bytes} bytes to Upstash, a valid one {valid_bytes}"
    );
    assert_eq!(statements, 1, "one lookup in Postgres, the first time");

    // Remembered: the same key again costs no round trip and no statement.
    let before = costs(&app);
    for _ in 0..3 {
        assert_eq!(
            collect_from(&app, &unknown, "203.0.113.2", &body).await.0,
            401
        );
    }
    assert_eq!(since(before, costs(&app)), (0, 0, 0));

    // And another instance finds it in Redis's negative cache: one small
    // round trip, no statement.
    let other = tollgate::state::AppState::new((*app.state.config).clone()).unwrap();
    let presented = apikeys::PresentedKey::parse(&unknown).unwrap();
    let statements = other.db.statements();
    let resolved = tollgate::admission::resolve(&other, &presented, None)
        .await
        .unwrap();
    assert!(
        matches!(resolved, tollgate::admission::Resolved::Refused(_)),
        "the unknown key was admitted"
    );
    assert_eq!(other.db.statements() - statements, 0);
    assert_eq!(other.upstash.round_trips(), 1);
}

#[tokio::test]
async fn a_client_ip_that_keeps_guessing_keys_is_cut_off_before_any_lookup() {
    let app = spawn_app_with(TestOptions {
        env: vec![("TOLLGATE_FAILED_AUTH_LIMIT", "5".into())],
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let body = batch(1);
    for _ in 0..5 {
        let (status, answer) = collect_from(&app, &unknown_secret(), "198.51.100.66", &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some("invalid_key"))
        );
    }
    // The sixth guess is refused without a lookup, in any canonical spelling
    // of the address.
    for spelling in ["198.51.100.66", "::ffff:198.51.100.66"] {
        let before = costs(&app);
        let (status, answer) = collect_from(&app, &unknown_secret(), spelling, &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (429, Some("too_many_failed_authentications")),
            "{answer}"
        );
        let (trips, _, statements) = since(before, costs(&app));
        assert_eq!((trips, statements), (1, 0));
    }
    // Another client is not affected, nor is a key this instance knows.
    assert_eq!(
        collect_from(&app, &unknown_secret(), "198.51.100.67", &body)
            .await
            .0,
        401
    );
    assert_eq!(
        collect_from(&app, &key.publishable, "198.51.100.67", &body)
            .await
            .0,
        202
    );
    // Signed-url and analytics are guarded by the same count.
    let response = app
        .http
        .get(format!("{}/api/analytics?view=overview", app.address))
        .bearer_auth(unknown_secret())
        .header("x-real-ip", "198.51.100.66")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}

#[tokio::test]
async fn a_refill_that_began_before_a_revoke_does_not_write_back_an_active_entry() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let presented = apikeys::PresentedKey::parse(key.secret.expose()).unwrap();

    // A refill reads the key as active...
    let refill = apikeys::Refill::begin(&app.state, &presented)
        .await
        .unwrap();
    let looked_up = refill.lookup().await.unwrap();
    assert_eq!(looked_up.status, apikeys::KeyStatus::Active);
    // ...the CLI revokes the key and deletes its cache entries...
    let change = admin::revoke_key(&app.state.db, &app.state.keys, &admin::Actor::Cli, key.id)
        .await
        .unwrap();
    change.redis.apply(&app.state.upstash).await.unwrap();
    // ...and the refill's write arrives after: it must not land.
    assert!(!refill.store(&looked_up, None).await.unwrap());
    let entry: Option<String> = app
        .redis(
            tollgate::upstash::Command::new("GET")
                .arg(app.state.keys.key_cache(&presented.cache_id())),
        )
        .await;
    assert_eq!(entry, None);

    let response = app
        .http
        .post(format!("{}/api/signed-url", app.address))
        .bearer_auth(key.secret.expose())
        .body(r#"{"filename":"a.pdf","content_type":"application/pdf","size":1}"#)
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "revoked_key", "{answer}");

    // A refill that begins after the revoke writes the revoked entry.
    let refill = apikeys::Refill::begin(&app.state, &presented)
        .await
        .unwrap();
    let looked_up = refill.lookup().await.unwrap();
    assert_eq!(looked_up.status, apikeys::KeyStatus::Revoked);
    assert!(refill.store(&looked_up, None).await.unwrap());
}

#[tokio::test]
async fn queue_status_is_for_operators_and_answers_503_when_postgres_is_down() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    for token in [key.secret.expose(), key.publishable.as_str(), "nonsense"] {
        let response = app
            .http
            .get(format!("{}/api/cron/queue-status", app.address))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{token}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "invalid_cron_secret");
    }

    let down = spawn_app_with(TestOptions {
        database_url: Some("postgres://postgres@127.0.0.1:1/nowhere".into()),
        ..TestOptions::default()
    })
    .await;
    let response = down
        .http
        .get(format!("{}/api/cron/queue-status", down.address))
        .bearer_auth(CRON_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_publishable_key_gets_the_same_answer_on_every_secret_route() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let signed = app
        .http
        .post(format!("{}/api/signed-url", app.address))
        .bearer_auth(&key.publishable)
        .body(r#"{"filename":"a.pdf","content_type":"application/pdf","size":1}"#)
        .send()
        .await
        .unwrap();
    let analytics = app
        .http
        .get(format!("{}/api/analytics?view=overview", app.address))
        .bearer_auth(&key.publishable)
        .send()
        .await
        .unwrap();
    for response in [signed, analytics] {
        assert_eq!(response.status(), 403);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "secret_key_required");
    }
}

#[tokio::test]
async fn signed_url_failing_open_applies_the_keys_own_policy_and_bans_from_postgres() {
    let mut env = crate::helpers::providers(true);
    env.push(("TOLLGATE_FAIL_OPEN_ROUTES", "signed-url".into()));
    let app = spawn_app_with(TestOptions {
        upstash_url: Some("http://127.0.0.1:1".into()),
        env,
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    sqlx::query(
        "UPDATE api_keys SET allowed_content_types = ARRAY['image/png'], max_upload_bytes = 100,
                             default_provider = 'blob'
          WHERE id = $1",
    )
    .bind(key.id)
    .execute(app.state.db.pool())
    .await
    .unwrap();
    let sk = Some(key.secret.expose());
    let upload = |content_type: &str, size: u64| {
        json!({"filename": "a.bin", "content_type": content_type, "size": size}).to_string()
    };

    // The defaults would take a PDF and 100 MiB; this key takes neither.
    let (status, answer) = crate::helpers::sign(&app, sk, &upload("application/pdf", 10)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("content_type_not_allowed"))
    );
    let (status, _) = crate::helpers::sign(&app, sk, &upload("image/png", 101)).await;
    assert_eq!(status, 413);
    // Within the policy it signs, with the key's default provider.
    let (status, answer) = crate::helpers::sign(&app, sk, &upload("image/png", 100)).await;
    assert_eq!(
        (status, answer["provider"].as_str()),
        (200, Some("blob")),
        "{answer}"
    );

    // A ban Postgres holds stops it too.
    sqlx::query("INSERT INTO bans (subject_type, subject, reason) VALUES ('key', $1, 'abuse')")
        .bind(key.id.to_string())
        .execute(app.state.db.pool())
        .await
        .unwrap();
    let (status, answer) = crate::helpers::sign(&app, sk, &upload("image/png", 100)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("banned"))
    );
}

#[tokio::test]
async fn an_event_id_another_tenant_used_first_is_still_stored() {
    let app = spawn_app().await;
    let (first, second) = (app.create_key().await, app.create_key().await);
    let id = Uuid::new_v4();
    // An hour ago: within the accepted age whenever the test runs.
    let timestamp = (chrono::Utc::now() - chrono::TimeDelta::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let event = json!({"type": "server", "name": "signup", "id": id,
                       "timestamp": timestamp});
    for key in [&first, &second] {
        assert_eq!(app.collect(key.secret.expose(), &event).await.status(), 202);
    }
    // The first tenant's retry is still a duplicate.
    assert_eq!(
        app.collect(first.secret.expose(), &event).await.status(),
        202
    );
    app.drain().await;
    let owners: Vec<Uuid> =
        sqlx::query_scalar("SELECT api_key_id FROM events WHERE id = $1 ORDER BY api_key_id")
            .bind(id)
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    let mut expected = vec![first.id, second.id];
    expected.sort();
    assert_eq!(owners, expected);
}

#[tokio::test]
async fn analytics_reads_are_rate_limited_refused_while_banned_and_logged_but_spend_no_quota() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    // Two requests a minute, one a day: reads must not spend the day.
    app.set_limits(&key, Some(2), Some(1), None).await;
    app.state.freeze_redis_time();
    let read = || async {
        let response = app
            .http
            .get(format!("{}/api/analytics?view=overview", app.address))
            .bearer_auth(key.secret.expose())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let limit = response
            .headers()
            .get("x-ratelimit-limit")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, limit, response.json::<Value>().await.unwrap())
    };
    let (status, limit, _) = read().await;
    assert_eq!((status, limit.as_deref()), (200, Some("2")));
    assert_eq!(read().await.0, 200);
    let (status, _, answer) = read().await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );

    // Reads have a limiter of their own: the metered route's minute and
    // its daily quota of one are untouched.
    let event = json!({"type": "server", "name": "signup"});
    assert_eq!(app.collect(key.secret.expose(), &event).await.status(), 202);
    // And a dashboard polling far past its limit gets no ban.
    for _ in 0..20 {
        assert_eq!(read().await.0, 429);
    }
    let bans: Vec<String> = app
        .redis(tollgate::upstash::Command::new("KEYS").arg(app.key("ban:*")))
        .await;
    assert!(bans.is_empty(), "{bans:?}");

    // A banned key reads nothing.
    let change = admin::add_ban(
        &app.state.db,
        &app.state.keys,
        &admin::Actor::Cli,
        admin::NewBan {
            subject: admin::BanSubject::Key(key.id),
            reason: "abuse".into(),
            duration: None,
        },
    )
    .await
    .unwrap();
    change.redis.apply(&app.state.upstash).await.unwrap();
    let (status, _, answer) = read().await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("banned"))
    );

    // The reads were logged (three admitted or refused by the limiter as
    // rows and counters), and none of them is usage.
    app.sync_metrics().await;
    app.drain().await;
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_requests_log WHERE api_key_id = $1 AND route = 'analytics'",
    )
    .bind(key.id)
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(logged, 2, "the two admitted reads");
    let refused: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT route, code, refusals FROM api_refusals_minutely WHERE api_key_id = $1
          ORDER BY code",
    )
    .bind(key.id)
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(
        refused,
        vec![
            ("analytics".into(), "banned".into(), 1),
            ("analytics".into(), "rate_limited".into(), 21)
        ]
    );
    let usage: (i64, i64) =
        sqlx::query_as("SELECT total_requests, successful_requests FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(usage, (1, 1), "only the collect request is usage");
}

#[tokio::test]
async fn a_refused_flood_costs_counters_not_rows() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(5), None, None).await;
    app.state.freeze_redis_time();
    let event = json!({"type": "server", "name": "ping"});
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for _ in 0..50 {
        *statuses
            .entry(
                app.collect(key.secret.expose(), &event)
                    .await
                    .status()
                    .as_u16(),
            )
            .or_default() += 1;
    }
    assert_eq!(statuses, [(202, 5), (429, 45)].into());
    // The admitted requests' entries (their events and their log lines),
    // and nothing for the 45 refused.
    let mut queued = 0;
    for queue in app.state.keys.event_queues() {
        queued += app
            .redis::<i64>(tollgate::upstash::Command::new("XLEN").arg(queue))
            .await;
    }
    assert_eq!(queued, 5 * 2);
    app.drain().await;
    app.sync_metrics().await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_requests_log WHERE api_key_id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(rows, 5);
    let refused: i64 = sqlx::query_scalar(
        "SELECT sum(refusals)::bigint FROM api_refusals_minutely
          WHERE api_key_id = $1 AND route = 'collect' AND code = 'rate_limited'",
    )
    .bind(key.id)
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(refused, 45);
    let failed: i64 = sqlx::query_scalar("SELECT failed_requests FROM api_keys WHERE id = $1")
        .bind(key.id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(failed, 45, "refusals still count as failed requests");
}

#[tokio::test]
async fn the_drain_deletes_log_rows_past_the_log_retention() {
    let app = spawn_app_with(TestOptions {
        env: vec![("TOLLGATE_LOG_RETENTION", "30d".into())],
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let db = app.state.db.pool();
    for days_ago in [45, 31, 29, 1] {
        sqlx::query(
            "INSERT INTO api_requests_log (id, api_key_id, route, outcome, status, latency_ms, created_at)
             VALUES (gen_random_uuid(), $1, 'collect', 'admitted', 202, 1, now() - make_interval(days => $2))",
        )
        .bind(key.id)
        .bind(days_ago)
        .execute(db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO uploads_log (id, api_key_id, provider, object_key, filename, content_type,
                                      size_bytes, created_at)
             VALUES (gen_random_uuid(), $1, 's3', 'k', 'f', 'image/png', 1, now() - make_interval(days => $2))",
        )
        .bind(key.id)
        .bind(days_ago)
        .execute(db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO api_refusals_minutely (api_key_id, minute, route, code, refusals)
             VALUES ($1, date_trunc('minute', now()) - make_interval(days => $2), 'collect', 'banned', 3)",
        )
        .bind(key.id)
        .bind(days_ago)
        .execute(db)
        .await
        .unwrap();
    }
    app.drain().await;
    for table in ["api_requests_log", "uploads_log", "api_refusals_minutely"] {
        let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(db)
            .await
            .unwrap();
        assert_eq!(left, 2, "{table} keeps the rows of the last 30 days");
    }
}

#[tokio::test]
async fn a_key_the_cache_holds_is_answered_whatever_its_neighbours_failed() {
    let app = spawn_app_with(TestOptions {
        env: vec![("TOLLGATE_FAILED_AUTH_LIMIT", "2".into())],
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let body = batch(1);
    // The key's cache entry is filled, then its IP (a carrier's NAT, say)
    // reaches the limit with other people's guesses.
    assert_eq!(
        collect_from(&app, &key.publishable, "198.51.100.80", &body)
            .await
            .0,
        202
    );
    for _ in 0..2 {
        assert_eq!(
            collect_from(&app, &unknown_secret(), "198.51.100.80", &body)
                .await
                .0,
            401
        );
    }
    assert_eq!(
        collect_from(&app, &unknown_secret(), "198.51.100.80", &body)
            .await
            .0,
        429
    );
    // A fresh instance, which does not know the key, still admits it: the
    // limit refuses lookups, not keys the cache holds.
    let other = tollgate::state::AppState::new((*app.state.config).clone()).unwrap();
    let presented = apikeys::PresentedKey::parse(&key.publishable).unwrap();
    let resolved = tollgate::admission::resolve(&other, &presented, Some("198.51.100.80"))
        .await
        .unwrap();
    assert!(
        matches!(resolved, tollgate::admission::Resolved::Id(id) if id == key.id),
        "a cached, active key was refused"
    );
}
