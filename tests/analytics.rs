//! `GET /api/analytics`: views exact to the last request, cached with
//! versioned invalidation, and only ever of the key presented.

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{json, Value};
use tollgate::{
    analytics::{self, views, View},
    upstash::Command,
};
use uuid::Uuid;

use crate::helpers::{crash_function_at, providers, sign, spawn_app_with, TestApp, TestOptions};

async fn spawn() -> TestApp {
    spawn_app_with(TestOptions {
        env: providers(true),
        ..TestOptions::default()
    })
    .await
}

/// Reads a view; the status, the `X-Cache` header and the body.
async fn read(app: &TestApp, key: &str, query: &str) -> (u16, String, Value) {
    let response = app
        .http
        .get(format!("{}/api/analytics?{query}", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cache, response.json().await.unwrap_or(Value::Null))
}

/// What the clients saw: the truth the views must match.
#[derive(Debug, Default, Clone, PartialEq)]
struct Seen {
    requests: i64,
    successful: i64,
    failed: i64,
    files: i64,
    bytes: i64,
    /// Uploads and bytes per provider.
    providers: BTreeMap<String, (i64, i64)>,
    file_types: BTreeMap<String, i64>,
}

/// Sends `n` signed-url requests cycling through uploads to both providers
/// and a refused one, and records what the client saw.
async fn traffic(app: &TestApp, key: &str, n: usize, seen: &mut Seen) {
    let bodies = [
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": 1000}),
            "s3",
        ),
        (
            json!({"filename": "b.pdf", "content_type": "application/pdf", "size": 250, "provider": "blob"}),
            "blob",
        ),
        (
            json!({"filename": "../c.png", "content_type": "image/png", "size": 5}),
            "",
        ),
    ];
    for i in 0..n {
        let (body, provider) = &bodies[i % bodies.len()];
        let (status, _) = sign(app, Some(key), &body.to_string()).await;
        seen.requests += 1;
        if status == 200 {
            let size = body["size"].as_i64().unwrap();
            seen.successful += 1;
            seen.files += 1;
            seen.bytes += size;
            let slot = seen.providers.entry(provider.to_string()).or_default();
            slot.0 += 1;
            slot.1 += size;
            *seen
                .file_types
                .entry(body["content_type"].as_str().unwrap().to_owned())
                .or_default() += 1;
        } else {
            seen.failed += 1;
        }
    }
}

