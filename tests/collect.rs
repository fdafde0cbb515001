//! `POST /api/collect`.

use std::io::Write;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, TestOptions};

fn web_event(id: Uuid) -> Value {
    json!({
        "id": id,
        "type": "web",
        "name": "pageview",
        "url": "https://shop.example.com/pricing?utm_source=news&utm_medium=email&utm_campaign=fall",
        "referrer": "https://news.example.org/",
        "title": "Pricing",
        "screen": "1920x1080",
        "language": "en-GB",
        "session_id": "s-1",
        "properties": {"plan": "pro", "ab": [1, 2]}
    })
}

async fn body_of(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    name: String,
    r#type: String,
    path: Option<String>,
    utm_source: Option<String>,
    utm_campaign: Option<String>,
    browser: Option<String>,
    country: Option<String>,
    city: Option<String>,
    latitude: Option<f64>,
    visitor_id: Option<String>,
    device_type: Option<String>,
    properties: Value,
}

#[tokio::test]
async fn an_event_is_accepted_enriched_and_stored_once_by_the_drain() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let id = Uuid::new_v4();

    let response = app
        .http
        .post(format!("{}/api/collect", app.address))
        .bearer_auth(&key.publishable)
        .header("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36")
        .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
        .header("x-vercel-ip-country", "DE")
        .header("x-vercel-ip-country-region", "BE")
        .header("x-vercel-ip-city", "M%C3%BCnchen")
        .header("x-vercel-ip-latitude", "48.137")
        .header("x-vercel-ip-longitude", "11.575")
        .json(&web_event(id))
        .send()
        .await
        .unwrap();
    let body = body_of(response, 202).await;
    assert_eq!(body, json!({"accepted": 1, "rejected": []}));
    assert_eq!(
        app.stored_events().await,
        0,
        "nothing reaches Postgres before the drain"
    );

    let report = app.drain().await;
    assert_eq!(report["inserted"], 1, "{report}");
    let report = app.drain().await;
    assert_eq!(report["drained"], 0, "{report}");

    let row: StoredRow = sqlx::query_as(
        "SELECT name, type, path, utm_source, utm_campaign, browser, country, city, latitude,
                visitor_id, device_type, properties
         FROM events WHERE id = $1",
    )
    .bind(id)
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(row.name, "pageview");
    assert_eq!(row.r#type, "web");
    assert_eq!(row.path.as_deref(), Some("/pricing"));
    assert_eq!(row.utm_source.as_deref(), Some("news"));
    assert_eq!(row.utm_campaign.as_deref(), Some("fall"));
    assert_eq!(row.browser.as_deref(), Some("Chrome"));
    assert_eq!(row.country.as_deref(), Some("DE"));
    assert_eq!(row.city.as_deref(), Some("München"));
    assert_eq!(row.latitude, Some(48.137));
    let visitor = row.visitor_id.expect("a visitor id");
    assert_eq!(visitor.len(), 40, "a SHA-1 hex digest");
    assert_eq!(row.device_type.as_deref(), Some("desktop"));
    assert_eq!(row.properties, json!({"plan": "pro", "ab": [1, 2]}));

    // The IP is never stored, in any column.
    let leaked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events e WHERE e::text LIKE '%203.0.113.7%')",
    )
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert!(!leaked);
}

#[tokio::test]
async fn a_warm_collect_costs_one_upstash_round_trip_and_no_postgres_statement() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    // The first request fills the key cache from Postgres.
    body_of(
        app.collect(&key.publishable, &web_event(Uuid::new_v4()))
            .await,
        202,
    )
    .await;

    let (trips, statements) = (app.state.upstash.round_trips(), app.state.db.statements());
    body_of(
        app.collect(&key.publishable, &web_event(Uuid::new_v4()))
            .await,
        202,
    )
    .await;
    let batch: Vec<Value> = (0..50).map(|_| web_event(Uuid::new_v4())).collect();
    body_of(
        app.collect(key.secret.expose(), &json!({"batch": batch}))
            .await,
        202,
    )
    .await;

    // The secret key's first use misses the cache, reads Postgres, fills the
    // cache and runs the script again: three trips and one statement.
    assert_eq!(app.state.upstash.round_trips() - trips, 1 + 3);
    assert_eq!(app.state.db.statements() - statements, 1);

    let (trips, statements) = (app.state.upstash.round_trips(), app.state.db.statements());
    body_of(
        app.collect(key.secret.expose(), &json!(batch[..10])).await,
        202,
    )
    .await;
    assert_eq!(app.state.upstash.round_trips() - trips, 1);
    assert_eq!(app.state.db.statements() - statements, 0);
}

