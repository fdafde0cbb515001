//! The local Upstash REST server, spoken to over plain HTTP, and driven by
//! the official `@upstash/redis` npm client.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tollgate::{
    config::UpstashConfig,
    secret::Secret,
    upstash::{Script, Upstash},
};
use tollgate_cli::upstash_local::{self, ScriptCounts, UndeclaredKey, SCRIPTS_KEY};
use uuid::Uuid;

use crate::helpers::{
    run_node_test_files, servers, spawn_upstash_local, spawn_upstash_local_with, LocalUpstash,
    PrivateRedis,
};

struct Raw {
    local: LocalUpstash,
    http: reqwest::Client,
    prefix: String,
}

impl Raw {
    async fn new() -> Self {
        Self::over(spawn_upstash_local().await)
    }

    /// In front of a server that runs scripts without `allow-key-locking`, as
    /// Upstash does.
    async fn lenient() -> Self {
        Self::over(spawn_upstash_local_with(false, &[]).await)
    }

    /// In front of a server that refuses scripts without `allow-key-locking`.
    async fn strict() -> Self {
        Self::over(spawn_upstash_local_with(true, &[]).await)
    }

    fn over(local: LocalUpstash) -> Self {
        Self {
            local,
            http: reqwest::Client::new(),
            prefix: format!("test:{}:", Uuid::new_v4().simple()),
        }
    }

