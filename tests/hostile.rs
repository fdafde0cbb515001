//! Hostile requests, route by route: a table per route family of what an
//! attacker would send to be counted for less, to cost a tenant or the
//! operator money, or to read another tenant's data. Every case gets its
//! exact status and error code, no answer is a 5xx, no error message echoes
//! more than a line of what the client sent, and after the refusals the
//! drain and the sync run and show that nothing was stored or counted
//! beyond what the route documents (signed-url counts a malformed request
//! of a known key as failed; nothing else counts a refusal).
//!
//! Cases that `collect.rs`, `signed_url.rs`, `analytics.rs`, `input.rs`,
//! `drain.rs`, `health.rs` and `trust.rs` already cover are not repeated.

use std::io::Write as _;

use flate2::{write::GzEncoder, Compression};
use reqwest::{
    header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, ORIGIN},
    Method, RequestBuilder,
};
use serde_json::{json, Value};
use tollgate::apikeys::NewKey;
use uuid::Uuid;

use crate::helpers::{providers, spawn_app, spawn_app_with, TestApp, TestOptions, CRON_SECRET};

/// The longest error message a refusal may carry: it names the field and
/// the limit, and quotes the client's input only in part.
const MAX_MESSAGE_BYTES: usize = 1024;

/// One hostile request and what it must get.
struct Case {
    name: &'static str,
    request: RequestBuilder,
    expect: Expect,
    /// Whether the route documents counting this request as a failed one.
    counted: bool,
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with this status and error code; the message names `detail`.
    Refused {
        status: u16,
        code: &'static str,
        detail: Option<&'static str>,
    },
    /// Answered with this status: it looks hostile, and is harmless.
    Answered(u16),
}

fn case(name: &'static str, request: RequestBuilder, expect: Expect) -> Case {
    Case {
        name,
        request,
        expect,
        counted: false,
    }
}

impl Case {
    /// Counted as a failed request, as signed-url documents.
    fn counted(mut self) -> Self {
        self.counted = true;
        self
    }
}

fn refused(status: u16, code: &'static str) -> Expect {
    Expect::Refused {
        status,
        code,
        detail: None,
    }
}

/// Refused, with a message that must contain `detail`.
fn refused_for(status: u16, code: &'static str, detail: &'static str) -> Expect {
    Expect::Refused {
        status,
        code,
        detail: Some(detail),
    }
}

/// What a case got.
struct Answer {
    name: &'static str,
    status: u16,
    body: Value,
    text: String,
    counted: bool,
}

/// Every case's answer, and what was wrong with them.
struct Answers {
    list: Vec<Answer>,
    failures: Vec<String>,
    total: usize,
}

impl Answers {
    /// Fails naming every case that was answered wrongly. Called at the end
    /// of a test, so that what was stored and counted is checked first.
    fn assert_all_right(&self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} hostile requests were answered wrongly:\n{}",
            self.failures.len(),
            self.total,
            self.failures.join("\n")
        );
    }
}

/// Sends every case in turn and checks its answer.
async fn run(cases: Vec<Case>) -> Answers {
    let mut failures = Vec::new();
    let mut answers = Vec::new();
    let total = cases.len();
    for Case {
        name,
        request,
        expect,
        counted,
    } in cases
    {
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                failures.push(format!("{name}: no answer: {error}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let allow = response.headers().contains_key("allow");
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let shown = || text.chars().take(300).collect::<String>();
        if status >= 500 {
            failures.push(format!("{name}: a {status}: {}", shown()));
        }
        match expect {
            Expect::Refused {
                status: want,
                code,
                detail,
            } => {
                let got = body["error"]["code"].as_str();
                let message = body["error"]["message"].as_str().unwrap_or_default();
                if (status, got) != (want, Some(code)) {
                    failures.push(format!(
                        "{name}: expected {want} {code}, got {status} {got:?}: {}",
                        shown()
                    ));
                } else if message.is_empty() {
                    failures.push(format!("{name}: no message: {}", shown()));
                } else if message.len() > MAX_MESSAGE_BYTES {
                    failures.push(format!(
                        "{name}: a message of {} bytes echoes the input: {}…",
                        message.len(),
                        shown()
                    ));
                } else if let Some(detail) = detail.filter(|d| !message.contains(d)) {
                    failures.push(format!("{name}: the message lacks {detail:?}: {message}"));
                }
                if status == 405 && !allow {
                    failures.push(format!("{name}: a 405 without `Allow`"));
                }
            }
            Expect::Answered(want) => {
                if status != want {
                    failures.push(format!(
                        "{name}: expected {want}, got {status}: {}",
                        shown()
                    ));
                }
            }
        }
        answers.push(Answer {
            name,
            status,
            body,
            text,
            counted,
        });
    }
    Answers {
        list: answers,
        failures,
        total,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Hex digits that compress only about 2:1, to pass a size limit without
/// tripping the ratio limit.
fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"0123456789abcdef"[(state % 16) as usize]
        })
        .collect()
}

/// A secret key of the right shape that no key has.
fn unknown_secret() -> String {
    let more = Uuid::new_v4().simple().to_string();
    format!("sk_{}{}", Uuid::new_v4().simple(), &more[..16])
}

/// A publishable key of the right shape that no key has.
fn unknown_publishable() -> String {
    format!("pk_{}", &Uuid::new_v4().simple().to_string()[..24])
}

/// An `Authorization` value that is not UTF-8.
fn unreadable_authorization() -> HeaderValue {
    HeaderValue::from_bytes(b"Bearer sk_\xff\xfe\xfd").unwrap()
}

/// Revokes a key in Postgres and in the key cache, as `tollgate keys revoke`.
async fn revoke(app: &TestApp, key: &NewKey) {
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
}

/// total_requests, successful_requests, failed_requests, total_files and
/// total_bytes of a key, as the sync left them.
async fn totals(app: &TestApp, key: Uuid) -> (i64, i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT total_requests, successful_requests, failed_requests, total_files, total_bytes
           FROM api_keys WHERE id = $1",
    )
    .bind(key)
    .fetch_one(app.state.db.pool())
    .await
    .unwrap()
}

/// Rows of a table.
async fn rows(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(app.state.db.pool())
        .await
        .unwrap()
}

/// The key's use of its daily quota, as Redis holds it.
async fn daily_quota_used(app: &TestApp, key: Uuid) -> i64 {
    let used: Option<String> = app
        .redis(
            tollgate::upstash::Command::new("HGET")
                .arg(app.state.keys.quota(key))
                .arg("du"),
        )
        .await;
    used.map_or(0, |n| n.parse().unwrap())
}

