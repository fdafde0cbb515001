//! Key and ban management (`tollgate keys …`, `tollgate bans …`), through
//! the library functions the CLI calls, against the real Postgres and Redis.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate::{
    admin::{
        self, AdminError, BanStatus, BanSubject, CreateKey, KeyChange, NewBan, Origin, Override,
    },
    apikeys::{self, KeyStatus, NewKey, PresentedKey, Tier},
    limits::Limits,
    redis_keys::Subject,
    upstash::Command,
};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

fn pageview() -> Value {
    json!({"type": "web", "name": "pageview"})
}

fn request(name: &str, tier: Tier) -> CreateKey {
    CreateKey {
        name: name.to_owned(),
        owner: None,
        tier,
        rate_limit: None,
        daily: None,
        monthly: None,
        origins: Vec::new(),
        timezone: None,
        expires_at: None,
        metadata: Default::default(),
    }
}

impl TestApp {
    async fn create_key_with(&self, request: CreateKey) -> NewKey {
        admin::create_key(&self.state.db, &admin::Actor::Cli, request)
            .await
            .expect("creating a key")
    }

    /// The key cache entry of a presented key (either half).
    fn cache_entry(&self, presented: &str) -> String {
        let key = PresentedKey::parse(presented).expect("a key");
        self.state.keys.key_cache(&key.cache_id())
    }

    async fn exists(&self, key: &str) -> bool {
        self.redis::<i64>(Command::new("EXISTS").arg(key)).await == 1
    }

    /// Fills the key cache for both halves, as the first requests would.
    async fn warm_cache(&self, key: &NewKey) {
        for half in [key.secret.expose(), key.publishable.as_str()] {
            let presented = PresentedKey::parse(half).expect("a key");
            apikeys::refresh_cache(&self.state, &presented, None)
                .await
                .expect("filling the key cache");
            assert!(self.exists(&self.cache_entry(half)).await);
        }
    }

    async fn apply(&self, redis: &admin::RedisSync) {
        redis
            .apply(&self.state.upstash)
            .await
            .expect("applying the Redis side");
    }

    async fn ban(&self, subject: BanSubject, reason: &str, duration: Option<Duration>) {
        let change = admin::add_ban(
            &self.state.db,
            &self.state.keys,
            &admin::Actor::Cli,
            NewBan {
                subject,
                reason: reason.to_owned(),
                duration,
            },
        )
        .await
        .expect("adding a ban");
        self.apply(&change.redis).await;
    }

    async fn marker(&self, subject: BanSubject) -> Option<Value> {
        let marker: Option<String> = self
            .redis(Command::new("GET").arg(subject.marker(&self.state.keys)))
            .await;
        marker.map(|json| serde_json::from_str(&json).expect("the marker is JSON"))
    }

    async fn ttl(&self, key: &str) -> i64 {
        self.redis(Command::new("TTL").arg(key)).await
    }
}