    fn counts(&self) -> ScriptCounts {
        self.local.stats.counts()
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

/// The acceptance test: the official `@upstash/redis` client, then
/// `@upstash/ratelimit` 2.2.0 through strict servers, installed here by
/// `npm ci` and run in turn by one test, so that two processes never install
/// into the folder at once.
#[tokio::test]
async fn the_official_upstash_redis_and_ratelimit_clients_pass_their_suites() {
    // The conformance suite's script has no flag, as most scripts don't, and
    // Upstash runs it under the global lock.
    let local = spawn_upstash_local_with(false, &[]).await;
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    run_node_test_files(
        "upstash-js",
        "@upstash/ratelimit",
        &["conformance.test.mjs"],
        &[
            ("UPSTASH_REDIS_REST_URL", &local.url),
            ("UPSTASH_REDIS_REST_TOKEN", &local.token),
            ("TEST_PREFIX", &prefix),
        ],
    )
    .await;

    let exempting_reset = spawn_upstash_local_with(true, &[RATELIMIT_RESET_SHA]).await;
    let strict = spawn_upstash_local_with(true, &[]).await;
    run_node_test_files(
        "upstash-js",
        "@upstash/ratelimit",
        &["ratelimit.test.mjs"],
        &[
            ("UPSTASH_REDIS_REST_URL", &exempting_reset.url),
            ("UPSTASH_REDIS_REST_TOKEN", &exempting_reset.token),
            ("UPSTASH_STRICT_URL", &strict.url),
            ("UPSTASH_STRICT_TOKEN", &strict.token),
            ("TEST_PREFIX", &prefix),
        ],
    )
    .await;

    // Every limit and getRemaining ran under key locking and touched only its
    // KEYS; only the three resets (one per algorithm) held the global lock.
    let counts = exempting_reset.stats.counts();
    assert_eq!(counts.refused_undeclared_key, 0, "{counts:?}");
    assert_eq!(counts.refused_strict, 0, "{counts:?}");
    assert_eq!(counts.global_lock, 3, "{counts:?}");
    assert!(counts.key_locked >= 3 * 500, "{counts:?}");
    let counts = strict.stats.counts();
    assert_eq!(counts.refused_strict, 1, "{counts:?}");
    assert_eq!(counts.global_lock, 0, "{counts:?}");
}

/// The SHA-1 of `@upstash/ratelimit` 2.2.0's reset script (`RESET_SCRIPT` in
/// its `dist/index.mjs`): no `allow-key-locking` flag, and it SCANs for the
/// keys it deletes, so Upstash runs it under the global lock.
const RATELIMIT_RESET_SHA: &str = "54bd274ddc59fb3be0f42deee2f64322a10e2b50";

/// Upstash's refusal of an undeclared key, from its Key-Based Locking page.
const UNDECLARED_KEY_ERROR: &str =
    "ERR Dynamic keys are not allowed in Lua scripts when 'allow-key-locking' flag is set. Key was: ";

/// A script source no other test sends, so that Redis has not cached it: the
/// first line is `first_line` (a shebang or not), then a comment that makes it
/// unique, then `body`.
fn unique_script(first_line: &str, body: &str) -> String {
    format!("{first_line}\n-- {}\n{body}", Uuid::new_v4())
}

/// The SHA-1 of a source, as the product's Upstash client computes it.
fn sha1(source: &str) -> String {
    Script::new("test", leak(source)).sha1().to_owned()
}

fn leak(source: &str) -> &'static str {
    Box::leak(source.to_owned().into_boxed_str())
}

#[tokio::test]
async fn a_flagged_script_runs_by_eval_then_by_the_sha1_of_the_source_the_client_sent() {
    let raw = Raw::new().await;
    let (value, counter) = (raw.key("value"), raw.key("counter"));
    let source = unique_script(
        "#!lua flags=allow-key-locking",
        "redis.call('SET', KEYS[1], ARGV[1])\nreturn redis.call('INCR', KEYS[2])",
    );
    let sha = sha1(&source);
    let (_, body) = raw.json("/", json!(["SCRIPT", "EXISTS", sha])).await;
    assert_eq!(body, json!({"result": [0]}));

    let (status, body) = raw
        .json("/", json!(["EVAL", source, 2, value, counter, "set"]))
        .await;
    assert_eq!((status, body), (200, json!({"result": 1})));

    let (_, body) = raw.json("/", json!(["SCRIPT", "EXISTS", sha])).await;
    assert_eq!(body, json!({"result": [1]}));
    let (status, body) = raw
        .json("/", json!(["EVALSHA", sha, 2, value, counter, "again"]))
        .await;
    assert_eq!((status, body), (200, json!({"result": 2})));
    // Redis takes the SHA-1 in any case, and so does this server.
    let (_, body) = raw
        .json(
            "/",
            json!(["EVALSHA", sha.to_uppercase(), 2, value, counter, "upper"]),
        )
        .await;
    assert_eq!(body, json!({"result": 3}));
    let (_, body) = raw.json("/", json!(["GET", value])).await;
    assert_eq!(body, json!({"result": "upper"}));

    let counts = raw.counts();
    assert_eq!(
        (counts.key_locked, counts.global_lock),
        (3, 0),
        "{counts:?}"
    );
}

#[tokio::test]
async fn a_read_only_flagged_script_loads_under_its_own_sha1_and_runs_with_evalsha_ro() {
    let raw = Raw::new().await;
    let key = raw.key("read");
    raw.json("/", json!(["SET", key, "stored"])).await;
    let source = unique_script(
        "#!lua flags=no-writes,allow-key-locking",
        "return redis.call('GET', KEYS[1])",
    );

    let (_, body) = raw.json("/", json!(["SCRIPT", "LOAD", source])).await;
    assert_eq!(body, json!({"result": sha1(&source)}));
    let (status, body) = raw
        .json("/", json!(["EVALSHA_RO", sha1(&source), 1, key]))
        .await;
    assert_eq!((status, body), (200, json!({"result": "stored"})));
    let (status, body) = raw.json("/", json!(["EVAL_RO", source, 1, key])).await;
    assert_eq!((status, body), (200, json!({"result": "stored"})));

    // `no-writes` stayed in the shebang Redis ran.
    let writer = unique_script(
        "#!lua flags=no-writes,allow-key-locking",
        "return redis.call('SET', KEYS[1], 'x')",
    );
    let (status, body) = raw.json("/", json!(["EVAL", writer, 1, key])).await;
    assert_eq!(status, 400);
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("Write commands are not allowed"),
        "{message}"
    );
    assert!(message.contains(&sha1(&writer)), "{message}");
}

#[tokio::test]
async fn a_flagged_script_touching_an_undeclared_key_is_refused_and_counted() {
    let raw = Raw::new().await;
    let key = raw.key("declared");
    let source = unique_script(
        "#!lua flags=allow-key-locking",
        "redis.call('SET', KEYS[1], 'written')\nredis.call('SET', KEYS[1] .. ':x', 'never')\nreturn 1",
    );
    let sha = sha1(&source);

    let (status, body) = raw.json("/", json!(["EVAL", source, 1, key])).await;

    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": format!("{UNDECLARED_KEY_ERROR}{key}:x script: {sha}")})
    );
    let counts = raw.counts();
    assert_eq!(counts.refused_undeclared_key, 1, "{counts:?}");
    assert_eq!(counts.key_locked, 0, "{counts:?}");
    assert_eq!(
        counts.last_undeclared_key,
        Some(UndeclaredKey {
            script_sha: sha,
            key: format!("{key}:x"),
        })
    );
    // Redis keeps what the script wrote before the refusal (see the README).
    let (_, body) = raw.json("/", json!(["GET", key])).await;
    assert_eq!(body, json!({"result": "written"}));
    let (_, body) = raw.json("/", json!(["GET", format!("{key}:x")])).await;
    assert_eq!(body, json!({"result": null}));
}