/// A JSON value as a request body.
fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

#[tokio::test]
async fn collect_answers_every_hostile_request_exactly_and_stores_and_counts_none() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let revoked = app.create_key().await;
    let guarded = app.create_key().await;
    sqlx::query("UPDATE api_keys SET allowed_origins = '{https://shop.example.com}' WHERE id = $1")
        .bind(guarded.id)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    revoke(&app, &revoked).await;

    let url = format!("{}/api/collect", app.address);
    let pk = key.publishable.clone();
    let bare = |body: Vec<u8>| app.http.post(&url).body(body);
    let post = |body: Vec<u8>| bare(body).bearer_auth(&pk);
    let raw = |body: &str| post(body.as_bytes().to_vec());
    let one = |event: Value| post(bytes(&event));
    let valid = || bytes(&json!({"type": "web", "name": "pageview"}));
    let encoded = |encoding: &str, body: Vec<u8>| post(body).header(CONTENT_ENCODING, encoding);
    let from = |origin: &str| {
        bare(valid())
            .bearer_auth(&guarded.publishable)
            .header(ORIGIN, origin)
    };
    let invalid = |detail: &'static str| refused_for(400, "no_valid_events", detail);
    let method = |method: Method| app.http.request(method, &url).bearer_auth(&pk);

    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_properties = format!(
        r#"{{"type":"web","name":"x","properties":{}1{}}}"#,
        r#"{"a":"#.repeat(200),
        "}".repeat(200)
    );
    let utf16: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain(r#"{"type":"web","name":"x"}"#.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let multipart = "--X\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\nweb\r\n--X\r\n\
                     Content-Disposition: form-data; name=\"name\"\r\n\r\npageview\r\n--X--\r\n";
    let numbers = format!("[{}0]", "0,".repeat(99_999));
    let json_gzip = gzip(&valid());
    let mut gzip_then_json = json_gzip.clone();
    gzip_then_json.extend_from_slice(&valid());
    // 20 MiB stops at the 1 MiB limit; 4 MiB is compressed more than 100
    // times, so the ratio stops it first.
    let big_bomb = gzip(&vec![0; 20 * 1024 * 1024]);
    let bomb = gzip(&vec![0; 4 * 1024 * 1024]);
    assert!(bomb.len() * 100 < 1024 * 1024);

    let cases = vec![
        // The body as a whole.
        case(
            "arrays nested 10 000 deep",
            raw(&deep_array),
            refused(400, "invalid_json"),
        ),
        case(
            "properties nested 200 objects deep",
            raw(&deep_properties),
            refused(400, "invalid_json"),
        ),
        case(
            "two JSON documents back to back",
            raw(r#"{"type":"web","name":"a"}{"type":"web","name":"b"}"#),
            refused(400, "invalid_json"),
        ),
        case(
            "NaN for a number",
            raw(r#"{"type":"server","name":"x","duration_ms":NaN}"#),
            refused(400, "invalid_json"),
        ),
        case(
            "a number past the largest double",
            raw(r#"{"type":"server","name":"x","duration_ms":1e400}"#),
            refused(400, "invalid_json"),
        ),
        case(
            "a lone UTF-16 surrogate escape",
            raw(r#"{"type":"web","name":"\ud800"}"#),
            refused(400, "invalid_json"),
        ),
        case(
            "bytes that are not UTF-8 in a string",
            post(b"{\"type\":\"web\",\"name\":\"\xff\xfe\"}".to_vec()),
            refused(400, "invalid_json"),
        ),
        case(
            "UTF-16 with its byte order mark",
            post(utf16),
            refused(400, "invalid_json"),
        ),
        case(
            "a form, declared as one",
            raw("type=web&name=pageview").header(CONTENT_TYPE, "application/x-www-form-urlencoded"),
            refused(400, "invalid_json"),
        ),
        case(
            "multipart form data",
            raw(multipart).header(CONTENT_TYPE, "multipart/form-data; boundary=X"),
            refused(400, "invalid_json"),
        ),
        case(
            "XML declared as JSON",
            raw("<event type=\"web\" name=\"x\"/>").header(CONTENT_TYPE, "application/json"),
            refused(400, "invalid_json"),
        ),
        case("the body `true`", raw("true"), refused(400, "invalid_body")),
        case(
            "a `key` field holding an array",
            raw(r#"{"key":["pk_0"],"type":"web","name":"x"}"#),
            refused(400, "invalid_body"),
        ),
        case(
            "a `batch` that is a string of JSON",
            raw(r#"{"batch":"[{\"type\":\"web\",\"name\":\"x\"}]"}"#),
            refused(400, "invalid_body"),
        ),
        case(
            "a hundred thousand numbers as a batch",
            raw(&numbers),
            refused_for(400, "batch_too_large", "100000 events"),
        ),
        // Encodings and bombs.
        case(
            "Content-Encoding br",
            encoded("br", valid()),
            refused(400, "unsupported_encoding"),
        ),
        case(
            "Content-Encoding deflate",
            encoded("deflate", valid()),
            refused(400, "unsupported_encoding"),
        ),
        case(
            "Content-Encoding gzip, gzip",
            encoded("gzip, gzip", gzip(&json_gzip)),
            refused(400, "unsupported_encoding"),
        ),
        case(
            "gzip declared over plain JSON",
            encoded("gzip", valid()),
            refused(400, "invalid_gzip"),
        ),
        case(
            "a gzip body cut in half",
            encoded("gzip", json_gzip[..json_gzip.len() / 2].to_vec()),
            refused(400, "invalid_gzip"),
        ),
        case(
            "a gzip member followed by plain JSON",
            post(gzip_then_json),
            refused(400, "invalid_gzip"),
        ),
        case(
            "gzip inside gzip under one Content-Encoding",
            encoded("gzip", gzip(&json_gzip)),
            refused(400, "invalid_json"),
        ),
        case(
            "gzip of text that is not JSON",
            encoded("gzip", gzip(b"SELECT * FROM events")),
            refused(400, "invalid_json"),
        ),
        case(
            "a gzip bomb of 20 MiB of zeros",
            encoded("gzip", big_bomb),
            refused_for(413, "payload_too_large", "decompressed"),
        ),
        case(
            "a gzip bomb of 4 MiB of zeros",
            encoded("gzip", bomb.clone()),
            refused(413, "decompression_ratio_exceeded"),
        ),
        case(
            "a gzip bomb sniffed without Content-Encoding",
            post(bomb),
            refused(413, "decompression_ratio_exceeded"),
        ),
        case(
            "gzip inflating past 1 MiB within the ratio",
            encoded("gzip", gzip(&incompressible(1024 * 1024 + 1))),
            refused_for(413, "payload_too_large", "decompressed"),
        ),
        case(
            "an 11 MB body",
            post(vec![b' '; 11 * 1024 * 1024]),
            refused(413, "payload_too_large"),
        ),
        // Keys.
        case(
            "Basic credentials",
            bare(valid()).header(AUTHORIZATION, "Basic dXNlcjpwYXNz"),
            refused(401, "invalid_key"),
        ),
        case(
            "the key in capital hex",
            bare(valid()).bearer_auth(format!("pk_{}", key.publishable[3..].to_uppercase())),
            refused(401, "invalid_key"),
        ),
        case(
            "an Authorization that is not UTF-8",
            bare(valid()).header(AUTHORIZATION, unreadable_authorization()),
            refused(401, "invalid_key"),
        ),
        case(
            "the key and a second word",
            bare(valid()).bearer_auth(format!("{pk} {}", key.secret.expose())),
            refused(401, "invalid_key"),
        ),
        case(
            "the cron secret as a key",
            bare(valid()).bearer_auth(CRON_SECRET),
            refused(401, "invalid_key"),
        ),
        case(
            "an unknown publishable key in X-API-Key",
            bare(valid()).header("x-api-key", unknown_publishable()),
            refused(401, "invalid_key"),
        ),
        case(
            "a malformed key in the body",
            bare(bytes(
                &json!({"key": "pk_' OR 1=1 --", "type": "web", "name": "x"}),
            )),
            refused(401, "invalid_key"),
        ),
        case(
            "a revoked key in the body",
            bare(bytes(
                &json!({"key": &revoked.publishable, "type": "web", "name": "x"}),
            )),
            refused(401, "revoked_key"),
        ),
        case(
            "a revoked secret key in X-API-Key",
            bare(valid()).header("x-api-key", revoked.secret.expose()),
            refused(401, "revoked_key"),
        ),
        case(
            "a malformed bearer beside a valid X-API-Key",
            bare(valid())
                .bearer_auth("pk_nope")
                .header("x-api-key", &pk),
            refused(401, "invalid_key"),
        ),
        case(
            "the key in the query string only",
            app.http.post(format!("{url}?key={pk}")).body(valid()),
            refused(401, "missing_key"),
        ),
        // Origins of a key that allows https://shop.example.com only.
        case(
            "an origin extending the allowed one",
            from("https://shop.example.com.evil.example"),
            refused(403, "origin_not_allowed"),
        ),
        case(
            "the allowed origin with a path",
            from("https://shop.example.com/"),
            refused(403, "origin_not_allowed"),
        ),
        case(
            "the allowed origin in capitals",
            from("HTTPS://SHOP.EXAMPLE.COM"),
            refused(403, "origin_not_allowed"),
        ),
        case(
            "the allowed origin over http",
            from("http://shop.example.com"),
            refused(403, "origin_not_allowed"),
        ),
        case(
            "a sandboxed frame's null origin",
            from("null"),
            refused(403, "origin_not_allowed"),
        ),
        case(
            "no origin for a key bound to one",
            bare(valid()).bearer_auth(&guarded.publishable),
            refused(403, "origin_not_allowed"),
        ),
        // Events, each the only one of its request.
        case(
            "epoch ms past 2^53",
            one(json!({"type": "web", "name": "x", "timestamp": 9_007_199_254_740_993_u64})),
            invalid("`invalid_timestamp`"),
        ),
        case(
            "epoch ms of i64::MAX",
            one(json!({"type": "web", "name": "x", "timestamp": i64::MAX})),
            invalid("`invalid_timestamp`"),
        ),
        case(
            "epoch ms past u64",
            raw(r#"{"type":"web","name":"x","timestamp":18446744073709551616}"#),
            invalid("`invalid_timestamp`"),
        ),
        case(
            "a signed six-digit year",
            one(json!({"type": "web", "name": "x", "timestamp": "+275760-09-13T00:00:00Z"})),
            invalid("`invalid_timestamp`"),
        ),
        case(
            "a negative year",
            one(json!({"type": "web", "name": "x", "timestamp": "-0999-01-01T00:00:00Z"})),
            invalid("`invalid_timestamp`"),
        ),
        case(
            "the year 9999",
            one(json!({"type": "web", "name": "x", "timestamp": "9999-12-31T23:59:59Z"})),
            invalid("`timestamp_in_future`"),
        ),
        case(
            "epoch seconds for milliseconds",
            one(json!({"type": "web", "name": "x", "timestamp": 1_700_000_000})),
            invalid("`timestamp_too_old`"),
        ),
        case(
            "the nil UUID as id",
            one(json!({"type": "web", "name": "x", "id": Uuid::nil()})),
            invalid("`invalid_id`"),
        ),
        case(
            "a number as id",
            one(json!({"type": "web", "name": "x", "id": 12345})),
            invalid("`invalid_id`"),
        ),
        case(
            "the type in capitals",
            one(json!({"type": "WEB", "name": "x"})),
            invalid("`invalid_type`"),
        ),
        case(
            "the type with a zero-width space",
            one(json!({"type": "web\u{200b}", "name": "x"})),
            invalid("`invalid_type`"),
        ),
        case(
            "a blank name",
            one(json!({"type": "web", "name": " \t "})),
            invalid("`invalid_field`"),
        ),
        case(
            "201 four-byte emoji as name",
            one(json!({"type": "web", "name": "😀".repeat(201)})),
            invalid("`field_too_long`"),
        ),
        case(
            "a javascript: URL",
            one(json!({"type": "web", "name": "x", "url": "javascript:alert(document.cookie)"})),
            invalid("`invalid_field`"),
        ),
        case(
            "a data: URL",
            one(
                json!({"type": "web", "name": "x", "url": "data:text/html,<script>alert(1)</script>"}),
            ),
            invalid("`invalid_field`"),
        ),
        case(
            "a URL whose path outgrows the limit once encoded",
            one(
                json!({"type": "web", "name": "x", "url": format!("https://e.example/{}x", " ".repeat(1000))}),
            ),
            invalid("`field_too_long`"),
        ),
        case(
            "an HTTP status as a float",
            one(json!({"type": "server", "name": "x", "status": 200.0})),
            invalid("`invalid_field`"),
        ),
        case(
            "an HTTP status of 2^63",
            raw(r#"{"type":"server","name":"x","status":9223372036854775808}"#),
            invalid("`invalid_field`"),
        ),
        case(
            "a 17-character method",
            one(json!({"type": "server", "name": "x", "method": "M".repeat(17)})),
            invalid("`field_too_long`"),
        ),
        case(
            "an event that is an array",
            raw(r#"[[{"type":"web","name":"x"}]]"#),
            invalid("`invalid_event`"),
        ),
        case(
            "a name given twice, the last one blank",
            raw(r#"{"type":"web","name":"pageview","name":"  "}"#),
            invalid("`invalid_field`"),
        ),
        // Methods.
        case(
            "GET",
            method(Method::GET),
            refused(405, "method_not_allowed"),
        ),
        case(
            "PUT",
            method(Method::PUT).body(valid()),
            refused(405, "method_not_allowed"),
        ),
        case(
            "DELETE",
            method(Method::DELETE),
            refused(405, "method_not_allowed"),
        ),
        case(
            "PATCH",
            method(Method::PATCH).body(valid()),
            refused(405, "method_not_allowed"),
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let answers = run(cases).await;

    app.drain().await;
    app.sync_metrics().await;
    assert_eq!(app.stored_events().await, 0);
    for refused_key in [&key, &revoked, &guarded] {
        assert_eq!(totals(&app, refused_key.id).await, (0, 0, 0, 0, 0));
        assert_eq!(daily_quota_used(&app, refused_key.id).await, 0);
    }
    assert_eq!(rows(&app, "api_requests_log").await, 0);
    assert_eq!(rows(&app, "api_key_usage_daily").await, 0);
    assert_eq!(rows(&app, "dead_letter_events").await, 0);
    let status = app.queue_status().await;
    assert_eq!(status["queue"]["events"], 0, "{status}");
    assert_eq!(status["fallbacks"]["bots_dropped"], 0, "{status}");

    // And the key still works: nothing above spoiled its state.
    let response = app
        .collect(&pk, &json!({"type": "web", "name": "after"}))
        .await;
    assert_eq!(response.status(), 202);
    app.drain().await;
    assert_eq!(app.stored_events().await, 1);
    answers.assert_all_right();
}

#[tokio::test]
async fn collect_stores_an_id_repeated_in_a_batch_once_and_keeps_each_tenants_ids_apart() {
    let app = spawn_app().await;
    let a = app.create_key().await;
    let b = app.create_key().await;
    let id = Uuid::new_v4();
    let event = json!({"type": "web", "name": "pageview", "id": id});

    for (key, batch) in [
        (&a, json!([event, event, event])),
        (&a, json!([event])),
        // Another tenant's events may carry the same id, and are its own.
        (&b, json!([event])),
    ] {
        let response = app.collect(&key.publishable, &batch).await;
        assert_eq!(response.status(), 202);
    }
    app.drain().await;

    let mut stored: Vec<Uuid> = sqlx::query_scalar("SELECT api_key_id FROM events WHERE id = $1")
        .bind(id)
        .fetch_all(app.state.db.pool())
        .await
        .unwrap();
    let mut expected = vec![a.id, b.id];
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected);
    assert_eq!(rows(&app, "dead_letter_events").await, 0);
}

#[tokio::test]
async fn signed_url_answers_every_hostile_request_exactly_and_counts_each_only_as_documented() {
    let app = spawn_app_with(TestOptions {
        env: providers(false),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    // One upload a day: the refusals below must use none of it.
    app.set_limits(&key, Some(600), Some(1), None).await;
    let revoked = app.create_key().await;
    revoke(&app, &revoked).await;
    let other = app.create_key().await;

    let url = format!("{}/api/signed-url", app.address);
    let sk = key.secret.expose().to_owned();
    let bare = |body: Vec<u8>| app.http.post(&url).body(body);
    let post = |body: Vec<u8>| bare(body).bearer_auth(&sk);
    let raw = |body: &str| post(body.as_bytes().to_vec());
    let with = |changes: Value| {
        let mut body = json!({"filename": "a.png", "content_type": "image/png", "size": 10});
        for (field, value) in changes.as_object().unwrap() {
            body[field] = value.clone();
        }
        post(bytes(&body))
    };
    let valid = || bytes(&json!({"filename": "a.png", "content_type": "image/png", "size": 10}));
    let named = |filename: &str| with(json!({"filename": filename}));
    let typed = |content_type: &str| with(json!({"content_type": content_type}));
    let method = |method: Method| app.http.request(method, &url).bearer_auth(&sk);
    let bad = |code: &'static str| refused(400, code);

    let deep = format!(
        r#"{{"filename":{}"a"{},"content_type":"image/png","size":1}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut with_bom = b"\xef\xbb\xbf".to_vec();
    with_bom.extend(valid());

    let cases = vec![
        // The body as a whole.
        case("the fields as an array, in the struct's order", raw(r#"["a.png","image/png",10,null,null]"#), bad("invalid_json")).counted(),
        case("the body `null`", raw("null"), bad("invalid_json")).counted(),
        case("an empty body", raw(""), bad("invalid_json")).counted(),
        case("size given twice, the second one huge", raw(r#"{"filename":"a.png","content_type":"image/png","size":1,"size":99999999999}"#), bad("invalid_json")).counted(),
        case("two objects back to back", raw(r#"{"filename":"a.png","content_type":"image/png","size":1}{}"#), bad("invalid_json")).counted(),
        case("a filename nested 10 000 arrays deep", raw(&deep), bad("invalid_json")).counted(),
        case("a UTF-8 byte order mark before the object", post(with_bom), bad("invalid_json")).counted(),
        case("a form, declared as one", raw("filename=a.png&content_type=image/png&size=10").header(CONTENT_TYPE, "application/x-www-form-urlencoded"), bad("invalid_json")).counted(),
        case("a lone surrogate in the filename", raw(r#"{"filename":"\udc00.png","content_type":"image/png","size":1}"#), bad("invalid_json")).counted(),
        case("a size past the largest double", raw(r#"{"filename":"a.png","content_type":"image/png","size":1e400}"#), bad("invalid_json")).counted(),
        case("an expiry past the largest double", raw(r#"{"filename":"a.png","content_type":"image/png","size":1,"expires_in":1e400}"#), bad("invalid_json")).counted(),
        case("an 11 MB body", post(vec![b' '; 11 * 1024 * 1024]), refused(413, "payload_too_large")),
        // File names.
        case("an absolute path", named("/etc/passwd"), bad("invalid_filename")).counted(),
        case("a Windows path", named("C:\\Windows\\System32\\cmd.exe"), bad("invalid_filename")).counted(),
        case("a UNC path", named("\\\\fileserver\\share\\a.pdf"), bad("invalid_filename")).counted(),
        case("percent-encoded traversal", named("..%2f..%2fetc%2fpasswd"), bad("invalid_filename")).counted(),
        case("a home directory path", named("~/.ssh/id_rsa"), bad("invalid_filename")).counted(),
        case("three dots", named("..."), bad("invalid_filename")).counted(),
        case("one dot", named("."), bad("invalid_filename")).counted(),
        case("a trailing slash", named("a.pdf/"), bad("invalid_filename")).counted(),
        case("a header injected through the name", named("a.pdf\r\nContent-Type: text/html"), bad("invalid_filename")).counted(),
        case("trailing whitespace", named("a.pdf "), bad("invalid_filename")).counted(),
        case("256 bytes, one over", named(&format!("{}.pdf", "a".repeat(252))), refused_for(400, "invalid_filename", "255 bytes")).counted(),
        case("a null filename", with(json!({"filename": null})), bad("missing_field")).counted(),
        case("a filename in an array", with(json!({"filename": ["a.png"]})), bad("invalid_field")).counted(),
        case("a filename object", with(json!({"filename": {"name": "a.png"}})), bad("invalid_field")).counted(),
        // Content types.
        case("a header injected through the type", typed("image/png\r\nx-amz-acl: public-read"), bad("invalid_content_type")).counted(),
        case("a tab inside the type", typed("image/\tpng"), bad("invalid_content_type")).counted(),
        case("a 256-character type", typed(&format!("image/{}", "x".repeat(250))), bad("invalid_content_type")).counted(),
        case("an empty type", typed(""), bad("invalid_content_type")).counted(),
        case("a blank type", typed("   "), bad("invalid_content_type")).counted(),
        case("a type that is not ASCII", typed("image/pngé"), bad("invalid_content_type")).counted(),
        case("a numeric type", with(json!({"content_type": 42})), bad("invalid_field")).counted(),
        case("HTML, to be served from the bucket", typed("text/html"), bad("content_type_not_allowed")).counted(),
        case("JavaScript, to be served from the bucket", typed("application/javascript"), bad("content_type_not_allowed")).counted(),
        case("an allowed type with a parameter", typed("image/png; charset=utf-8"), bad("content_type_not_allowed")).counted(),
        case("a wildcard type", typed("*/*"), bad("content_type_not_allowed")).counted(),
        // Sizes.
        case("2^53 + 1 bytes", with(json!({"size": 9_007_199_254_740_993_u64})), refused(413, "payload_too_large")).counted(),
        case("u64::MAX bytes", with(json!({"size": u64::MAX})), refused(413, "payload_too_large")).counted(),
        case("a size past u64", raw(r#"{"filename":"a.png","content_type":"image/png","size":18446744073709551616}"#), bad("invalid_field")).counted(),
        case("a size in exponent form", raw(r#"{"filename":"a.png","content_type":"image/png","size":1e3}"#), bad("invalid_field")).counted(),
        case("a whole size written as a float", with(json!({"size": 100.0})), bad("invalid_field")).counted(),
        case("a boolean size", with(json!({"size": true})), bad("invalid_field")).counted(),
        case("a size in an array", with(json!({"size": [10]})), bad("invalid_field")).counted(),
        case("negative zero bytes", raw(r#"{"filename":"a.png","content_type":"image/png","size":-0}"#), bad("invalid_field")).counted(),
        case("a null size", with(json!({"size": null})), bad("missing_field")).counted(),
        // Providers.
        case("a provider in capitals", with(json!({"provider": "S3"})), bad("unknown_provider")).counted(),
        case("a provider with a path", with(json!({"provider": "../s3"})), bad("unknown_provider")).counted(),
        case("an empty provider", with(json!({"provider": ""})), bad("unknown_provider")).counted(),
        case("a provider of 100 KB, not echoed", with(json!({"provider": "x".repeat(100_000)})), bad("unknown_provider")).counted(),
        case("a numeric provider", with(json!({"provider": 1})), bad("invalid_field")).counted(),
        case("a list of providers", with(json!({"provider": ["s3", "blob"]})), bad("invalid_field")).counted(),
        case("Vercel Blob by its alias, not configured", with(json!({"provider": "vercel-blob"})), bad("provider_not_configured")).counted(),
        // Expiries.
        case("a negative expiry", with(json!({"expires_in": -1})), bad("invalid_expiry")).counted(),
        case("a fractional expiry", with(json!({"expires_in": 1.5})), bad("invalid_expiry")).counted(),
        case("an expiry as a string", with(json!({"expires_in": "900"})), bad("invalid_expiry")).counted(),
        case("an expiry of 2^64 seconds", raw(r#"{"filename":"a.png","content_type":"image/png","size":1,"expires_in":18446744073709551616}"#), bad("invalid_expiry")).counted(),
        case("seven days written as a float", with(json!({"expires_in": 604_800.0})), bad("invalid_expiry")).counted(),
        case("a boolean expiry", with(json!({"expires_in": true})), bad("invalid_expiry")).counted(),
        // Keys: refused before anything is counted.
        case("a revoked key", bare(valid()).bearer_auth(revoked.secret.expose()), refused(401, "revoked_key")),
        case("a revoked key with a malformed body", bare(b"{".to_vec()).bearer_auth(revoked.secret.expose()), refused(401, "revoked_key")),
        case("an unknown key of the right shape", bare(valid()).bearer_auth(unknown_secret()), refused(401, "invalid_key")),
        case("an unknown key with a malformed body", bare(b"{".to_vec()).bearer_auth(unknown_secret()), refused(401, "invalid_key")),
        case("the secret key in X-API-Key", bare(valid()).header("x-api-key", &sk), refused(401, "missing_key")),
        case("`Bearer` and no token", bare(valid()).header(AUTHORIZATION, "Bearer"), refused(401, "invalid_key")),
        case("the Token scheme", bare(valid()).header(AUTHORIZATION, format!("Token {sk}")), refused(401, "invalid_key")),
        case("a publishable prefix in capitals", bare(valid()).bearer_auth(format!("PK_{}", &other.publishable[3..])), refused(401, "invalid_key")),
        case("the cron secret as a key", bare(valid()).bearer_auth(CRON_SECRET), refused(401, "invalid_key")),
        case("another tenant's key id as a key", bare(valid()).bearer_auth(other.id.to_string()), refused(401, "invalid_key")),
        case("two Authorization headers, the first not a key", bare(valid()).header(AUTHORIZATION, "Bearer nope").header(AUTHORIZATION, format!("Bearer {sk}")), refused(401, "invalid_key")),
        case("an Authorization that is not UTF-8", bare(valid()).header(AUTHORIZATION, unreadable_authorization()), refused(401, "invalid_key")),
        case("a malformed key with a malformed body", bare(b"{".to_vec()).bearer_auth("sk_1"), refused(401, "invalid_key")),
        // Methods.
        case("GET", method(Method::GET), refused(405, "method_not_allowed")),
        case("PUT", method(Method::PUT).body(valid()), refused(405, "method_not_allowed")),
        case("OPTIONS", method(Method::OPTIONS), refused(405, "method_not_allowed")),
        case("DELETE", method(Method::DELETE), refused(405, "method_not_allowed")),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let answers = run(cases).await;

    app.drain().await;
    app.sync_metrics().await;
    let counted: Vec<&Answer> = answers.list.iter().filter(|a| a.counted).collect();
    let n = counted.len() as i64;
    assert_eq!(totals(&app, key.id).await, (n, 0, n, 0, 0));
    for untouched in [&revoked, &other] {
        assert_eq!(totals(&app, untouched.id).await, (0, 0, 0, 0, 0));
    }
    let file_types: Value =
        sqlx::query_scalar("SELECT file_type_counts FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(file_types, json!({}));
    for table in [
        "uploads_log",
        "provider_usage",
        "provider_usage_daily",
        "events",
    ] {
        assert_eq!(rows(&app, table).await, 0, "{table}");
    }
    // Each counted request is logged once, with the status its client got
    // (checked last, below).
    let mut logged: Vec<i32> =
        sqlx::query_scalar("SELECT status FROM api_requests_log WHERE api_key_id = $1")
            .bind(key.id)
            .fetch_all(app.state.db.pool())
            .await
            .unwrap();

    // The day's one upload is still there to take, and then it is gone.
    assert_eq!(daily_quota_used(&app, key.id).await, 0);
    let (status, body) =
        crate::helpers::sign(&app, Some(&sk), &String::from_utf8(valid()).unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        crate::helpers::sign(&app, Some(&sk), &String::from_utf8(valid()).unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("daily_quota_exceeded"))
    );

    let mut answered: Vec<i32> = counted.iter().map(|a| i32::from(a.status)).collect();
    logged.sort();
    answered.sort();
    assert_eq!(logged, answered, "the request log's statuses");
    assert_eq!(rows(&app, "api_requests_log").await, n);
    answers.assert_all_right();
}

/// Fails if a count anywhere in a view is above zero.
fn assert_nothing_counted(value: &Value, case: &str) {
    const COUNTS: [&str; 9] = [
        "requests",
        "successful",
        "failed",
        "files",
        "bytes",
        "uploads",
        "events",
        "visitors",
        "count",
    ];
    match value {
        Value::Object(map) => {
            for (name, item) in map {
                if COUNTS.contains(&name.as_str()) {
                    assert!(item.as_i64().unwrap_or(0) <= 0, "{case}: {name} = {item}");
                }
                assert_nothing_counted(item, case);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| assert_nothing_counted(i, case)),
        _ => {}
    }
}

#[tokio::test]
async fn analytics_answers_every_hostile_request_exactly_and_never_another_tenants_data() {
    let app = spawn_app_with(TestOptions {
        env: providers(false),
        ..TestOptions::default()
    })
    .await;
    let a = app.create_key().await;
    let b = app.create_key().await;
    // B has data: an event and an upload.
    let response = app
        .collect(
            b.secret.expose(),
            &json!({"type": "server", "name": "b-only"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let upload = json!({"filename": "b-secret.png", "content_type": "image/png", "size": 777});
    let (status, _) =
        crate::helpers::sign(&app, Some(b.secret.expose()), &upload.to_string()).await;
    assert_eq!(status, 200);
    app.drain().await;
    app.sync_metrics().await;
    let b_totals = totals(&app, b.id).await;
    assert_eq!(b_totals, (2, 2, 0, 1, 777));

    let base = format!("{}/api/analytics", app.address);
    let secret = a.secret.expose().to_owned();
    let bare = |query: &str| app.http.get(format!("{base}?{query}"));
    let get = |query: &str| bare(query).bearer_auth(&secret);
    let bad = |code: &'static str| refused(400, code);
    let ok = Expect::Answered(200);
    let method = |method: Method| {
        app.http
            .request(method, format!("{base}?view=overview"))
            .bearer_auth(&secret)
    };
    let b_id = b.id.to_string();
    let long_name = format!("view=overview&{}=1", "n".repeat(60_000));

    let cases = vec![
        // The view.
        case(
            "a view in capitals",
            get("view=OVERVIEW"),
            bad("invalid_view"),
        ),
        case("a view without a value", get("view"), bad("invalid_view")),
        case(
            "a view that is not UTF-8",
            get("view=%ff%fe"),
            bad("invalid_view"),
        ),
        case(
            "a view ending a SQL comment",
            get("view=overview'--"),
            bad("invalid_view"),
        ),
        case(
            "a view with a NUL",
            get("view=overview%00"),
            bad("invalid_view"),
        ),
        // Repeated parameters: which one counts must not be a guess.
        case(
            "view given twice",
            get("view=overview&view=events"),
            refused_for(400, "invalid_parameter", "`view`"),
        ),
        case(
            "limit given twice",
            get("view=daily&limit=7&limit=90"),
            refused_for(400, "invalid_parameter", "`limit`"),
        ),
        case(
            "start given twice",
            get("view=daily&start=2026-01-01&start=2026-02-01&end=2026-03-01"),
            refused_for(400, "invalid_parameter", "`start`"),
        ),
        // Names that are not parameters.
        case(
            "VIEW in capitals",
            get("VIEW=overview"),
            bad("unknown_parameter"),
        ),
        case(
            "a parameter name with a NUL",
            get("view%00=overview"),
            bad("unknown_parameter"),
        ),
        case(
            "an array-style name",
            get("view[]=overview"),
            bad("unknown_parameter"),
        ),
        case(
            "a JSONP callback",
            get("view=overview&callback=alert"),
            bad("unknown_parameter"),
        ),
        case(
            "another tenant's id as tenant",
            get(&format!("view=overview&tenant={b_id}")),
            bad("unknown_parameter"),
        ),
        case(
            "another tenant's id as key_id on events",
            get(&format!("view=events&key_id={b_id}")),
            bad("unknown_parameter"),
        ),
        case(
            "a 60 KB parameter name",
            get(&long_name),
            bad("unknown_parameter"),
        ),
        // Dates.
        case(
            "a signed negative year",
            get("view=daily&start=-999-01-01"),
            bad("invalid_date"),
        ),
        case(
            "a signed positive year",
            get("view=daily&end=%2B999-01-01"),
            bad("invalid_date"),
        ),
        case(
            "a plus before a whole date",
            get("view=daily&start=%2B2026-11-01"),
            bad("invalid_date"),
        ),
        case(
            "a date and time",
            get("view=daily&start=2026-11-01T00:00:00Z"),
            bad("invalid_date"),
        ),
        case(
            "a date without dashes",
            get("view=daily&start=20261101"),
            bad("invalid_date"),
        ),
        case(
            "a date with a NUL",
            get("view=daily&start=2026-11-01%00"),
            bad("invalid_date"),
        ),
        case(
            "a date in fullwidth digits",
            get("view=daily&start=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-11-01"),
            bad("invalid_date"),
        ),
        case(
            "a date with a trailing space",
            get("view=daily&start=2026-11-01+"),
            bad("invalid_date"),
        ),
        case(
            "the 29th of February 2100",
            get("view=daily&start=2100-02-29"),
            bad("invalid_date"),
        ),
        case(
            "a date carrying SQL",
            get("view=daily&start=2026-01-01')%3BDELETE+FROM+api_keys%3B--"),
            bad("invalid_date"),
        ),
        // Limits.
        case(
            "a limit carrying SQL",
            get("view=daily&limit=1%3BDROP+TABLE+events"),
            bad("invalid_limit"),
        ),
        case(
            "a limit in exponent form",
            get("view=daily&limit=1e1"),
            bad("invalid_limit"),
        ),
        case(
            "a limit past i64",
            get("view=daily&limit=9223372036854775808"),
            bad("invalid_limit"),
        ),
        case(
            "an empty limit",
            get("view=daily&limit="),
            bad("invalid_limit"),
        ),
        case(
            "a hexadecimal limit",
            get("view=daily&limit=0x10"),
            bad("invalid_limit"),
        ),
        case(
            "a fractional limit",
            get("view=daily&limit=1.0"),
            bad("invalid_limit"),
        ),
        // Ranges.
        case(
            "367 days of events",
            get("view=events&start=2025-10-31&end=2026-11-01"),
            refused_for(400, "invalid_range", "367 days"),
        ),
        case(
            "a start far in the future",
            get("view=daily&start=2999-01-01"),
            bad("invalid_range"),
        ),
        case(
            "all of time",
            get("view=events&start=0001-01-01&end=9999-12-31"),
            bad("invalid_range"),
        ),
        case(
            "a limit on the events view",
            get("view=events&limit=1"),
            bad("invalid_parameter"),
        ),
        case(
            "an end on the overview",
            get("view=overview&end=2026-01-01"),
            bad("invalid_parameter"),
        ),
        case(
            "a limit on the overview",
            get("view=overview&limit=5"),
            bad("invalid_parameter"),
        ),
        // Absurd but well-formed: answered, with the key's own zeros.
        case(
            "the year 0",
            get("view=daily&start=0000-01-01&end=0000-12-31"),
            ok,
        ),
        case(
            "the last day of 9999",
            get("view=events&start=9999-12-31&end=9999-12-31"),
            ok,
        ),
        case(
            "providers in the first century",
            get("view=providers&start=0001-01-01&end=0001-03-31&limit=90"),
            ok,
        ),
        case(
            "an end on the first day of year 0",
            get("view=daily&end=0000-01-01"),
            ok,
        ),
        case(
            "a percent-encoded parameter name",
            get("vi%65w=overview"),
            ok,
        ),
        case("a limit with a plus sign", get("view=daily&limit=%2B5"), ok),
        // Keys: checked before the parameters.
        case(
            "no key and a bad view",
            bare("view=bogus"),
            refused(401, "missing_key"),
        ),
        case(
            "the key in the query string only",
            bare(&format!("view=overview&key={secret}")),
            refused(401, "missing_key"),
        ),
        case(
            "the secret key in X-API-Key",
            bare("view=overview").header("x-api-key", &secret),
            refused(401, "missing_key"),
        ),
        case(
            "an unknown key of the right shape",
            bare("view=overview").bearer_auth(unknown_secret()),
            refused(401, "invalid_key"),
        ),
        case(
            "another tenant's key id as a key",
            bare("view=overview").bearer_auth(&b_id),
            refused(401, "invalid_key"),
        ),
        case(
            "one key then another",
            bare("view=overview").bearer_auth(format!("{secret} {}", b.secret.expose())),
            refused(401, "invalid_key"),
        ),
        case(
            "an Authorization that is not UTF-8",
            bare("view=overview").header(AUTHORIZATION, unreadable_authorization()),
            refused(401, "invalid_key"),
        ),
        case(
            "the cron secret as a key",
            bare("view=overview").bearer_auth(CRON_SECRET),
            refused(401, "invalid_key"),
        ),
        case(
            "another tenant's publishable key",
            bare("view=overview").bearer_auth(&b.publishable),
            refused(403, "secret_key_required"),
        ),
        // Methods.
        case(
            "PUT",
            method(Method::PUT),
            refused(405, "method_not_allowed"),
        ),
        case(
            "DELETE",
            method(Method::DELETE),
            refused(405, "method_not_allowed"),
        ),
        case(
            "PATCH",
            method(Method::PATCH),
            refused(405, "method_not_allowed"),
        ),
        case(
            "OPTIONS",
            method(Method::OPTIONS),
            refused(405, "method_not_allowed"),
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let answers = run(cases).await;

    for answer in answers.list.iter().filter(|answer| answer.status == 200) {
        assert_eq!(answer.body["key_id"], a.id.to_string(), "{}", answer.name);
        for leak in [b_id.as_str(), "b-only", "b-secret"] {
            assert!(
                !answer.text.contains(leak),
                "{}: {}",
                answer.name,
                answer.text
            );
        }
        assert_nothing_counted(&answer.body, answer.name);
    }
    // Reading analytics is not usage: it moves no usage counter and spends
    // no quota, whatever it was answered; and nothing above was stored.
    app.drain().await;
    app.sync_metrics().await;
    assert_eq!(totals(&app, a.id).await, (0, 0, 0, 0, 0));
    assert_eq!(daily_quota_used(&app, a.id).await, 0);
    assert_eq!(totals(&app, b.id).await, b_totals);
    assert_eq!(app.stored_events().await, 1);
    answers.assert_all_right();
}

#[tokio::test]
async fn the_crons_and_health_answer_every_hostile_request_exactly_and_do_nothing() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    // One queued event and one unsynced request, which a refused cron must
    // leave where they are.
    let response = app
        .collect(
            &key.publishable,
            &json!({"type": "web", "name": "pageview"}),
        )
        .await;
    assert_eq!(response.status(), 202);

    let at = |path: &str| format!("{}{path}", app.address);
    let drain = at("/api/cron/process-events");
    let sync = at("/api/cron/sync-metrics");
    let queue = at("/api/cron/queue-status");
    let health = at("/api/health");
    let get = |url: &str| app.http.get(url);
    let missing = refused(401, "missing_cron_secret");
    let wrong = refused(401, "invalid_cron_secret");
    let not_allowed = refused(405, "method_not_allowed");
    let upper = CRON_SECRET.to_uppercase();

    let cases = vec![
        // process-events.
        case(
            "the secret and one more character",
            get(&drain).bearer_auth(format!("{CRON_SECRET}x")),
            wrong,
        ),
        case(
            "the secret's first 16 characters",
            get(&drain).bearer_auth(&CRON_SECRET[..16]),
            wrong,
        ),
        case(
            "the secret in capitals",
            get(&drain).bearer_auth(&upper),
            wrong,
        ),
        case(
            "the secret as Basic credentials",
            get(&drain).basic_auth(CRON_SECRET, None::<&str>),
            missing,
        ),
        case(
            "a tenant's secret key",
            get(&drain).bearer_auth(key.secret.expose()),
            wrong,
        ),
        case(
            "the secret in the query string",
            get(&format!("{drain}?secret={CRON_SECRET}&token={CRON_SECRET}")),
            missing,
        ),
        case(
            "the secret in another header",
            get(&drain).header("x-cron-secret", CRON_SECRET),
            missing,
        ),
        case(
            "an Authorization that is not UTF-8",
            get(&drain).header(AUTHORIZATION, unreadable_authorization()),
            missing,
        ),
        case(
            "`Bearer` and no token",
            get(&drain).header(AUTHORIZATION, "Bearer"),
            missing,
        ),
        case(
            "a 60 KB bearer token",
            get(&drain).bearer_auth("s".repeat(60_000)),
            wrong,
        ),
        case(
            "a trailing slash and no secret",
            get(&format!("{drain}/")),
            missing,
        ),
        case(
            "PUT with the secret",
            app.http.put(&drain).bearer_auth(CRON_SECRET),
            not_allowed,
        ),
        case(
            "DELETE with the secret",
            app.http.delete(&drain).bearer_auth(CRON_SECRET),
            not_allowed,
        ),
        // sync-metrics.
        case(
            "a tenant's publishable key",
            get(&sync).bearer_auth(&key.publishable),
            wrong,
        ),
        case(
            "the secret twice",
            get(&sync).bearer_auth(format!("{CRON_SECRET} {CRON_SECRET}")),
            wrong,
        ),
        case(
            "the secret with an encoded NUL after it",
            get(&sync).bearer_auth(format!("{CRON_SECRET}%00")),
            wrong,
        ),
        case("no Authorization", get(&sync), missing),
        case(
            "PATCH with the secret",
            app.http.patch(&sync).bearer_auth(CRON_SECRET),
            not_allowed,
        ),
        // queue-status.
        case(
            "POST with the secret",
            app.http.post(&queue).bearer_auth(CRON_SECRET),
            not_allowed,
        ),
        case(
            "the secret as Basic credentials",
            get(&queue).basic_auth("cron", Some(CRON_SECRET)),
            missing,
        ),
        case(
            "the secret in X-API-Key",
            get(&queue).header("x-api-key", CRON_SECRET),
            missing,
        ),
        // Paths that are not routes.
        case(
            "an encoded traversal out of a cron path",
            get(&at("/api/cron/process-events%2F..%2F..%2Fhealth")).bearer_auth(CRON_SECRET),
            refused(404, "not_found"),
        ),
        case(
            "a cron that does not exist",
            get(&at("/api/cron/drain")).bearer_auth(CRON_SECRET),
            refused(404, "not_found"),
        ),
        // health.
        case("health by PUT", app.http.put(&health), not_allowed),
        case("health by DELETE", app.http.delete(&health), not_allowed),
        case(
            "health by OPTIONS",
            app.http.request(Method::OPTIONS, &health),
            not_allowed,
        ),
        case(
            "health with an 11 MB body",
            get(&health).body(vec![b' '; 11 * 1024 * 1024]),
            refused(413, "payload_too_large"),
        ),
        case(
            "health with a bogus key",
            get(&health).bearer_auth("sk_' OR 1=1 --"),
            Expect::Answered(200),
        ),
    ];
    assert!(cases.len() >= 15, "{} cases", cases.len());
    let answers = run(cases).await;

    // Nothing was drained or synced by the refused calls.
    let status = app.queue_status().await;
    assert_eq!(status["queue"]["events"], 1, "{status}");
    assert_eq!(status["last_drain"], Value::Null, "{status}");
    assert_eq!(app.stored_events().await, 0);
    assert_eq!(totals(&app, key.id).await, (0, 0, 0, 0, 0));
    // The real calls still do their work.
    app.drain().await;
    app.sync_metrics().await;
    assert_eq!(app.stored_events().await, 1);
    assert_eq!(totals(&app, key.id).await, (1, 1, 0, 0, 0));
    answers.assert_all_right();
}
