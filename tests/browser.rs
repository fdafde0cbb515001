//! The dashboard (`public/index.html`) and the tracker (`public/t.js`) in
//! headless Chromium, driven by Playwright (`tests/browser`), against the
//! real app with real data; the Keys tab with a root key against `/api/keys`.

use serde_json::{json, Value};
use tollgate::{
    admin::{
        self, audit,
        root_keys::{self, Scope},
        Actor, CreateKey, OwnerId,
    },
    apikeys::Tier,
};
use uuid::Uuid;

use crate::helpers::{
    providers, repo_root, run_node_test_files, sign, spawn_app_with, TestApp, TestOptions,
};

async fn spawn() -> TestApp {
    spawn_app_with(TestOptions {
        env: providers(true),
        ..TestOptions::default()
    })
    .await
}

/// A page view from a browser in a visit (the tracker's session id), with
/// a referrer when given.
async fn page_view(
    app: &TestApp,
    pk: &str,
    session: &str,
    path: &str,
    referrer: Option<&str>,
) -> u16 {
    let mut event = json!({"type": "web", "name": "pageview", "session_id": session,
                           "url": format!("https://shop.example{path}")});
    if let Some(referrer) = referrer {
        event["referrer"] = json!(referrer);
    }
    app.collect(pk, &event).await.status().as_u16()
}

#[tokio::test]
async fn the_dashboard_draws_the_seeded_numbers_and_explains_bad_keys_and_empty_ones() {
    let app = spawn().await;
    let key = app.create_key().await;
    let empty = app.create_key().await;
    let secret = key.secret.expose();
    let (mut requests, mut successful) = (0, 0);
    let mut count = |status: u16, ok: u16| {
        requests += 1;
        successful += i64::from(status == ok);
    };

    let png = json!({"filename": "a.png", "content_type": "image/png", "size": 1000}).to_string();
    let pdf = json!({"filename": "b.pdf", "content_type": "application/pdf", "size": 250, "provider": "blob"}).to_string();
    let refused = json!({"filename": "../x", "content_type": "image/png", "size": 1}).to_string();
    for body in [&png, &png, &png, &png, &pdf, &pdf, &refused] {
        count(sign(&app, Some(secret), body).await.0, 200);
    }
    // Three visits: one of two pages, and two bounces.
    for (session, path, referrer) in [
        (
            "s1",
            "/?utm_source=newsletter&utm_medium=email",
            Some("https://news.example.com/a"),
        ),
        ("s2", "/", Some("https://news.example.com/b")),
        ("s3", "/", None),
        ("s1", "/pricing", None),
    ] {
        count(
            page_view(&app, &key.publishable, session, path, referrer).await,
            202,
        );
    }
    let signup = app
        .collect(secret, &json!({"type": "server", "name": "signup"}))
        .await;
    count(signup.status().as_u16(), 202);
    app.drain().await;
    app.sync_metrics().await;
    // One more after the sync: the dashboard shows it at once.
    count(sign(&app, Some(secret), &png).await.0, 200);

    let expected = json!({
        "requests": requests,
        "successful": successful,
        "failed": requests - successful,
        "today": chrono::Utc::now().date_naive().to_string(),
        "uploads": {"s3": 5, "blob": 2},
        "bytes": {"s3": 5000, "blob": 500},
        "file_types": {"image/png": 5, "application/pdf": 2},
        "events": 5,
        "pages": {"/": 3, "/pricing": 1},
        "referrers": {"news.example.com": 2},
        "pageviews": 4,
        "entry_pages": {"/": 3},
        "exit_pages": {"/": 2, "/pricing": 1},
        "utm_sources": {"newsletter": 1},
        "utm_mediums": {"email": 1},
    });
    let artifacts = repo_root().join("target").join("screenshots");
    run_node_test_files(
        "browser",
        "playwright-core",
        &["dashboard.test.mjs"],
        &[
            ("APP_URL", &app.address),
            ("SECRET_KEY", secret),
            ("EMPTY_KEY", empty.secret.expose()),
            ("EXPECTED", &expected.to_string()),
            ("ARTIFACTS", &artifacts.display().to_string()),
        ],
    )
    .await;
    assert!(artifacts.join("dashboard.png").exists());
}

/// Makes a root key, as `tollgate root-keys create` does.
async fn root_key(app: &TestApp, name: &str, scopes: &[Scope]) -> String {
    root_keys::create(&app.state.db, &Actor::Cli, name, scopes)
        .await
        .expect("creating a root key")
        .secret
        .expose()
        .to_owned()
}

