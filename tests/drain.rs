//! `GET /api/cron/process-events`: the drain, under crashes, concurrency and
//! bad rows.

use std::{sync::Arc, time::Duration};

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use tollgate::{clock::FixedClock, upstash::Command};
use uuid::Uuid;

use crate::helpers::{crash_function_at, spawn_app, spawn_app_with, TestApp, TestOptions};

fn event(id: Uuid) -> Value {
    json!({"id": id, "type": "server", "name": "request", "service": "api", "status": 200, "duration_ms": 12.5})
}

/// Enqueues `n` events in requests of `per_request`, returning their ids.
async fn enqueue(app: &TestApp, key: &str, n: usize, per_request: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    for chunk in ids.chunks(per_request) {
        let batch: Vec<Value> = chunk.iter().map(|id| event(*id)).collect();
        let response = app.collect(key, &json!(batch)).await;
        assert_eq!(response.status(), 202);
    }
    ids
}

/// Every id is stored exactly once, and nothing else is.
async fn assert_stored_exactly_once(app: &TestApp, ids: &[Uuid]) {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, count(*) FROM events GROUP BY id ORDER BY id")
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    let doubled: Vec<&(Uuid, i64)> = rows.iter().filter(|(_, n)| *n != 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    let mut expected = ids.to_vec();
    expected.sort();
    let stored: Vec<Uuid> = rows.into_iter().map(|(id, _)| id).collect();
    let missing: Vec<&Uuid> = expected
        .iter()
        .filter(|id| stored.binary_search(id).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "lost: {} events, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(stored.len(), expected.len(), "unexpected extra events");
}

#[tokio::test]
async fn the_drain_needs_the_cron_secret() {
    let app = spawn_app().await;
    let url = format!("{}/api/cron/process-events", app.address);
    let missing = app.http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("wrong-secret-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_cron_secret");
}

#[tokio::test]
async fn the_drain_empties_the_queue_and_reports_its_counts() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let ids = enqueue(&app, &key.publishable, 1_200, 100).await;
    // Resending the same events makes them duplicates, not new rows.
    let again: Vec<Value> = ids[..50].iter().map(|id| event(*id)).collect();
    assert_eq!(
        app.collect(&key.publishable, &json!(again)).await.status(),
        202
    );

    let report = app.drain().await;

    assert_eq!(report["drained"], 1_250, "{report}");
    assert_eq!(report["inserted"], 1_200, "{report}");
    assert_eq!(report["duplicates"], 50, "{report}");
    assert_eq!(report["dead_lettered"], 0, "{report}");
    assert_eq!(report["stopped"], "empty", "{report}");
    assert!(report["batches"].as_u64().unwrap() >= 1);
    assert_stored_exactly_once(&app, &ids).await;
    let status = app.queue_status().await;
    assert_eq!(status["queue"]["events"], 0, "{status}");
    assert_eq!(status["in_flight"]["requests"], 0, "{status}");
    assert_eq!(status["last_drain"]["events"], 1_250, "{status}");
}

#[tokio::test]
async fn eight_collectors_and_two_drains_store_every_event_exactly_once() {
    let app = Arc::new(spawn_app().await);
    let key = app.create_key().await;

    let collectors: Vec<_> = (0..8)
        .map(|_| {
            let app = Arc::clone(&app);
            let key = key.publishable.clone();
            tokio::spawn(async move { enqueue(&app, &key, 400, 20).await })
        })
        .collect();
    let drains: Vec<_> = (0..2)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                for _ in 0..10 {
                    app.drain().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for collector in collectors {
        ids.extend(collector.await.unwrap());
    }
    for drain in drains {
        drain.await.unwrap();
    }
    // Whatever the concurrent drains left, one last run takes.
    app.drain().await;

    assert_eq!(ids.len(), 3_200);
    assert_stored_exactly_once(&app, &ids).await;
}

#[tokio::test]
async fn overlapping_drains_do_not_claim_side_by_side() {
    let app = spawn_app().await;
    let _: Option<String> = app
        .redis(
            Command::new("SET")
                .arg(app.state.keys.drain_lock())
                .arg("someone-else")
                .arg("EX")
                .arg(60),
        )
        .await;

    let report = app.drain().await;

    assert_eq!(report["skipped"], true, "{report}");
    assert_eq!(report["stopped"], "locked", "{report}");
}

#[tokio::test]
async fn a_drain_killed_at_any_step_loses_and_doubles_nothing() {
    for point in [
        "drain:after-claim",
        "drain:after-insert",
        "drain:before-ack",
    ] {
        let app = spawn_app_with(TestOptions {
            env: vec![("TOLLGATE_DRAIN_VISIBILITY", "1s".into())],
            ..TestOptions::default()
        })
        .await;
        let key = app.create_key().await;
        let ids = enqueue(&app, &key.publishable, 300, 30).await;

        crash_function_at(
            &app,
            env!("CARGO_BIN_EXE_cron-process-events"),
            "/api/cron/process-events",
            point,
        )
        .await;
        let status = app.queue_status().await;
        assert!(
            status["in_flight"]["requests"].as_u64().unwrap() > 0,
            "{point}: {status}"
        );

        // The dead run still holds the drain lock; let it lapse as its TTL
        // would, and the batch's visibility timeout (1 s here) too.
        let _: i64 = app
            .redis(Command::new("DEL").arg(app.state.keys.drain_lock()))
            .await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let report = app.drain().await;
        assert!(
            report["reclaimed"].as_u64().unwrap() > 0,
            "{point}: {report}"
        );
        app.drain().await;

        assert_stored_exactly_once(&app, &ids).await;
        let status = app.queue_status().await;
        assert_eq!(status["queue"]["events"], 0, "{point}: {status}");
        assert_eq!(status["in_flight"]["requests"], 0, "{point}: {status}");
    }
}

#[tokio::test]
async fn rows_postgres_refuses_are_dead_lettered_and_the_rest_stored() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let ids = enqueue(&app, &key.publishable, 40, 40).await;
    // Properties that are not JSON pass no validation and could only come
    // from outside; Postgres refuses them, and only them.
    let poisoned = Uuid::new_v4();
    let now = Utc::now().to_rfc3339();
    let bad = json!([{"id": poisoned, "type": "web", "name": "x", "occurred_at": now,
                      "received_at": now, "properties": "{not json"}]);
    let _: String = app
        .redis(
            Command::new("XADD")
                .arg(app.state.keys.event_queue(0))
                .arg("*")
                .args([
                    "k",
                    &key.id.to_string(),
                    "v",
                    "visitor",
                    "n",
                    "1",
                    "e",
                    &bad.to_string(),
                ]),
        )
        .await;
    let _: String = app
        .redis(
            Command::new("XADD")
                .arg(app.state.keys.event_queue(0))
                .arg("*")
                .args(["k", &key.id.to_string(), "n", "1", "e", "this is not JSON"]),
        )
        .await;

    let report = app.drain().await;

    assert_eq!(report["inserted"], 40, "{report}");
    assert_eq!(report["dead_lettered"], 2, "{report}");
    assert_stored_exactly_once(&app, &ids).await;
    let letters: Vec<(Option<Uuid>, String, i32)> =
        sqlx::query_as("SELECT event_id, reason, attempts FROM dead_letter_events ORDER BY id")
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .any(|(id, reason, _)| *id == Some(poisoned) && reason.contains("json")),
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .any(|(id, reason, _)| id.is_none() && reason.contains("not a JSON array")),
        "{letters:?}"
    );
    assert!(letters.iter().all(|(_, _, attempts)| *attempts >= 1));
    assert_eq!(app.queue_status().await["dead_letters"], 2);
}

