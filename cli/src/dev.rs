//! `tollgate dev`: the whole stack in one process on `localhost:3000`.
//!
//! It serves every registered route through the same handlers as the Vercel
//! functions, serves `public/`, runs the cron entries of `vercel.json` on
//! their schedules with the `CRON_SECRET` bearer (as Vercel does), embeds
//! the local Upstash REST server, migrates, and seeds a demo key.
//!
//! It listens on 127.0.0.1 only, but any web page the developer opens can
//! still send it requests, so it guards what it holds: the demo key goes
//! only to a loopback `Host` (DNS rebinding), a client that dribbles its
//! headers or body is cut off (slowloris), URLs are printed without their
//! passwords, and `demo-key.json` is readable by its owner only.

use std::{
    future::Future,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use axum::{body::Body, extract::State, response::IntoResponse};
use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::watch};
use tollgate::{
    apikeys::{self, NewKey, Tier},
    config::Config,
    error::ApiError,
    response::json_response,
    routes,
    secret::Secret,
    state::AppState,
    telemetry,
    vercel::MAX_BODY_BYTES,
};
use tower_http::services::ServeDir;
use url::Url;

use crate::{
    services::{Layout, Services},
    upstash_local,
};

/// How long a client may take to send a request's headers, from the moment
/// the server waits for them (a new connection, or the end of the previous
/// response on a kept-alive one). Past it, hyper closes the connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a route waits for a request's whole body once its headers are
/// in. Past it, the answer is 408 and the connection is closed. A 10 MB
/// body takes milliseconds over loopback, so this only stops a client that
/// sends a byte now and then to hold the connection (slowloris).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stopping waits for requests in flight before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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

/// Runs the dev stack until Ctrl-C, reading the process's environment.
pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    // Listen for Ctrl-C from the start: one while the services start still
    // stops them once they are up.
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let server = DevServer::start(&options, |name| std::env::var(name).ok()).await?;
    println!("{}", server.banner());
    server
        .run_until(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
}

/// The dev stack, started: Redis and Postgres up, the local Upstash server
/// serving, migrations applied, the demo key seeded, the crons scheduled and
/// the port bound. [`DevServer::run_until`] serves the requests.
pub struct DevServer {
    listener: TcpListener,
    port: u16,
    app: axum::Router,
    banner: String,
    /// Stops the local Upstash server and the crons.
    stop: watch::Sender<bool>,
    /// The private services this server started, to stop at the end.
    started_services: Option<Layout>,
}

