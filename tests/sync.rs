//! `GET /api/cron/sync-metrics`: write-behind counters reach Postgres
//! exactly once, even when the sync dies at any step.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{crash_function_at, spawn_app, TestApp};

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Totals {
    total_requests: i64,
    successful_requests: i64,
    failed_requests: i64,
}

async fn totals(app: &TestApp, key: Uuid) -> Totals {
    sqlx::query_as(
        "SELECT total_requests, successful_requests, failed_requests FROM api_keys WHERE id = $1",
    )
    .bind(key)
    .fetch_one(app.state.db.pool())
    .await
    .unwrap()
}

async fn daily(app: &TestApp, key: Uuid) -> Vec<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT total_requests, successful_requests, failed_requests
         FROM api_key_usage_daily WHERE api_key_id = $1",
    )
    .bind(key)
    .fetch_all(app.state.db.pool())
    .await
    .unwrap()
}

/// Sends `n` requests concurrently; returns how many were admitted.
async fn requests(app: &Arc<TestApp>, key: &str, n: usize) -> i64 {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let app = Arc::clone(app);
            let key = key.to_owned();
            tokio::spawn(async move {
                let body = json!({"type": "server", "name": "call"});
                app.collect(&key, &body).await.status().as_u16()
            })
        })
        .collect();
    let mut admitted = 0;
    for call in calls {
        if call.await.unwrap() == 202 {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test]
async fn the_sync_moves_every_counter_into_the_totals_and_the_daily_rows() {
    let app = Arc::new(spawn_app().await);
    let key = app.create_key().await;
    app.set_limits(&key, Some(40), None, None).await;

    let admitted = requests(&app, key.secret.expose(), 60).await;
    assert_eq!(admitted, 40);
    let report = app.sync_metrics().await;

    assert_eq!(report["batches"], 1, "{report}");
    assert!(
        report["statements"].as_u64().unwrap() <= 6,
        "bulk, not per key: {report}"
    );
    assert_eq!(
        totals(&app, key.id).await,
        Totals {
            total_requests: 60,
            successful_requests: 40,
            failed_requests: 20
        }
    );
    assert_eq!(daily(&app, key.id).await, vec![(60, 40, 20)]);
    let last_used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert!(last_used.is_some());

    let again = app.sync_metrics().await;
    assert_eq!(again["batches"], 0, "nothing left: {again}");
    assert_eq!(totals(&app, key.id).await.total_requests, 60);
}

#[tokio::test]
async fn a_sync_killed_at_any_step_loses_and_doubles_nothing_while_requests_go_on() {
    for point in [
        "sync:after-snapshot",
        "sync:after-commit",
        "sync:before-delete",
    ] {
        let app = Arc::new(spawn_app().await);
        let key = app.create_key().await;
        let secret = key.secret.expose().to_owned();
        requests(&app, &secret, 30).await;

        // The sync dies at `point` while requests keep counting.
        let during = {
            let app = Arc::clone(&app);
            let secret = secret.clone();
            tokio::spawn(async move { requests(&app, &secret, 25).await })
        };
        crash_function_at(
            &app,
            env!("CARGO_BIN_EXE_cron-sync-metrics"),
            "/api/cron/sync-metrics",
            point,
        )
        .await;
        during.await.unwrap();
        requests(&app, &secret, 5).await;

        // The next runs finish the pending batch and sync the rest.
        let report = app.sync_metrics().await;
        if point != "sync:after-snapshot" {
            assert_eq!(report["already_applied"], 1, "{point}: {report}");
        }
        app.sync_metrics().await;

        assert_eq!(
            totals(&app, key.id).await,
            Totals {
                total_requests: 60,
                successful_requests: 60,
                failed_requests: 0
            },
            "{point}"
        );
        assert_eq!(daily(&app, key.id).await, vec![(60, 60, 0)], "{point}");
    }
}
