//! `GET /api/analytics` exact on every cache hit: the cached Postgres part
//! plus the live counters read with it, one Upstash round trip and no
//! Postgres statement, across syncs and pending batches; and `format=csv`.

use serde_json::{json, Value};

use crate::helpers::{
    crash_function_at, providers, sign, spawn_app_with, AnalyticsRead, TestApp, TestOptions,
};

async fn spawn() -> TestApp {
    spawn_app_with(TestOptions {
        env: providers(true),
        ..TestOptions::default()
    })
    .await
}

async fn read(app: &TestApp, key: &str, query: &str) -> AnalyticsRead {
    app.read_analytics(key, query).await
}

/// Reads a view and asserts that it was a cache hit that cost no Postgres
/// statement, and the Upstash round trips of a hit: admission and the
/// cache read, side by side.
async fn read_hit(app: &TestApp, key: &str, query: &str) -> Value {
    let (trips, statements) = (app.state.upstash.round_trips(), app.state.db.statements());
    let answer = read(app, key, query).await;
    assert_eq!(
        (answer.status, answer.cache.as_str()),
        (200, "hit"),
        "{query}: {}",
        answer.text
    );
    assert_eq!(
        app.state.db.statements() - statements,
        0,
        "{query}: a hit runs no statement"
    );
    assert_eq!(app.state.upstash.round_trips() - trips, 2, "{query}");
    answer.json()
}

/// Reads a view that must be computed.
async fn read_miss(app: &TestApp, key: &str, query: &str) -> Value {
    let answer = read(app, key, query).await;
    assert_eq!(
        (answer.status, answer.cache.as_str()),
        (200, "miss"),
        "{query}: {}",
        answer.text
    );
    answer.json()
}

/// `n` signed URLs of 100 bytes each, all granted.
async fn uploads(app: &TestApp, key: &str, n: usize) {
    let body = json!({"filename": "a.png", "content_type": "image/png", "size": 100}).to_string();
    for _ in 0..n {
        let (status, answer) = sign(app, Some(key), &body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// The overview's request, file and byte totals, and its s3 uploads.
fn totals(overview: &Value) -> [Option<i64>; 4] {
    let totals = &overview["totals"];
    let s3 = overview["providers"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["provider"] == "s3"))
        .map_or(Some(0), |p| p["uploads"].as_i64());
    [
        totals["requests"].as_i64(),
        totals["files"].as_i64(),
        totals["bytes"].as_i64(),
        s3,
    ]
}

/// Today's requests in the daily series (every request of a test is today).
fn today(daily: &Value) -> Option<i64> {
    daily["days"].as_array()?.last()?["requests"].as_i64()
}

/// What `n` granted uploads show in [`totals`].
fn counted(n: i64) -> [Option<i64>; 4] {
    [Some(n), Some(n), Some(n * 100), Some(n)]
}

#[tokio::test]
async fn requests_made_right_after_a_read_show_in_the_next_hit() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    uploads(&app, secret, 2).await;

    assert_eq!(
        totals(&read_miss(&app, secret, "view=overview").await),
        counted(2)
    );
    assert_eq!(today(&read_miss(&app, secret, "view=daily").await), Some(2));

    uploads(&app, secret, 7).await;
    assert_eq!(
        totals(&read_hit(&app, secret, "view=overview").await),
        counted(9)
    );
    assert_eq!(today(&read_hit(&app, secret, "view=daily").await), Some(9));
    let types = read_miss(&app, secret, "view=file-types").await;
    assert_eq!(types["total_files"], 9);

    uploads(&app, secret, 1).await;
    let types = read_hit(&app, secret, "view=file-types").await;
    assert_eq!(
        types["file_types"],
        json!([{"content_type": "image/png", "files": 10}])
    );
    assert_eq!(
        totals(&read_hit(&app, secret, "view=overview").await),
        counted(10)
    );
}

#[tokio::test]
async fn hits_stay_exact_across_syncs_without_counting_twice() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    uploads(&app, secret, 5).await;
    assert_eq!(
        totals(&read_miss(&app, secret, "view=overview").await),
        counted(5)
    );

    // The sync moves the counters into Postgres and retires the entry.
    app.sync_metrics().await;
    uploads(&app, secret, 4).await;
    assert_eq!(
        totals(&read_miss(&app, secret, "view=overview").await),
        counted(9)
    );
    uploads(&app, secret, 3).await;
    assert_eq!(
        totals(&read_hit(&app, secret, "view=overview").await),
        counted(12)
    );
    assert_eq!(
        today(&read_miss(&app, secret, "view=daily").await),
        Some(12)
    );

    app.sync_metrics().await;
    assert_eq!(
        totals(&read_miss(&app, secret, "view=overview").await),
        counted(12)
    );
    uploads(&app, secret, 2).await;
    assert_eq!(
        totals(&read_hit(&app, secret, "view=overview").await),
        counted(14)
    );
    assert_eq!(
        today(&read_miss(&app, secret, "view=daily").await),
        Some(14)
    );
}

