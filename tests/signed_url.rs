//! `POST /api/signed-url`: presigned uploads behind admission, with their
//! usage counted write-behind.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::{providers, sign, spawn_app_with, TestApp, TestOptions};

async fn spawn(blob: bool) -> TestApp {
    spawn_app_with(TestOptions {
        env: providers(blob),
        ..TestOptions::default()
    })
    .await
}

#[tokio::test]
async fn an_s3_upload_is_signed_inside_the_keys_own_prefix() {
    let app = spawn(true).await;
    let key = app.create_key().await;
    let body =
        json!({"filename": "Résumé 2026.pdf", "content_type": "application/pdf", "size": 52_000});

    let before = chrono::Utc::now();
    let (status, signed) = sign(&app, Some(key.secret.expose()), &body.to_string()).await;

    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["provider"], "s3");
    assert_eq!(signed["method"], "PUT");
    assert_eq!(signed["headers"]["Content-Type"], "application/pdf");
    let object_key = signed["object_key"].as_str().unwrap();
    // The month the request was signed in, which a run across a month's
    // end may see change.
    let months = [before, chrono::Utc::now()].map(|t| format!("{}/{}/", key.id, t.format("%Y/%m")));
    assert!(
        months.iter().any(|m| object_key.starts_with(m)),
        "{object_key}"
    );
    assert!(object_key.ends_with("-Résumé 2026.pdf"), "{object_key}");
    let url = signed["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:9000/uploads/{}/", key.id)),
        "{url}"
    );
    assert!(
        url.contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"),
        "{url}"
    );
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    let expires: chrono::DateTime<chrono::Utc> =
        signed["expires_at"].as_str().unwrap().parse().unwrap();
    assert!((expires - before).num_seconds().abs() <= 905);
}

#[tokio::test]
async fn a_blob_upload_gets_a_client_token() {
    let app = spawn(true).await;
    let key = app.create_key().await;
    let body = json!({"filename": "cat.png", "content_type": "image/png", "size": 10, "provider": "blob", "expires_in": 60});

    let (status, signed) = sign(&app, Some(key.secret.expose()), &body.to_string()).await;

    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["provider"], "blob");
    assert!(signed["token"]
        .as_str()
        .unwrap()
        .starts_with("vercel_blob_client_AbCdEf123456_"));
    assert!(signed.get("url").is_none());
}

#[tokio::test]
async fn a_warm_signed_url_costs_one_round_trip_and_no_postgres_statement() {
    let app = spawn(false).await;
    let key = app.create_key().await;
    let body = json!({"filename": "a.png", "content_type": "image/png", "size": 10}).to_string();
    assert_eq!(sign(&app, Some(key.secret.expose()), &body).await.0, 200);

    let (trips, statements) = (app.state.upstash.round_trips(), app.state.db.statements());
    assert_eq!(sign(&app, Some(key.secret.expose()), &body).await.0, 200);

    assert_eq!(app.state.upstash.round_trips() - trips, 1);
    assert_eq!(app.state.db.statements() - statements, 0);
}

