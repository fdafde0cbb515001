//! `GET /api/health`.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestOptions};

#[tokio::test]
async fn health_answers_200_when_upstash_and_postgres_are_reachable() {
    let app = spawn_app().await;

    let response = app.get("/api/health").await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"], json!({"upstash": true, "postgres": true}));
    assert_eq!(body["failing"], json!([]));
}

#[tokio::test]
async fn health_answers_503_naming_postgres_when_it_is_unreachable() {
    // Port 1 on loopback refuses connections.
    let app = spawn_app_with(TestOptions {
        database_url: Some("postgres://postgres@127.0.0.1:1/nowhere".into()),
        ..TestOptions::default()
    })
    .await;

    let response = app.get("/api/health").await;

    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"], json!({"upstash": true, "postgres": false}));
    assert_eq!(body["failing"], json!(["postgres"]));
}

#[tokio::test]
async fn health_answers_503_naming_upstash_when_it_is_unreachable() {
    let app = spawn_app_with(TestOptions {
        upstash_url: Some("http://127.0.0.1:1".into()),
        ..TestOptions::default()
    })
    .await;

    let response = app.get("/api/health").await;

    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"], json!({"upstash": false, "postgres": true}));
    assert_eq!(body["failing"], json!(["upstash"]));
}

#[tokio::test]
async fn health_refuses_other_methods_with_405() {
    let app = spawn_app().await;

    let response = app
        .http
        .post(format!("{}/api/health", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn unknown_api_paths_get_a_json_404() {
    let app = spawn_app().await;

    let response = app.get("/api/nope").await;

    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}