#[tokio::test]
async fn a_pending_batch_applied_under_a_cached_view_counts_once() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();

    // A batch is taken from the live counters, not yet in Postgres.
    uploads(&app, secret, 6).await;
    crash_function_at(
        &app,
        env!("CARGO_BIN_EXE_cron-sync-metrics"),
        "/api/cron/sync-metrics",
        "sync:after-snapshot",
    )
    .await;
    uploads(&app, secret, 3).await;
    // Cached: Postgres (nothing yet) and the pending batch (6).
    assert_eq!(
        totals(&read_miss(&app, secret, "view=overview").await),
        counted(9)
    );
    assert_eq!(today(&read_miss(&app, secret, "view=daily").await), Some(9));

    // The next run applies the pending batch and dies before deleting it,
    // before it takes any new batch: the version holds, so the cached part
    // is served while Postgres now holds the batch too.
    crash_function_at(
        &app,
        env!("CARGO_BIN_EXE_cron-sync-metrics"),
        "/api/cron/sync-metrics",
        "sync:before-delete",
    )
    .await;
    let applied: i64 = sqlx::query_scalar("SELECT total_requests FROM api_keys WHERE id = $1")
        .bind(key.id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(applied, 6, "the batch is in Postgres");
    uploads(&app, secret, 1).await;
    assert_eq!(
        totals(&read_hit(&app, secret, "view=overview").await),
        counted(10)
    );
    assert_eq!(today(&read_hit(&app, secret, "view=daily").await), Some(10));

    // A whole run deletes the batch and takes the live counters.
    app.sync_metrics().await;
    assert_eq!(
        totals(&read_miss(&app, secret, "view=overview").await),
        counted(10)
    );
    uploads(&app, secret, 2).await;
    assert_eq!(
        totals(&read_hit(&app, secret, "view=overview").await),
        counted(12)
    );
}

/// A CSV answer's rows, each as column name to cell.
fn rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    assert_eq!(&header[0], "section", "{text}");
    reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            assert_eq!(record.len(), header.len(), "every row has every column");
            header
                .iter()
                .zip(record.iter())
                .map(|(column, cell)| (column.to_owned(), cell.to_owned()))
                .collect()
        })
        .collect()
}

/// The rows of one section.
fn section<'a>(
    rows: &'a [std::collections::BTreeMap<String, String>],
    name: &str,
) -> Vec<&'a std::collections::BTreeMap<String, String>> {
    rows.iter().filter(|row| row["section"] == name).collect()
}

