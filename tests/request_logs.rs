//! Every line a request logs names the request: its route, method and id,
//! and its key once the route knows it; the response carries the same id
//! in `x-request-id`. Checked on the log output itself, through the dev
//! server's dispatch (which `spawn_app` serves) and through a real Vercel
//! function binary; and `tollgate dev`, like Vercel's edge, names a
//! request itself whatever id the client claims.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing_subscriber::EnvFilter;

use tollgate_cli::dev::{DevOptions, DevServer};
use uuid::Uuid;

use crate::helpers::{fresh_database, servers, spawn_app, spawn_app_with, TestApp, TestOptions};

/// What the app logged, written by the subscriber [`capture_logs`] installs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The lines logged in the request with id `request_id`, without colours.
    fn of_request(&self, request_id: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        lines_of_request(&text, request_id)
    }
}

fn lines_of_request(text: &str, request_id: &str) -> Vec<String> {
    let needle = format!("request_id={request_id}");
    strip_colours(text)
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// The log text without its ANSI colour sequences (`ESC [ … m`).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends what the app logs on this thread, at `debug` and up, through the
/// subscriber the functions use, into the returned buffer. A
/// `#[tokio::test]` runtime runs the app's tasks on the test's thread, so
/// the test sees its own app's lines and no other test's.
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber =
        tollgate::telemetry::subscriber(EnvFilter::new("debug"), move || writer.clone());
    (logs, tracing::subscriber::set_default(subscriber))
}

async fn collect_one(app: &TestApp, key: &str) -> (u16, String) {
    let response = app
        .collect(
            key,
            &json!({"type": "server", "name": "signup", "url": "https://example.com/"}),
        )
        .await;
    let id = response
        .headers()
        .get("x-request-id")
        .expect("the response names its request")
        .to_str()
        .unwrap()
        .to_owned();
    (response.status().as_u16(), id)
}

/// Asserts that every line names the route, method and request, and
/// returns the line that closes the request.
fn assert_lines_name_the_request(lines: &[String], route: &str, request_id: &str) -> String {
    assert!(!lines.is_empty(), "no line names request {request_id}");
    for line in lines {
        assert!(line.contains(&format!("route={route} ")), "{line}");
        assert!(line.contains("method=POST "), "{line}");
        assert!(line.contains(&format!("request_id={request_id}")), "{line}");
    }
    lines
        .iter()
        .find(|line| line.contains("request finished"))
        .unwrap_or_else(|| panic!("no line closes the request: {lines:#?}"))
        .clone()
}

#[tokio::test]
async fn a_collect_request_logs_its_route_method_request_id_and_key_id() {
    let (logs, _guard) = capture_logs();
    let app = spawn_app().await;
    let key = app.create_key().await;

    let (status, request_id) = collect_one(&app, key.secret.expose()).await;

    assert_eq!(status, 202);
    let lines = logs.of_request(&request_id);
    let finished = assert_lines_name_the_request(&lines, "/api/collect", &request_id);
    assert!(finished.contains("status=202"), "{finished}");
    assert!(
        finished.contains(&format!("key_id={}", key.id)),
        "{finished}"
    );
}

#[tokio::test]
async fn a_refused_request_names_its_key_too() {
    let (logs, _guard) = capture_logs();
    let app = spawn_app().await;
    let key = app.create_key().await;
    app.set_limits(&key, Some(1), None, None).await;

    assert_eq!(collect_one(&app, key.secret.expose()).await.0, 202);
    let (status, request_id) = collect_one(&app, key.secret.expose()).await;

    assert_eq!(status, 429);
    let lines = logs.of_request(&request_id);
    let finished = assert_lines_name_the_request(&lines, "/api/collect", &request_id);
    assert!(finished.contains("status=429"), "{finished}");
    assert!(
        finished.contains(&format!("key_id={}", key.id)),
        "{finished}"
    );
}

#[tokio::test]
async fn each_request_gets_its_own_id() {
    let (logs, _guard) = capture_logs();
    let app = spawn_app().await;
    let key = app.create_key().await;

    let (_, first) = collect_one(&app, key.secret.expose()).await;
    let (_, second) = collect_one(&app, key.secret.expose()).await;

    assert_ne!(first, second);
    assert!(Uuid::parse_str(&first).is_ok(), "{first}");
    let finished = |id: &str| {
        logs.of_request(id)
            .iter()
            .filter(|line| line.contains("request finished"))
            .count()
    };
    assert_eq!((finished(&first), finished(&second)), (1, 1));
}

