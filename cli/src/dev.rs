//! `tollgate dev`: the whole stack in one process on `localhost:3000`.
//!
//! It serves every registered route through the same handlers as the Vercel
//! functions, serves `public/`, runs the cron entries of `vercel.json` on
//! their schedules with the `CRON_SECRET` bearer (as Vercel does), embeds
//! the local Upstash REST server, migrates, and seeds a demo key.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use axum::{body::Body, extract::State, response::IntoResponse};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::watch};
use tollgate::{
    apikeys::{self, NewKey, Tier},
    config::Config,
    error::ApiError,
    routes,
    secret::Secret,
    state::AppState,
    vercel::MAX_BODY_BYTES,
};
use tower_http::services::ServeDir;

use crate::{
    services::{Layout, Services},
    upstash_local,
};

/// Where the dev stack listens and what it reads.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub port: u16,
    pub upstash_port: u16,
    /// The repository root: `public/`, `vercel.json` and `.tollgate/` live here.
    pub root: PathBuf,
    /// Whether to run the crons of `vercel.json` (benchmarks turn them off).
    pub crons: bool,
}

/// The app: every registered route, a JSON 404 for other `/api/` paths, and
/// the static files of `public/` for everything else.
pub fn router(state: AppState, public_dir: &Path) -> axum::Router {
    let mut app = axum::Router::new();
    for route in routes::ROUTES {
        let handler = move |State(state): State<AppState>, request: axum::extract::Request| {
            dispatch(route, state, request)
        };
        app = app
            .route(route.path, axum::routing::any(handler))
            .route(&format!("{}/", route.path), axum::routing::any(handler));
    }
    app.route("/api/{*rest}", axum::routing::any(not_found))
        .fallback_service(ServeDir::new(public_dir).append_index_html_on_directories(true))
        .with_state(state)
}

/// Runs the dev stack until Ctrl-C.
pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });

    let layout = Layout::new(options.root.join(".tollgate/dev"));
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let started_services = match (env("REDIS_URL"), env("DATABASE_URL")) {
        (Some(_), Some(_)) => None,
        _ => {
            println!(
                "Starting private Redis and PostgreSQL under {} ...",
                layout.dir.display()
            );
            Some(Services::start(&layout).await?)
        }
    };
    let redis_url = env("REDIS_URL")
        .or_else(|| started_services.as_ref().map(|s| s.redis_url.clone()))
        .context("no REDIS_URL")?;
    let database_url = env("DATABASE_URL")
        .or_else(|| started_services.as_ref().map(|s| s.database_url.clone()))
        .context("no DATABASE_URL")?;
    let cron_secret = env("CRON_SECRET").unwrap_or_else(|| random_token("cron_"));

    // A real Upstash database when one is configured; otherwise the embedded
    // local server in front of REDIS_URL.
    let (upstash_url, upstash_token) = match (
        env("UPSTASH_REDIS_REST_URL"),
        env("UPSTASH_REDIS_REST_TOKEN"),
    ) {
        (Some(url), Some(token)) => (url, token),
        _ => {
            let token = env("UPSTASH_REDIS_REST_TOKEN").unwrap_or_else(|| random_token("local_"));
            let listener = TcpListener::bind(("127.0.0.1", options.upstash_port))
                .await
                .with_context(|| {
                    format!(
                        "binding the local Upstash server to port {}",
                        options.upstash_port
                    )
                })?;
            let url = format!("http://{}", listener.local_addr()?);
            // As strict as Upstash: tollgate's scripts all carry
            // `allow-key-locking` and declare their keys, and anything less
            // should fail here, not in production.
            let upstash_options = upstash_local::Options {
                strict: true,
                ..upstash_local::Options::new(token.clone(), redis_url.clone())
            };
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(error) = upstash_local::serve(listener, upstash_options, shutdown).await
                {
                    tracing::error!(error = ?error, "local Upstash server stopped");
                }
            });
            (url, token)
        }
    };

    let overrides = [
        ("UPSTASH_REDIS_REST_URL", upstash_url.clone()),
        ("UPSTASH_REDIS_REST_TOKEN", upstash_token.clone()),
        ("DATABASE_URL", database_url.clone()),
        ("CRON_SECRET", cron_secret.clone()),
    ];
    let config = Config::from_lookup(|name| {
        overrides
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
            .or_else(|| env(name))
    })?;
    let state = AppState::new(config)?;
    state.db.migrate().await?;
    let demo = seed_demo_key(&state, &layout.dir).await?;

    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .await
        .with_context(|| {
            format!(
                "binding port {} (is another dev server running?)",
                options.port
            )
        })?;
    let base_url = format!("http://localhost:{}", listener.local_addr()?.port());
    let crons = read_crons(&options.root.join("vercel.json"))?;
    for cron in crons.into_iter().filter(|_| options.crons) {
        tokio::spawn(run_cron(
            base_url.clone(),
            Secret::new(cron_secret.clone()),
            cron,
            stopped.clone(),
        ));
    }

    print_banner(&base_url, &upstash_url, &database_url, &demo, &cron_secret);
    // The dashboard offers the demo key through this path; only the dev
    // server has it, so a deployed dashboard asks for a key instead.
    let demo_json = serde_json::json!({ "secret": demo.secret, "publishable": demo.publishable });
    let upstash = std::sync::Arc::clone(&state.upstash);
    let app = router(state, &options.root.join("public"))
        .route(
            "/_dev/demo-key",
            axum::routing::get(move || async move { axum::Json(demo_json) }),
        )
        .route(
            "/_bench/null",
            axum::routing::post(move || null_route(std::sync::Arc::clone(&upstash))),
        );
    let mut stopped_for_server = stopped.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped_for_server.wait_for(|stop| *stop).await;
        })
        .await
        .context("serving the dev stack")?;

    if started_services.is_some() {
        println!("Stopping private Redis and PostgreSQL ...");
        Services::stop(&layout).await?;
    }
    Ok(())
}