#[tokio::test]
async fn an_undeclared_key_is_refused_from_pcall_and_inside_a_pipeline_too() {
    let raw = Raw::new().await;
    let (declared, other) = (raw.key("declared"), raw.key("other"));
    let source = unique_script(
        "#!lua flags=allow-key-locking",
        "local answer = redis.pcall('MGET', KEYS[1], ARGV[1])\nreturn 'went on'",
    );

    let (status, body) = raw
        .json(
            "/pipeline",
            json!([["EVAL", source, 1, declared, other], ["PING"]]),
        )
        .await;

    assert_eq!(status, 200);
    assert_eq!(
        body[0],
        json!({"error": format!("{UNDECLARED_KEY_ERROR}{other} script: {}", sha1(&source))})
    );
    assert_eq!(body[1], json!({"result": "PONG"}));
    assert_eq!(raw.counts().refused_undeclared_key, 1);
}

#[tokio::test]
async fn lua_errors_in_a_flagged_script_name_the_line_and_sha1_of_the_source_sent() {
    let raw = Raw::new().await;
    // Line 1 the shebang, line 2 the comment, the error on line 4.
    let source = unique_script(
        "#!lua flags=allow-key-locking",
        "local x = 1\nerror('broken here')",
    );

    let (status, body) = raw.json("/", json!(["EVAL", source, 0])).await;

    assert_eq!(status, 400);
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("user_script:4: broken here"), "{message}");
    assert!(message.contains(&sha1(&source)), "{message}");
}

#[tokio::test]
async fn a_script_without_the_flag_runs_and_is_counted_under_the_global_lock() {
    let raw = Raw::lenient().await;
    let key = raw.key("counter");
    let source = unique_script("#!lua", "return redis.call('INCR', KEYS[1])");

    let (_, body) = raw.json("/", json!(["EVAL", source, 1, key])).await;
    assert_eq!(body, json!({"result": 1}));
    let (_, body) = raw
        .json("/", json!(["EVALSHA", sha1(&source), 1, key]))
        .await;
    assert_eq!(body, json!({"result": 2}));
    let plain = unique_script("-- no shebang", "return redis.call('INCR', KEYS[1])");
    let (_, body) = raw.json("/", json!(["EVAL", plain, 1, key])).await;
    assert_eq!(body, json!({"result": 3}));

    let counts = raw.counts();
    assert_eq!(
        (counts.key_locked, counts.global_lock),
        (0, 3),
        "{counts:?}"
    );
}

#[tokio::test]
async fn strict_mode_refuses_a_script_without_the_flag_and_runs_a_flagged_one() {
    let raw = Raw::strict().await;
    let key = raw.key("counter");
    let unflagged = unique_script("#!lua", "return redis.call('INCR', KEYS[1])");
    let refusal = format!(
        "ERR tollgate upstash-local --strict: this script has no `allow-key-locking` flag, \
         so Upstash would run it under the global lock (script {})",
        sha1(&unflagged)
    );

    let (status, body) = raw.json("/", json!(["EVAL", unflagged, 1, key])).await;
    assert_eq!((status, body), (400, json!({"error": refusal})));
    // Loading runs nothing, so it is let through; running it by SHA-1 is not.
    let (_, body) = raw.json("/", json!(["SCRIPT", "LOAD", unflagged])).await;
    assert_eq!(body, json!({"result": sha1(&unflagged)}));
    let (status, body) = raw
        .json("/", json!(["EVALSHA", sha1(&unflagged), 1, key]))
        .await;
    assert_eq!((status, body), (400, json!({"error": refusal})));
    // A SHA-1 Redis has never seen is a plain NOSCRIPT, so the client sends EVAL.
    let unseen = sha1(&unique_script("#!lua", "return 0"));
    let (status, body) = raw.json("/", json!(["EVALSHA", unseen, 0])).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("NOSCRIPT"),
        "{body}"
    );

    let flagged = unique_script(
        "#!lua flags=allow-key-locking",
        "return redis.call('INCR', KEYS[1])",
    );
    let (_, body) = raw.json("/", json!(["EVAL", flagged, 1, key])).await;
    assert_eq!(body, json!({"result": 1}));

    let counts = raw.counts();
    assert_eq!(counts.refused_strict, 2, "{counts:?}");
    assert_eq!(
        (counts.key_locked, counts.global_lock),
        (1, 0),
        "{counts:?}"
    );
}

