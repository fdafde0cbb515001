//! Days at the edges of the calendar: the first minutes of a month and of a
//! year in UTC, for a key whose time zone is still in the previous day, and
//! a range across a DST change. The app's clock is fixed and the admission
//! script's clock (Redis's) is moved to the same instant, so these tests
//! mean the same on every day of the year.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use tollgate::{apikeys::NewKey, clock::FixedClock};

use crate::helpers::{spawn_app_with, TestApp, TestOptions};

/// Spawns the app with its clock, and Redis's as the scripts see it, at `at`.
async fn spawn_at(at: DateTime<Utc>) -> TestApp {
    let app = spawn_app_with(TestOptions {
        clock: Some(Arc::new(FixedClock::new(at))),
        ..TestOptions::default()
    })
    .await;
    let ahead = (at - Utc::now())
        .to_std()
        .expect("the fixed instant is in the future");
    app.state.advance_redis_time(ahead);
    app
}

/// A key in the time zone `zone`.
async fn key_in(app: &TestApp, zone: &str) -> NewKey {
    let key = app.create_key().await;
    sqlx::query("UPDATE api_keys SET timezone = $2 WHERE id = $1")
        .bind(key.id)
        .bind(zone)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    key
}

async fn view(app: &TestApp, key: &NewKey, query: &str) -> Value {
    let response = app
        .http
        .get(format!("{}/api/analytics?{query}", app.address))
        .bearer_auth(key.secret.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The `(day, field)` pairs of a view's days that are not zero.
fn nonzero_days(view: &Value, field: &str) -> Vec<(String, i64)> {
    view["days"]
        .as_array()
        .expect("days")
        .iter()
        .map(|d| {
            (
                d["day"].as_str().unwrap().to_owned(),
                d[field].as_i64().unwrap(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

async fn partitions(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'events'::regclass ORDER BY 1",
    )
    .fetch_all(app.state.db.pool())
    .await
    .unwrap()
}

/// At `at` (just past a UTC month or year boundary), collects one event of
/// the previous UTC month and one of the new, both on the key's previous
/// local day `local_day`, then drains, syncs and reads the views.
async fn collect_across_the_boundary(at: DateTime<Utc>, local_day: &str, months: [&str; 2]) {
    let app = spawn_at(at).await;
    let key = key_in(&app, "America/Los_Angeles").await;
    let before = (at - Duration::minutes(10)).to_rfc3339();
    let response = app
        .collect(
            key.secret.expose(),
            &json!([
                {"type": "server", "name": "before", "timestamp": before},
                {"type": "server", "name": "after"},
            ]),
        )
        .await;
    assert_eq!(response.status(), 202);

    // The usage counters are already on the key's day before any sync.
    let daily = view(&app, &key, "view=daily").await;
    assert_eq!(
        daily["days"].as_array().unwrap().last().unwrap()["day"],
        local_day
    );
    assert_eq!(
        nonzero_days(&daily, "requests"),
        [(local_day.to_owned(), 1)]
    );

    let drained = app.drain().await;
    assert_eq!(drained["inserted"], 2, "{drained}");
    let made = partitions(&app).await;
    for month in months {
        assert!(made.contains(&format!("events_{month}")), "{made:?}");
    }
    let stored: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT occurred_at FROM events ORDER BY occurred_at")
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(stored, [at - Duration::minutes(10), at]);

    app.sync_metrics().await;
    let usage: Vec<(chrono::NaiveDate, i64)> =
        sqlx::query_as("SELECT day, total_requests FROM api_key_usage_daily WHERE api_key_id = $1")
            .bind(key.id)
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(usage, [(local_day.parse().unwrap(), 1)]);

    // A fresh read after the sync (the sync retires cached views).
    let daily = view(&app, &key, "view=daily").await;
    assert_eq!(
        nonzero_days(&daily, "requests"),
        [(local_day.to_owned(), 1)]
    );
    let events = view(&app, &key, "view=events").await;
    assert_eq!(events["events"], 2, "{events}");
    assert_eq!(
        events["days"].as_array().unwrap().last().unwrap()["day"],
        local_day
    );
    assert_eq!(nonzero_days(&events, "events"), [(local_day.to_owned(), 2)]);
    let one_day = view(
        &app,
        &key,
        &format!("view=events&start={local_day}&end={local_day}"),
    )
    .await;
    assert_eq!(one_day["events"], 2, "{one_day}");
}

#[tokio::test]
async fn the_first_minutes_of_a_year_count_on_the_keys_last_day_of_the_old_year() {
    collect_across_the_boundary(
        "2031-01-01T00:05:00Z".parse().unwrap(),
        "2030-12-31",
        ["2030_12", "2031_01"],
    )
    .await;
}

#[tokio::test]
async fn the_first_minutes_of_a_month_count_on_the_keys_last_day_of_the_old_month() {
    collect_across_the_boundary(
        "2031-03-01T00:05:00Z".parse().unwrap(),
        "2031-02-28",
        ["2031_02", "2031_03"],
    )
    .await;
}

#[tokio::test]
async fn events_keep_the_local_day_they_had_across_a_dst_change() {
    // Berlin moves its clocks forward at 01:00 UTC on 2031-03-30. 22:30 UTC
    // is 23:30 in Berlin before the change, and 00:30 of the next day after.
    let app = spawn_at("2031-04-02T12:00:00Z".parse().unwrap()).await;
    let key = key_in(&app, "Europe/Berlin").await;
    let response = app
        .collect(
            key.secret.expose(),
            &json!([
                {"type": "server", "name": "winter", "timestamp": "2031-03-29T22:30:00Z"},
                {"type": "server", "name": "summer", "timestamp": "2031-03-31T22:30:00Z"},
            ]),
        )
        .await;
    assert_eq!(response.status(), 202);
    app.drain().await;

    let events = view(&app, &key, "view=events&start=2031-03-29&end=2031-04-02").await;
    assert_eq!(
        nonzero_days(&events, "events"),
        [("2031-03-29".to_owned(), 1), ("2031-04-01".to_owned(), 1)],
        "{events}"
    );
    // A range of Berlin days starts at Berlin's midnight of its own offset.
    let first = view(&app, &key, "view=events&start=2031-03-29&end=2031-03-29").await;
    assert_eq!(first["events"], 1, "{first}");
    let last = view(&app, &key, "view=events&start=2031-04-01&end=2031-04-01").await;
    assert_eq!(last["events"], 1, "{last}");
}
