//! The local Upstash REST server, spoken to over plain HTTP, and driven by
//! the official `@upstash/redis` npm client.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{run_node_tests, spawn_upstash_local, LocalUpstash};

struct Raw {
    local: LocalUpstash,
    http: reqwest::Client,
    prefix: String,
}

impl Raw {
    async fn new() -> Self {
        Self {
            local: spawn_upstash_local().await,
            http: reqwest::Client::new(),
            prefix: format!("test:{}:", Uuid::new_v4().simple()),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.local.url))
            .bearer_auth(&self.local.token)
    }

    async fn json(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.post(path).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_wrongpass() {
    let raw = Raw::new().await;
    let expected = json!({"error": "WRONGPASS invalid or missing auth token"});

    let missing = raw
        .http
        .post(&raw.local.url)
        .json(&json!(["PING"]))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.json::<Value>().await.unwrap(), expected);

    let wrong = raw
        .http
        .post(&raw.local.url)
        .bearer_auth("nope")
        .json(&json!(["PING"]))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.json::<Value>().await.unwrap(), expected);
}

#[tokio::test]
async fn the_token_may_come_as_a_query_parameter() {
    let raw = Raw::new().await;
    let response = raw
        .http
        .post(format!("{}/?_token={}", raw.local.url, raw.local.token))
        .json(&json!(["PING"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"result": "PONG"})
    );
}

#[tokio::test]
async fn commands_work_path_style_with_get_and_post() {
    let raw = Raw::new().await;
    let key = raw.key("path style");
    let encoded = key.replace(' ', "%20");

    let set = raw
        .http
        .get(format!("{}/set/{encoded}/bar", raw.local.url))
        .bearer_auth(&raw.local.token)
        .send()
        .await
        .unwrap();
    assert_eq!(set.json::<Value>().await.unwrap(), json!({"result": "OK"}));
    let get = raw
        .http
        .get(format!("{}/get/{encoded}", raw.local.url))
        .bearer_auth(&raw.local.token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.json::<Value>().await.unwrap(), json!({"result": "bar"}));

    // A POST body is the last argument.
    let posted = raw
        .post(&format!("/set/{encoded}"))
        .body("from the body")
        .send()
        .await
        .unwrap();
    assert_eq!(
        posted.json::<Value>().await.unwrap(),
        json!({"result": "OK"})
    );
    let (_, body) = raw.json("/", json!(["GET", key])).await;
    assert_eq!(body, json!({"result": "from the body"}));
}

#[tokio::test]
async fn a_redis_error_gets_400_with_its_message() {
    let raw = Raw::new().await;
    let key = raw.key("list");
    raw.json("/", json!(["LPUSH", key, "x"])).await;

    let (status, body) = raw.json("/", json!(["GET", key])).await;

    assert_eq!(status, 400);
    let message = body["error"].as_str().unwrap();
    assert!(message.starts_with("WRONGTYPE"), "{message}");
}

#[tokio::test]
async fn base64_encoding_is_applied_when_asked_for() {
    let raw = Raw::new().await;
    let key = raw.key("b64");
    raw.json("/", json!(["SET", key, "hello"])).await;

    let response = raw
        .post("/pipeline")
        .header("Upstash-Encoding", "base64")
        .json(&json!([
            ["GET", key],
            ["SET", key, "x"],
            ["STRLEN", key],
            ["GET", raw.key("none")]
        ]))
        .send()
        .await
        .unwrap();

    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([{"result": "aGVsbG8="}, {"result": "OK"}, {"result": 1}, {"result": null}])
    );
}

#[tokio::test]
async fn every_response_carries_a_sync_token() {
    let raw = Raw::new().await;
    let response = raw.post("/").json(&json!(["PING"])).send().await.unwrap();
    let token = response.headers().get("upstash-sync-token");
    assert!(
        token.is_some_and(|t| !t.is_empty()),
        "{:?}",
        response.headers()
    );
}

#[tokio::test]
async fn pipelines_and_transactions_answer_one_result_per_command() {
    let raw = Raw::new().await;
    let (a, s) = (raw.key("a"), raw.key("s"));

    let (status, body) = raw
        .json(
            "/pipeline",
            json!([["SET", s, "text"], ["INCR", s], ["INCR", a]]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0], json!({"result": "OK"}));
    assert!(body[1]["error"]
        .as_str()
        .unwrap()
        .contains("not an integer"));
    assert_eq!(body[2], json!({"result": 1}));

    let (status, body) = raw
        .json("/multi-exec", json!([["INCR", a], ["INCR", s], ["GET", a]]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0], json!({"result": 2}));
    assert!(body[1]["error"]
        .as_str()
        .unwrap()
        .contains("not an integer"));
    assert_eq!(body[2], json!({"result": "2"}));
}

#[tokio::test]
async fn bodies_over_10_mb_are_refused_with_413() {
    let raw = Raw::new().await;
    let big = "x".repeat(10 * 1024 * 1024 + 1);

    let response = raw
        .post("/")
        .json(&json!(["SET", raw.key("big"), big]))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
}

/// The acceptance test: the official `@upstash/redis` client, installed here
/// by `npm ci`, runs its conformance suite against the local server.
#[tokio::test]
async fn the_official_upstash_redis_client_passes_its_conformance_suite() {
    let local = spawn_upstash_local().await;
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    run_node_tests(
        "upstash-js",
        "@upstash/redis",
        &[
            ("UPSTASH_REDIS_REST_URL", &local.url),
            ("UPSTASH_REDIS_REST_TOKEN", &local.token),
            ("TEST_PREFIX", &prefix),
        ],
    )
    .await;
}
