//! The Rust Upstash client against the local Upstash server and a real
//! Redis: the same cases the `@upstash/redis` conformance test covers.

use std::time::Duration;

use bytes::Bytes;
use tollgate::{
    config::UpstashConfig,
    secret::Secret,
    upstash::{Command, Reply, RetryPolicy, Script, Upstash, UpstashError},
};
use url::Url;
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_upstash_local};

fn cmd(name: &str) -> Command {
    Command::new(name)
}

#[tokio::test]
async fn strings_round_trip_including_unicode_and_binary_safe_values() {
    let app = spawn_app().await;
    let key = app.key("greeting");

    let ok: String = app
        .redis(cmd("SET").arg(&key).arg("héllo ✓ \"quoted\""))
        .await;
    assert_eq!(ok, "OK");
    let value: Option<String> = app.redis(cmd("GET").arg(&key)).await;
    assert_eq!(value.as_deref(), Some("héllo ✓ \"quoted\""));

    let counter = app.key("counter");
    let n: i64 = app.redis(cmd("INCRBY").arg(&counter).arg(5)).await;
    assert_eq!(n, 5);
    let n: i64 = app.redis(cmd("INCR").arg(&counter)).await;
    assert_eq!(n, 6);

    let _: () = app
        .redis(
            cmd("MSET")
                .arg(app.key("a"))
                .arg("1")
                .arg(app.key("b"))
                .arg("2"),
        )
        .await;
    let values: Vec<Option<String>> = app
        .redis(
            cmd("MGET")
                .arg(app.key("a"))
                .arg(app.key("missing"))
                .arg(app.key("b")),
        )
        .await;
    assert_eq!(values, vec![Some("1".into()), None, Some("2".into())]);

    let _: i64 = app.redis(cmd("EXPIRE").arg(&key).arg(100)).await;
    let ttl: i64 = app.redis(cmd("TTL").arg(&key)).await;
    assert!((1..=100).contains(&ttl), "ttl {ttl}");

    // A value that looks like base64 must come back as it was sent.
    let _: () = app.redis(cmd("SET").arg(&key).arg("aGVsbG8=")).await;
    let value: String = app.redis(cmd("GET").arg(&key)).await;
    assert_eq!(value, "aGVsbG8=");
    // And so must the literal "OK".
    let _: () = app.redis(cmd("SET").arg(&key).arg("OK")).await;
    let value: Bytes = app.redis(cmd("GET").arg(&key)).await;
    assert_eq!(value, Bytes::from_static(b"OK"));
}

#[tokio::test]
async fn hashes_lists_and_sorted_sets_behave_as_in_redis() {
    let app = spawn_app().await;

    let hash = app.key("hash");
    let added: i64 = app
        .redis(
            cmd("HSET")
                .arg(&hash)
                .args(["name", "tollgate", "hits", "1"]),
        )
        .await;
    assert_eq!(added, 2);
    let hits: i64 = app
        .redis(cmd("HINCRBY").arg(&hash).arg("hits").arg(41))
        .await;
    assert_eq!(hits, 42);
    let name: Option<String> = app.redis(cmd("HGET").arg(&hash).arg("name")).await;
    assert_eq!(name.as_deref(), Some("tollgate"));
    let mut all: Vec<String> = app.redis(cmd("HGETALL").arg(&hash)).await;
    all.sort();
    assert_eq!(all, vec!["42", "hits", "name", "tollgate"]);

    let list = app.key("list");
    let _: i64 = app.redis(cmd("RPUSH").arg(&list).args(["b", "c"])).await;
    let len: i64 = app.redis(cmd("LPUSH").arg(&list).arg("a")).await;
    assert_eq!(len, 3);
    let items: Vec<String> = app.redis(cmd("LRANGE").arg(&list).arg(0).arg(-1)).await;
    assert_eq!(items, vec!["a", "b", "c"]);
    let first: Option<String> = app.redis(cmd("LPOP").arg(&list)).await;
    assert_eq!(first.as_deref(), Some("a"));
    let len: i64 = app.redis(cmd("LLEN").arg(&list)).await;
    assert_eq!(len, 2);

    let zset = app.key("zset");
    let _: i64 = app
        .redis(cmd("ZADD").arg(&zset).args(["1", "one", "3", "three"]))
        .await;
    let score: String = app.redis(cmd("ZINCRBY").arg(&zset).arg(1).arg("one")).await;
    assert_eq!(score, "2");
    let ranked: Vec<String> = app
        .redis(cmd("ZRANGE").arg(&zset).arg(0).arg(-1).arg("WITHSCORES"))
        .await;
    assert_eq!(ranked, vec!["one", "2", "three", "3"]);
    let missing: Option<String> = app.redis(cmd("ZSCORE").arg(&zset).arg("none")).await;
    assert_eq!(missing, None);
}

#[tokio::test]
async fn a_pipeline_is_one_round_trip_and_keeps_per_command_errors() {
    let app = spawn_app().await;
    let upstash = app.upstash_client();
    let (text, counter) = (app.key("text"), app.key("n"));
    let before = upstash.round_trips();

    let results = upstash
        .pipeline(&[
            cmd("SET").arg(&text).arg("v"),
            cmd("INCR").arg(&text),
            cmd("INCR").arg(&counter),
            cmd("GET").arg(&text),
        ])
        .await
        .unwrap();

    assert_eq!(upstash.round_trips() - before, 1);
    assert_eq!(results.len(), 4);
    assert_eq!(
        results[0].as_ref().unwrap(),
        &Reply::Bulk(Bytes::from_static(b"OK"))
    );
    let err = results[1].as_ref().unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");
    assert_eq!(results[2].as_ref().unwrap(), &Reply::Int(1));
    assert_eq!(
        results[3].as_ref().unwrap(),
        &Reply::Bulk(Bytes::from_static(b"v"))
    );
}