/// The benchmarks' baseline for a route's own cost: one `EVALSHA` of a
/// script that does nothing, through the same Upstash client and server as
/// the real routes, and nothing else (see BENCHMARKS.md).
static NULL_SCRIPT: tollgate::upstash::Script =
    tollgate::upstash::Script::new("null", "#!lua flags=allow-key-locking\nreturn 1");

async fn null_route(
    upstash: std::sync::Arc<tollgate::upstash::Upstash>,
) -> axum::response::Response {
    match upstash.eval::<i64>(&NULL_SCRIPT, &[], &[]).await {
        Ok(_) => (
            http::StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({})),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(error = %error, "the null route's script failed");
            http::StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// Hands a request to its route's handler, as the Vercel adapter does.
async fn dispatch(
    route: &'static routes::Route,
    state: AppState,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return into_axum(
                ApiError::PayloadTooLarge(format!(
                    "the request body is over the limit of {MAX_BODY_BYTES} bytes"
                ))
                .into_response(),
            )
        }
    };
    into_axum((route.handler)(&state, http::Request::from_parts(parts, bytes)).await)
}

async fn not_found(uri: http::Uri) -> axum::response::Response {
    into_axum(ApiError::NotFound(format!("no route at {}", uri.path())).into_response())
}

fn into_axum(response: http::Response<Bytes>) -> axum::response::Response {
    response.map(Body::from).into_response()
}

/// A cron entry of `vercel.json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CronEntry {
    pub path: String,
    pub schedule: String,
}

#[derive(Deserialize)]
struct VercelJson {
    #[serde(default)]
    crons: Vec<CronEntry>,
}

/// Reads the cron entries of `vercel.json`, checking each schedule parses.
pub fn read_crons(vercel_json: &Path) -> anyhow::Result<Vec<CronEntry>> {
    let text = std::fs::read_to_string(vercel_json)
        .with_context(|| format!("reading {}", vercel_json.display()))?;
    let parsed: VercelJson = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", vercel_json.display()))?;
    for cron in &parsed.crons {
        parse_schedule(&cron.schedule)
            .with_context(|| format!("the schedule of cron {} in vercel.json", cron.path))?;
    }
    Ok(parsed.crons)
}

fn parse_schedule(schedule: &str) -> anyhow::Result<croner::Cron> {
    Ok(croner::Cron::new(schedule).parse()?)
}