#[tokio::test]
async fn strict_mode_lets_an_exempted_script_run_under_the_global_lock() {
    let source = unique_script("#!lua", "return 'scans the keyspace'");
    let sha = sha1(&source);
    let raw = Raw::over(spawn_upstash_local_with(true, &[&sha]).await);

    let (status, body) = raw.json("/", json!(["EVAL", source, 0])).await;

    assert_eq!(
        (status, body),
        (200, json!({"result": "scans the keyspace"}))
    );
    let counts = raw.counts();
    assert_eq!(
        (counts.global_lock, counts.refused_strict),
        (1, 0),
        "{counts:?}"
    );
}

#[tokio::test]
async fn a_script_inside_a_transaction_holds_the_global_lock_even_with_the_flag() {
    let flagged = unique_script(
        "#!lua flags=allow-key-locking",
        "return redis.call('INCR', KEYS[1])",
    );

    let raw = Raw::lenient().await;
    let key = raw.key("counter");
    let (status, body) = raw
        .json(
            "/multi-exec",
            json!([["EVAL", flagged, 1, key], ["GET", key]]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!([{"result": 1}, {"result": "1"}]));
    let counts = raw.counts();
    assert_eq!(
        (counts.key_locked, counts.global_lock),
        (0, 1),
        "{counts:?}"
    );

    let strict = Raw::strict().await;
    let (status, body) = strict
        .json("/multi-exec", json!([["EVAL", flagged, 1, key]]))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--strict: Upstash runs a script inside MULTI/EXEC under the global lock"),
        "{body}"
    );
    assert_eq!(strict.counts().refused_strict, 1);
}

#[tokio::test]
async fn a_second_server_in_front_of_the_same_redis_answers_evalsha_by_the_original_sha1() {
    let first = Raw::new().await;
    let key = first.key("counter");
    let source = unique_script(
        "#!lua flags=allow-key-locking",
        "return redis.call('INCRBY', KEYS[1], ARGV[1])",
    );
    let sha = sha1(&source);
    let (_, body) = first.json("/", json!(["EVAL", source, 1, key, 5])).await;
    assert_eq!(body, json!({"result": 5}));
    let (_, body) = first.json("/", json!(["HGET", SCRIPTS_KEY, sha])).await;
    assert_eq!(body, json!({"result": source}));

    // Another process, or this one restarted, has only what Redis keeps.
    let second = Raw::new().await;
    let (_, body) = second.json("/", json!(["SCRIPT", "EXISTS", sha])).await;
    assert_eq!(body, json!({"result": [1]}));
    let (status, body) = second.json("/", json!(["EVALSHA", sha, 1, key, 2])).await;

    assert_eq!((status, body), (200, json!({"result": 7})));
    assert_eq!(second.counts().key_locked, 1);
}