#[tokio::test]
async fn a_transaction_applies_all_its_commands_atomically() {
    let app = spawn_app().await;
    let upstash = app.upstash_client();
    let (a, b) = (app.key("a"), app.key("b"));

    let results = upstash
        .transaction(&[
            cmd("INCRBY").arg(&a).arg(10),
            cmd("DECRBY").arg(&b).arg(10),
            cmd("MGET").arg(&a).arg(&b),
        ])
        .await
        .unwrap();

    assert_eq!(results[0].as_ref().unwrap(), &Reply::Int(10));
    assert_eq!(results[1].as_ref().unwrap(), &Reply::Int(-10));
    assert_eq!(
        results[2].as_ref().unwrap(),
        &Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"10")),
            Reply::Bulk(Bytes::from_static(b"-10"))
        ])
    );
}

#[tokio::test]
async fn a_transaction_with_a_malformed_command_applies_nothing() {
    let app = spawn_app().await;
    let upstash = app.upstash_client();
    let key = app.key("untouched");

    let result = upstash
        .transaction(&[cmd("SET").arg(&key).arg("1"), cmd("NOSUCHCOMMAND")])
        .await;

    assert!(matches!(result, Err(UpstashError::Redis(_))), "{result:?}");
    let value: Option<String> = app.redis(cmd("GET").arg(&key)).await;
    assert_eq!(value, None);
}

#[tokio::test]
async fn scripts_fall_back_to_eval_once_then_run_by_sha() {
    let app = spawn_app().await;
    let upstash = app.upstash_client();
    // A source no other test uses, so Redis cannot have cached it.
    let source: &'static str = Box::leak(
        format!(
            "#!lua flags=allow-key-locking\n-- {}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])",
            Uuid::new_v4()
        )
        .into_boxed_str(),
    );
    let script = Script::new("test-incrby", source);
    let key = app.key("scripted");

    let before = upstash.round_trips();
    let n: i64 = upstash.eval(&script, &[&key], &["2".into()]).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        upstash.round_trips() - before,
        2,
        "EVALSHA, NOSCRIPT, then EVAL"
    );

    let before = upstash.round_trips();
    let n: i64 = upstash.eval(&script, &[&key], &["3".into()]).await.unwrap();
    assert_eq!(n, 5);
    assert_eq!(
        upstash.round_trips() - before,
        1,
        "EVALSHA alone once cached"
    );
}

#[tokio::test]
async fn script_load_reports_the_same_sha_as_the_client() {
    let app = spawn_app().await;
    // The flag makes the server load a rewritten source; the SHA-1 it reports
    // is still that of the source sent.
    let script = Script::new("load", "#!lua flags=allow-key-locking\nreturn 'loaded'");
    app.upstash_client().load(&script).await.unwrap();
    let value: String = app.upstash_client().eval(&script, &[], &[]).await.unwrap();
    assert_eq!(value, "loaded");
}

#[tokio::test]
async fn redis_errors_carry_the_redis_message() {
    let app = spawn_app().await;
    let key = app.key("list");
    let _: i64 = app.redis(cmd("LPUSH").arg(&key).arg("x")).await;

    let err = app
        .upstash_client()
        .command::<Reply>(&cmd("GET").arg(&key))
        .await
        .unwrap_err();

    match err {
        UpstashError::Redis(message) => assert!(message.starts_with("WRONGTYPE"), "{message}"),
        other => panic!("expected a Redis error, got {other:?}"),
    }
}

fn client_for(url: &str, token: &str, timeout: Duration) -> Upstash {
    Upstash::with_retry(
        &UpstashConfig {
            url: Url::parse(url).unwrap(),
            token: Secret::new(token),
            timeout,
        },
        RetryPolicy {
            retries: 2,
            base: Duration::from_millis(5),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_never_logged_in_errors() {
    let local = spawn_upstash_local().await;
    let client = client_for(&local.url, "wrong-token-value", Duration::from_secs(2));

    let err = client.command::<Reply>(&cmd("PING")).await.unwrap_err();

    assert!(matches!(err, UpstashError::Unauthorized), "{err:?}");
    assert!(!format!("{err:?} {err}").contains("wrong-token-value"));
    assert!(!format!("{client:?}").contains("wrong-token-value"));
}

#[tokio::test]
async fn refused_connections_are_retried_then_reported() {
    let client = client_for("http://127.0.0.1:1", "t", Duration::from_secs(2));

    let err = client.command::<Reply>(&cmd("PING")).await.unwrap_err();

    assert!(
        matches!(err, UpstashError::Unreachable { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(client.round_trips(), 3);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_without_retrying() {
    // Accepts connections but never responds: the request was sent, so it
    // must not be retried (it might have run).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = client_for(&url, "t", Duration::from_millis(300));

    let err = client.command::<Reply>(&cmd("PING")).await.unwrap_err();

    assert!(matches!(err, UpstashError::Timeout(_)), "{err:?}");
    assert_eq!(client.round_trips(), 1);
}
