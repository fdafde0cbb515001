//! What a request with an unknown key costs the deployment, against the same
//! request with a valid key: Upstash round trips and request bytes, and
//! Postgres statements, per request, counted by the app's own clients. The
//! requests go through the collect handler in this process, one after
//! another, so the counts are exact; `bench/run.sh` measures the same cases'
//! throughput over HTTP with wrk (`bench/wrk/keys.lua`).

use std::collections::BTreeMap;

use anyhow::Context;
use tollgate::{
    admin::{self, CreateKey},
    apikeys::{NewKey, Tier},
    config::Config,
    state::AppState,
};
use uuid::Uuid;

/// The four cases of the figure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    /// A valid secret key, from four client IPs.
    Valid,
    /// One unknown key, again and again, from four client IPs: after the
    /// first request the instance's memory of unknown keys answers.
    UnknownRepeated,
    /// A fresh unknown key per request, each from an IP of its own: no IP
    /// reaches the failed-authentication limit, so each is looked up.
    RandomFreshIps,
    /// A fresh unknown key per request from four client IPs that are past
    /// the failed-authentication limit: each is cut off before any lookup.
    RandomFewIps,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::Valid,
        Case::UnknownRepeated,
        Case::RandomFreshIps,
        Case::RandomFewIps,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Valid => "valid",
            Case::UnknownRepeated => "unknown_repeated",
            Case::RandomFreshIps => "random_fresh_ips",
            Case::RandomFewIps => "random_few_ips",
        }
    }

    /// The one status every measured request of the case must get.
    fn status(self) -> u16 {
        match self {
            Case::Valid => 202,
            Case::UnknownRepeated | Case::RandomFreshIps => 401,
            Case::RandomFewIps => 429,
        }
    }
}

/// Sends `requests` collect requests per case and prints, as one JSON
/// object, each case's round trips, bytes and statements per request.
/// `failed_auth_limit` is the app's `TOLLGATE_FAILED_AUTH_LIMIT`.
pub async fn run(
    requests: u64,
    failed_auth_limit: u32,
    body: &std::path::Path,
    database_url: &str,
) -> anyhow::Result<()> {
    let body = std::fs::read(body).with_context(|| format!("reading {}", body.display()))?;
    let (server, _) = database_url
        .rsplit_once('/')
        .context("DATABASE_URL names a database")?;
    let db_url = crate::fresh_database(server, "bench_unknown_keys").await?;
    let prefix = format!("bench:{}:", Uuid::new_v4().simple());
    let config = Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(db_url.clone()),
        "TOLLGATE_KEY_PREFIX" => Some(prefix.clone()),
        "TOLLGATE_FAILED_AUTH_LIMIT" => Some(failed_auth_limit.to_string()),
        other => std::env::var(other).ok(),
    })?;
    let state = AppState::new(config)?;
    state.db.migrate().await?;
    // Limits the run cannot reach, so that every valid request is admitted.
    let key = admin::create_key(
        &state.db,
        &admin::Actor::Cli,
        CreateKey {
            name: "bench".into(),
            owner: None,
            tier: Tier::Enterprise,
            rate_limit: Some(1_000_000_000),
            daily: Some(1_000_000_000_000),
            monthly: Some(1_000_000_000_000),
            origins: Vec::new(),
            timezone: None,
            expires_at: None,
            metadata: Default::default(),
        },
    )
    .await?;
    let unknown = NewKey::generate();
    let few_ips = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"];
    let send = |secret: String, ip: String| {
        let request = http::Request::builder()
            .method("POST")
            .uri("/api/collect")
            .header("authorization", format!("Bearer {secret}"))
            .header("content-type", "application/json")
            .header("x-real-ip", ip)
            .body(bytes::Bytes::from(body.clone()));
        let state = &state;
        async move {
            let response = tollgate::routes::collect::handle(state, request?).await;
            anyhow::Ok(response.status().as_u16())
        }
    };
    let mut fresh_ip = 0u32;
    let mut next_fresh_ip = || {
        fresh_ip += 1;
        std::net::Ipv4Addr::from(0x0a00_0000 + fresh_ip).to_string()
    };
    let mut out = serde_json::Map::new();
    for case in Case::ALL {
        // The key each request presents, and the IP it comes from.
        let mut next = |i: u64| -> (String, String) {
            let ip = few_ips[i as usize % few_ips.len()].to_owned();
            match case {
                Case::Valid => (key.secret.expose().to_owned(), ip),
                Case::UnknownRepeated => (unknown.secret.expose().to_owned(), ip),
                Case::RandomFreshIps => (
                    NewKey::generate().secret.expose().to_owned(),
                    next_fresh_ip(),
                ),
                Case::RandomFewIps => (NewKey::generate().secret.expose().to_owned(), ip),
            }
        };
        // Warm-up, not counted: the valid and the repeated key once from
        // each IP, so that the caches hold them; for the cut-off case,
        // enough failures from each IP to reach the limit.
        let warm_up = match case {
            Case::Valid | Case::UnknownRepeated => few_ips.len() as u64,
            Case::RandomFreshIps => 0,
            Case::RandomFewIps => few_ips.len() as u64 * u64::from(failed_auth_limit),
        };
        for i in 0..warm_up {
            let (secret, ip) = next(i);
            send(secret, ip).await?;
        }
        let trips = state.upstash.round_trips();
        let sent = state.upstash.bytes_sent();
        let statements = state.db.statements();
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        for i in warm_up..warm_up + requests {
            let (secret, ip) = next(i);
            *statuses.entry(send(secret, ip).await?).or_default() += 1;
        }
        anyhow::ensure!(
            statuses.len() == 1 && statuses.contains_key(&case.status()),
            "{}: expected every measured request to get {}, got {statuses:?}",
            case.name(),
            case.status()
        );
        let per_request = |n: u64| n as f64 / requests as f64;
        out.insert(
            case.name().into(),
            serde_json::json!({
                "status": case.status(),
                "upstash_round_trips": per_request(state.upstash.round_trips() - trips),
                "upstash_bytes": per_request(state.upstash.bytes_sent() - sent),
                "postgres_statements": per_request(state.db.statements() - statements),
            }),
        );
    }
    out.insert("requests".into(), requests.into());
    out.insert("body_bytes".into(), body.len().into());
    out.insert("failed_auth_limit".into(), failed_auth_limit.into());
    drop(state);
    crate::drop_database(server, &db_url).await?;
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