/// A Redis of one test's own, for `SCRIPT FLUSH`, which would make the other
/// tests sharing a Redis miss their cached scripts.
#[tokio::test]
async fn after_script_flush_evalsha_answers_noscript_and_the_client_falls_back_to_eval() {
    let redis = PrivateRedis::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let options = upstash_local::Options::new("private-token", redis.url.clone());
    let stats = Arc::clone(&options.stats);
    tokio::spawn(upstash_local::serve(
        listener,
        options,
        std::future::pending(),
    ));
    let raw = Raw::over(LocalUpstash {
        url: url.clone(),
        token: "private-token".to_owned(),
        stats,
    });
    let client = Upstash::new(&UpstashConfig {
        url: url.parse().unwrap(),
        token: Secret::new("private-token"),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let script = Script::new(
        "flagged",
        "#!lua flags=allow-key-locking\nreturn redis.call('INCR', KEYS[1])",
    );

    let before = client.round_trips();
    let n: i64 = client.eval(&script, &["k"], &[]).await.unwrap();
    assert_eq!((n, client.round_trips() - before), (1, 2), "EVALSHA, EVAL");
    let before = client.round_trips();
    let n: i64 = client.eval(&script, &["k"], &[]).await.unwrap();
    assert_eq!((n, client.round_trips() - before), (2, 1), "EVALSHA alone");

    let (_, body) = raw.json("/", json!(["SCRIPT", "FLUSH"])).await;
    assert_eq!(body, json!({"result": "OK"}));
    let (_, body) = raw
        .json("/", json!(["SCRIPT", "EXISTS", script.sha1()]))
        .await;
    assert_eq!(body, json!({"result": [0]}));
    let (status, body) = raw
        .json("/", json!(["EVALSHA", script.sha1(), 1, "k"]))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("NOSCRIPT"),
        "{body}"
    );

    let before = client.round_trips();
    let n: i64 = client.eval(&script, &["k"], &[]).await.unwrap();
    assert_eq!((n, client.round_trips() - before), (3, 2), "EVALSHA, EVAL");
    let (_, body) = raw
        .json("/", json!(["SCRIPT", "EXISTS", script.sha1()]))
        .await;
    assert_eq!(body, json!({"result": [1]}));
}

/// Starts a server in front of `redis_url` with `options` changed from
/// [`upstash_local::Options::new`]; `bind` is where it listens.
async fn spawn_with(
    redis_url: &str,
    bind: &str,
    change: impl FnOnce(&mut upstash_local::Options),
) -> LocalUpstash {
    let listener = TcpListener::bind(bind).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = format!("test_{}", Uuid::new_v4().simple());
    let mut options = upstash_local::Options::new(token.clone(), redis_url.to_owned());
    change(&mut options);
    let stats = Arc::clone(&options.stats);
    tokio::spawn(upstash_local::serve(
        listener,
        options,
        std::future::pending(),
    ));
    LocalUpstash { url, token, stats }
}

/// The commands that reach past the one database Upstash gives, each with
/// arguments that would do no harm had a server run it. They go to a Redis of
/// the test's own all the same.
const FORBIDDEN: &[&[&str]] = &[
    &["CONFIG", "GET", "maxmemory"],
    &["config", "set", "no-such-parameter", "1"],
    &["REPLICAOF", "NO", "ONE"],
    &["SLAVEOF", "NO", "ONE"],
    &["MODULE", "LIST"],
    &["DEBUG", "SLEEP", "0"],
    &["SHUTDOWN", "ABORT"],
    &["CLIENT", "PAUSE", "1"],
    &["CLIENT", "KILL", "ID", "999999999"],
    &["CLIENT", "LIST"],
    &["MONITOR"],
    &["SYNC"],
    &["PSYNC", "?", "-1"],
    &["ACL", "WHOAMI"],
    &["SAVE"],
    &["BGSAVE", "SCHEDULE"],
    &["BGREWRITEAOF"],
    &["FAILOVER", "ABORT"],
    &["CLUSTER", "INFO"],
    &["MIGRATE", "127.0.0.1", "1", "no-such-key", "0", "10"],
    &["SWAPDB", "0", "1"],
    &["MOVE", "no-such-key", "1"],
    &["FUNCTION", "FLUSH"],
];

/// Redis's line for a command it does not have, which Upstash answers too.
fn unknown_command(command: &[&str]) -> String {
    let args: String = command[1..].iter().map(|arg| format!("'{arg}' ")).collect();
    format!(
        "ERR unknown command '{}', with args beginning with: {args}",
        command[0]
    )
}

#[tokio::test]
async fn forbidden_commands_are_refused_on_their_own_in_pipelines_and_in_transactions() {
    let redis = PrivateRedis::start().await;
    let raw = Raw::over(spawn_with(&redis.url, "127.0.0.1:0", |_| {}).await);
    let counter = raw.key("counter");

    for command in FORBIDDEN {
        let refusal = json!({ "error": unknown_command(command) });

        let (status, body) = raw.json("/", json!(command)).await;
        assert_eq!((status, &body), (400, &refusal), "{command:?}");

        // Path style too, which is how a browser would send one.
        let path = format!("/{}", command.join("/").replace('?', "%3F"));
        let response = raw.post(&path).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(response.json::<Value>().await.unwrap(), refusal, "{path}");

        // In a pipeline, that entry is refused and the others run.
        let (status, body) = raw
            .json("/pipeline", json!([["INCR", counter], command, ["PING"]]))
            .await;
        assert_eq!(status, 200, "{command:?}");
        assert_eq!(body[1], refusal, "{command:?}");
        assert_eq!(body[2], json!({"result": "PONG"}), "{command:?}");

        // A transaction holding one is refused whole, and nothing in it runs.
        let (status, body) = raw
            .json("/multi-exec", json!([["INCR", counter], command]))
            .await;
        assert_eq!((status, &body), (400, &refusal), "{command:?}");
    }

    // Only the pipelines' INCRs ran.
    let (_, body) = raw.json("/", json!(["GET", counter])).await;
    assert_eq!(body, json!({"result": FORBIDDEN.len().to_string()}));
}

#[tokio::test]
async fn forbidden_subcommands_and_blocking_reads_are_refused_and_script_kill_answers_notbusy() {
    let redis = PrivateRedis::start().await;
    let raw = Raw::over(spawn_with(&redis.url, "127.0.0.1:0", |_| {}).await);
    let stream = raw.key("stream");

    for (command, error) in [
        (
            json!(["SCRIPT", "DEBUG", "YES"]),
            "ERR unknown subcommand 'DEBUG' of 'SCRIPT'",
        ),
        (
            json!(["MEMORY", "DOCTOR"]),
            "ERR unknown subcommand 'DOCTOR' of 'MEMORY'",
        ),
        (
            json!(["XREAD", "BLOCK", "10", "STREAMS", stream, "$"]),
            "ERR XREAD with BLOCK is not supported over REST, as on Upstash",
        ),
        (json!(["BLPOP", stream, "1"]), ""),
        (json!(["WAIT", "0", "10"]), ""),
    ] {
        let (status, body) = raw.json("/", command.clone()).await;
        assert_eq!(status, 400, "{command}");
        let message = body["error"].as_str().unwrap();
        if error.is_empty() {
            assert!(message.starts_with("ERR unknown command"), "{message}");
        } else {
            assert_eq!(message, error);
        }
    }

    // Upstash has no running script a request could stop, and says so; here
    // it would stop another request's.
    let (status, body) = raw.json("/", json!(["SCRIPT", "KILL"])).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "NOTBUSY No scripts in execution right now."})
        )
    );
}