/// Calls one cron path on its schedule, in UTC as Vercel does, with the cron
/// secret as bearer, until the dev server stops.
async fn run_cron(
    base_url: String,
    secret: Secret,
    cron: CronEntry,
    mut stopped: watch::Receiver<bool>,
) {
    let Ok(schedule) = parse_schedule(&cron.schedule) else {
        return;
    };
    if routes::find(&cron.path).is_none() {
        tracing::warn!(path = %cron.path, "vercel.json schedules a cron with no registered route; skipping it");
        return;
    }
    let client = reqwest::Client::new();
    loop {
        let now = Utc::now();
        let Ok(next) = schedule.find_next_occurrence(&now, false) else {
            return;
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let started = tokio::time::Instant::now();
        let result = client
            .get(format!("{base_url}{}", cron.path))
            .bearer_auth(secret.expose())
            .send()
            .await;
        match result {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                tracing::info!(
                    path = %cron.path,
                    status = status.as_u16(),
                    elapsed = ?started.elapsed(),
                    "cron: {}",
                    body.chars().take(300).collect::<String>()
                );
            }
            Err(error) => tracing::warn!(path = %cron.path, error = %error, "cron request failed"),
        }
    }
}

/// The demo key, kept in the state folder so that its secret survives
/// restarts: Postgres stores only the hash.
#[derive(Debug, Serialize, Deserialize)]
struct DemoKey {
    id: uuid::Uuid,
    secret: String,
    publishable: String,
}

async fn seed_demo_key(state: &AppState, dir: &Path) -> anyhow::Result<DemoKey> {
    let file = dir.join("demo-key.json");
    let demo = match std::fs::read_to_string(&file) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
        }
        Err(_) => {
            let key = NewKey::generate();
            let demo = DemoKey {
                id: key.id,
                secret: key.secret.expose().to_owned(),
                publishable: key.publishable,
            };
            std::fs::create_dir_all(dir)?;
            std::fs::write(&file, serde_json::to_vec_pretty(&demo)?)
                .with_context(|| format!("writing {}", file.display()))?;
            demo
        }
    };
    let key = NewKey {
        id: demo.id,
        secret: Secret::new(demo.secret.clone()),
        publishable: demo.publishable.clone(),
    };
    apikeys::insert(&state.db, &key, "demo", Tier::Pro).await?;
    Ok(demo)
}

fn print_banner(
    base_url: &str,
    upstash_url: &str,
    database_url: &str,
    demo: &DemoKey,
    cron_secret: &str,
) {
    let (secret, publishable) = (&demo.secret, &demo.publishable);
    println!(
        r#"
tollgate dev is running on {base_url}

  Upstash REST   {upstash_url}
  Postgres       {database_url}
  Demo key       {secret} (secret, server-side)
                 {publishable} (publishable, for browsers)
  Cron secret    {cron_secret}
  Dashboard      {base_url}/  (the demo key is one click away)

Try it:
  curl -s {base_url}/api/health
  curl -s {base_url}/api/collect -H 'Authorization: Bearer {publishable}' -H 'Content-Type: application/json' \
       -d '{{"type":"web","name":"pageview","url":"https://example.com/pricing?utm_source=readme"}}'
  curl -s {base_url}/api/cron/queue-status -H 'Authorization: Bearer {secret}'
  curl -s '{base_url}/api/analytics?view=overview' -H 'Authorization: Bearer {secret}'

The process-events cron moves queued events into Postgres every minute; to run it now:
  curl -s {base_url}/api/cron/process-events -H 'Authorization: Bearer {cron_secret}'
  psql {database_url} -c 'SELECT occurred_at, name, path, country FROM events ORDER BY occurred_at DESC LIMIT 5'

Press Ctrl-C to stop.
"#
    );
}

fn random_token(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_vercel_json_has_valid_cron_schedules() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vercel.json");
        let crons = read_crons(&path).expect("vercel.json parses");
        let paths: Vec<&str> = crons.iter().map(|c| c.path.as_str()).collect();
        assert!(paths.contains(&"/api/cron/process-events"), "{paths:?}");
        assert!(paths.contains(&"/api/cron/sync-metrics"), "{paths:?}");
        assert!(paths.contains(&"/api/cron/queue-status"), "{paths:?}");
    }

    #[test]
    fn malformed_schedules_are_refused() {
        assert!(parse_schedule("* * * * *").is_ok());
        assert!(parse_schedule("*/5 * * * *").is_ok());
        assert!(parse_schedule("every minute").is_err());
    }
}
