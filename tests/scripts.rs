//! Every script tollgate runs follows Upstash's rules: it carries the
//! `allow-key-locking` flag and touches only the keys it declares. The app
//! runs against a strict local Upstash server, which refuses anything else,
//! and its counters show what each route and cron ran.

use serde_json::json;
use tollgate::{
    admin::{self, CreateKey},
    apikeys::Tier,
    upstash::Command,
};

use crate::helpers::{providers, sign, spawn_app_with, TestApp, TestOptions, CRON_SECRET};

async fn get(app: &TestApp, path: &str, bearer: &str) -> u16 {
    app.http
        .get(format!("{}{path}", app.address))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn collect_from(app: &TestApp, key: &str, ip: &str) -> u16 {
    app.http
        .post(format!("{}/api/collect", app.address))
        .bearer_auth(key)
        .header("x-forwarded-for", ip)
        .json(&json!([{"type": "web", "name": "pageview", "url": "https://shop.example/"}]))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_route_and_cron_declares_every_key_its_scripts_touch() {
    let app = spawn_app_with(TestOptions {
        env: providers(true),
        ..TestOptions::default()
    })
    .await;
    let key = admin::create_key(
        &app.state.db,
        &admin::Actor::Cli,
        CreateKey {
            name: "strict".into(),
            owner: None,
            tier: Tier::Pro,
            rate_limit: Some(8),
            daily: Some(1_000),
            monthly: Some(10_000),
            origins: vec![],
            timezone: Some("Pacific/Kiritimati".into()),
            expires_at: None,
            metadata: Default::default(),
        },
    )
    .await
    .unwrap();
    let (sk, pk) = (key.secret.expose(), key.publishable.as_str());
    let png = json!({"filename": "a.png", "content_type": "image/png", "size": 100}).to_string();

    // Admission on every route: first uses (resolve, refill, reseed), warm
    // uses, an upload refused by policy, a revoked key and an unknown one.
    assert_eq!(collect_from(&app, pk, "203.0.113.9").await, 202);
    assert_eq!(collect_from(&app, sk, "203.0.113.9").await, 202);
    assert_eq!(sign(&app, Some(sk), &png).await.0, 200);
    let pdf = json!({"filename": "a.exe", "content_type": "application/x-msdownload", "size": 1});
    assert_eq!(sign(&app, Some(sk), &pdf.to_string()).await.0, 400);
    let unknown = format!("sk_{}", "0".repeat(48));
    assert_eq!(collect_from(&app, &unknown, "203.0.113.9").await, 401);

    // The cache entry expired while the instance remembers the key's id,
    // and the bans went with a flush of this prefix.
    let entries: Vec<String> = app.redis(Command::new("KEYS").arg(app.key("key:*"))).await;
    let _: i64 = app
        .redis(
            Command::new("DEL")
                .args(entries)
                .arg(app.state.keys.bans_loaded()),
        )
        .await;
    assert_eq!(collect_from(&app, pk, "203.0.113.9").await, 202);

    // Past the limit for three minutes: refusals, violations, a ban.
    let mut statuses = vec![];
    for _ in 0..3 {
        for _ in 0..20 {
            statuses.push(collect_from(&app, pk, "203.0.113.10").await);
        }
        app.state
            .advance_redis_time(std::time::Duration::from_secs(60));
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&403), "{statuses:?}");

    // Analytics: misses, hits, every view.
    for view in [
        "overview",
        "overview",
        "daily",
        "providers",
        "file-types",
        "events",
    ] {
        assert_eq!(
            get(&app, &format!("/api/analytics?view={view}"), sk).await,
            200
        );
    }

    // The crons, twice: the second finds nothing to do.
    for _ in 0..2 {
        for path in [
            "/api/cron/process-events",
            "/api/cron/sync-metrics",
            "/api/cron/queue-status",
        ] {
            assert_eq!(get(&app, path, CRON_SECRET).await, 200, "{path}");
        }
    }
    assert_eq!(get(&app, "/api/analytics?view=daily", sk).await, 200);
    assert_eq!(get(&app, "/api/health", "").await, 200);

    // Revoked: the script reads the cache entry the CLI replaced.
    let change = admin::revoke_key(&app.state.db, &app.state.keys, &admin::Actor::Cli, key.id)
        .await
        .unwrap();
    change.redis.apply(&app.state.upstash).await.unwrap();
    assert_eq!(collect_from(&app, sk, "203.0.113.9").await, 401);

    let counts = app.upstash_local.stats.counts();
    assert_eq!(counts.refused_undeclared_key, 0, "{counts:?}");
    assert_eq!(counts.refused_strict, 0, "{counts:?}");
    assert_eq!(counts.global_lock, 0, "{counts:?}");
    assert!(counts.key_locked >= 30, "{counts:?}");
}