#[tokio::test]
async fn every_view_answers_csv_from_the_cached_view_with_exact_counts() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    uploads(&app, secret, 4).await;
    read_miss(&app, secret, "view=overview").await;
    uploads(&app, secret, 3).await;

    // The cache holds data, not JSON text: a CSV read of a view cached by a
    // JSON read is a hit, exact too.
    let (statements, answer) = (
        app.state.db.statements(),
        read(&app, secret, "view=overview&format=csv").await,
    );
    assert_eq!(
        (answer.status, answer.cache.as_str()),
        (200, "hit"),
        "{}",
        answer.text
    );
    assert_eq!(app.state.db.statements(), statements);
    assert_eq!(answer.content_type, "text/csv; charset=utf-8");
    assert!(answer.text.ends_with("\r\n"), "{}", answer.text);
    let overview = rows(&answer.text);
    let summary = section(&overview, "summary");
    assert_eq!(summary.len(), 1, "{}", answer.text);
    assert_eq!(summary[0]["view"], "overview");
    assert_eq!(summary[0]["key_id"], key.id.to_string());
    let totals = section(&overview, "totals");
    assert_eq!(
        (totals[0]["requests"].as_str(), totals[0]["bytes"].as_str()),
        ("7", "700")
    );
    let providers = section(&overview, "providers");
    assert_eq!(
        (
            providers[0]["provider"].as_str(),
            providers[0]["uploads"].as_str()
        ),
        ("s3", "7")
    );

    let daily = read(&app, secret, "view=daily&limit=3&format=csv").await;
    let days = rows(&daily.text);
    let days = section(&days, "days");
    assert_eq!(days.len(), 3, "{}", daily.text);
    assert_eq!(days[2]["requests"], "7");

    let by_provider = read(&app, secret, "view=providers&limit=2&format=csv").await;
    let series = rows(&by_provider.text);
    let series = section(&series, "daily.days");
    assert_eq!(series.len(), 2, "{}", by_provider.text);
    assert_eq!(
        (
            series[1]["provider"].as_str(),
            series[1]["uploads"].as_str()
        ),
        ("s3", "7")
    );

    for view in ["file-types", "events"] {
        let answer = read(&app, secret, &format!("view={view}&format=csv")).await;
        assert_eq!(answer.status, 200, "{view}: {}", answer.text);
        assert_eq!(answer.content_type, "text/csv; charset=utf-8");
        let all = rows(&answer.text);
        assert_eq!(section(&all, "summary")[0]["view"], view);
    }
}

#[tokio::test]
async fn a_hostile_event_name_reaches_csv_as_plain_text() {
    let app = spawn().await;
    let key = app.create_key().await;
    let secret = key.secret.expose();
    let hostile = "=HYPERLINK(\"https://evil.example\",\"click\")";
    let events = json!([
        {"type": "server", "name": hostile},
        {"type": "server", "name": "@SUM(1+1)"},
        {"type": "server", "name": "signup"},
    ]);
    assert_eq!(app.collect(secret, &events).await.status(), 202);
    app.drain().await;

    let answer = read(&app, secret, "view=events&format=csv").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let all = rows(&answer.text);
    let mut names: Vec<&str> = section(&all, "names")
        .iter()
        .map(|row| row["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [format!("'{hostile}").as_str(), "'@SUM(1+1)", "signup"]
    );
    // Quoted as RFC 4180 says: the comma inside, the quotes doubled.
    assert!(
        answer
            .text
            .contains("\"'=HYPERLINK(\"\"https://evil.example\"\",\"\"click\"\")\""),
        "{}",
        answer.text
    );
    // JSON answers carry the name as it was sent.
    let json = read(&app, secret, "view=events").await.json();
    assert!(json["names"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == hostile));
}

#[tokio::test]
async fn a_bad_format_is_refused_with_a_400_naming_it() {
    let app = spawn().await;
    let key = app.create_key().await;
    for query in [
        "view=overview&format=xml",
        "view=daily&format=CSV",
        "view=events&format=",
        "view=overview&format=csv&format=json",
    ] {
        let answer = read(&app, key.secret.expose(), query).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.text);
        assert!(
            answer.content_type.starts_with("application/json"),
            "{query}"
        );
        let error = &answer.json()["error"];
        assert!(
            error["message"].as_str().unwrap().contains("`format`"),
            "{query}: {error}"
        );
    }
    let error = read(&app, key.secret.expose(), "view=overview&format=xml")
        .await
        .json();
    assert_eq!(error["error"]["code"], "invalid_format");
}
