//! `/api/keys` and `/api/keys/bans`: keys and bans over HTTP with a root
//! key, through the same library functions as the CLI, against the real
//! Redis and Postgres.

use serde_json::{json, Value};
use tollgate::admin::{
    audit,
    root_keys::{self, Scope},
    Actor,
};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

/// Makes a root key with the given scopes, as `tollgate root-keys create`.
async fn root_key(app: &TestApp, scopes: &[Scope]) -> String {
    root_keys::create(&app.state.db, &Actor::Cli, "backend", scopes)
        .await
        .expect("creating a root key")
        .secret
        .expose()
        .to_owned()
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path_and_query: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, format!("{}{path_and_query}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request to /api/keys");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn pageview() -> Value {
    json!({"type": "web", "name": "pageview"})
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_root_key_creates_lists_reads_updates_and_revokes_keys_and_the_audit_log_says_who() {
    let app = spawn_app().await;
    let root = root_key(&app, &[Scope::KeysRead, Scope::KeysWrite]).await;
    let post = reqwest::Method::POST;

    let (status, created) = call(
        &app,
        post.clone(),
        "/api/keys",
        Some(&root),
        Some(json!({
            "name": "acme production",
            "owner_id": "acme",
            "tier": "pro",
            "daily": 1000,
            "origins": ["https://shop.acme.test"],
            "timezone": "Europe/Berlin",
            "expires_at": "2099-01-01T00:00:00Z",
            "metadata": {"plan": "growth", "seats": 12}
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["key"]["id"].as_str().unwrap().parse().unwrap();
    let secret = created["secret_key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk_"));
    assert_eq!(created["key"]["owner_id"], "acme");
    assert_eq!(created["key"]["limits"]["per_day"], 1000);
    assert_eq!(created["key"]["metadata"]["seats"], 12);
    assert_eq!(created["key"]["expires_at"], "2099-01-01T00:00:00Z");
    assert!(created["key"].get("secret_hash").is_none());

    // The secret works at once.
    assert_eq!(app.collect(&secret, &pageview()).await.status(), 202);

    // Other owners' keys, to page and filter through.
    for name in ["b1", "b2", "b3"] {
        let (status, _) = call(
            &app,
            post.clone(),
            "/api/keys",
            Some(&root),
            Some(json!({"name": name, "owner_id": "beta", "tier": "free"})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (_, page) = call(
        &app,
        reqwest::Method::GET,
        "/api/keys?owner_id=beta&limit=2",
        Some(&root),
        None,
    )
    .await;
    let names: Vec<&str> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b1", "b2"]);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a full page has a cursor");
    let (_, next) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/keys?owner_id=beta&limit=2&cursor={cursor}"),
        Some(&root),
        None,
    )
    .await;
    let names: Vec<&str> = next["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b3"]);
    assert_eq!(next["next_cursor"], Value::Null);
    let (_, acme) = call(
        &app,
        reqwest::Method::GET,
        "/api/keys?owner_id=acme",
        Some(&root),
        None,
    )
    .await;
    assert_eq!(acme["keys"].as_array().unwrap().len(), 1);

    let (status, updated) = call(
        &app,
        reqwest::Method::PATCH,
        &format!("/api/keys?id={id}"),
        Some(&root),
        Some(json!({"daily": null, "monthly": 50000, "metadata": {"plan": "scale"}, "expires_at": null})),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        updated["key"]["overrides"]["per_day"],
        Value::Null,
        "back to the tier's"
    );
    assert_eq!(updated["key"]["limits"]["per_month"], 50000);
    assert_eq!(updated["key"]["metadata"], json!({"plan": "scale"}));
    assert_eq!(updated["key"]["expires_at"], Value::Null);
    assert_eq!(updated["propagation"], "immediate");

    let (status, revoked) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/keys?id={id}"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["key"]["status"], "revoked");
    let refused = app.collect(&secret, &pageview()).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(code(&refused.json().await.unwrap()), "revoked_key");

    let entries = audit::list(
        &app.state.db,
        &audit::Filter {
            key_id: Some(id),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.create", "key.update", "key.revoke"]);
    let root_id = root_keys::list(&app.state.db).await.unwrap()[0].id;
    assert!(entries.iter().all(|e| e.actor == format!("root:{root_id}")));
    assert_eq!(entries[1].detail["monthly"], 50000);
    assert!(
        !serde_json::to_string(&entries).unwrap().contains(&secret),
        "the log never holds a secret"
    );
}

#[tokio::test]
async fn get_shows_todays_and_this_months_usage_exact_to_the_last_request_before_and_after_a_sync()
{
    let app = spawn_app().await;
    let root = root_key(&app, &[Scope::KeysRead, Scope::KeysWrite]).await;
    let (_, created) = call(
        &app,
        reqwest::Method::POST,
        "/api/keys",
        Some(&root),
        Some(json!({"name": "metered", "tier": "pro", "daily": 100})),
    )
    .await;
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret_key"].as_str().unwrap().to_owned();
    let usage = |body: &Value| {
        (
            body["usage"]["today"]["successful"].as_i64().unwrap(),
            body["usage"]["month"]["successful"].as_i64().unwrap(),
        )
    };

    for _ in 0..3 {
        assert_eq!(app.collect(&secret, &pageview()).await.status(), 202);
    }
    let (status, body) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/keys?id={id}"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(usage(&body), (3, 3), "unsynced counters are counted");
    assert_eq!(body["usage"]["today"]["quota"], 100);
    assert_eq!(body["usage"]["exact"], true);

    app.sync_metrics().await;
    for _ in 0..4 {
        assert_eq!(app.collect(&secret, &pageview()).await.status(), 202);
    }
    let (_, body) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/keys?id={id}"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(usage(&body), (7, 7), "synced and unsynced, each once");
    app.sync_metrics().await;
    let (_, body) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/keys?id={id}"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(usage(&body), (7, 7));

    let (status, missing) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/keys?id={}", Uuid::now_v7()),
        Some(&root),
        None,
    )
    .await;
    assert_eq!((status, code(&missing)), (404, "not_found"));
}

#[tokio::test]
async fn tenant_keys_and_unknown_or_revoked_root_keys_never_reach_the_route() {
    let app = spawn_app().await;
    let tenant = app.create_key().await;
    let root = root_key(&app, &[Scope::KeysRead]).await;
    let get = reqwest::Method::GET;
    for (token, status, expected) in [
        (None, 401, "missing_root_key"),
        (
            Some(tenant.secret.expose().to_owned()),
            403,
            "root_key_required",
        ),
        (Some(tenant.publishable.clone()), 403, "root_key_required"),
        (Some("rk_short".to_owned()), 401, "invalid_root_key"),
        (
            Some(format!("rk_{}", "0".repeat(48))),
            401,
            "invalid_root_key",
        ),
    ] {
        let (got, body) = call(&app, get.clone(), "/api/keys", token.as_deref(), None).await;
        assert_eq!((got, code(&body)), (status, expected), "{token:?}");
    }
    let (status, _) = call(&app, get.clone(), "/api/keys", Some(&root), None).await;
    assert_eq!(status, 200);

    let id = root_keys::list(&app.state.db).await.unwrap()[0].id;
    root_keys::revoke(&app.state.db, &Actor::Cli, id)
        .await
        .unwrap();
    let (status, body) = call(&app, get, "/api/keys", Some(&root), None).await;
    assert_eq!(
        (status, code(&body)),
        (401, "invalid_root_key"),
        "revoked at once"
    );
}

#[tokio::test]
async fn each_operation_needs_its_scope() {
    let app = spawn_app().await;
    let reader = root_key(&app, &[Scope::KeysRead]).await;
    let banner = root_key(&app, &[Scope::BansWrite]).await;
    let key = app.create_key().await;
    let post = reqwest::Method::POST;

    let (status, body) = call(
        &app,
        post.clone(),
        "/api/keys",
        Some(&reader),
        Some(json!({"name": "x", "tier": "free"})),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "insufficient_scope"));
    let (status, body) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/keys?id={}", key.id),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "insufficient_scope"));
    let (status, body) = call(&app, reqwest::Method::GET, "/api/keys", Some(&banner), None).await;
    assert_eq!((status, code(&body)), (403, "insufficient_scope"));
    let ban = json!({"key_id": key.id, "reason": "abuse"});
    let (status, body) = call(
        &app,
        post.clone(),
        "/api/keys/bans",
        Some(&reader),
        Some(ban.clone()),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "insufficient_scope"));

    let (status, body) = call(&app, post, "/api/keys/bans", Some(&banner), Some(ban)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/keys/bans?key_id={}", key.id),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bans"].as_array().unwrap().len(), 1);
    let refused = app.collect(key.secret.expose(), &pageview()).await;
    assert_eq!(refused.status(), 403, "the ban took effect at once");

    let (status, body) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/keys/bans?key_id={}", key.id),
        Some(&banner),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lifted"]["reason"], "abuse");
    assert_eq!(
        app.collect(key.secret.expose(), &pageview()).await.status(),
        202
    );
    let actions: Vec<String> = audit::list(&app.state.db, &audit::Filter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["root_key.create", "root_key.create", "ban.add", "ban.lift"]
    );
}

#[tokio::test]
async fn rotating_with_an_overlap_gives_new_halves_and_says_until_when_the_old_ones_work() {
    let app = spawn_app().await;
    let root = root_key(&app, &[Scope::KeysRead, Scope::KeysWrite]).await;
    let key = app.create_key().await;
    let rotate = |overlap: Value| {
        let app = &app;
        let root = root.clone();
        async move {
            call(
                app,
                reqwest::Method::POST,
                &format!("/api/keys?id={}&action=rotate", key.id),
                Some(&root),
                Some(overlap),
            )
            .await
        }
    };
    let (status, body) = rotate(json!({"overlap_seconds": 86_401})).await;
    assert_eq!((status, code(&body)), (400, "invalid_field"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("overlap_seconds"));

    let (status, rotated) = rotate(json!({"overlap_seconds": 3600})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret_key"].as_str().unwrap();
    assert_ne!(new_secret, key.secret.expose());
    let until: chrono::DateTime<chrono::Utc> = rotated["previous_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ahead = until - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::minutes(59) && ahead <= chrono::Duration::hours(1),
        "{ahead}"
    );
    assert_eq!(
        rotated["key"]["previous_expires_at"],
        rotated["previous_expires_at"]
    );
    assert_eq!(app.collect(new_secret, &pageview()).await.status(), 202);
    assert_eq!(
        app.collect(key.secret.expose(), &pageview()).await.status(),
        202,
        "the old secret works during the overlap"
    );

    let (status, rotated) = rotate(json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["previous_expires_at"], Value::Null);
    assert_eq!(rotated["key"]["previous_expires_at"], Value::Null);
    let refused = app.collect(new_secret, &pageview()).await;
    assert_eq!(
        refused.status(),
        401,
        "without an overlap the old halves stop at once"
    );
    let first = app.collect(key.secret.expose(), &pageview()).await;
    assert_eq!(first.status(), 401, "and the first rotation's overlap ends");
}

/// Sends a body to an operation and expects a 400 naming the field.
async fn refused(
    app: &TestApp,
    root: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
    expected: &str,
    field: &str,
) {
    let (status, answer) = call(app, method, path, Some(root), Some(body.clone())).await;
    assert_eq!(status, 400, "{body} answered {answer}");
    assert_eq!(code(&answer), expected, "{body} answered {answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(field),
        "{body}: `{message}` does not name `{field}`"
    );
}

#[tokio::test]
async fn every_field_of_create_and_update_refuses_its_bad_input_and_nothing_is_stored() {
    let app = spawn_app().await;
    let root = root_key(&app, &[Scope::KeysRead, Scope::KeysWrite]).await;
    let base = json!({"name": "n", "tier": "free"});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let big_metadata = json!({"blob": "x".repeat(4100)});
    let cases = [
        (json!({"tier": "free"}), "missing_field", "name"),
        (with("name", json!("")), "invalid_field", "name"),
        (
            with("name", json!("x".repeat(201))),
            "invalid_field",
            "name",
        ),
        (with("name", json!(7)), "invalid_field", "name"),
        // Postgres cannot store U+0000: refused, not a 500.
        (with("name", json!("a\u{0}b")), "invalid_field", "name"),
        (json!({"name": "n"}), "missing_field", "tier"),
        (with("tier", json!("gold")), "invalid_field", "tier"),
        (with("tier", json!(1)), "invalid_field", "tier"),
        (with("owner_id", json!("")), "invalid_field", "owner_id"),
        (
            with("owner_id", json!("o".repeat(201))),
            "invalid_field",
            "owner_id",
        ),
        (
            with("owner_id", json!("a\u{0}b")),
            "invalid_field",
            "owner_id",
        ),
        (with("owner_id", json!(5)), "invalid_field", "owner_id"),
        (with("rate_limit", json!(0)), "invalid_field", "rate_limit"),
        (with("rate_limit", json!(-1)), "invalid_field", "rate_limit"),
        (
            with("rate_limit", json!(2_147_483_648u64)),
            "invalid_field",
            "rate_limit",
        ),
        (
            with("rate_limit", json!("60")),
            "invalid_field",
            "rate_limit",
        ),
        (with("daily", json!(-1)), "invalid_field", "daily"),
        (with("daily", json!(1.5)), "invalid_field", "daily"),
        (
            with("daily", json!(9_223_372_036_854_775_808u64)),
            "invalid_field",
            "daily",
        ),
        (with("monthly", json!("lots")), "invalid_field", "monthly"),
        (with("monthly", json!([1])), "invalid_field", "monthly"),
        (
            with("origins", json!("https://a.test")),
            "invalid_field",
            "origins",
        ),
        (
            with("origins", json!(["https://a.test/path"])),
            "invalid_field",
            "origins",
        ),
        (with("origins", json!([7])), "invalid_field", "origins"),
        (
            with("timezone", json!("Mars/Olympus")),
            "invalid_field",
            "time zone",
        ),
        (with("timezone", json!(1)), "invalid_field", "timezone"),
        (
            with("expires_at", json!("tomorrow")),
            "invalid_field",
            "expires_at",
        ),
        (
            with("expires_at", json!("2001-01-01T00:00:00Z")),
            "invalid_field",
            "expires_at",
        ),
        // Past 9999 in UTC, which RFC 3339 cannot write.
        (
            with("expires_at", json!("9999-12-31T23:59:59-23:59")),
            "invalid_field",
            "expires_at",
        ),
        (
            with("expires_at", json!(1_900_000_000)),
            "invalid_field",
            "expires_at",
        ),
        (with("metadata", json!([1, 2])), "invalid_field", "metadata"),
        (with("metadata", json!("plan")), "invalid_field", "metadata"),
        (
            with("metadata", json!({"plan": ["a\u{0}b"]})),
            "invalid_field",
            "metadata",
        ),
        (
            with("metadata", json!({"a\u{0}b": 1})),
            "invalid_field",
            "metadata",
        ),
        (
            with("metadata", big_metadata.clone()),
            "invalid_field",
            "metadata",
        ),
        (
            with("secret_key", json!("sk_mine")),
            "unknown_field",
            "secret_key",
        ),
        (json!([base.clone()]), "invalid_json", "object"),
    ];
    for (body, expected, field) in cases.iter().cloned() {
        refused(
            &app,
            &root,
            reqwest::Method::POST,
            "/api/keys",
            body,
            expected,
            field,
        )
        .await;
    }

    let key = app.create_key().await;
    let path = format!("/api/keys?id={}", key.id);
    refused(
        &app,
        &root,
        reqwest::Method::PATCH,
        &path,
        json!({}),
        "missing_field",
        "at least one field",
    )
    .await;
    refused(
        &app,
        &root,
        reqwest::Method::PATCH,
        &path,
        json!({"name": "renamed"}),
        "unknown_field",
        "name",
    )
    .await;
    for (field, value, named) in [
        ("rate_limit", json!(0), "rate_limit"),
        ("daily", json!(-5), "daily"),
        ("monthly", json!(true), "monthly"),
        ("origins", json!({"a": 1}), "origins"),
        ("tier", json!("platinum"), "tier"),
        ("timezone", json!("Nowhere/Land"), "time zone"),
        ("expires_at", json!("2001-01-01T00:00:00Z"), "expires_at"),
        ("metadata", big_metadata.clone(), "metadata"),
    ] {
        refused(
            &app,
            &root,
            reqwest::Method::PATCH,
            &path,
            json!({ field: value }),
            "invalid_field",
            named,
        )
        .await;
    }

    // Bad query strings, and bodies that are not JSON.
    for (method, path, expected, named) in [
        (
            reqwest::Method::GET,
            "/api/keys?id=42".to_owned(),
            "invalid_parameter",
            "id",
        ),
        (
            reqwest::Method::GET,
            "/api/keys?limit=0".to_owned(),
            "invalid_parameter",
            "limit",
        ),
        (
            reqwest::Method::GET,
            "/api/keys?limit=101".to_owned(),
            "invalid_parameter",
            "limit",
        ),
        (
            reqwest::Method::GET,
            "/api/keys?cursor=yesterday".to_owned(),
            "invalid_parameter",
            "cursor",
        ),
        (
            reqwest::Method::GET,
            "/api/keys?owner_id=".to_owned(),
            "invalid_parameter",
            "owner_id",
        ),
        (
            reqwest::Method::GET,
            "/api/keys?sort=name".to_owned(),
            "unknown_parameter",
            "sort",
        ),
        (
            reqwest::Method::GET,
            "/api/keys?limit=1&limit=2".to_owned(),
            "invalid_parameter",
            "limit",
        ),
        (
            reqwest::Method::POST,
            format!("/api/keys?id={}&action=explode", key.id),
            "invalid_parameter",
            "action",
        ),
        (
            reqwest::Method::PATCH,
            "/api/keys".to_owned(),
            "missing_parameter",
            "id",
        ),
    ] {
        let (status, body) = call(&app, method, &path, Some(&root), None).await;
        assert_eq!((status, code(&body)), (400, expected), "{path}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(named),
            "{path}: {body}"
        );
    }
    let raw = app
        .http
        .post(format!("{}/api/keys", app.address))
        .bearer_auth(&root)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let huge = app
        .http
        .post(format!("{}/api/keys", app.address))
        .bearer_auth(&root)
        .body(vec![b' '; 20_000])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);

    // Rotation and ban bodies.
    let rotate = format!("/api/keys?id={}&action=rotate", key.id);
    for value in [json!(-1), json!(86_401), json!("1h"), json!(1.5)] {
        refused(
            &app,
            &root,
            reqwest::Method::POST,
            &rotate,
            json!({"overlap_seconds": value}),
            "invalid_field",
            "overlap_seconds",
        )
        .await;
    }
    let banner = root_key(&app, &[Scope::BansWrite]).await;
    for (body, expected, named) in [
        (json!({"reason": "r"}), "missing_field", "key_id"),
        (
            json!({"key_id": key.id, "ip": "203.0.113.9", "reason": "r"}),
            "missing_field",
            "key_id",
        ),
        (
            json!({"key_id": "nope", "reason": "r"}),
            "invalid_field",
            "key_id",
        ),
        (
            json!({"ip": "999.1.1.1", "reason": "r"}),
            "invalid_field",
            "ip",
        ),
        (json!({"key_id": key.id}), "invalid_field", "reason"),
        (
            json!({"key_id": key.id, "reason": ""}),
            "invalid_field",
            "reason",
        ),
        (
            json!({"key_id": key.id, "reason": "a\u{0}b"}),
            "invalid_field",
            "reason",
        ),
        (
            json!({"key_id": key.id, "reason": "r", "duration_seconds": 0}),
            "invalid_field",
            "duration_seconds",
        ),
        (
            json!({"key_id": key.id, "reason": "r", "duration_seconds": -3}),
            "invalid_field",
            "duration_seconds",
        ),
        (
            json!({"key_id": key.id, "reason": "r", "duration_seconds": 315_360_001u64}),
            "invalid_field",
            "duration_seconds",
        ),
        (
            json!({"key_id": key.id, "reason": "r", "until": "later"}),
            "unknown_field",
            "until",
        ),
    ] {
        refused(
            &app,
            &banner,
            reqwest::Method::POST,
            "/api/keys/bans",
            body,
            expected,
            named,
        )
        .await;
    }

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the key the test made");
    let bans: i64 = sqlx::query_scalar("SELECT count(*) FROM bans")
        .fetch_one(app.state.db.pool())
        .await
        .unwrap();
    assert_eq!(bans, 0);
    let logged: Vec<String> = audit::list(&app.state.db, &audit::Filter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        logged,
        ["root_key.create", "root_key.create"],
        "no refused call is logged"
    );
}

#[tokio::test]
async fn management_calls_are_rate_limited_per_root_key() {
    // Hundreds of calls at once queue up on two cores; the Upstash call
    // timeout must not turn late ones into 503s, which is not the point here.
    let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        env: vec![("TOLLGATE_UPSTASH_TIMEOUT", "30s".to_owned())],
        ..Default::default()
    })
    .await;
    let root = root_key(&app, &[Scope::KeysRead]).await;
    let other = root_key(&app, &[Scope::KeysRead]).await;
    let limit = tollgate::routes::keys::ROOT_KEY_RATE_LIMIT as usize;
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = futures::future::join_all((0..limit + 200).map(|_| {
        let app = &app;
        let root = &root;
        async move {
            call(
                app,
                reqwest::Method::GET,
                "/api/keys?limit=1",
                Some(root),
                None,
            )
            .await
            .0
        }
    }))
    .await;
    // GCRA admits `limit` at once, then refills one per 60 s / limit while
    // the burst runs.
    let refilled = (started.elapsed().as_secs_f64() * limit as f64 / 60.0).ceil() as usize;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, statuses.len(), "{statuses:?}");
    assert!(
        ok >= limit && ok <= limit + refilled,
        "{ok} admitted, {refilled} refilled"
    );
    assert!(limited > 0);
    let (status, _) = call(&app, reqwest::Method::GET, "/api/keys", Some(&other), None).await;
    assert_eq!(status, 200, "each root key has its own limit");
}

#[tokio::test]
async fn a_client_guessing_root_keys_is_refused_before_any_lookup() {
    let app = spawn_app().await;
    let root = root_key(&app, &[Scope::KeysRead]).await;
    let limit = app.state.config.admission.failed_auth_limit as u32;
    // The edge's header, as Vercel sets it.
    let from_one_address = |token: String| {
        let app = &app;
        async move {
            let response = app
                .http
                .get(format!("{}/api/keys", app.address))
                .bearer_auth(token)
                .header("x-real-ip", "203.0.113.50")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    for i in 0..limit {
        let (status, body) = from_one_address(format!("rk_{:048x}", i + 1)).await;
        assert_eq!((status, code(&body)), (401, "invalid_root_key"));
    }
    let statements = app.state.db.statements();
    let (status, body) = from_one_address(format!("rk_{:048x}", 0)).await;
    assert_eq!(
        (status, code(&body)),
        (429, "too_many_failed_authentications")
    );
    let (status, body) = from_one_address(root.clone()).await;
    assert_eq!(
        (status, code(&body)),
        (429, "too_many_failed_authentications"),
        "the whole address waits"
    );
    assert_eq!(app.state.db.statements(), statements, "no lookup was made");
    let (status, _) = call(&app, reqwest::Method::GET, "/api/keys", Some(&root), None).await;
    assert_eq!(status, 200, "another address is not held up");
}

#[tokio::test]
async fn a_root_key_with_analytics_read_reads_any_keys_views_as_the_key_itself_would() {
    let app = spawn_app().await;
    let analyst = root_key(&app, &[Scope::AnalyticsRead]).await;
    let reader = root_key(&app, &[Scope::KeysRead]).await;
    let key = app.create_key().await;
    for _ in 0..5 {
        assert_eq!(
            app.collect(key.secret.expose(), &pageview()).await.status(),
            202
        );
    }
    let without_time = |mut view: Value| {
        view.as_object_mut().unwrap().remove("generated_at");
        view
    };
    for view in ["overview", "daily", "events"] {
        let own = app
            .read_analytics(key.secret.expose(), &format!("view={view}"))
            .await;
        let by_root = app
            .read_analytics(&analyst, &format!("view={view}&key_id={}", key.id))
            .await;
        assert_eq!(by_root.status, 200, "{}", by_root.text);
        assert_eq!(
            without_time(by_root.json()),
            without_time(own.json()),
            "{view}"
        );
    }
    let overview = app
        .read_analytics(&analyst, &format!("view=overview&key_id={}", key.id))
        .await;
    assert_eq!(overview.cache, "hit", "the cache the key's own reads fill");
    app.sync_metrics().await;
    app.collect(key.secret.expose(), &pageview()).await;
    let after = app
        .read_analytics(&analyst, &format!("view=overview&key_id={}", key.id))
        .await;
    let own = app
        .read_analytics(key.secret.expose(), "view=overview")
        .await;
    assert_eq!(
        without_time(after.json()),
        without_time(own.json()),
        "exact after a sync"
    );

    for (token, query, status, expected) in [
        (
            &reader,
            format!("view=overview&key_id={}", key.id),
            403,
            "insufficient_scope",
        ),
        (
            &analyst,
            "view=overview".to_owned(),
            400,
            "missing_parameter",
        ),
        (
            &analyst,
            "view=overview&key_id=7".to_owned(),
            400,
            "invalid_parameter",
        ),
        (
            &analyst,
            format!("view=nope&key_id={}", key.id),
            400,
            "invalid_view",
        ),
        (
            &analyst,
            format!("view=overview&key_id={}", Uuid::now_v7()),
            404,
            "not_found",
        ),
    ] {
        let read = app.read_analytics(token, &query).await;
        assert_eq!(
            (read.status, code(&read.json())),
            (status, expected),
            "{query}"
        );
    }
}