#[tokio::test]
async fn bodies_come_as_an_object_an_array_a_batch_or_a_beacon() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let e = || web_event(Uuid::new_v4());

    let single = body_of(app.collect(&key.publishable, &e()).await, 202).await;
    assert_eq!(single["accepted"], 1);
    let array = body_of(app.collect(&key.publishable, &json!([e(), e()])).await, 202).await;
    assert_eq!(array["accepted"], 2);
    let batch = body_of(
        app.collect(&key.publishable, &json!({"batch": [e(), e(), e()]}))
            .await,
        202,
    )
    .await;
    assert_eq!(batch["accepted"], 3);

    // sendBeacon: text/plain, the key in the body, no headers of our own.
    let beacon = app
        .http
        .post(format!("{}/api/collect", app.address))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(json!({"key": key.publishable, "batch": [e(), e(), e(), e()]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(body_of(beacon, 202).await["accepted"], 4);

    // gzip, announced and not.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(json!([e(), e(), e(), e(), e()]).to_string().as_bytes())
        .unwrap();
    let gzipped = encoder.finish().unwrap();
    for announce in [true, false] {
        let mut request = app
            .http
            .post(format!("{}/api/collect", app.address))
            .bearer_auth(&key.publishable)
            .body(gzipped.clone());
        if announce {
            request = request.header("content-encoding", "gzip");
        }
        assert_eq!(
            body_of(request.send().await.unwrap(), 202).await["accepted"],
            5
        );
    }

    let report = app.drain().await;
    // The gzipped body went twice with the same event ids: stored once.
    assert_eq!(report["duplicates"], 5, "{report}");
    assert_eq!(app.stored_events().await, 1 + 2 + 3 + 4 + 5);
}

/// Whole-request failures: each case's status and error code.
#[tokio::test]
async fn requests_that_cannot_be_read_get_their_exact_status_and_code() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let raw = |body: &'static str| (body.as_bytes().to_vec(), Some(key.publishable.clone()));
    let oversize = format!(
        "[{}]",
        vec![r#"{"type":"web","name":"x","properties":{"pad":"0123456789"}}"#; 20_000].join(",")
    );
    let too_many: Vec<Value> = (0..501)
        .map(|_| json!({"type": "web", "name": "x"}))
        .collect();
    let cases: Vec<(Request, u16, &str)> = vec![
        (raw("{not json"), 400, "invalid_json"),
        (raw(""), 400, "invalid_json"),
        (raw("42"), 400, "invalid_body"),
        (raw("\"pageview\""), 400, "invalid_body"),
        (raw("null"), 400, "invalid_body"),
        (raw(r#"{"batch": {"type": "web"}}"#), 400, "invalid_body"),
        (raw("[]"), 400, "empty_batch"),
        (raw(r#"{"batch": []}"#), 400, "empty_batch"),
        (
            (too_many_body(&too_many), Some(key.publishable.clone())),
            400,
            "batch_too_large",
        ),
        (
            (oversize.into_bytes(), Some(key.publishable.clone())),
            413,
            "payload_too_large",
        ),
        (
            (
                b"\x1f\x8b\x08\x00garbage".to_vec(),
                Some(key.publishable.clone()),
            ),
            400,
            "invalid_gzip",
        ),
        (
            (br#"{"type":"web","name":"x"}"#.to_vec(), None),
            401,
            "missing_key",
        ),
        (
            (
                br#"{"type":"web","name":"x"}"#.to_vec(),
                Some("not-a-key".into()),
            ),
            401,
            "invalid_key",
        ),
        (
            (
                br#"{"type":"web","name":"x"}"#.to_vec(),
                Some("pk_000000000000000000000000".into()),
            ),
            401,
            "invalid_key",
        ),
        (raw(r#"{"type":"web"}"#), 400, "no_valid_events"),
        (
            raw(r#"[{"type":"desktop","name":"x"}]"#),
            400,
            "no_valid_events",
        ),
    ];
    for ((body, key), status, code) in cases {
        let mut request = app
            .http
            .post(format!("{}/api/collect", app.address))
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let body = body_of(response, status).await;
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

/// A request body and the key it is sent with, if any.
type Request = (Vec<u8>, Option<String>);

fn too_many_body(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(events).unwrap()
}

/// Event-level failures: each bad event is reported by index and code, and
/// the valid events of the same batch are stored.
#[tokio::test]
async fn bad_events_are_rejected_one_by_one_and_the_rest_are_stored() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let now = chrono::Utc::now();
    let bad: Vec<(Value, &str)> = vec![
        (json!({"name": "x"}), "missing_field"),
        (json!({"type": "web"}), "missing_field"),
        (json!({"type": "tv", "name": "x"}), "invalid_type"),
        (json!({"type": 7, "name": "x"}), "invalid_type"),
        (json!({"type": "web", "name": ""}), "invalid_field"),
        (json!({"type": "web", "name": 12}), "invalid_field"),
        (
            json!({"type": "web", "name": "n".repeat(201)}),
            "field_too_long",
        ),
        (
            json!({"type": "web", "name": "x", "timestamp": "yesterday"}),
            "invalid_timestamp",
        ),
        (
            json!({"type": "web", "name": "x", "timestamp": 1.5}),
            "invalid_timestamp",
        ),
        (
            json!({"type": "web", "name": "x", "timestamp": -5}),
            "invalid_timestamp",
        ),
        (
            json!({"type": "web", "name": "x", "timestamp": (now + chrono::Duration::hours(25)).to_rfc3339()}),
            "timestamp_in_future",
        ),
        (
            json!({"type": "web", "name": "x", "timestamp": (now - chrono::Duration::days(8)).timestamp_millis()}),
            "timestamp_too_old",
        ),
        (
            json!({"type": "web", "name": "x", "id": "not-a-uuid"}),
            "invalid_id",
        ),
        (
            json!({"type": "web", "name": "x", "properties": [1, 2]}),
            "invalid_field",
        ),
        (
            json!({"type": "web", "name": "x", "properties": "text"}),
            "invalid_field",
        ),
        (
            json!({"type": "web", "name": "x", "properties": {"big": "p".repeat(33 * 1024)}}),
            "properties_too_large",
        ),
        (
            json!({"type": "web", "name": "x", "properties": {"nul": "a\u{0}b"}}),
            "invalid_character",
        ),
        (
            json!({"type": "web", "name": "a\u{0}"}),
            "invalid_character",
        ),
        (
            json!({"type": "web", "name": "x", "url": "not a url"}),
            "invalid_field",
        ),
        (
            json!({"type": "web", "name": "x", "url": "ftp://example.com/"}),
            "invalid_field",
        ),
        (
            json!({"type": "web", "name": "x", "url": format!("https://e.com/{}", "a".repeat(2100))}),
            "field_too_long",
        ),
        (
            json!({"type": "web", "name": "x", "session_id": 5}),
            "invalid_field",
        ),
        (
            json!({"type": "web", "name": "x", "user_id": "u".repeat(201)}),
            "field_too_long",
        ),
        (
            json!({"type": "server", "name": "x", "status": 99}),
            "invalid_field",
        ),
        (
            json!({"type": "server", "name": "x", "status": "200"}),
            "invalid_field",
        ),
        (
            json!({"type": "server", "name": "x", "duration_ms": -1}),
            "invalid_field",
        ),
        (
            json!({"type": "server", "name": "x", "method": "GE T"}),
            "invalid_field",
        ),
        (
            json!({"type": "mobile", "name": "x", "app_version": "v".repeat(51)}),
            "field_too_long",
        ),
        (
            json!({"type": "mobile", "name": "x", "os": 3}),
            "invalid_field",
        ),
        (json!("just a string"), "invalid_event"),
        (json!(null), "invalid_event"),
    ];
    assert!(bad.len() >= 30);
    let mut batch = Vec::new();
    let mut good_ids = Vec::new();
    for (index, (event, _)) in bad.iter().enumerate() {
        batch.push(event.clone());
        if index % 3 == 0 {
            let id = Uuid::new_v4();
            good_ids.push(id);
            batch.push(web_event(id));
        }
    }
    let body = body_of(
        app.collect(&key.publishable, &json!({"batch": batch}))
            .await,
        202,
    )
    .await;

    assert_eq!(body["accepted"], good_ids.len());
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), bad.len(), "{body}");
    for (rejection, (event, code)) in rejected.iter().zip(&bad) {
        let index = rejection["index"].as_u64().unwrap() as usize;
        assert_eq!(&batch[index], event);
        assert_eq!(rejection["error"]["code"], *code, "{event} -> {rejection}");
        assert!(rejection["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    app.drain().await;
    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(app.state.db.pool())
        .await
        .unwrap();
    good_ids.sort();
    assert_eq!(stored, good_ids);
}

#[tokio::test]
async fn revoked_keys_unknown_keys_and_foreign_origins_are_refused() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    sqlx::query("UPDATE api_keys SET allowed_origins = '{https://shop.example.com}' WHERE id = $1")
        .bind(key.id)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    let send = |origin: &'static str| {
        app.http
            .post(format!("{}/api/collect", app.address))
            .bearer_auth(&key.publishable)
            .header("origin", origin)
            .json(&web_event(Uuid::new_v4()))
            .send()
    };

    let allowed = send("https://shop.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example.com"
    );
    body_of(allowed, 202).await;
    let foreign = body_of(send("https://evil.example").await.unwrap(), 403).await;
    assert_eq!(foreign["error"]["code"], "origin_not_allowed");

    // The secret key is not bound to origins.
    body_of(
        app.collect(key.secret.expose(), &web_event(Uuid::new_v4()))
            .await,
        202,
    )
    .await;

    sqlx::query("UPDATE api_keys SET status = 'revoked' WHERE id = $1")
        .bind(key.id)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    // What `tollgate keys revoke` does to the cache: revocation is immediate.
    for presented in [key.publishable.as_str(), key.secret.expose()] {
        let presented = tollgate::apikeys::PresentedKey::parse(presented).unwrap();
        let _: i64 = app
            .redis(
                tollgate::upstash::Command::new("DEL")
                    .arg(app.state.keys.key_cache(&presented.cache_id())),
            )
            .await;
    }
    let revoked = body_of(
        app.collect(&key.publishable, &web_event(Uuid::new_v4()))
            .await,
        401,
    )
    .await;
    assert_eq!(revoked["error"]["code"], "revoked_key");
}

#[tokio::test]
async fn cors_preflight_is_answered_for_any_origin() {
    let app = spawn_app().await;
    let response = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/collect", app.address),
        )
        .header("origin", "https://site.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://site.example"
    );
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("content-type"));
}

#[tokio::test]
async fn bots_are_dropped_and_counted() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let response = app
        .http
        .post(format!("{}/api/collect", app.address))
        .bearer_auth(&key.publishable)
        .header(
            "user-agent",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        )
        .json(&json!([
            web_event(Uuid::new_v4()),
            web_event(Uuid::new_v4())
        ]))
        .send()
        .await
        .unwrap();
    let body = body_of(response, 202).await;
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["dropped_as_bot"], 2);
    app.drain().await;
    assert_eq!(app.stored_events().await, 0);
    assert_eq!(app.queue_status().await["fallbacks"]["bots_dropped"], 2);
}

#[tokio::test]
async fn with_redis_down_events_go_straight_to_postgres() {
    let app = spawn_app_with(TestOptions {
        upstash_url: Some("http://127.0.0.1:1".into()),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let id = Uuid::new_v4();

    let body = body_of(
        app.collect(&key.publishable, &json!([web_event(id), {"type": "web"}]))
            .await,
        202,
    )
    .await;

    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["index"], 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE id = $1")
        .bind(id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let counted: i64 = sqlx::query_scalar(
        "SELECT value FROM operational_counters WHERE name = 'direct_to_postgres_events'",
    )
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(counted, 1);
    // The request is counted in the usage tables, as the sync would have.
    let usage: (i64, i64) =
        sqlx::query_as("SELECT total_requests, successful_requests FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(usage, (1, 1));
    // The key checks still apply on the direct path.
    let unknown = body_of(
        app.collect("pk_000000000000000000000000", &web_event(Uuid::new_v4()))
            .await,
        401,
    )
    .await;
    assert_eq!(unknown["error"]["code"], "invalid_key");
}

#[tokio::test]
async fn requests_under_a_tiny_admission_timeout_are_each_counted_exactly_once() {
    // A 1 ms admission timeout leaves 250 ms of grace for the reply: calls
    // mostly answer in time, and any that do not are settled under their
    // request id. Either way, each request is counted once.
    let app = spawn_app_with(TestOptions {
        env: vec![("TOLLGATE_ADMISSION_TIMEOUT", "1ms".to_owned())],
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    // Warm the key cache and the bans, so the request is one script call.
    let warm = app
        .collect(&key.publishable, &web_event(Uuid::new_v4()))
        .await;
    assert_eq!(warm.status(), 202);
    for _ in 0..20 {
        let response = app
            .collect(&key.publishable, &web_event(Uuid::new_v4()))
            .await;
        assert_eq!(response.status(), 202);
    }
    app.sync_metrics().await;
    app.drain().await;
    let usage: (i64, i64) =
        sqlx::query_as("SELECT total_requests, successful_requests FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(usage, (21, 21));
    assert_eq!(app.stored_events().await, 21);
}

#[tokio::test]
async fn with_redis_and_postgres_down_collect_answers_503_with_retry_after() {
    let app = spawn_app_with(TestOptions {
        upstash_url: Some("http://127.0.0.1:1".into()),
        database_url: Some("postgres://postgres@127.0.0.1:1/nowhere".into()),
        ..TestOptions::default()
    })
    .await;

    let response = app
        .collect("pk_0123456789abcdef01234567", &web_event(Uuid::new_v4()))
        .await;

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
}

#[tokio::test]
async fn collect_configured_to_fail_closed_answers_503_when_upstash_is_down() {
    let app = spawn_app_with(TestOptions {
        upstash_url: Some("http://127.0.0.1:1".into()),
        env: vec![("TOLLGATE_FAIL_OPEN_ROUTES", "none".into())],
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;

    let response = app
        .collect(&key.publishable, &web_event(Uuid::new_v4()))
        .await;

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(app.stored_events().await, 0);
}

/// Bytes of one queued entry's fields, as the stream holds them.
async fn queued_bytes(app: &crate::helpers::TestApp) -> usize {
    let mut total = 0;
    for shard in app.state.keys.event_queues() {
        let entries: tollgate::upstash::Reply = app
            .redis(
                tollgate::upstash::Command::new("XRANGE")
                    .arg(shard)
                    .arg("-")
                    .arg("+"),
            )
            .await;
        let tollgate::upstash::Reply::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let tollgate::upstash::Reply::Array(parts) = entry else {
                continue;
            };
            if let Some(tollgate::upstash::Reply::Array(fields)) = parts.get(1) {
                let fields: Vec<&str> = fields.iter().filter_map(|f| f.as_str()).collect();
                if fields.chunks(2).any(|p| p == ["t", "ev"]) {
                    total += fields.iter().map(|f| f.len()).sum::<usize>();
                }
            }
        }
    }
    total
}

#[tokio::test]
async fn a_full_collect_body_travels_and_queues_compactly() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    // Warm the key cache and the instance's key id.
    body_of(
        app.collect(key.secret.expose(), &web_event(Uuid::new_v4()))
            .await,
        202,
    )
    .await;
    app.drain().await;

    // As the tracker stamps them: milliseconds, within the accepted age.
    let timestamp = (chrono::Utc::now() - chrono::TimeDelta::minutes(5))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let shapes: Vec<(&str, Vec<Value>)> = vec![
        (
            "web events with properties",
            (0..500)
                .map(|i| json!({"type": "web", "name": "pageview", "id": Uuid::new_v4(),
                    "url": format!("https://shop.example.com/products/{i}?utm_source=news&utm_medium=email"),
                    "referrer": "https://news.example.org/item?id=123", "title": "A product page",
                    "properties": {"plan": "pro", "cart": (0..60).map(|n| json!({"sku": format!("SKU-{n}"), "qty": n})).collect::<Vec<_>>()}}))
                .collect(),
        ),
        (
            "page views as the tracker sends them",
            (0..500)
                .map(|i| json!({"type": "web", "name": "pageview", "id": Uuid::new_v4(),
                    "timestamp": &timestamp,
                    "url": format!("https://shop.example.com/products/{i}?utm_source=news"),
                    "referrer": "https://news.example.org/", "title": "A product page",
                    "screen": "1920x1080", "language": "en-GB"}))
                .collect(),
        ),
    ];
    for (shape, events) in shapes {
        let body = serde_json::to_vec(&json!({"batch": events})).unwrap();
        let sent = app.state.upstash.bytes_sent();
        let response = app
            .http
            .post(format!("{}/api/collect", app.address))
            .bearer_auth(key.secret.expose())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{shape}");
        let request_ratio = (app.state.upstash.bytes_sent() - sent) as f64 / body.len() as f64;
        let stream_ratio = queued_bytes(&app).await as f64 / body.len() as f64;
        println!("{shape}: body {} bytes, Upstash request {request_ratio:.3}×, stream {stream_ratio:.3}×", body.len());
        assert!(request_ratio <= 1.3, "{shape}: request {request_ratio:.3}×");
        assert!(stream_ratio <= 1.2, "{shape}: stream {stream_ratio:.3}×");
        app.drain().await;
    }
}

#[tokio::test]
async fn past_its_capacity_the_queue_sends_events_to_postgres_and_never_trims() {
    let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        env: vec![
            ("TOLLGATE_REDIS_SHARDS", "1".into()),
            ("TOLLGATE_QUEUE_MAX_BYTES", "4KiB".into()),
        ],
        ..Default::default()
    })
    .await;
    let key = app.create_key().await;
    let batch = |n: usize| {
        json!((0..n)
            .map(|_| web_event(Uuid::new_v4()))
            .collect::<Vec<_>>())
    };

    // About 3 KB: queued. The next 3 KB would pass 4 KiB: straight to Postgres.
    body_of(app.collect(key.secret.expose(), &batch(12)).await, 202).await;
    let status = app.queue_status().await;
    let queued = status["queue"]["bytes"].as_u64().unwrap();
    assert!((2_000..4_096).contains(&queued), "{status}");
    assert_eq!(status["queue"]["capacity_bytes"], 4_096);
    body_of(app.collect(key.secret.expose(), &batch(12)).await, 202).await;
    assert_eq!(
        app.stored_events().await,
        12,
        "written straight to Postgres"
    );
    let status = app.queue_status().await;
    assert_eq!(
        status["queue"]["bytes"].as_u64().unwrap(),
        queued,
        "nothing more queued, nothing trimmed"
    );
    assert_eq!(status["fallbacks"]["queue_full_events"], 12, "{status}");

    // With Postgres gone too, the client is told to come back.
    let broken = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        upstash_url: Some(app.state.config.upstash.url.to_string()),
        database_url: Some("postgres://postgres@127.0.0.1:1/nowhere".into()),
        env: vec![
            ("TOLLGATE_REDIS_SHARDS", "1".into()),
            ("TOLLGATE_QUEUE_MAX_BYTES", "4KiB".into()),
            ("TOLLGATE_KEY_PREFIX", app.key_prefix.clone()),
            (
                "UPSTASH_REDIS_REST_TOKEN",
                app.state.config.upstash.token.expose().to_owned(),
            ),
        ],
        ..Default::default()
    })
    .await;
    let response = broken.collect(key.secret.expose(), &batch(12)).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));

    // The drain empties the queue; every event is stored once, and both
    // requests are counted once: one by the sync, one by the direct write.
    app.drain().await;
    app.sync_metrics().await;
    assert_eq!(app.stored_events().await, 24);
    let requests: i64 = sqlx::query_scalar("SELECT total_requests FROM api_keys WHERE id = $1")
        .bind(key.id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(requests, 2);
    assert_eq!(app.queue_status().await["queue"]["bytes"], 0);
}