/// Checks every counter view against what the clients saw.
async fn assert_views_match(app: &TestApp, key: &str, seen: &Seen) {
    let (status, _, overview) = read(app, key, "view=overview").await;
    assert_eq!(status, 200, "{overview}");
    let totals = &overview["totals"];
    assert_eq!(
        (
            totals["requests"].as_i64(),
            totals["successful"].as_i64(),
            totals["failed"].as_i64(),
            totals["files"].as_i64(),
            totals["bytes"].as_i64()
        ),
        (
            Some(seen.requests),
            Some(seen.successful),
            Some(seen.failed),
            Some(seen.files),
            Some(seen.bytes)
        ),
        "{overview}"
    );
    let providers: BTreeMap<String, (i64, i64)> = overview["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["provider"].as_str().unwrap().to_owned(),
                (p["uploads"].as_i64().unwrap(), p["bytes"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(providers, seen.providers);

    let (_, _, daily) = read(app, key, "view=daily&limit=3").await;
    let days = daily["days"].as_array().unwrap();
    assert_eq!(days.len(), 3, "{daily}");
    let requests: i64 = days.iter().map(|d| d["requests"].as_i64().unwrap()).sum();
    assert_eq!(requests, seen.requests, "every request was today: {daily}");

    let (_, _, by_provider) = read(app, key, "view=providers").await;
    for series in by_provider["daily"].as_array().unwrap() {
        let name = series["provider"].as_str().unwrap();
        let uploads: i64 = series["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["uploads"].as_i64().unwrap())
            .sum();
        assert_eq!(uploads, seen.providers[name].0, "{by_provider}");
    }

    let (_, _, types) = read(app, key, "view=file-types").await;
    let file_types: BTreeMap<String, i64> = types["file_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["content_type"].as_str().unwrap().to_owned(),
                t["files"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(file_types, seen.file_types);
    assert_eq!(types["total_files"].as_i64(), Some(seen.files));
}

#[tokio::test]
async fn every_view_is_exact_up_to_the_last_request_before_and_after_a_sync() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    let mut seen = Seen::default();

    traffic(&app, secret, 9, &mut seen).await;
    assert_views_match(&app, secret, &seen).await;

    app.sync_metrics().await;
    traffic(&app, secret, 7, &mut seen).await;
    // The first views were cached under the version the sync retired.
    assert_views_match(&app, secret, &seen).await;

    app.sync_metrics().await;
    assert_views_match(&app, secret, &seen).await;
}

#[tokio::test]
async fn a_cache_hit_costs_two_round_trips_and_no_statement_and_a_sync_retires_it() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    let mut seen = Seen::default();
    traffic(&app, secret, 3, &mut seen).await;

    let (status, cache, first) = read(&app, secret, "view=overview").await;
    assert_eq!((status, cache.as_str()), (200, "miss"));

    let (trips, statements) = (app.state.upstash.round_trips(), app.state.db.statements());
    let (status, cache, second) = read(&app, secret, "view=overview").await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    assert_eq!(
        (&second["totals"], &second["providers"]),
        (&first["totals"], &first["providers"])
    );
    // Admission (the read is limited and logged) and the cache, side by side.
    assert_eq!(app.state.upstash.round_trips() - trips, 2);
    assert_eq!(app.state.db.statements() - statements, 0);

    // New requests do not retire the cache; a hit adds them to it.
    traffic(&app, secret, 3, &mut seen).await;
    let (_, cache, third) = read(&app, secret, "view=overview").await;
    assert_eq!(
        (cache.as_str(), third["totals"]["requests"].as_i64()),
        ("hit", Some(6))
    );

    // A sync bumps the key's version; the next read is fresh and exact.
    app.sync_metrics().await;
    let (_, cache, fourth) = read(&app, secret, "view=overview").await;
    assert_eq!(
        (cache.as_str(), fourth["totals"]["requests"].as_i64()),
        ("miss", Some(6))
    );

    // The cache entry is named by key, view and parameters, holds the
    // version it was computed under, and expires.
    let version: Option<String> = app
        .redis(Command::new("GET").arg(app.state.keys.analytics_version(key.id)))
        .await;
    let entry = app.state.keys.analytics_cache(key.id, "overview");
    let cached: Option<String> = app.redis(Command::new("HGET").arg(&entry).arg("v")).await;
    assert_eq!(cached, version);
    let ttl: i64 = app.redis(Command::new("TTL").arg(&entry)).await;
    assert!((1..=60).contains(&ttl), "TTL of {entry} is {ttl}");
}

#[tokio::test]
async fn views_stay_exact_while_a_sync_batch_is_pending_or_applied_but_not_deleted() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    let mut seen = Seen::default();

    // The batch is taken from the counters but not in Postgres yet.
    traffic(&app, secret, 6, &mut seen).await;
    crash_function_at(
        &app,
        env!("CARGO_BIN_EXE_cron-sync-metrics"),
        "/api/cron/sync-metrics",
        "sync:after-snapshot",
    )
    .await;
    traffic(&app, secret, 3, &mut seen).await;
    assert_views_match(&app, secret, &seen).await;

    // The batch is in Postgres and still in Redis: it must count once.
    // Retire the cached views so the next reads compute with the batch.
    let _: i64 = app
        .redis(Command::new("INCR").arg(app.state.keys.analytics_version(key.id)))
        .await;
    crash_function_at(
        &app,
        env!("CARGO_BIN_EXE_cron-sync-metrics"),
        "/api/cron/sync-metrics",
        "sync:before-delete",
    )
    .await;
    let pending: Vec<String> = app
        .redis(Command::new("SMEMBERS").arg(app.state.keys.metrics_batches_pending()))
        .await;
    assert_eq!(pending.len(), 1, "the applied batch is still pending");
    assert_views_match(&app, secret, &seen).await;

    app.sync_metrics().await;
    assert_views_match(&app, secret, &seen).await;
}

#[tokio::test]
async fn the_events_view_counts_the_keys_collected_events() {
    // A fixed clock: the events and "today" stay on one day whenever it runs.
    let today = Utc::now();
    let app = spawn_app_with(TestOptions {
        env: providers(true),
        clock: Some(std::sync::Arc::new(tollgate::clock::FixedClock::new(today))),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let pk = &key.publishable;
    let visits = [
        ("/", "https://news.example.com/item?id=1", "DE", "v1"),
        ("/", "https://news.example.com/other", "DE", "v2"),
        ("/pricing", "", "FR", "v1"),
    ];
    for (i, (path, referrer, country, visitor)) in visits.iter().enumerate() {
        let mut event = json!({"type": "web", "name": "pageview", "url": format!("https://shop.example{path}")});
        if !referrer.is_empty() {
            event["referrer"] = json!(referrer);
        }
        let response = app
            .http
            .post(format!("{}/api/collect", app.address))
            .bearer_auth(pk)
            .header(
                "user-agent",
                format!(
                    "Mozilla/5.0 (X11; Linux x86_64; rv:12{i}.0) Gecko/20100101 Firefox/12{i}.0"
                ),
            )
            .header("x-vercel-ip-country", *country)
            .header(
                "x-forwarded-for",
                format!("203.0.113.{}", if *visitor == "v1" { 1 } else { 2 }),
            )
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let response = app
        .collect(
            key.secret.expose(),
            &json!([{"type": "server", "name": "signup"}]),
        )
        .await;
    assert_eq!(response.status(), 202);
    app.drain().await;

    let (status, _, view) = read(&app, key.secret.expose(), "view=events").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["events"], 4, "{view}");
    let days = view["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    let last = days.last().unwrap();
    assert_eq!(last["day"], today.date_naive().to_string());
    assert_eq!(last["events"], 4);
    assert_eq!(
        view["names"],
        json!([{"name": "pageview", "events": 3}, {"name": "signup", "events": 1}])
    );
    assert_eq!(
        view["top_paths"],
        json!([{"value": "/", "events": 2}, {"value": "/pricing", "events": 1}])
    );
    assert_eq!(
        view["top_referrers"],
        json!([{"value": "news.example.com", "events": 2}])
    );
    assert_eq!(
        view["countries"],
        json!([{"value": "DE", "events": 2}, {"value": "FR", "events": 1}])
    );
    assert!(view["visitors"].as_i64().unwrap() >= 2, "{view}");
    assert_eq!(view["browsers"][0]["value"], "Firefox");
}

#[tokio::test]
async fn key_a_never_reads_key_b_by_any_parameter() {
    let app = spawn().await;
    let a = app.create_key().await;
    let b = app.create_key().await;
    let mut seen_b = Seen::default();
    traffic(&app, b.secret.expose(), 6, &mut seen_b).await;
    let response = app
        .collect(
            b.secret.expose(),
            &json!({"type": "server", "name": "b-only"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    // Collect is metered too.
    seen_b.requests += 1;
    seen_b.successful += 1;
    app.drain().await;
    app.sync_metrics().await;
    traffic(&app, b.secret.expose(), 3, &mut seen_b).await;

    // A has no data: every view and every way of asking shows zeros.
    let a_secret = a.secret.expose();
    let b_id = b.id.to_string();
    let queries = [
        "view=overview".to_owned(),
        "view=daily".to_owned(),
        "view=providers".to_owned(),
        "view=file-types".to_owned(),
        "view=events".to_owned(),
        format!("view=overview&key_id={b_id}"),
        format!("view=overview&api_key_id={b_id}"),
        format!("view=daily&key={}", b.secret.expose()),
        format!("view=events&start=2000-01-01&end={b_id}"),
        "view=overview%00&key_id=x".to_owned(),
    ];
    for query in &queries {
        let (status, _, body) = read(&app, a_secret, query).await;
        let text = body.to_string();
        assert!(!text.contains("b-only"), "{query}: {text}");
        if status == 200 {
            assert!(!text.contains(&b_id), "{query}: {text}");
            assert_eq!(body["key_id"], a.id.to_string(), "{query}");
            for field in ["requests", "files", "bytes", "uploads", "events"] {
                assert_no_positive(&body, field, query);
            }
        } else {
            assert_eq!(status, 400, "{query}: {text}");
        }
    }
    // And B sees its own numbers through the same cache, unaffected by A.
    assert_views_match(&app, b.secret.expose(), &seen_b).await;
    let (_, _, events) = read(&app, b.secret.expose(), "view=events").await;
    assert_eq!(events["events"], 1);
}

/// Fails if any `field` anywhere in `value` is above zero.
fn assert_no_positive(value: &Value, field: &str, query: &str) {
    match value {
        Value::Object(map) => {
            for (name, item) in map {
                if name == field {
                    assert!(item.as_i64().unwrap_or(0) <= 0, "{query}: {field} = {item}");
                }
                assert_no_positive(item, field, query);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| assert_no_positive(i, field, query)),
        _ => {}
    }
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_parameter_and_bad_keys_are_refused() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    let cases = [
        ("", "missing_view", "view"),
        ("view=monthly", "invalid_view", "view"),
        ("view=daily&start=2026-02-30", "invalid_date", "start"),
        ("view=daily&end=tomorrow", "invalid_date", "end"),
        (
            "view=daily&start=2026-11-02&end=2026-11-01",
            "invalid_range",
            "start",
        ),
        (
            "view=events&start=2020-01-01&end=2026-01-01",
            "invalid_range",
            "start",
        ),
        ("view=daily&limit=500", "invalid_limit", "limit"),
        ("view=daily&limit=-1", "invalid_limit", "limit"),
        (
            "view=file-types&start=2026-01-01",
            "invalid_parameter",
            "start",
        ),
        ("view=overview&color=red", "unknown_parameter", "color"),
    ];
    for (query, code, parameter) in cases {
        let (status, _, body) = read(&app, secret, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{parameter}`")),
            "{query}: {message}"
        );
    }

    let (status, _, body) = read(&app, &key.publishable, "view=overview").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("secret_key_required"))
    );
    let (status, _, body) = read(&app, "sk_nobody", "view=overview").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_key"))
    );
    let response = app.get("/api/analytics?view=overview").await;
    assert_eq!(response.status(), 401);
    let response = app
        .http
        .post(format!("{}/api/analytics?view=overview", app.address))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    // Revocation takes effect at once, cached result or not.
    assert_eq!(read(&app, secret, "view=overview").await.0, 200);
    tollgate::admin::revoke_key(&app.state.db, &app.state.keys, key.id)
        .await
        .unwrap()
        .redis
        .apply(&app.state.upstash)
        .await
        .unwrap();
    let (status, _, body) = read(&app, secret, "view=overview").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("revoked_key"))
    );
}

#[tokio::test]
async fn with_upstash_down_views_come_from_postgres_alone() {
    let up = spawn().await;
    let key = up.create_key().await;
    let mut seen = Seen::default();
    traffic(&up, key.secret.expose(), 3, &mut seen).await;
    up.sync_metrics().await;

    let down = spawn_app_with(TestOptions {
        upstash_url: Some("http://127.0.0.1:9".to_owned()),
        database_url: Some(up.state.config.database.url.expose().to_owned()),
        ..TestOptions::default()
    })
    .await;
    let (status, cache, body) = read(&down, key.secret.expose(), "view=overview").await;
    assert_eq!((status, cache.as_str()), (200, "bypass"), "{body}");
    assert_eq!(body["includes_unsynced"], false);
    assert_eq!(body["totals"]["requests"], 3);
}

/// Seeds `keys` keys with usage rows and events spread over two months, and
/// refreshes the planner's statistics.
async fn seed_volume(app: &TestApp, keys: i64, events_per_key: i64) -> Uuid {
    let db = app.state.db.pool();
    sqlx::query(
        "INSERT INTO api_keys (id, name, secret_hash, publishable_key, tier)
         SELECT gen_random_uuid(), 'k' || i, sha256(('s' || i)::bytea), 'pk_seed_' || i, 'free'
         FROM generate_series(1, $1) i",
    )
    .bind(keys)
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO api_key_usage_daily (api_key_id, day, total_requests)
         SELECT k.id, current_date - d, 10 FROM api_keys k, generate_series(0, 59) d;
         ",
    )
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO provider_usage (api_key_id, provider, uploads)
         SELECT k.id, p, 60 FROM api_keys k, unnest(ARRAY['s3', 'blob']) p",
    )
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO provider_usage_daily (api_key_id, provider, day, uploads)
         SELECT k.id, p, current_date - d, 1 FROM api_keys k, generate_series(0, 59) d,
                unnest(ARRAY['s3', 'blob']) p",
    )
    .execute(db)
    .await
    .unwrap();
    // The events reach 40 days back, past the months the migration made
    // partitions for in the first days of a month: make them as the drain
    // would, so the seed holds on every day of the year.
    sqlx::query("SELECT ensure_event_partitions((now() - interval '40 days')::date, 3)")
        .execute(db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (id, api_key_id, type, name, occurred_at, received_at, path, country)
         SELECT gen_random_uuid(), k.id, 'web', 'pageview',
                now() - (random() * interval '40 days'), now(), '/p' || (i % 20), 'DE'
         FROM api_keys k, generate_series(1, $1) i",
    )
    .bind(events_per_key)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(db).await.unwrap();
    sqlx::query_scalar("SELECT id FROM api_keys ORDER BY id LIMIT 1")
        .fetch_one(db)
        .await
        .unwrap()
}

/// Every node of a JSON plan, depth first.
fn plan_nodes(plan: &Value, out: &mut Vec<Value>) {
    out.push(plan.clone());
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            plan_nodes(child, out);
        }
    }
}

#[tokio::test]
async fn no_view_scans_a_whole_table_or_partition_for_one_key() {
    let app = spawn().await;
    let key_id = seed_volume(&app, 300, 100).await;
    let today = Utc::now().date_naive();
    let params = views::Params {
        key_id,
        from: Utc::now() - chrono::Duration::days(30),
        until: Utc::now(),
        start: today - chrono::Duration::days(29),
        end: today,
        pending: vec!["batch".to_owned()],
        timezone: "UTC".to_owned(),
    };
    for view in View::ALL {
        let sql = format!("EXPLAIN (FORMAT JSON) {}", views::sql(view));
        let row = analytics::bind(sqlx::query(&sql), &params)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
        let plan: sqlx::types::Json<Value> = sqlx::Row::get(&row, 0);
        let mut nodes = vec![];
        plan_nodes(&plan.0[0]["Plan"], &mut nodes);
        // Subplans (the per-field SELECTs) hang under InitPlan nodes too.
        for node in &nodes {
            let relation = node["Relation Name"].as_str().unwrap_or_default();
            let scan = node["Node Type"].as_str().unwrap_or_default();
            assert!(
                !(scan == "Seq Scan" && relation != "sync_batches"),
                "{}: sequential scan of {relation}\n{}",
                view.as_str(),
                serde_json::to_string_pretty(&plan.0).unwrap()
            );
        }
        let scanned: Vec<&str> = nodes
            .iter()
            .filter_map(|n| n["Relation Name"].as_str())
            .collect();
        if view == View::Events {
            assert!(
                scanned
                    .iter()
                    .all(|r| !r.starts_with("events_") || r.starts_with("events_20")),
                "{scanned:?}"
            );
            assert!(
                scanned.iter().any(|r| r.starts_with("events_20")),
                "{scanned:?}"
            );
        }
    }
}