#[tokio::test]
async fn the_lines_of_a_fallback_to_postgres_name_the_request_and_then_its_key() {
    let (logs, _guard) = capture_logs();
    let app = spawn_app_with(TestOptions {
        upstash_url: Some("http://127.0.0.1:1".into()),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;

    let (status, request_id) = collect_one(&app, key.secret.expose()).await;

    assert_eq!(status, 202);
    let lines = logs.of_request(&request_id);
    let finished = assert_lines_name_the_request(&lines, "/api/collect", &request_id);
    // The error is logged before the fallback looks the key up in Postgres;
    // once it has, the key's id is in every line.
    let error = lines
        .iter()
        .find(|line| line.contains("admission failed; writing events straight to Postgres"))
        .unwrap_or_else(|| panic!("the fallback's error is not among {lines:#?}"));
    assert!(error.contains("ERROR"), "{error}");
    assert!(!error.contains("key_id="), "{error}");
    assert!(
        finished.contains(&format!("key_id={}", key.id)),
        "{finished}"
    );
}

#[tokio::test]
async fn a_vercel_function_logs_each_request_under_vercels_id() {
    let app = spawn_app().await;
    let key = app.create_key().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("address").port()
    };
    let mut function = tokio::process::Command::new(env!("CARGO_BIN_EXE_collect"))
        .envs(app.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("VERCEL_DEV_PORT", port.to_string())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the collect function");
    let mut stderr = BufReader::new(function.stderr.take().expect("stderr")).lines();

    let vercel_id = "fra1::iad1::t7p2x-1732000000000-9d4e2c1b0a7f";
    let url = format!("http://127.0.0.1:{port}/api/collect");
    let mut response = None;
    for _ in 0..400 {
        let sent = app
            .http
            .post(&url)
            .bearer_auth(key.secret.expose())
            .header("x-vercel-id", vercel_id)
            .json(&json!({"type": "server", "name": "signup"}))
            .send()
            .await;
        match sent {
            Ok(answer) => {
                response = Some(answer);
                break;
            }
            // Not listening yet.
            Err(error) if error.is_connect() => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(error) => panic!("the function failed to answer: {error}"),
        }
    }
    let response = response.expect("the function listens");
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], vercel_id);

    // Its log, up to the line that closes the request.
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.expect("reading stderr") {
            text.push_str(&line);
            text.push('\n');
            if line.contains("request finished") {
                break;
            }
        }
    })
    .await;
    function.kill().await.expect("stopping the function");
    assert!(read.is_ok(), "no line closed the request:\n{text}");
    let lines = lines_of_request(&text, vercel_id);
    let finished = assert_lines_name_the_request(&lines, "/api/collect", vercel_id);
    assert!(finished.contains("status=202"), "{finished}");
    assert!(
        finished.contains(&format!("key_id={}", key.id)),
        "{finished}"
    );
}

#[tokio::test]
async fn tollgate_dev_names_a_request_itself_whatever_id_the_client_claims() {
    let root = std::env::temp_dir().join(format!("tollgate-dev-{}", Uuid::new_v4().simple()));
    let env = [
        ("REDIS_URL", servers().await.redis_url.clone()),
        (
            "DATABASE_URL",
            fresh_database().await.expect("a test database"),
        ),
        (
            "TOLLGATE_KEY_PREFIX",
            format!("test:{}:", Uuid::new_v4().simple()),
        ),
    ];
    let options = DevOptions {
        port: 0,
        upstash_port: 0,
        root: root.clone(),
        crons: false,
    };
    let lookup = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    };
    let server = DevServer::start(&options, lookup)
        .await
        .expect("starting the dev server");
    let port = server.port();
    tokio::spawn(server.run_until(std::future::pending()));

    let claimed = "fra1::iad1::forged-by-the-client";
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/health"))
        .header("x-vercel-id", claimed)
        .send()
        .await
        .expect("request to the dev server");
    let _ = std::fs::remove_dir_all(&root);

    // Only Vercel's edge names requests with x-vercel-id, and it replaces
    // whatever a client sent; the dev server stands in for it.
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, claimed);
    assert!(Uuid::parse_str(id).is_ok(), "{id}");
}