#[tokio::test]
async fn scripts_can_not_call_forbidden_commands_with_or_without_the_key_locking_flag() {
    let redis = PrivateRedis::start().await;
    let lenient = Raw::over(spawn_with(&redis.url, "127.0.0.1:0", |_| {}).await);
    let strict =
        Raw::over(spawn_with(&redis.url, "127.0.0.1:0", |options| options.strict = true).await);
    let key = lenient.key("k");
    let refusal = "ERR This Redis command is not allowed from script";

    // Redis lets a script call these; Upstash's REST API runs none of them.
    // The rest of FORBIDDEN Redis refuses in scripts itself, with the same line.
    for call in [
        "'MIGRATE', '127.0.0.1', '1', KEYS[1], '0', '10'",
        "'CLUSTER', 'INFO'",
        "'SWAPDB', '0', '1'",
        "'MOVE', KEYS[1], '1'",
        "'SELECT', '1'",
        "'config', 'get', 'maxmemory'",
        "'CLIENT', 'LIST'",
    ] {
        for (server, first_line) in [
            (&lenient, "-- no shebang"),
            (&lenient, "#!lua"),
            (&strict, "#!lua flags=allow-key-locking"),
        ] {
            // pcall can't catch the refusal: the script stops there.
            for function in ["call", "pcall"] {
                let source = unique_script(
                    first_line,
                    &format!("redis.{function}({call})\nreturn 'went on'"),
                );
                let (status, body) = server.json("/", json!(["EVAL", source, 1, key])).await;
                assert_eq!(status, 400, "{first_line} {function}({call}): {body}");
                let message = body["error"].as_str().unwrap();
                assert!(
                    message.starts_with(refusal) && message.contains(&sha1(&source)),
                    "{first_line} {function}({call}): {message}"
                );
            }
        }
    }

    // By EVALSHA, in a pipeline and in a transaction too.
    let source = unique_script(
        "#!lua",
        "return redis.call('MIGRATE', '127.0.0.1', '1', KEYS[1], '0', '10')",
    );
    let (_, body) = lenient.json("/", json!(["SCRIPT", "LOAD", source])).await;
    assert_eq!(body, json!({"result": sha1(&source)}));
    let evalsha = json!(["EVALSHA", sha1(&source), 1, key]);
    let (status, body) = lenient.json("/", evalsha.clone()).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with(refusal),
        "{body}"
    );
    for path in ["/pipeline", "/multi-exec"] {
        let (status, body) = lenient.json(path, json!([evalsha, ["PING"]])).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            body[0]["error"].as_str().unwrap().starts_with(refusal),
            "{path}: {body}"
        );
        assert_eq!(body[1], json!({"result": "PONG"}), "{path}");
    }

    // What a script may call, it still calls.
    let allowed = unique_script(
        "#!lua",
        "redis.call('SET', KEYS[1], 'v')\nreturn {redis.call('GET', KEYS[1]), redis.call('TIME')[1] ~= nil, redis.pcall('memory', 'usage', KEYS[1]) ~= nil}",
    );
    let (status, body) = lenient.json("/", json!(["EVAL", allowed, 1, key])).await;
    assert_eq!((status, body), (200, json!({"result": ["v", 1, 1]})));
}