impl DevServer {
    /// Starts everything but the serving of requests. `env` reads the
    /// environment (`REDIS_URL`, `DATABASE_URL`, `UPSTASH_REDIS_REST_*`,
    /// `CRON_SECRET` and the rest of [`Config`]); empty values count as unset.
    pub async fn start(
        options: &DevOptions,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        let (stop, stopped) = watch::channel(false);
        let layout = Layout::new(options.root.join(".tollgate/dev"));
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

        // A real Upstash database when one is configured; otherwise the
        // embedded local server in front of REDIS_URL.
        let (upstash_url, upstash_token) = match (
            env("UPSTASH_REDIS_REST_URL"),
            env("UPSTASH_REDIS_REST_TOKEN"),
        ) {
            (Some(url), Some(token)) => (url, token),
            _ => {
                let token =
                    env("UPSTASH_REDIS_REST_TOKEN").unwrap_or_else(|| random_token("local_"));
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
                // `allow-key-locking` and declare their keys, and anything
                // less should fail here, not in production.
                let upstash_options = upstash_local::Options {
                    strict: true,
                    ..upstash_local::Options::new(token.clone(), redis_url.clone())
                };
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    if let Err(error) =
                        upstash_local::serve(listener, upstash_options, shutdown).await
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
        let port = listener.local_addr()?.port();
        let base_url = format!("http://localhost:{port}");
        if options.crons {
            for cron in read_crons(&options.root.join("vercel.json"))? {
                tokio::spawn(run_cron(
                    base_url.clone(),
                    Secret::new(cron_secret.clone()),
                    cron,
                    stopped.clone(),
                ));
            }
        }

        let banner = banner(&Banner {
            base_url: &base_url,
            upstash_url: &upstash_url,
            redis_url: &redis_url,
            database_url: &database_url,
            demo: &demo,
            cron_secret: &cron_secret,
        });
        // The dashboard offers the demo key through this path; only the dev
        // server has it, so a deployed dashboard asks for a key instead.
        let demo_json =
            Arc::new(serde_json::json!({ "secret": demo.secret, "publishable": demo.publishable }));
        let upstash = Arc::clone(&state.upstash);
        let app = router(state, &options.root.join("public"))
            .route(
                "/_dev/demo-key",
                axum::routing::get(move |headers: http::HeaderMap| {
                    demo_key(Arc::clone(&demo_json), headers)
                }),
            )
            .route(
                "/_bench/null",
                axum::routing::post(move || null_route(Arc::clone(&upstash))),
            );
        Ok(Self {
            listener,
            port,
            app,
            banner,
            stop,
            started_services: started_services.map(|_| layout),
        })
    }

    /// The port the app listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What `tollgate dev` prints once it is ready: the URLs (without their
    /// passwords), the demo key, the cron secret and commands to try.
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// Serves requests until `shutdown` completes, then stops the local
    /// Upstash server, the crons and the services it started.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let served = serve(self.listener, self.app, shutdown).await;
        let _ = self.stop.send(true);
        if let Some(layout) = &self.started_services {
            println!("Stopping private Redis and PostgreSQL ...");
            Services::stop(layout).await?;
        }
        served
    }
}

/// The app, for one connection, with the client IP headers Vercel's edge
/// sets: `X-Real-IP` and `X-Forwarded-For` are overwritten with the peer's
/// address, so that whatever a client sends in them, the limiter, the
/// failed-authentication count and the bans see the real one, as they do
/// on Vercel (`TOLLGATE_CLIENT_IP_HEADER=vercel`). A client's `X-Vercel-Id`
/// is dropped, since the edge sets its own: without one, the request's id
/// in the logs is a fresh one.
fn with_client_ip(
    app: &axum::Router,
    peer: std::net::SocketAddr,
) -> TowerToHyperService<
    impl tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future = impl Future + Send,
        > + Clone,
> {
    let address = HeaderValue::from_str(&peer.ip().to_canonical().to_string())
        .expect("an IP address is a header value");
    let app = app.clone();
    TowerToHyperService::new(tower::service_fn(
        move |mut request: http::Request<hyper::body::Incoming>| {
            let headers = request.headers_mut();
            headers.insert("x-real-ip", address.clone());
            headers.insert("x-forwarded-for", address.clone());
            headers.remove(telemetry::VERCEL_ID_HEADER);
            let mut app = app.clone();
            async move { tower::Service::call(&mut app, request).await }
        },
    ))
}

/// Accepts connections until `shutdown`, each served by hyper with a
/// header read timeout ([`HEADER_READ_TIMEOUT`]); `axum::serve` sets no
/// timer, which leaves that timeout off. Then waits up to
/// [`SHUTDOWN_GRACE`] for the requests in flight.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), with_client_ip(&app, peer));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Timeouts and clients that go away end up here; nothing to do.
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    Ok(())
}

/// `/_dev/demo-key`: the demo key, for the dashboard's button, but only to
/// a request whose `Host` is a loopback name. The server listens on
/// 127.0.0.1, yet a page on another site can point its own name at
/// 127.0.0.1 and read the answer as same-origin (DNS rebinding); the
/// browser still sends that name in `Host`.
async fn demo_key(
    demo: Arc<serde_json::Value>,
    headers: http::HeaderMap,
) -> axum::response::Response {
    let host = headers
        .get(header::HOST)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    if host.as_deref().is_some_and(is_loopback_host) {
        return into_axum(json_response(StatusCode::OK, demo.as_ref()));
    }
    let named = match host {
        Some(host) => format!("Host {:?}", host.chars().take(100).collect::<String>()),
        None => "no Host".to_owned(),
    };
    let message = format!(
        "the demo key is served only to a loopback Host (localhost, 127.0.0.1 or [::1], \
         any port), so that a page on another site cannot read it through DNS \
         rebinding; this request named {named}. Open the dashboard at http://localhost:<port>/"
    );
    into_axum(
        ApiError::Forbidden {
            code: "not_loopback_host",
            message,
        }
        .into_response(),
    )
}

/// Whether a `Host` header names this machine in a way no DNS answer can
/// change: `localhost`, or a loopback address (`127.0.0.1`, `[::1]`), with
/// or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let Ok(url) = Url::parse(&format!("http://{host}/")) else {
        return false;
    };
    // A path, query, fragment or user info means it was not a bare host.
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    bare && match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    }
}