#[tokio::test]
async fn bad_requests_get_their_exact_status_and_code() {
    let app = spawn(false).await;
    let key = app.create_key().await;
    let pdf = |filename: &str| {
        json!({"filename": filename, "content_type": "application/pdf", "size": 100}).to_string()
    };
    let sk = Some(key.secret.expose());
    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (sk, pdf("../../etc/passwd"), 400, "invalid_filename"),
        (sk, pdf("..\\windows"), 400, "invalid_filename"),
        (sk, pdf("dir/file.pdf"), 400, "invalid_filename"),
        (sk, pdf(".."), 400, "invalid_filename"),
        (sk, pdf(".hidden.pdf"), 400, "invalid_filename"),
        (sk, pdf("bell\u{7}.pdf"), 400, "invalid_filename"),
        (sk, pdf("nul\u{0}.pdf"), 400, "invalid_filename"),
        (sk, pdf(""), 400, "invalid_filename"),
        (sk, pdf(&"長".repeat(90)), 400, "invalid_filename"),
        (sk, json!({"content_type": "image/png", "size": 1}).to_string(), 400, "missing_field"),
        (sk, json!({"filename": "a.png", "size": 1}).to_string(), 400, "missing_field"),
        (sk, json!({"filename": "a.png", "content_type": "image/png"}).to_string(), 400, "missing_field"),
        (sk, json!({"filename": 5, "content_type": "image/png", "size": 1}).to_string(), 400, "invalid_field"),
        (sk, json!({"filename": "a.png", "content_type": "image/png", "size": 0}).to_string(), 400, "invalid_field"),
        (sk, json!({"filename": "a.png", "content_type": "image/png", "size": -5}).to_string(), 400, "invalid_field"),
        (sk, json!({"filename": "a.png", "content_type": "image/png", "size": "10"}).to_string(), 400, "invalid_field"),
        (sk, json!({"filename": "a.png", "content_type": "image/png", "size": 1.5}).to_string(), 400, "invalid_field"),
        (sk, json!({"filename": "a.png", "content_type": "png", "size": 1}).to_string(), 400, "invalid_content_type"),
        (sk, json!({"filename": "a.exe", "content_type": "application/x-msdownload", "size": 1}).to_string(), 400, "content_type_not_allowed"),
        (sk, json!({"filename": "big.mp4", "content_type": "video/mp4", "size": 100 * 1024 * 1024 + 1}).to_string(), 413, "payload_too_large"),
        (sk, json!({"filename": "a.png", "content_type": "image/png", "size": 1, "provider": "gcs"}).to_string(), 400, "unknown_provider"),
        (sk, json!({"filename": "a.png", "content_type": "image/png", "size": 1, "provider": "blob"}).to_string(), 400, "provider_not_configured"),
        (sk, json!({"filename": "a.png", "content_type": "image/png", "size": 1, "expires_in": 0}).to_string(), 400, "invalid_expiry"),
        (sk, json!({"filename": "a.png", "content_type": "image/png", "size": 1, "expires_in": 604_801}).to_string(), 400, "invalid_expiry"),
        (sk, "{not json".to_owned(), 400, "invalid_json"),
        (sk, "[]".to_owned(), 400, "invalid_json"),
        (None, pdf("a.pdf"), 401, "missing_key"),
        (Some(&key.publishable), pdf("a.pdf"), 403, "secret_key_required"),
        (Some("sk_unknown0000000000"), pdf("a.pdf"), 401, "invalid_key"),
    ];
    assert!(cases.len() >= 25);
    for (key, body, status, code) in cases {
        let (actual, response) = sign(&app, key, &body).await;
        assert_eq!(
            (actual, response["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {response}"
        );
        assert!(response["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Unicode names are kept, not refused.
    let (status, signed) = sign(&app, sk, &pdf("отчёт 📊.pdf")).await;
    assert_eq!(status, 200, "{signed}");
}

#[tokio::test]
async fn usage_metrics_are_exact_after_a_thousand_concurrent_mixed_requests_and_a_sync() {
    // A thousand requests at once queue up on two cores; the admission
    // timeout (500 ms by default) and the Upstash call timeout (2 s in
    // tests) are not what this test is about.
    let mut env = providers(true);
    env.push(("TOLLGATE_ADMISSION_TIMEOUT", "30s".to_owned()));
    env.push(("TOLLGATE_UPSTASH_TIMEOUT", "30s".to_owned()));
    let app = Arc::new(
        spawn_app_with(TestOptions {
            env,
            ..TestOptions::default()
        })
        .await,
    );
    let key = app.create_key().await;
    app.set_limits(&key, Some(100_000), None, None).await;
    let bodies = [
        (
            json!({"filename": "a.png", "content_type": "image/png", "size": 1000}),
            Some(("s3", "image/png", 1000)),
        ),
        (
            json!({"filename": "b.pdf", "content_type": "application/pdf", "size": 250, "provider": "blob"}),
            Some(("blob", "application/pdf", 250)),
        ),
        (
            json!({"filename": "../c.png", "content_type": "image/png", "size": 5}),
            None,
        ),
        (
            json!({"filename": "d.exe", "content_type": "application/x-msdownload", "size": 5}),
            None,
        ),
    ];
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let app = Arc::clone(&app);
            let secret = key.secret.expose().to_owned();
            let body = bodies[i % bodies.len()].0.to_string();
            tokio::spawn(async move { sign(&app, Some(&secret), &body).await.0 })
        })
        .collect();
    let mut ok = 0;
    let mut failed = 0;
    for call in calls {
        match call.await.unwrap() {
            200 => ok += 1,
            _ => failed += 1,
        }
    }
    assert_eq!((ok, failed), (500, 500));

    app.sync_metrics().await;
    app.drain().await;

    let (requests, successful, failures, files, bytes, types): (i64, i64, i64, i64, i64, Value) =
        sqlx::query_as(
            "SELECT total_requests, successful_requests, failed_requests, total_files, total_bytes,
                file_type_counts FROM api_keys WHERE id = $1",
        )
        .bind(key.id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!((requests, successful, failures), (1000, 500, 500));
    assert_eq!((files, bytes), (500, 250 * 1000 + 250 * 250));
    assert_eq!(types, json!({"image/png": 250, "application/pdf": 250}));
    let providers: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT provider, uploads, bytes FROM provider_usage WHERE api_key_id = $1 ORDER BY provider")
            .bind(key.id)
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(
        providers,
        vec![
            ("blob".into(), 250, 250 * 250),
            ("s3".into(), 250, 250 * 1000)
        ]
    );
    let daily: Vec<(String, i64)> =
        sqlx::query_as("SELECT provider, uploads FROM provider_usage_daily WHERE api_key_id = $1 ORDER BY provider")
            .bind(key.id)
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(daily, vec![("blob".into(), 250), ("s3".into(), 250)]);
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads_log WHERE api_key_id = $1")
        .bind(key.id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(logged, 500);
}

#[tokio::test]
async fn with_upstash_down_signed_url_fails_closed_unless_configured_open() {
    let body = json!({"filename": "a.png", "content_type": "image/png", "size": 10}).to_string();
    let down = |fail_open: &str| {
        let mut env = providers(false);
        env.push(("TOLLGATE_FAIL_OPEN_ROUTES", fail_open.to_owned()));
        spawn_app_with(TestOptions {
            upstash_url: Some("http://127.0.0.1:1".into()),
            env,
            ..TestOptions::default()
        })
    };

    let closed = down("collect").await;
    let key = closed.create_key().await;
    let (status, body_closed) = sign(&closed, Some(key.secret.expose()), &body).await;
    assert_eq!(status, 503, "{body_closed}");
    assert_eq!(body_closed["error"]["code"], "unavailable");
    // Bad input still gets its 400, and is counted as failed in Postgres.
    let bad = json!({"filename": "../a.png", "content_type": "image/png", "size": 10});
    let (status, refused) = sign(&closed, Some(key.secret.expose()), &bad.to_string()).await;
    assert_eq!(status, 400, "{refused}");
    let counted: (i64, i64) =
        sqlx::query_as("SELECT total_requests, failed_requests FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(closed.state.db.pool())
            .await
            .unwrap();
    assert_eq!(counted, (1, 1));

    let open = down("collect,signed-url").await;
    let key = open.create_key().await;
    let (status, signed) = sign(&open, Some(key.secret.expose()), &body).await;
    assert_eq!(status, 200, "{signed}");
    let counted: i64 = sqlx::query_scalar(
        "SELECT value FROM operational_counters WHERE name = 'fail_open_admissions'",
    )
    .fetch_one(open.state.db.pool())
    .await
    .unwrap();
    assert_eq!(counted, 1);
}