/// Makes a tenant key with `/api/keys`'s own function.
async fn tenant_key(
    app: &TestApp,
    name: &str,
    owner: &str,
    tier: Tier,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> tollgate::apikeys::NewKey {
    let request = CreateKey {
        name: name.to_owned(),
        owner: Some(OwnerId::parse(owner).unwrap()),
        tier,
        rate_limit: None,
        daily: None,
        monthly: None,
        origins: Vec::new(),
        timezone: None,
        expires_at,
        metadata: Default::default(),
    };
    admin::create_key(&app.state.db, &Actor::Cli, request)
        .await
        .expect("creating a key")
}

#[tokio::test]
async fn the_keys_tab_lists_keys_with_todays_exact_usage_and_revokes_and_rotates_them_with_a_root_key(
) {
    let app = spawn().await;
    let root = root_key(&app, "dashboard", &[Scope::KeysRead, Scope::KeysWrite]).await;
    let reader = root_key(&app, "read only", &[Scope::KeysRead]).await;
    let expiry = "2099-01-01T00:00:00Z".parse().unwrap();
    let production = tenant_key(&app, "acme production", "acme", Tier::Pro, None).await;
    let staging = tenant_key(&app, "acme staging", "acme", Tier::Free, None).await;
    let mobile = tenant_key(&app, "acme mobile", "acme", Tier::Enterprise, None).await;
    let web = tenant_key(&app, "beta web", "beta", Tier::Free, Some(expiry)).await;
    // Enough more for a second page of 20.
    for n in 1..=20 {
        tenant_key(&app, &format!("bulk {n:02}"), "bulk", Tier::Free, None).await;
    }

    // Requests as clients see them; the page must show today's exactly,
    // synced and unsynced alike.
    let mut seen = std::collections::HashMap::<Uuid, (i64, i64)>::new();
    let mut count = |id: Uuid, status: u16, ok: u16| {
        let counted = seen.entry(id).or_default();
        counted.0 += 1;
        counted.1 += i64::from(status == ok);
    };
    let signup = json!({"type": "server", "name": "signup"});
    let upload =
        json!({"filename": "a.png", "content_type": "image/png", "size": 1000}).to_string();
    let refused = json!({"filename": "../x", "content_type": "image/png", "size": 1}).to_string();
    for _ in 0..2 {
        let status = app.collect(production.secret.expose(), &signup).await;
        count(production.id, status.status().as_u16(), 202);
    }
    count(
        production.id,
        sign(&app, Some(production.secret.expose()), &refused)
            .await
            .0,
        200,
    );
    app.sync_metrics().await;
    let status = app.collect(production.secret.expose(), &signup).await;
    count(production.id, status.status().as_u16(), 202);
    count(
        production.id,
        sign(&app, Some(production.secret.expose()), &upload)
            .await
            .0,
        200,
    );
    let status = app.collect(staging.secret.expose(), &signup).await;
    count(staging.id, status.status().as_u16(), 202);
    assert_eq!(seen[&production.id], (5, 4), "one refused upload");

    let described = |key: &tollgate::apikeys::NewKey, quota: Option<u64>| {
        let (requests, successful) = seen.get(&key.id).copied().unwrap_or_default();
        json!({"id": key.id, "secret": key.secret.expose(), "requests": requests,
               "successful": successful, "failed": requests - successful, "quota": quota})
    };
    let keys = json!({
        "acme production": described(&production, Some(50_000)),
        "acme staging": described(&staging, Some(1_000)),
        "acme mobile": described(&mobile, None),
        "beta web": described(&web, Some(1_000)),
    });
    let artifacts = repo_root().join("target").join("screenshots");
    run_node_test_files(
        "browser",
        "playwright-core",
        &["keys.test.mjs"],
        &[
            ("APP_URL", &app.address),
            ("ROOT_KEY", &root),
            ("READ_ONLY_ROOT_KEY", &reader),
            ("KEYS", &keys.to_string()),
            ("ARTIFACTS", &artifacts.display().to_string()),
        ],
    )
    .await;
    assert!(artifacts.join("keys-list.png").exists());
    assert!(artifacts.join("keys-rotate.png").exists());

    // What the page did is in the record, done by the root key that may
    // write, and the read-only one changed nothing.
    let writer = root_keys::list(&app.state.db)
        .await
        .unwrap()
        .into_iter()
        .find(|key| key.name == "dashboard")
        .unwrap();
    let actions = |id| {
        let db = &app.state.db;
        async move {
            audit::list(
                db,
                &audit::Filter {
                    key_id: Some(id),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .into_iter()
            .map(|entry| (entry.action, entry.actor))
            .collect::<Vec<_>>()
        }
    };
    let by_page = format!("root:{}", writer.id);
    assert_eq!(
        actions(staging.id).await,
        [
            ("key.create".to_owned(), "cli".to_owned()),
            ("key.revoke".to_owned(), by_page.clone())
        ]
    );
    assert_eq!(
        actions(production.id).await,
        [
            ("key.create".to_owned(), "cli".to_owned()),
            ("key.rotate".to_owned(), by_page)
        ]
    );
    assert_eq!(actions(mobile.id).await.len(), 1);
}

#[derive(Debug, sqlx::FromRow)]
struct Stored {
    id: Uuid,
    name: String,
    session_id: Option<String>,
    utm_source: Option<String>,
    properties: Option<Value>,
    url: Option<String>,
    referrer: Option<String>,
}

#[tokio::test]
async fn the_tracker_delivers_scrubbed_page_views_and_custom_events_to_postgres_exactly_once() {
    let app = spawn().await;
    let key = app.create_key().await;
    let out = std::env::temp_dir().join(format!("tollgate-tracker-{}.json", Uuid::new_v4()));
    run_node_test_files(
        "browser",
        "playwright-core",
        &["tracker.test.mjs"],
        &[
            ("APP_URL", &app.address),
            ("PUBLISHABLE_KEY", &key.publishable),
            ("OUT_FILE", &out.display().to_string()),
        ],
    )
    .await;
    let sent: Vec<Value> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).ok();
    assert_eq!(sent.len(), 9, "{sent:?}");

    app.drain().await;
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT id, name, session_id, utm_source, properties, url, referrer FROM events
         WHERE api_key_id = $1 ORDER BY occurred_at, name",
    )
    .bind(key.id)
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    let mut stored_ids: Vec<String> = stored.iter().map(|row| row.id.to_string()).collect();
    let mut sent_ids: Vec<String> = sent
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect();
    stored_ids.sort();
    sent_ids.sort();
    assert_eq!(
        stored_ids, sent_ids,
        "every event sent is stored once: {stored:?}"
    );
    let landing = stored
        .iter()
        .find(|row| row.utm_source.as_deref() == Some("newsletter"))
        .expect("the landing page view");
    assert!(landing
        .url
        .as_deref()
        .unwrap()
        .ends_with("/landing?utm_source=newsletter"));
    let signup = stored.iter().find(|row| row.name == "signup").unwrap();
    assert_eq!(signup.properties, Some(json!({"plan": "pro"})));

    // What the tracker sent is what Postgres holds, and neither carries the
    // reset link's token or fragment.
    for row in &stored {
        let event = sent
            .iter()
            .find(|event| event["id"] == row.id.to_string())
            .unwrap();
        assert_eq!(row.url.as_deref(), event["url"].as_str(), "{row:?}");
        assert_eq!(
            row.referrer.as_deref(),
            event["referrer"].as_str(),
            "{row:?}"
        );
        assert_eq!(
            row.session_id.as_deref(),
            event["session_id"].as_str(),
            "{row:?}"
        );
        for text in [&row.url, &row.referrer].into_iter().flatten() {
            assert!(!text.contains("s3cr3t") && !text.contains('#'), "{row:?}");
        }
    }
    let reset = stored
        .iter()
        .find(|row| row.utm_source.as_deref() == Some("x"))
        .expect("the reset link's page view");
    assert!(
        reset
            .url
            .as_deref()
            .unwrap()
            .ends_with("/reset?utm_source=x&page=2"),
        "{reset:?}"
    );
    let next = stored
        .iter()
        .find(|row| row.url.as_deref().is_some_and(|url| url.ends_with("/next")))
        .expect("the page after the reset link");
    assert_eq!(next.referrer, reset.url, "the referrer is scrubbed too");

    // Visits are the tracker's session ids, a new one after 30 idle
    // minutes: one visit in each of three tabs, and two in the tab left
    // idle; the events view counts them from the drain's rollups.
    let view: Value = app
        .http
        .get(format!("{}/api/analytics?view=events", app.address))
        .bearer_auth(key.secret.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&view["events"], &view["pageviews"], &view["visits"]),
        (&json!(9), &json!(6), &json!(5)),
        "{view}"
    );
}