#[tokio::test]
async fn the_commands_upstash_runs_pass_and_an_unknown_one_in_their_midst_does_not() {
    let raw = Raw::new().await;
    let (s, h, l, z, x, set, geo, hll, copy) = (
        raw.key("s"),
        raw.key("h"),
        raw.key("l"),
        raw.key("z"),
        raw.key("x"),
        raw.key("set"),
        raw.key("geo"),
        raw.key("hll"),
        raw.key("copy"),
    );
    let (status, body) = raw
        .json(
            "/pipeline",
            json!([
                ["SET", s, "v", "EX", 100],
                ["GETEX", s, "PERSIST"],
                ["APPEND", s, "w"],
                ["SETBIT", raw.key("bits"), 7, 1],
                ["HSET", h, "f", 1],
                ["HINCRBY", h, "f", 2],
                ["RPUSH", l, "a", "b"],
                ["LMOVE", l, l, "LEFT", "RIGHT"],
                ["ZADD", z, 1, "m"],
                ["ZRANGE", z, 0, -1, "WITHSCORES"],
                ["SADD", set, "m"],
                ["SMISMEMBER", set, "m", "n"],
                ["XADD", x, "*", "f", "v"],
                ["XREAD", "COUNT", 1, "STREAMS", x, "0"],
                ["XGROUP", "CREATE", x, "g", "0"],
                ["XINFO", "GROUPS", x],
                ["GEOADD", geo, 13.36, 38.11, "palermo"],
                ["PFADD", hll, "a"],
                ["COPY", s, copy],
                ["EXPIRE", copy, 100],
                ["TYPE", copy],
                [
                    "SCAN",
                    0,
                    "MATCH",
                    format!("{}*", raw.prefix),
                    "COUNT",
                    1000
                ],
                ["PUBLISH", raw.key("channel"), "hello"],
                ["ECHO", "hi"],
                ["DBSIZE"],
                ["TIME"],
                // Redis has it; Upstash does not list it, nor do its clients send it.
                ["OBJECT", "ENCODING", s],
                [
                    "UNLINK",
                    s,
                    h,
                    l,
                    z,
                    x,
                    set,
                    geo,
                    hll,
                    copy,
                    raw.key("bits")
                ],
            ]),
        )
        .await;
    assert_eq!(status, 200);
    let entries = body.as_array().unwrap();
    let (refused, ran): (Vec<_>, Vec<_>) = entries
        .iter()
        .partition(|entry| entry.get("error").is_some());
    let refusal =
        format!("ERR unknown command 'OBJECT', with args beginning with: 'ENCODING' '{s}' ");
    assert_eq!(refused, vec![&json!({ "error": refusal })], "{body}");
    assert_eq!(ran.len(), entries.len() - 1);
    assert_eq!(entries[1], json!({"result": "v"}));
    assert_eq!(entries[5], json!({"result": 3}));
    assert_eq!(entries[11], json!({"result": [1, 0]}));
    assert_eq!(entries[20], json!({"result": "string"}));
    assert_eq!(entries[23], json!({"result": "hi"}));
}