/// `text` fit to print: a URL with its password replaced by `***`, and the
/// value of any query parameter whose name holds `pass`, `secret` or
/// `token` too (libpq takes `password=`, redis-rs `pass=`). Text that is
/// not a URL is hidden whole, since it may be a secret itself.
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = Url::parse(text) else {
        return "[not a URL; hidden]".to_owned();
    };
    if url.password().is_some() {
        // Only a URL without a host refuses a password, and this one has one.
        let _ = url.set_password(Some("***"));
    }
    let secret = |part: &str| {
        url::form_urlencoded::parse(part.as_bytes()).any(|(name, _)| {
            let name = name.to_ascii_lowercase();
            ["pass", "secret", "token"]
                .iter()
                .any(|word| name.contains(word))
        })
    };
    // Part by part, so that the other parameters print as they were written.
    if let Some(query) = url.query().filter(|query| query.split('&').any(secret)) {
        let query = query
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((name, _)) if secret(part) => format!("{name}=***"),
                _ => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        url.set_query(Some(&query));
    }
    url.to_string()
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

/// Hands a request to its route's handler in the request's span, as the
/// Vercel adapter does.
async fn dispatch(
    route: &'static routes::Route,
    state: AppState,
    request: axum::extract::Request,
) -> axum::response::Response {
    let span = telemetry::request_span(&request);
    into_axum(span.instrument(handle(route, state, request)).await)
}

/// Reads the body, with the limits Vercel sets and a timeout against slow
/// clients, and runs the route's handler.
async fn handle(
    route: &'static routes::Route,
    state: AppState,
    request: axum::extract::Request,
) -> http::Response<Bytes> {
    let (parts, body) = request.into_parts();
    let read = http_body_util::Limited::new(body, MAX_BODY_BYTES).collect();
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return ApiError::PayloadTooLarge(format!(
                "the request body is over the limit of {MAX_BODY_BYTES} bytes"
            ))
            .into_response()
        }
        Err(_) => return body_timed_out(),
    };
    (route.handler)(&state, http::Request::from_parts(parts, bytes)).await
}