async fn assert_refused(response: reqwest::Response, code: &str) {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

#[tokio::test]
async fn create_stores_only_the_sha256_of_the_secret() {
    let app = spawn_app().await;
    let key = app.create_key_with(request("shop", Tier::Free)).await;
    let secret = key.secret.expose();
    assert!(secret.starts_with("sk_") && key.publishable.starts_with("pk_"));

    let (row, hash): (String, Vec<u8>) =
        sqlx::query_as("SELECT k::text, secret_hash FROM api_keys k WHERE id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert!(!row.contains(secret), "the row holds the secret: {row}");
    assert!(
        !row.contains(&secret[3..]),
        "the row holds the secret's body"
    );
    assert_eq!(hash, apikeys::hash_secret(secret));

    let response = app.collect(secret, &pageview()).await;
    assert_eq!(response.status(), 202, "the secret half works");
}

#[tokio::test]
async fn list_shows_the_tier_defaults_and_the_keys_own_overrides() {
    let app = spawn_app().await;
    let plain = app.create_key_with(request("plain", Tier::Free)).await;
    let custom = app
        .create_key_with(CreateKey {
            owner: Some(admin::OwnerId::parse("acme").unwrap()),
            daily: Some(5),
            rate_limit: Some(7),
            origins: vec![Origin::parse("https://shop.example.com").unwrap()],
            timezone: Some("Europe/Berlin".to_owned()),
            expires_at: None,
            metadata: Default::default(),
            ..request("custom", Tier::Pro)
        })
        .await;

    let keys = admin::list_keys(&app.state.db, &admin::KeyFilter::default())
        .await
        .map(|page| page.keys)
        .unwrap();
    assert_eq!(keys.len(), 2);
    let plain_row = keys.iter().find(|k| k.id == plain.id).unwrap();
    assert_eq!(plain_row.limits, Tier::Free.default_limits());
    assert_eq!(plain_row.status, KeyStatus::Active);
    assert!(plain_row.origins.is_empty());
    assert_eq!(plain_row.timezone, "UTC");

    let custom_row = keys.iter().find(|k| k.id == custom.id).unwrap();
    assert_eq!(
        custom_row.limits,
        Limits {
            per_minute: Some(7),
            per_day: Some(5),
            per_month: Some(1_000_000),
        }
    );
    assert_eq!(
        custom_row.overrides.per_month, None,
        "the month is the tier's"
    );
    assert_eq!(custom_row.owner.as_deref(), Some("acme"));
    assert_eq!(custom_row.origins, ["https://shop.example.com"]);
    assert_eq!(custom_row.timezone, "Europe/Berlin");

    let listed = serde_json::to_string(&keys).unwrap();
    for secret in [plain.secret.expose(), custom.secret.expose()] {
        assert!(!listed.contains(secret), "list leaks a secret");
    }
}

#[tokio::test]
async fn create_rejects_limits_and_names_the_columns_cannot_hold() {
    let app = spawn_app().await;
    for (request, reason) in [
        (
            CreateKey {
                rate_limit: Some(0),
                ..request("zero", Tier::Free)
            },
            "a rate limit of 0",
        ),
        (request("", Tier::Free), "an empty name"),
        (
            CreateKey {
                timezone: Some("Mars/Olympus".to_owned()),
                expires_at: None,
                metadata: Default::default(),
                ..request("tz", Tier::Free)
            },
            "an unknown time zone",
        ),
    ] {
        let result = admin::create_key(&app.state.db, &admin::Actor::Cli, request).await;
        assert!(
            matches!(result, Err(AdminError::Invalid(_))),
            "{reason}: {result:?}"
        );
    }
    assert!(
        admin::list_keys(&app.state.db, &admin::KeyFilter::default())
            .await
            .unwrap()
            .keys
            .is_empty()
    );
}

#[tokio::test]
async fn revoke_deletes_the_cache_entries_so_the_key_is_refused_at_once() {
    let app = spawn_app().await;
    let key = app.create_key_with(request("revoked", Tier::Pro)).await;
    let response = app.collect(&key.publishable, &pageview()).await;
    assert_eq!(response.status(), 202);
    app.warm_cache(&key).await;

    let change = admin::revoke_key(&app.state.db, &app.state.keys, &admin::Actor::Cli, key.id)
        .await
        .unwrap();
    app.apply(&change.redis).await;

    assert!(!app.exists(&app.cache_entry(&key.publishable)).await);
    assert!(!app.exists(&app.cache_entry(key.secret.expose())).await);
    assert_refused(
        app.collect(&key.publishable, &pageview()).await,
        "revoked_key",
    )
    .await;
    assert_refused(
        app.collect(key.secret.expose(), &pageview()).await,
        "revoked_key",
    )
    .await;

    let (status, revoked_at): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT status, revoked_at FROM api_keys WHERE id = $1")
            .bind(key.id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert_eq!(status, "revoked");
    assert!(revoked_at.is_some());
}

#[tokio::test]
async fn revoking_or_rotating_an_unknown_key_says_there_is_no_such_key() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let revoke = admin::revoke_key(&app.state.db, &app.state.keys, &admin::Actor::Cli, id).await;
    assert!(matches!(revoke, Err(AdminError::NoSuchKey(i)) if i == id));
    let rotate =
        admin::rotate_key(&app.state.db, &app.state.keys, &admin::Actor::Cli, id, None).await;
    assert!(matches!(rotate, Err(AdminError::NoSuchKey(i)) if i == id));
    let message = AdminError::NoSuchKey(id).to_string();
    assert_eq!(message, format!("no key with id {id}"));
}

#[tokio::test]
async fn rotate_keeps_the_id_and_only_the_new_halves_work() {
    let app = spawn_app().await;
    let old = app.create_key_with(request("rotated", Tier::Pro)).await;
    assert_eq!(
        app.collect(&old.publishable, &pageview()).await.status(),
        202
    );
    app.warm_cache(&old).await;

    let change = admin::rotate_key(
        &app.state.db,
        &app.state.keys,
        &admin::Actor::Cli,
        old.id,
        None,
    )
    .await
    .unwrap();
    app.apply(&change.redis).await;
    let new = change.value.key;

    assert_eq!(new.id, old.id, "usage history stays with the same id");
    assert_ne!(new.secret.expose(), old.secret.expose());
    assert_ne!(new.publishable, old.publishable);
    assert_refused(
        app.collect(&old.publishable, &pageview()).await,
        "invalid_key",
    )
    .await;
    assert_refused(
        app.collect(old.secret.expose(), &pageview()).await,
        "invalid_key",
    )
    .await;
    assert_eq!(
        app.collect(&new.publishable, &pageview()).await.status(),
        202
    );
    assert_eq!(
        app.collect(new.secret.expose(), &pageview()).await.status(),
        202
    );
    assert_eq!(
        admin::list_keys(&app.state.db, &admin::KeyFilter::default())
            .await
            .unwrap()
            .keys
            .len(),
        1
    );
}

#[tokio::test]
async fn a_revoked_key_cannot_be_rotated() {
    let app = spawn_app().await;
    let key = app.create_key_with(request("gone", Tier::Free)).await;
    let _ = admin::revoke_key(&app.state.db, &app.state.keys, &admin::Actor::Cli, key.id)
        .await
        .unwrap();
    let result = admin::rotate_key(
        &app.state.db,
        &app.state.keys,
        &admin::Actor::Cli,
        key.id,
        None,
    )
    .await;
    assert!(
        matches!(result, Err(AdminError::KeyRevoked(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn set_limits_changes_the_overrides_and_clears_the_cache() {
    let app = spawn_app().await;
    let key = app
        .create_key_with(CreateKey {
            rate_limit: Some(10),
            ..request("limited", Tier::Free)
        })
        .await;
    app.warm_cache(&key).await;

    let change = admin::update_key(
        &app.state.db,
        &app.state.keys,
        &admin::Actor::Cli,
        key.id,
        KeyChange {
            rate_limit: Some(Override::Default),
            daily: Some(Override::Value(5)),
            origins: Some(vec![Origin::parse("https://a.example.com").unwrap()]),
            tier: Some(Tier::Pro),
            ..KeyChange::default()
        },
    )
    .await
    .unwrap();
    app.apply(&change.redis).await;
    assert!(!app.exists(&app.cache_entry(&key.publishable)).await);
    assert!(!app.exists(&app.cache_entry(key.secret.expose())).await);

    let updated = change.value;
    assert_eq!(updated.tier, Tier::Pro);
    assert_eq!(updated.overrides.per_minute, None, "back to the tier's");
    assert_eq!(
        updated.limits,
        Limits {
            per_minute: Some(600),
            per_day: Some(5),
            per_month: Some(1_000_000)
        }
    );
    let stored: (Option<i32>, Option<i64>, Option<i64>, Vec<String>, String) = sqlx::query_as(
        "SELECT rate_limit_per_minute, daily_quota, monthly_quota, allowed_origins, tier
           FROM api_keys WHERE id = $1",
    )
    .bind(key.id)
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(
        stored,
        (
            None,
            Some(5),
            None,
            vec!["https://a.example.com".to_owned()],
            "pro".to_owned()
        )
    );

    // The next lookup caches the new origins: other origins are refused.
    let response = app
        .http
        .post(format!("{}/api/collect", app.address))
        .bearer_auth(&key.publishable)
        .header("origin", "https://elsewhere.example.com")
        .json(&pageview())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Fields left out stay; an empty origin list allows any origin again.
    let change = admin::update_key(
        &app.state.db,
        &app.state.keys,
        &admin::Actor::Cli,
        key.id,
        KeyChange {
            daily: Some(Override::Default),
            origins: Some(Vec::new()),
            ..KeyChange::default()
        },
    )
    .await
    .unwrap();
    app.apply(&change.redis).await;
    assert_eq!(change.value.limits, Tier::Pro.default_limits());
    assert!(change.value.origins.is_empty());
}

#[tokio::test]
async fn a_permanent_key_ban_is_recorded_and_its_marker_has_no_ttl() {
    let app = spawn_app().await;
    let key = app.create_key_with(request("abuser", Tier::Free)).await;
    let subject = BanSubject::Key(key.id);
    app.ban(subject, "scraping", None).await;

    assert_eq!(
        app.marker(subject).await,
        Some(json!({"reason": "scraping", "until": null}))
    );
    assert_eq!(
        app.ttl(&app.state.keys.key_ban(&key.id.to_string())).await,
        -1
    );

    let bans = admin::list_bans(&app.state.db, false).await.unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].subject, subject);
    assert_eq!(bans[0].status, BanStatus::Active);
    assert_eq!(bans[0].expires_at, None);
    assert_eq!(bans[0].reason, "scraping");
}

#[tokio::test]
async fn a_temporary_ip_ban_has_a_ttl_and_says_when_it_ends() {
    let app = spawn_app().await;
    let subject = BanSubject::Ip("203.0.113.7".parse().unwrap());
    app.ban(subject, "flood", Some(Duration::from_secs(300)))
        .await;

    let ttl = app.ttl(&app.state.keys.ip_ban("203.0.113.7")).await;
    assert!((290..=300).contains(&ttl), "TTL {ttl}");
    let marker = app.marker(subject).await.expect("a marker");
    assert_eq!(marker["reason"], "flood");
    let until = marker["until"].as_i64().expect("until in ms");
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        (until - now - 300_000).abs() < 10_000,
        "until {until}, now {now}"
    );

    let bans = admin::list_bans(&app.state.db, false).await.unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(
        bans[0].expires_at.map(|t| t.timestamp_millis()),
        Some(until),
        "Redis and Postgres agree on the end"
    );
}

#[tokio::test]
async fn a_second_ban_on_the_same_subject_replaces_the_first() {
    let app = spawn_app().await;
    let subject = BanSubject::Ip("2001:db8::1".parse().unwrap());
    app.ban(subject, "first", Some(Duration::from_secs(60)))
        .await;
    app.ban(subject, "second", None).await;

    let active = admin::list_bans(&app.state.db, false).await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].reason, "second");
    let all = admin::list_bans(&app.state.db, true).await.unwrap();
    assert_eq!(all.len(), 2);
    let first = all.iter().find(|b| b.reason == "first").unwrap();
    assert_eq!(first.status, BanStatus::Lifted);
    assert!(first.lifted_at.is_some());

    assert_eq!(
        app.marker(subject).await,
        Some(json!({"reason": "second", "until": null}))
    );
    assert_eq!(
        app.ttl(&subject.marker(&app.state.keys)).await,
        -1,
        "the permanent ban dropped the temporary one's TTL"
    );
}

#[tokio::test]
async fn banning_an_unknown_key_says_there_is_no_such_key() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let result = admin::add_ban(
        &app.state.db,
        &app.state.keys,
        &admin::Actor::Cli,
        NewBan {
            subject: BanSubject::Key(id),
            reason: "typo".to_owned(),
            duration: None,
        },
    )
    .await;
    assert!(
        matches!(result, Err(AdminError::NoSuchKey(_))),
        "{result:?}"
    );
    assert!(admin::list_bans(&app.state.db, true)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn lift_ends_the_ban_and_clears_the_escalation_state() {
    let app = spawn_app().await;
    for subject in [
        BanSubject::Key(app.create_key_with(request("k", Tier::Free)).await.id),
        BanSubject::Ip("198.51.100.4".parse().unwrap()),
    ] {
        app.ban(subject, "too many violations", None).await;
        let ip = match subject {
            BanSubject::Ip(ip) => ip.to_string(),
            BanSubject::Key(_) => String::new(),
        };
        let escalation = match subject {
            BanSubject::Key(id) => Subject::Key(id),
            BanSubject::Ip(_) => Subject::Ip(&ip),
        };
        let level = app.state.keys.ban_level(&escalation);
        let violations = app.state.keys.violations(&escalation);
        let _: () = app.redis(Command::new("SET").arg(&level).arg(2)).await;
        let _: i64 = app
            .redis(Command::new("ZADD").arg(&violations).arg(1).arg("v1"))
            .await;

        let change = admin::lift_ban(&app.state.db, &app.state.keys, &admin::Actor::Cli, subject)
            .await
            .unwrap();
        app.apply(&change.redis).await;
        let lifted = change.value.expect("Postgres had the ban");
        assert_eq!(lifted.status, BanStatus::Lifted);

        for key in [subject.marker(&app.state.keys), level, violations] {
            assert!(!app.exists(&key).await, "{key} survived the lift");
        }
    }
    assert!(admin::list_bans(&app.state.db, false)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        admin::list_bans(&app.state.db, true).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn lifting_a_ban_only_redis_knows_still_clears_its_marker() {
    let app = spawn_app().await;
    let subject = BanSubject::Ip("192.0.2.9".parse().unwrap());
    let marker = subject.marker(&app.state.keys);
    // Escalation's temporary bans are written to Redis only.
    let _: () = app
        .redis(
            Command::new("SET")
                .arg(&marker)
                .arg(r#"{"reason":"escalation","until":null}"#)
                .arg("EX")
                .arg(300),
        )
        .await;

    let change = admin::lift_ban(&app.state.db, &app.state.keys, &admin::Actor::Cli, subject)
        .await
        .unwrap();
    assert!(change.value.is_none(), "Postgres had no ban");
    app.apply(&change.redis).await;
    assert!(!app.exists(&marker).await);
}
