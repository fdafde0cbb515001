//! Input that must not get in: control characters and bidirectional
//! controls in the text of events and in upload file names, through the
//! real collect and signed-url routes; and agents that only contain the
//! letters "bot", which must be counted, not dropped.

use serde_json::{json, Value};

use crate::helpers::{providers, sign, spawn_app, spawn_app_with, TestApp, TestOptions};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

/// `POST /api/collect` as a browser would: the publishable key and
/// Chrome's user agent.
async fn collect_from_browser(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    collect_as(app, key, CHROME, body).await
}

async fn collect_as(app: &TestApp, key: &str, user_agent: &str, body: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/api/collect", app.address))
        .bearer_auth(key)
        .header("user-agent", user_agent)
        .json(body)
        .send()
        .await
        .expect("request to collect");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A valid event of `kind` whose `field` holds `text`.
fn event_with(kind: &str, field: &str, text: &str) -> Value {
    let mut event = json!({"type": kind, "name": "signup"});
    event[field] = json!(text);
    event
}

#[tokio::test]
async fn an_event_with_a_control_character_in_any_text_field_is_a_400_and_nothing_is_stored() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let esc = "\u{1b}[2J";
    let rlo = "\u{202e}";
    let cases: Vec<(Value, &str)> = vec![
        (event_with("web", "name", &format!("signup{esc}")), "name"),
        (
            event_with("web", "url", &format!("https://shop.example/{rlo}fdp.exe")),
            "url",
        ),
        (event_with("web", "path", &format!("/a{esc}")), "path"),
        (
            event_with("web", "referrer", &format!("https://evil.example/{rlo}")),
            "referrer",
        ),
        (
            event_with("web", "title", &format!("Pricing{esc}")),
            "title",
        ),
        (
            event_with("web", "session_id", &format!("s{rlo}1")),
            "session_id",
        ),
        (event_with("web", "user_id", "u\u{2066}1"), "user_id"),
        (event_with("web", "screen", "1920\u{85}1080"), "screen"),
        (event_with("web", "language", "en\u{200f}"), "language"),
        (
            event_with("mobile", "app_version", "2.3\u{7f}"),
            "app_version",
        ),
        (event_with("mobile", "os", &format!("iOS{rlo}")), "os"),
        (event_with("mobile", "os_version", "17\n4"), "os_version"),
        (
            event_with("mobile", "device", &format!("iPhone{esc}")),
            "device",
        ),
        (
            event_with("server", "service", &format!("billing{esc}")),
            "service",
        ),
        (event_with("server", "environment", "prod\t"), "environment"),
        (event_with("server", "method", "GE\u{1b}T"), "method"),
        (event_with("server", "path", &format!("/v1/{rlo}")), "path"),
        (
            json!({"type": "web", "name": "signup", "properties": {"file": format!("invoice{rlo}gpj.exe")}}),
            "properties.file",
        ),
        (
            json!({"type": "web", "name": "signup", "properties": {"nested": [{"note": format!("x{esc}")}]}}),
            "properties.nested[0].note",
        ),
        (
            json!({"type": "web", "name": "signup", "properties": {"plan\u{1b}": "pro"}}),
            "properties (a key)",
        ),
    ];
    for (event, field) in &cases {
        let (status, body) = collect_from_browser(&app, &key.publishable, event).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["error"]["code"], "no_valid_events", "{field}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("`control_character`: `{field}` contains U+")),
            "{field}: {message}"
        );
    }

    app.drain().await;
    assert_eq!(app.stored_events().await, 0);
}

#[tokio::test]
async fn a_bad_event_is_rejected_by_index_and_the_rest_of_its_batch_is_stored() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let batch = json!([
        {"type": "web", "name": "good", "title": "שלום\u{200f} | Hello\nworld"},
        {"type": "web", "name": "bad", "title": "exe.jpg\u{202e}"},
    ]);

    let (status, body) = collect_from_browser(&app, &key.publishable, &batch).await;

    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["error"]["code"], "control_character");
    app.drain().await;
    let stored: Vec<(String, Option<String>)> = sqlx::query_as("SELECT name, title FROM events")
        .fetch_all(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(
        stored,
        [(
            "good".to_owned(),
            Some("שלום\u{200f} | Hello\nworld".to_owned())
        )],
        "free text keeps its line break and direction mark"
    );
}

#[tokio::test]
async fn browsers_whose_agent_only_contains_the_letters_bot_are_counted() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let agents = [
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 AbbottLabs/3.2",
        "Mozilla/5.0 (compatible; my-robot-service/2.1)",
        "Mozilla/5.0 (Linux; Android 9; CUBOT_X20) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    ];
    for agent in agents {
        let event = json!({"type": "web", "name": "pageview"});
        let (status, body) = collect_as(&app, &key.publishable, agent, &event).await;
        assert_eq!(status, 202, "{agent}: {body}");
        assert_eq!(body["accepted"], 1, "{agent}: {body}");
        assert!(body.get("dropped_as_bot").is_none(), "{agent}: {body}");
    }
    app.drain().await;
    assert_eq!(app.stored_events().await, agents.len() as i64);
}

#[tokio::test]
async fn an_upload_name_with_a_bidi_control_is_a_400_invalid_filename_and_nothing_is_counted() {
    let app = spawn_app_with(TestOptions {
        env: providers(false),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    let secret = Some(key.secret.expose());
    for name in [
        "invoice\u{202e}gpj.exe",
        "report\u{2066}.pdf",
        "\u{200f}photo.png",
        "scan\u{061c}.pdf",
        "red\u{1b}[31m.pdf",
        "c1\u{9b}.pdf",
    ] {
        let body = json!({"filename": name, "content_type": "application/pdf", "size": 100});
        let (status, answer) = sign(&app, secret, &body.to_string()).await;
        assert_eq!(status, 400, "{name:?}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_filename", "{name:?}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("control characters or bidirectional controls"),
            "{name:?}: {message}"
        );
    }

    app.sync_metrics().await;
    app.drain().await;
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads_log WHERE api_key_id = $1")
        .bind(key.id)
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    let (files, bytes): (i64, i64) =
        sqlx::query_as("SELECT total_files, total_bytes FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!((logged, files, bytes), (0, 0, 0));
}