/// 408 with `Connection: close`: a client this slow is holding the
/// connection rather than sending a request.
fn body_timed_out() -> http::Response<Bytes> {
    let message = format!(
        "the request body did not arrive within {} s",
        BODY_READ_TIMEOUT.as_secs()
    );
    let mut response = json_response(
        StatusCode::REQUEST_TIMEOUT,
        &serde_json::json!({"error": {"code": "request_timeout", "message": message}}),
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
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
            keep_private(&file)?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = NewKey::generate();
            let demo = DemoKey {
                id: key.id,
                secret: key.secret.expose().to_owned(),
                publishable: key.publishable,
            };
            std::fs::create_dir_all(dir)?;
            write_private(&file, &serde_json::to_vec_pretty(&demo)?)
                .with_context(|| format!("writing {}", file.display()))?;
            demo
        }
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", file.display()));
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

/// Writes a file that holds a secret, readable and writable by its owner
/// only. It is created with mode 0600, so the secret is never on disk
/// under looser permissions, not even between a write and a chmod; it is
/// written under a temporary name and renamed into place, so a crash never
/// leaves half a file.
fn write_private(file: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary = file.with_extension("json.tmp");
    match std::fs::remove_file(&temporary) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    // `create_new` also refuses to follow a symlink someone left there.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&temporary)?;
    out.write_all(contents)?;
    out.sync_all()?;
    std::fs::rename(&temporary, file)
}

/// Takes group and other access away from a secret's file written by an
/// older version of `tollgate dev`, which left it to the umask.
fn keep_private(file: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", file.display()))?;
            tracing::warn!(file = %file.display(), "the demo key was readable by others; it is now 0600");
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// What the banner shows.
struct Banner<'a> {
    base_url: &'a str,
    upstash_url: &'a str,
    redis_url: &'a str,
    database_url: &'a str,
    demo: &'a DemoKey,
    cron_secret: &'a str,
}

/// The banner `tollgate dev` prints when it is ready. URLs go through
/// [`redact_url`]: the terminal may be shared, recorded or pasted into an
/// issue. The demo key and the cron secret are shown, since they are this
/// machine's own and the point of the banner.
fn banner(banner: &Banner) -> String {
    let Banner {
        base_url,
        cron_secret,
        ..
    } = banner;
    let (secret, publishable) = (&banner.demo.secret, &banner.demo.publishable);
    let upstash_url = redact_url(banner.upstash_url);
    let redis_url = redact_url(banner.redis_url);
    let database_url = redact_url(banner.database_url);
    // With a password, the printed URL would not connect; the variable does.
    let psql_target = if database_url == banner.database_url {
        format!("'{database_url}'")
    } else {
        "\"$DATABASE_URL\"".to_owned()
    };
    format!(
        r#"
tollgate dev is running on {base_url}

  Upstash REST   {upstash_url}
  Redis          {redis_url}
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
  psql {psql_target} -c 'SELECT occurred_at, name, path, country FROM events ORDER BY occurred_at DESC LIMIT 5'

Press Ctrl-C to stop.
"#
    )
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
    fn only_loopback_names_and_addresses_count_as_a_loopback_host() {
        for host in [
            "localhost",
            "localhost:3000",
            "LocalHost:3000",
            "127.0.0.1",
            "127.0.0.1:3000",
            "127.0.0.2:80",
            "[::1]",
            "[::1]:3000",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for (host, why) in [
            ("", "no name"),
            ("evil.example", "another site"),
            ("evil.example:3000", "another site, our port"),
            ("localhost.evil.example", "a name that starts like ours"),
            ("localhost.", "a fully qualified name goes to DNS"),
            ("127.0.0.1.nip.io", "a name that resolves to loopback today"),
            ("evil@localhost", "user info"),
            ("localhost/x", "a path"),
            ("localhost?x", "a query"),
            ("localhost:3000:80", "two ports"),
            ("[::ffff:8.8.8.8]", "an address elsewhere"),
            ("10.0.0.1", "a private address"),
        ] {
            assert!(!is_loopback_host(host), "{host}: {why}");
        }
    }

    #[test]
    fn urls_are_printed_without_their_passwords() {
        for (url, printed) in [
            (
                "postgres://user:hunter2@db.example:5432/app",
                "postgres://user:***@db.example:5432/app",
            ),
            (
                "redis://:hunter2@127.0.0.1:6379",
                "redis://:***@127.0.0.1:6379",
            ),
            (
                "rediss://default:hunter2@eu1.upstash.io:6379",
                "rediss://default:***@eu1.upstash.io:6379",
            ),
            (
                "postgres:///app?host=/tmp&sslmode=disable&password=hunter2",
                "postgres:///app?host=/tmp&sslmode=disable&password=***",
            ),
            // Not a URL by the standard (user info without a host): hidden.
            ("postgres://user:hunter2@/app", "[not a URL; hidden]"),
            (
                "redis+unix:///tmp/redis.sock?pass=hunter2&db=1",
                "redis+unix:///tmp/redis.sock?pass=***&db=1",
            ),
            (
                "postgres://postgres@127.0.0.1:54390/tollgate",
                "postgres://postgres@127.0.0.1:54390/tollgate",
            ),
            ("http://127.0.0.1:8079", "http://127.0.0.1:8079/"),
            ("hunter2", "[not a URL; hidden]"),
        ] {
            assert_eq!(redact_url(url), printed, "{url}");
        }
    }

    #[test]
    fn the_banner_shows_no_password() {
        let demo = DemoKey {
            id: uuid::Uuid::nil(),
            secret: "sk_demo".to_owned(),
            publishable: "pk_demo".to_owned(),
        };
        let text = banner(&Banner {
            base_url: "http://localhost:3000",
            upstash_url: "http://127.0.0.1:8079",
            redis_url: "redis://default:hunter2@127.0.0.1:6379",
            database_url: "postgres://app:hunter2@127.0.0.1/app",
            demo: &demo,
            cron_secret: "cron_x",
        });
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("redis://default:***@127.0.0.1:6379"),
            "{text}"
        );
        assert!(text.contains("postgres://app:***@127.0.0.1/app"), "{text}");
        assert!(text.contains(r#"psql "$DATABASE_URL""#), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_created_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tollgate-private-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("demo-key.json");
        write_private(&file, b"{}").unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        // Written again over a stale temporary file of a crashed run.
        std::fs::write(file.with_extension("json.tmp"), b"stale").unwrap();
        write_private(&file, b"{\"a\":1}").unwrap();
        let again = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(again, r#"{"a":1}"#);
    }

    #[test]
    fn malformed_schedules_are_refused() {
        assert!(parse_schedule("* * * * *").is_ok());
        assert!(parse_schedule("*/5 * * * *").is_ok());
        assert!(parse_schedule("every minute").is_err());
    }
}