/// Sends `request` as it is on a new connection and reads until the server
/// closes it: the raw response.
async fn send_raw(url: &str, request: &str) -> String {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the server answered and closed the connection")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// A `POST /` of PING with `host` as the `Host` header (none when `None`) and
/// `target` as the request target.
async fn ping_as(local: &LocalUpstash, target: &str, host: Option<&str>) -> String {
    let host = host
        .map(|host| format!("Host: {host}\r\n"))
        .unwrap_or_default();
    let body = r#"["PING"]"#;
    send_raw(
        &local.url,
        &format!(
            "POST {target} HTTP/1.1\r\n{host}Authorization: Bearer {}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            local.token,
            body.len()
        ),
    )
    .await
}

#[tokio::test]
async fn a_request_for_a_host_that_is_not_this_machine_is_refused() {
    let local = spawn_upstash_local().await;
    let port = local.url.rsplit(':').next().unwrap().to_owned();

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let response = ping_as(&local, "/", Some(&host)).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{host}: {response}");
        assert!(
            response.contains(r#"{"result":"PONG"}"#),
            "{host}: {response}"
        );
    }

    // What a page that pointed its own name at 127.0.0.1 sends (DNS rebinding).
    for host in [
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("192.168.1.5:{port}"),
    ] {
        let response = ping_as(&local, "/", Some(&host)).await;
        assert!(response.starts_with("HTTP/1.1 403"), "{host}: {response}");
        assert!(response.contains("DNS rebinding"), "{host}: {response}");
        assert!(!response.contains("PONG"), "{host}: {response}");
    }
    // An absolute request target stands in for Host.
    let response = ping_as(
        &local,
        &format!("http://evil.example:{port}/"),
        Some(&format!("127.0.0.1:{port}")),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let response = ping_as(&local, "/", None).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("no Host header"), "{response}");
}

#[tokio::test]
async fn a_server_told_its_names_answers_to_them_as_well() {
    let servers = servers().await;
    let local = spawn_with(&servers.redis_url, "127.0.0.1:0", |options| {
        options.allowed_hosts = vec!["upstash.tollgate.test".to_owned()];
    })
    .await;

    let response = ping_as(&local, "/", Some("upstash.tollgate.test:8079")).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let response = ping_as(&local, "/", Some("other.tollgate.test:8079")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
}

#[tokio::test]
async fn upstash_local_listens_on_loopback_unless_told_otherwise() {
    let args =
        upstash_local::Args::try_parse_from(["upstash-local", "--token", "t", "--port", "0"])
            .unwrap();
    assert_eq!(args.bind, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(args.read_timeout, upstash_local::DEFAULT_READ_TIMEOUT);
    let listener = args.listen().await.unwrap();
    assert_eq!(
        listener.local_addr().unwrap().ip(),
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );

    let args = upstash_local::Args::try_parse_from([
        "upstash-local",
        "--token",
        "t",
        "--port",
        "0",
        "--bind",
        "0.0.0.0",
        "--allow-host",
        "host.docker.internal",
        "--read-timeout",
        "2s",
    ])
    .unwrap();
    let listener = args.listen().await.unwrap();
    assert!(listener.local_addr().unwrap().ip().is_unspecified());
    let options = args.into_options();
    assert_eq!(options.allowed_hosts, vec!["host.docker.internal"]);
    assert_eq!(options.read_timeout, Duration::from_secs(2));
}

/// A server that gives clients `READ_TIMEOUT` for headers and for bodies.
async fn spawn_impatient() -> LocalUpstash {
    let servers = servers().await;
    spawn_with(&servers.redis_url, "127.0.0.1:0", |options| {
        options.read_timeout = READ_TIMEOUT;
    })
    .await
}

const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes `head`, then `drip` every 100 ms, until the server closes the
/// connection; how long that took, or `None` after 10 s. What the server
/// sent is in `answer`.
async fn drip_until_cut_off(
    url: &str,
    head: &str,
    drip: &str,
    answer: &mut Vec<u8>,
) -> Option<Duration> {
    let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let mut buffer = [0; 1024];
    while started.elapsed() < Duration::from_secs(10) {
        tokio::select! {
            read = reader.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if writer.write_all(drip.as_bytes()).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn a_client_that_sends_its_headers_a_byte_at_a_time_is_cut_off() {
    let local = spawn_impatient().await;
    let mut answer = Vec::new();

    let cut_after = drip_until_cut_off(
        &local.url,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        "X",
        &mut answer,
    )
    .await
    .expect("the server was still reading headers after 10 s");

    // The clock starts when the server first reads, a moment after ours.
    assert!(
        cut_after >= READ_TIMEOUT / 2 && cut_after < READ_TIMEOUT * 4,
        "cut off after {cut_after:?}"
    );

    // A prompt client is left alone, on a keep-alive connection used again
    // within the timeout too.
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let response = http
            .post(&local.url)
            .bearer_auth(&local.token)
            .json(&json!(["PING"]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(READ_TIMEOUT / 3).await;
    }
}

#[tokio::test]
async fn a_client_that_sends_its_body_a_byte_at_a_time_gets_408_and_is_cut_off() {
    let local = spawn_impatient().await;
    let mut answer = Vec::new();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 1000\r\n\r\n[",
        local.token
    );

    let cut_after = drip_until_cut_off(&local.url, &head, " ", &mut answer)
        .await
        .expect("the server was still reading the body after 10 s");

    assert!(
        cut_after >= READ_TIMEOUT && cut_after < READ_TIMEOUT * 4,
        "cut off after {cut_after:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
}
