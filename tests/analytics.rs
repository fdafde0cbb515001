//! `GET /api/analytics`: views exact to the last request, cached with
//! versioned invalidation, and only ever of the key presented.

use std::collections::BTreeMap;

use chrono::{NaiveDate, Utc};
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
    let answer = app.read_analytics(key, query).await;
    let body = answer.json();
    (answer.status, answer.cache, body)
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
async fn the_events_view_counts_the_keys_collected_events_from_collect_to_the_rollups() {
    // A fixed clock, at least two minutes into its day: the events and
    // "today" stay on one day whenever it runs.
    let mut now = Utc::now();
    if now.time() < chrono::NaiveTime::from_hms_opt(0, 2, 0).unwrap() {
        now -= chrono::Duration::minutes(3);
    }
    let app = spawn_app_with(TestOptions {
        env: providers(true),
        clock: Some(std::sync::Arc::new(tollgate::clock::FixedClock::new(now))),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let pk = &key.publishable;
    // Two visits by the tracker's session id: s1 enters on a campaign link
    // and leaves from /pricing 60 s later; s2 bounces.
    let views = [
        (
            "s1",
            100,
            "/?utm_source=newsletter&utm_medium=email&utm_campaign=launch",
            "https://news.example.com/item?id=1",
            "DE",
        ),
        ("s2", 80, "/", "https://news.example.com/other", "DE"),
        ("s1", 40, "/pricing", "", "FR"),
    ];
    for (i, (session, ago, path, referrer, country)) in views.iter().enumerate() {
        let at = now - chrono::Duration::seconds(*ago);
        let mut event = json!({"type": "web", "name": "pageview", "session_id": session,
                               "timestamp": at.to_rfc3339(),
                               "url": format!("https://shop.example{path}")});
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
            .header("x-forwarded-for", format!("203.0.113.{i}"))
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
    assert_eq!(view["pageviews"], 3, "{view}");
    let days = view["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    let last = days.last().unwrap();
    assert_eq!(last["day"], now.date_naive().to_string());
    assert_eq!(
        (&last["events"], &last["pageviews"]),
        (&json!(4), &json!(3))
    );
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
    assert_eq!(view["browsers"][0]["value"], "Firefox");
    assert_eq!(
        view["utm_sources"],
        json!([{"value": "newsletter", "events": 1}])
    );
    assert_eq!(
        view["utm_mediums"],
        json!([{"value": "email", "events": 1}])
    );
    assert_eq!(
        view["utm_campaigns"],
        json!([{"value": "launch", "events": 1}])
    );
    // Three visits: s1 (two pages, 60 s), s2 (a bounce) and the server
    // event, which has no session id but a visitor id (the caller's), so
    // it is a visit of one event with no path. Four visitors: each page
    // view came from its own address and browser, and the server.
    assert_eq!(
        (
            &view["visitors"],
            &view["visits"],
            &view["views_per_visit"],
            &view["bounce_rate"],
            &view["visit_duration"]
        ),
        (
            &json!(4),
            &json!(3),
            &json!(1.0),
            &json!(0.6667),
            &json!(20.0)
        ),
        "{view}"
    );
    assert_eq!((&last["visitors"], &last["visits"]), (&json!(4), &json!(3)));
    assert_eq!(
        view["entry_pages"],
        json!([{"value": "/", "visits": 2}]),
        "{view}"
    );
    assert_eq!(
        view["exit_pages"],
        json!([{"value": "/", "visits": 1}, {"value": "/pricing", "visits": 1}]),
        "{view}"
    );
    assert_eq!(view["previous"]["events"], 0);
    assert_eq!(view["change"]["events"], Value::Null);
}

/// Seeds one day of a key's daily rollup; `visitors` are hashed into the
/// day's sketch as the drain hashes visitor ids.
struct RollupDay<'a> {
    day: NaiveDate,
    events: i64,
    pageviews: i64,
    visitors: &'a [&'a str],
    visits: i64,
    bounces: i64,
    visit_seconds: i64,
}

async fn seed_rollup_day(app: &TestApp, key_id: Uuid, d: RollupDay<'_>) {
    sqlx::query(
        "INSERT INTO event_rollup_daily
             (api_key_id, day, events, pageviews, visitors, visits, bounces, visit_seconds)
         SELECT $1, $2, $3, $4,
                coalesce((SELECT hll_add_agg(hll_hash_text(v), 14, 5) FROM unnest($5::text[]) v),
                         hll_empty(14, 5)),
                $6, $7, $8",
    )
    .bind(key_id)
    .bind(d.day)
    .bind(d.events)
    .bind(d.pageviews)
    .bind(d.visitors)
    .bind(d.visits)
    .bind(d.bounces)
    .bind(d.visit_seconds)
    .execute(app.state.db.pool())
    .await
    .unwrap();
}

/// Seeds value rollups: (dimension, day, value, count).
async fn seed_rollup_values(app: &TestApp, key_id: Uuid, rows: &[(&str, NaiveDate, &str, i64)]) {
    let column = |f: fn(&(&str, NaiveDate, &str, i64)) -> String| -> Vec<String> {
        rows.iter().map(f).collect()
    };
    sqlx::query(
        "INSERT INTO event_rollup_values (api_key_id, dimension, day, value, events)
         SELECT $1, d, day::date, v, n
         FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[]) AS t(d, day, v, n)",
    )
    .bind(key_id)
    .bind(column(|r| r.0.to_owned()))
    .bind(column(|r| r.1.to_string()))
    .bind(column(|r| r.2.to_owned()))
    .bind(rows.iter().map(|r| r.3).collect::<Vec<i64>>())
    .execute(app.state.db.pool())
    .await
    .unwrap();
}

/// An app whose clock is fixed, so "today" cannot turn over mid-test.
async fn spawn_at_a_fixed_time() -> (TestApp, NaiveDate) {
    let now = Utc::now();
    let app = spawn_app_with(TestOptions {
        env: providers(true),
        clock: Some(std::sync::Arc::new(tollgate::clock::FixedClock::new(now))),
        ..TestOptions::default()
    })
    .await;
    (app, now.date_naive())
}

#[tokio::test]
async fn the_events_view_gives_each_web_figure_exactly_from_the_rollups() {
    let (app, today) = spawn_at_a_fixed_time().await;
    let key = app.create_key().await;
    let other = app.create_key().await;
    let day = |back: i64| today - chrono::Duration::days(back);
    // The range is the last three days; the previous period the three before.
    let days = [
        RollupDay {
            day: day(2),
            events: 5,
            pageviews: 4,
            visitors: &["a", "b"],
            visits: 2,
            bounces: 1,
            visit_seconds: 120,
        },
        RollupDay {
            day: day(1),
            events: 3,
            pageviews: 3,
            visitors: &["a", "c"],
            visits: 1,
            bounces: 0,
            visit_seconds: 300,
        },
        // The previous period.
        RollupDay {
            day: day(4),
            events: 4,
            pageviews: 2,
            visitors: &["x", "y"],
            visits: 2,
            bounces: 2,
            visit_seconds: 0,
        },
        // Outside both periods: before the previous one, and after the range.
        RollupDay {
            day: day(6),
            events: 100,
            pageviews: 100,
            visitors: &["z"],
            visits: 50,
            bounces: 0,
            visit_seconds: 1000,
        },
        RollupDay {
            day: day(-1),
            events: 100,
            pageviews: 100,
            visitors: &["z"],
            visits: 50,
            bounces: 0,
            visit_seconds: 1000,
        },
    ];
    for d in days {
        seed_rollup_day(&app, key.id, d).await;
    }
    // Another key's data on the same days counts for it alone.
    seed_rollup_day(
        &app,
        other.id,
        RollupDay {
            day: day(1),
            events: 1000,
            pageviews: 1000,
            visitors: &["o"],
            visits: 1000,
            bounces: 1000,
            visit_seconds: 1000,
        },
    )
    .await;
    seed_rollup_values(&app, other.id, &[("path", day(1), "/other", 1000)]).await;
    let mut values = vec![
        ("name", day(2), "pageview", 4),
        ("name", day(2), "signup", 1),
        ("name", day(1), "pageview", 3),
        ("path", day(2), "/", 3),
        ("path", day(2), "/pricing", 1),
        ("path", day(1), "/", 2),
        ("path", day(1), "/docs", 1),
        ("path", day(6), "/old", 50),
        ("path", day(4), "/old", 50),
        ("referrer", day(2), "news.example.com", 2),
        ("browser", day(2), "Firefox", 5),
        ("device", day(1), "mobile", 3),
        ("utm_source", day(2), "newsletter", 2),
        ("utm_source", day(1), "newsletter", 1),
        ("utm_source", day(1), "ads", 1),
        ("utm_medium", day(2), "email", 2),
        ("utm_campaign", day(1), "winter", 1),
        ("entry", day(2), "/", 2),
        ("entry", day(1), "/docs", 1),
        ("exit", day(2), "/pricing", 1),
        ("exit", day(2), "/", 1),
        ("exit", day(1), "/", 1),
    ];
    // Twelve countries of one event each: the ranking keeps ten, by name.
    let countries: Vec<String> = (0..12).map(|i| format!("C{i:02}")).collect();
    values.extend(countries.iter().map(|c| ("country", day(0), c.as_str(), 1)));
    seed_rollup_values(&app, key.id, &values).await;

    let query = format!("view=events&start={}&end={}", day(2), day(0));
    let (status, _, view) = read(&app, key.secret.expose(), &query).await;
    assert_eq!(status, 200, "{view}");
    let figures = |v: &Value| {
        json!({
            "events": v["events"], "visitors": v["visitors"], "visits": v["visits"],
            "pageviews": v["pageviews"], "views_per_visit": v["views_per_visit"],
            "bounce_rate": v["bounce_rate"], "visit_duration": v["visit_duration"],
        })
    };
    assert_eq!(
        figures(&view),
        json!({"events": 8, "visitors": 3, "visits": 3, "pageviews": 7,
               "views_per_visit": 2.33, "bounce_rate": 0.3333, "visit_duration": 140.0}),
        "{view}"
    );
    let previous = &view["previous"];
    assert_eq!(
        (previous["start"].as_str(), previous["end"].as_str()),
        (
            Some(day(5).to_string().as_str()),
            Some(day(3).to_string().as_str())
        )
    );
    assert_eq!(
        figures(previous),
        json!({"events": 4, "visitors": 2, "visits": 2, "pageviews": 2,
               "views_per_visit": 1.0, "bounce_rate": 1.0, "visit_duration": 0.0})
    );
    assert_eq!(
        view["change"],
        json!({"events": 1.0, "visitors": 0.5, "visits": 0.5, "pageviews": 2.5,
               "views_per_visit": 1.33, "bounce_rate": -0.6667, "visit_duration": null})
    );
    assert_eq!(
        view["days"],
        json!([
            {"day": day(2), "events": 5, "visitors": 2, "visits": 2, "pageviews": 4},
            {"day": day(1), "events": 3, "visitors": 2, "visits": 1, "pageviews": 3},
            {"day": day(0), "events": 0, "visitors": 0, "visits": 0, "pageviews": 0},
        ])
    );
    assert_eq!(
        view["names"],
        json!([{"name": "pageview", "events": 7}, {"name": "signup", "events": 1}])
    );
    assert_eq!(
        view["top_paths"],
        json!([{"value": "/", "events": 5}, {"value": "/docs", "events": 1},
               {"value": "/pricing", "events": 1}])
    );
    assert_eq!(
        view["entry_pages"],
        json!([{"value": "/", "visits": 2}, {"value": "/docs", "visits": 1}])
    );
    assert_eq!(
        view["exit_pages"],
        json!([{"value": "/", "visits": 2}, {"value": "/pricing", "visits": 1}])
    );
    assert_eq!(
        view["utm_sources"],
        json!([{"value": "newsletter", "events": 3}, {"value": "ads", "events": 1}])
    );
    assert_eq!(
        view["utm_mediums"],
        json!([{"value": "email", "events": 2}])
    );
    assert_eq!(
        view["utm_campaigns"],
        json!([{"value": "winter", "events": 1}])
    );
    assert_eq!(
        view["top_referrers"],
        json!([{"value": "news.example.com", "events": 2}])
    );
    assert_eq!(view["browsers"], json!([{"value": "Firefox", "events": 5}]));
    assert_eq!(view["devices"], json!([{"value": "mobile", "events": 3}]));
    let expected: Vec<Value> = countries[..10]
        .iter()
        .map(|c| json!({"value": c, "events": 1}))
        .collect();
    assert_eq!(view["countries"], json!(expected));
}

#[tokio::test]
async fn an_empty_range_answers_zeros_and_null_ratios_and_a_vanished_period_a_full_drop() {
    let (app, today) = spawn_at_a_fixed_time().await;
    let key = app.create_key().await;
    let day = |back: i64| today - chrono::Duration::days(back);

    // Nothing at all: zeros, and no ratio or change divides by zero.
    let (status, _, view) = read(&app, key.secret.expose(), "view=events").await;
    assert_eq!(status, 200, "{view}");
    for field in ["events", "visitors", "visits", "pageviews"] {
        assert_eq!(view[field], 0, "{field}: {view}");
        assert_eq!(view["previous"][field], 0, "{field}: {view}");
    }
    for field in ["views_per_visit", "bounce_rate", "visit_duration"] {
        assert_eq!(view[field], Value::Null, "{field}: {view}");
        assert_eq!(view["previous"][field], Value::Null, "{field}: {view}");
    }
    assert!(
        view["change"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_null),
        "{view}"
    );
    assert_eq!(view["days"].as_array().unwrap().len(), 30);
    for ranking in [
        "names",
        "top_paths",
        "entry_pages",
        "exit_pages",
        "utm_sources",
    ] {
        assert_eq!(view[ranking], json!([]), "{ranking}");
    }

    // Data only in the previous period: everything fell by all of it, and
    // the ratios of a range without visits stay null.
    seed_rollup_day(
        &app,
        key.id,
        RollupDay {
            day: day(3),
            events: 6,
            pageviews: 4,
            visitors: &["a"],
            visits: 2,
            bounces: 1,
            visit_seconds: 60,
        },
    )
    .await;
    let query = format!("view=events&start={}&end={}", day(2), day(0));
    let (_, _, view) = read(&app, key.secret.expose(), &query).await;
    assert_eq!(view["previous"]["visit_duration"], 30.0, "{view}");
    assert_eq!(
        view["change"],
        json!({"events": -1.0, "visitors": -1.0, "visits": -1.0, "pageviews": -1.0,
               "views_per_visit": null, "bounce_rate": null, "visit_duration": null})
    );
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
    tollgate::admin::revoke_key(
        &app.state.db,
        &app.state.keys,
        &tollgate::admin::Actor::Cli,
        key.id,
    )
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

/// Seeds `keys` keys with usage rows, raw events spread over two months and
/// the rollups of 60 days (two values a day in every dimension), and
/// refreshes the planner's statistics. The raw events are there so that a
/// plan reading them would have rows to read.
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
    for statement in [
        "INSERT INTO api_key_usage_daily (api_key_id, day, total_requests)
         SELECT k.id, current_date - d, 10 FROM api_keys k, generate_series(0, 59) d",
        "INSERT INTO provider_usage (api_key_id, provider, uploads)
         SELECT k.id, p, 60 FROM api_keys k, unnest(ARRAY['s3', 'blob']) p",
        "INSERT INTO provider_usage_daily (api_key_id, provider, day, uploads)
         SELECT k.id, p, current_date - d, 1 FROM api_keys k, generate_series(0, 59) d,
                unnest(ARRAY['s3', 'blob']) p",
        "INSERT INTO event_rollup_daily (api_key_id, day, events, pageviews, visitors, visits)
         SELECT k.id, current_date - d, 100, 80,
                hll_add(hll_empty(14, 5), hll_hash_text(k.id::text || d)), 20
         FROM api_keys k, generate_series(0, 59) d",
        "INSERT INTO event_rollup_values (api_key_id, dimension, day, value, events)
         SELECT k.id, dim, current_date - d, '/p' || v, 10
         FROM api_keys k, generate_series(0, 59) d, generate_series(1, 2) v,
              unnest(ARRAY['name', 'path', 'referrer', 'country', 'browser', 'device',
                           'utm_source', 'utm_medium', 'utm_campaign', 'entry', 'exit']) dim",
        // A month of applied sync batches, one a minute.
        "INSERT INTO sync_batches (batch_id, counters)
         SELECT 'b' || i, 1 FROM generate_series(1, 43200) i",
        // The events reach 40 days back, past the months the migration made
        // partitions for in the first days of a month: make them as the drain
        // would, so the seed holds on every day of the year.
        "SELECT ensure_event_partitions((now() - interval '40 days')::date, 3)",
    ] {
        sqlx::query(statement).execute(db).await.unwrap();
    }
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

/// The tables a view may read, each only through an index whose first
/// column is the key: the rollups and the counters, never raw events.
const READABLE: [&str; 7] = [
    "api_keys",
    "provider_usage",
    "api_key_usage_daily",
    "provider_usage_daily",
    "event_rollup_daily",
    "event_rollup_values",
    "sync_batches",
];

/// What is wrong with a statement's plan: a read of `events` or any of its
/// partitions, a table read other than by an index, or a table no view
/// should read.
async fn plan_faults(app: &TestApp, sql: &str, params: &views::Params) -> (Vec<String>, Value) {
    let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
    let row = analytics::bind(sqlx::query(&explain), params)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    let plan: sqlx::types::Json<Value> = sqlx::Row::get(&row, 0);
    let mut nodes = vec![];
    plan_nodes(&plan.0[0]["Plan"], &mut nodes);
    let mut faults = vec![];
    // Subplans (the per-field SELECTs) hang under the same tree.
    for node in &nodes {
        let Some(relation) = node["Relation Name"].as_str() else {
            // A bitmap index scan names its index, not its table; the heap
            // scan above it names the table and is checked there.
            continue;
        };
        let scan = node["Node Type"].as_str().unwrap_or_default();
        if relation == "events" || relation.starts_with("events_") {
            faults.push(format!("reads raw events ({relation}, {scan})"));
        } else if !READABLE.contains(&relation) {
            faults.push(format!("reads {relation}"));
        }
        if !matches!(scan, "Index Scan" | "Index Only Scan" | "Bitmap Heap Scan") {
            faults.push(format!("{scan} of {relation}"));
        }
    }
    (faults, plan.0)
}

#[tokio::test]
async fn no_view_reads_raw_events_or_scans_a_table() {
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
        let (faults, plan) = plan_faults(&app, &views::sql(view), &params).await;
        assert!(
            faults.is_empty(),
            "{}: {faults:?}\n{}",
            view.as_str(),
            serde_json::to_string_pretty(&plan).unwrap()
        );
    }
    // The check itself catches what it guards against: the raw-event read
    // the events view used to make, and a scan of a rollup.
    let raw = "SELECT count(*), count(DISTINCT visitor_id) FROM events
               WHERE api_key_id = $1 AND occurred_at >= $2 AND occurred_at < $3
                 AND $4::date <= $5::date AND $6::text[] IS NOT NULL AND $7::text IS NOT NULL";
    let (faults, _) = plan_faults(&app, raw, &params).await;
    assert!(
        faults.iter().any(|f| f.starts_with("reads raw events")),
        "{faults:?}"
    );
    let scan = "SELECT sum(events) FROM event_rollup_daily WHERE visits > 0
                  AND $1::uuid IS NOT NULL AND $2::timestamptz <= $3::timestamptz
                  AND $4::date <= $5::date AND $6::text[] IS NOT NULL AND $7::text IS NOT NULL";
    let (faults, _) = plan_faults(&app, scan, &params).await;
    assert!(
        faults.iter().any(|f| f.starts_with("Seq Scan")),
        "{faults:?}"
    );
}