#[tokio::test]
async fn a_partition_is_created_for_an_event_dated_next_month() {
    // Late on the last day of a month far from the migration's partitions.
    let clock = Arc::new(FixedClock::new(
        Utc.with_ymd_and_hms(2031, 5, 31, 23, 0, 0).unwrap(),
    ));
    let app = spawn_app_with(TestOptions {
        clock: Some(clock),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let id = Uuid::new_v4();
    let body = json!({"id": id, "type": "web", "name": "x", "timestamp": "2031-06-01T08:00:00Z"});
    assert_eq!(app.collect(&key.publishable, &body).await.status(), 202);

    app.drain().await;

    let partition: String =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM events WHERE id = $1")
            .bind(id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(partition, "events_2031_06");
}

#[tokio::test]
async fn queue_status_reports_depth_age_and_thresholds() {
    let app = spawn_app_with(TestOptions {
        env: vec![
            ("TOLLGATE_QUEUE_WARNING_DEPTH", "100".into()),
            ("TOLLGATE_QUEUE_CRITICAL_DEPTH", "1000".into()),
        ],
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;

    let empty = app.queue_status().await;
    assert_eq!(empty["status"], "ok", "{empty}");
    assert_eq!(empty["queue"]["events"], 0);
    assert_eq!(empty["last_drain"], Value::Null);

    enqueue(&app, &key.publishable, 150, 50).await;
    let status = app.queue_status().await;
    assert_eq!(status["status"], "warning", "{status}");
    assert_eq!(status["queue"]["events"], 150);
    // Three collect requests: three entries of events and their three
    // request-log entries.
    assert_eq!(status["queue"]["requests"], 6);
    assert!(status["queue"]["oldest_age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(status["reasons"][0]
        .as_str()
        .unwrap()
        .contains("150 events queued"));

    // It reports every tenant: no tenant's key opens it, secret or not.
    let with_key = app
        .http
        .get(format!("{}/api/cron/queue-status", app.address))
        .bearer_auth(key.secret.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 401);
    let with_pk = app
        .http
        .get(format!("{}/api/cron/queue-status", app.address))
        .bearer_auth(&key.publishable)
        .send()
        .await
        .unwrap();
    assert_eq!(with_pk.status(), 401);

    app.drain().await;
    let drained = app.queue_status().await;
    assert_eq!(drained["status"], "ok", "{drained}");
    assert_eq!(drained["last_drain"]["events"], 150, "{drained}");
}

#[tokio::test]
async fn retention_drops_old_partitions_and_their_ids_only_when_configured() {
    let clock = Arc::new(FixedClock::new(
        Utc.with_ymd_and_hms(2031, 5, 20, 12, 0, 0).unwrap(),
    ));
    let app = spawn_app_with(TestOptions {
        clock: Some(clock.clone()),
        env: vec![("TOLLGATE_EVENT_MAX_AGE", "200d".into())],
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let old = Uuid::new_v4();
    let recent = Uuid::new_v4();
    let body = json!([
        {"id": old, "type": "web", "name": "x", "timestamp": "2031-01-15T00:00:00Z"},
        {"id": recent, "type": "web", "name": "x", "timestamp": "2031-05-01T00:00:00Z"},
    ]);
    assert_eq!(app.collect(&key.publishable, &body).await.status(), 202);
    app.drain().await;
    assert_eq!(app.stored_events().await, 2, "retention is off by default");

    // The same database, now with 60 days of retention: January ended more
    // than 60 days before May 20th; May did not.
    let retained = spawn_app_with(TestOptions {
        clock: Some(clock.clone()),
        database_url: Some(
            app.env
                .iter()
                .find(|(k, _)| *k == "DATABASE_URL")
                .unwrap()
                .1
                .clone(),
        ),
        env: vec![("TOLLGATE_EVENT_RETENTION", "60d".into())],
        ..TestOptions::default()
    })
    .await;
    retained.drain().await;

    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(retained.state.db.pool())
        .await
        .unwrap();
    assert_eq!(ids, vec![recent]);
    let known: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM event_ids")
        .fetch_all(retained.state.db.pool())
        .await
        .unwrap();
    assert_eq!(known, vec![recent]);
    let january: Option<String> = sqlx::query_scalar("SELECT to_regclass('events_2031_01')::text")
        .fetch_one(retained.state.db.pool())
        .await
        .unwrap();
    assert_eq!(january, None);
}

#[tokio::test]
async fn a_drain_batch_is_bounded_by_bytes_as_well_as_by_events() {
    let app = spawn_app_with(TestOptions {
        env: vec![
            ("TOLLGATE_REDIS_SHARDS", "1".into()),
            ("TOLLGATE_DRAIN_BATCH_BYTES", "64KiB".into()),
        ],
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    // Six requests of about 30 KB of events each.
    let big = "x".repeat(3_000);
    for _ in 0..6 {
        let batch: Vec<Value> = (0..10)
            .map(|_| json!({"type": "server", "name": "job", "id": Uuid::new_v4(), "properties": {"log": big}}))
            .collect();
        let response = app.collect(key.secret.expose(), &json!(batch)).await;
        assert_eq!(response.status(), 202);
    }
    let report = app.drain().await;
    assert_eq!(report["inserted"], 60, "{report}");
    // At most about 64 KiB a batch: two or three entries, never all six.
    assert!(report["batches"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(app.stored_events().await, 60);
}
