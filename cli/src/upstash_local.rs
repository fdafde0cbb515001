//! A local server that speaks the Upstash Redis REST protocol in front of a real
//! Redis, the role serverless-redis-http (SRH) plays for TypeScript users. With it,
//! `tollgate dev` and the black-box tests run the production Upstash code paths,
//! and the official `@upstash/redis` client, without an Upstash account.
//!
//! The protocol, as Upstash documents it (<https://upstash.com/docs/redis/features/restapi>):
//!
//! - `POST /` with a JSON array body runs one command: `["SET","k","v"]` answers
//!   `{"result":"OK"}`.
//! - Path-style commands: `GET|POST|PUT /set/foo/bar`. Segments are percent-decoded.
//!   A non-empty POST or PUT body is appended as one more argument, then every query
//!   parameter except `_token` appends its name and, when non-empty, its value: a POST
//!   of `bar` to `/set/foo?EX=100` runs `SET foo bar EX 100`.
//! - `POST /pipeline` and `POST /multi-exec` take `[["SET","a","1"],["GET","a"]]` and
//!   answer `[{"result":"OK"},{"result":"1"}]`, with `{"error":"..."}` in place of a
//!   result Redis refused. `/multi-exec` is a real `MULTI`/`EXEC`; a transaction Redis
//!   aborts (`EXECABORT`) is a 400.
//! - A Redis error is a 400 `{"error":"<the Redis error line>"}`, code first, as in
//!   `NOSCRIPT No matching script. Please use EVAL.`: the official client falls back
//!   from `EVALSHA` to `EVAL` when the message contains `NOSCRIPT`.
//! - Auth is `Authorization: Bearer <token>` or `?_token=<token>`; anything else is a 401.
//! - `Upstash-Encoding: base64` asks for base64 strings in results; see [`to_json`].
//! - Every response carries an `upstash-sync-token` header. The client echoes it back
//!   for read-your-writes, which one Redis gives for free, so it only has to change.
//!
//! Scripts follow Upstash's rules, not stock Redis's
//! (<https://upstash.com/docs/redis/features/key-locking>). A script whose shebang
//! carries `allow-key-locking` runs under the locks of its KEYS only, and Upstash
//! refuses any other key it touches. Stock Redis refuses the flag itself, so such a
//! script runs here rewritten: the flag taken out, and a check that refuses any key
//! not in KEYS put in front of its body (see [`rewrite`]). A script without the flag
//! runs otherwise as it is, and is counted as holding Upstash's global lock;
//! [`Options::strict`] refuses it instead. [`Stats`] counts all of this.
//!
//! Commands are allowed by name, not refused by name ([`ALLOWED_COMMANDS`]): the data
//! commands Upstash's REST API runs, the scripting commands, and a few harmless
//! server ones. Anything else (CONFIG, DEBUG, SHUTDOWN, CLIENT, REPLICAOF, MODULE,
//! ACL, MIGRATE, blocking and connection commands...) is a 400 with Redis's own
//! `ERR unknown command` line, on its own, in `/pipeline` (that entry only) and in
//! `/multi-exec` (the whole transaction, as Upstash discards one holding an
//! unsupported command). Every script, flagged or not, runs behind a prelude that
//! refuses the same commands from `redis.call` and `redis.pcall`, so a script can't
//! reach them either. Clients never see the rewrite: they call every script by the
//! SHA-1 of the source they sent.
//!
//! The server is a local stand-in, so it also guards itself: it answers only a
//! `Host` that is a loopback name, the address it is bound to, or one it was told
//! ([`Options::allowed_hosts`]), so that no web page can reach it by DNS
//! rebinding; and a client gets [`Options::read_timeout`] for a request's headers
//! and as long again for its body, so that none can hold a connection by sending
//! them a byte at a time.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult, ServerError, Value};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;

/// Requests above this size are refused with a 413, like Upstash's own limit.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Long enough for a slow Lua script or a large pipeline; redis-rs's default of
/// 500 ms would fail those.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request's headers, and then as long
/// again for its body, unless [`Options::read_timeout`] says otherwise. Ample
/// for any real client on a local machine; a client this slow is holding the
/// connection, not sending a request. It also closes a keep-alive connection
/// left idle this long, as Node.js's own server does after 5 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopping server waits for the requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where `tollgate upstash-local` listens unless `--bind` says otherwise: this
/// machine only.
pub const DEFAULT_BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Options for the local Upstash REST server.
#[derive(Clone)]
pub struct Options {
    /// The token clients must present (`UPSTASH_REDIS_REST_TOKEN`).
    pub token: String,
    /// Where the real Redis listens, as a `redis://` URL.
    pub redis_url: String,
    /// Refuse every script that Upstash would run under its global lock: one
    /// without the `allow-key-locking` flag, and any script inside `/multi-exec`.
    pub strict: bool,
    /// SHA-1s of scripts that [`Options::strict`] still lets run under the global
    /// lock, such as a library's script that scans the keyspace, which Upstash
    /// runs that way by design.
    pub allow_global_lock: Vec<String>,
    /// Where the server counts the scripts it runs and refuses; keep a clone to
    /// read them.
    pub stats: Arc<Stats>,
    /// Added before each request is handled and again before its answer
    /// leaves: a network's delay each way, for measuring what round trips
    /// cost (`--latency 1ms`). Zero by default.
    pub latency: Duration,
    /// Host names clients may use besides `localhost`, a loopback address and
    /// the address the server is bound to (`--allow-host`), for a server bound
    /// beyond loopback and reached by name, such as `host.docker.internal`.
    /// Any other `Host` is refused with a 403: a web page can point a name of
    /// its own at this machine (DNS rebinding), but its requests still carry
    /// that name.
    pub allowed_hosts: Vec<String>,
    /// How long a client may take to send a request's headers, and then its
    /// body, before the connection is cut ([`DEFAULT_READ_TIMEOUT`]).
    pub read_timeout: Duration,
}

impl Options {
    /// Options that are not strict, with fresh counters.
    pub fn new(token: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            redis_url: redis_url.into(),
            strict: false,
            allow_global_lock: Vec::new(),
            stats: Arc::default(),
            latency: Duration::ZERO,
            allowed_hosts: Vec::new(),
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// The arguments of `tollgate upstash-local`. Not `Debug`: it holds the token.
#[derive(clap::Parser)]
#[command(name = "upstash-local")]
pub struct Args {
    /// The port to listen on.
    #[arg(long, default_value_t = 8079)]
    pub port: u16,
    /// The address to listen on. Anything but loopback lets other machines
    /// reach the server; they still need the token.
    #[arg(long, default_value_t = DEFAULT_BIND)]
    pub bind: IpAddr,
    /// A host name clients may reach the server by, besides `localhost`, a
    /// loopback address and the --bind address (repeatable); any other
    /// `Host` is refused (DNS rebinding).
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// The bearer token clients must send.
    #[arg(long, env = "UPSTASH_REDIS_REST_TOKEN", hide_env_values = true)]
    pub token: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Refuse every script Upstash would run under its global lock: one
    /// without the `allow-key-locking` shebang flag, or one inside /multi-exec.
    #[arg(long)]
    pub strict: bool,
    /// With --strict, still let the script with this SHA-1 run under the
    /// global lock (repeatable): a library script that scans the keyspace.
    #[arg(long = "allow-global-lock", value_name = "SHA1", requires = "strict")]
    pub allow_global_lock: Vec<String>,
    /// Delay each direction of every request by this much (`1ms`, `5ms`),
    /// as a network would: for measuring what round trips cost.
    #[arg(long, value_parser = tollgate::config::parse_duration)]
    pub latency: Option<Duration>,
    /// Cut off a client that takes longer than this to send a request's
    /// headers, or then its body (`5s`).
    #[arg(long, default_value = "5s", value_parser = tollgate::config::parse_duration)]
    pub read_timeout: Duration,
}

impl Args {
    /// Parses `upstash-local` and its arguments, as clap would from the command
    /// line; the first item is the program's name.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Self as clap::Parser>::try_parse_from(args)
    }

    /// Binds the listening socket: `--bind` (loopback by default) and `--port`.
    pub async fn listen(&self) -> anyhow::Result<TcpListener> {
        TcpListener::bind((self.bind, self.port))
            .await
            .with_context(|| format!("binding {}", SocketAddr::new(self.bind, self.port)))
    }

    /// The server's options.
    pub fn into_options(self) -> Options {
        Options {
            strict: self.strict,
            allow_global_lock: self.allow_global_lock,
            latency: self.latency.unwrap_or_default(),
            allowed_hosts: self.allow_host,
            read_timeout: self.read_timeout,
            ..Options::new(self.token, self.redis_url)
        }
    }
}

/// `tollgate upstash-local`: binds, says where, and serves until `shutdown`.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = args.listen().await?;
    let address = listener.local_addr()?;
    println!(
        "Upstash REST server on http://{address} in front of {}{}",
        redacted_url(&args.redis_url),
        if args.strict { " (strict)" } else { "" }
    );
    if !address.ip().is_loopback() {
        println!(
            "warning: listening on {}, so other machines can reach this server; \
             anyone with the token can run commands on the Redis behind it",
            address.ip()
        );
    }
    serve(listener, args.into_options(), shutdown).await
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("token", &"[redacted]")
            .field("redis_url", &redacted_url(&self.redis_url))
            .field("strict", &self.strict)
            .field("allow_global_lock", &self.allow_global_lock)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

/// The URL with its password, if any, replaced, so it can be shown in logs.
fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot carry a password, which this one does.
            let _ = parsed.set_password(Some("[redacted]"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "[unparsable URL]".to_owned(),
    }
}

/// Builds the axum Router (state included) for a server bound to `bound`;
/// connects to Redis.
async fn router(options: Options, bound: IpAddr) -> anyhow::Result<Router> {
    anyhow::ensure!(
        !options.token.is_empty(),
        "the local Upstash server needs a non-empty token"
    );
    anyhow::ensure!(
        !options.read_timeout.is_zero(),
        "the local Upstash server needs a read timeout above zero"
    );
    let client = redis::Client::open(options.redis_url.as_str())
        .with_context(|| format!("parsing the Redis URL {}", redacted_url(&options.redis_url)))?;
    // One multiplexed connection serves every request, so concurrent requests are
    // pipelined instead of queued; the manager reconnects when Redis restarts.
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(Duration::from_secs(2)));
    let redis = ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| {
            format!(
                "connecting the local Upstash server to Redis at {}",
                redacted_url(&options.redis_url)
            )
        })?;

    let latency = options.latency;
    let state = AppState {
        redis,
        token: Arc::new(ExpectedToken::new(&options.token)),
        sync_token: Arc::new(AtomicU64::new(0)),
        scripts: Arc::new(Scripts::new(&options)),
        hosts: Arc::new(AllowedHosts::new(bound, &options.allowed_hosts)),
        read_timeout: options.read_timeout,
    };
    Ok(Router::new()
        .route("/", post(json_command).fallback(path_command))
        .route("/pipeline", post(pipeline).fallback(method_not_allowed))
        .route("/multi-exec", post(multi_exec).fallback(method_not_allowed))
        .fallback(path_command)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // The body is read only once the token checks out, so a stranger can't
        // make us buffer 10 MB, and within the read timeout, so nobody can hold
        // a connection by sending it a byte at a time.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Before the token: a page that rebinds its name to this machine learns
        // nothing, not even whether its guess at the token was right.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_known_host,
        ))
        // Outermost, so that 401s, 403s and 413s carry the header too.
        .layer(middleware::map_response_with_state(
            state.clone(),
            stamp_sync_token,
        ))
        // Outermost of all: every answer pays the delay, as on a network.
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            delayed(latency, request, next)
        }))
        .with_state(state))
}

/// Serves on an already-bound listener until `shutdown` resolves, then lets the
/// requests in flight finish (for up to 10 s).
///
/// Each connection is HTTP/1.1 under hyper's header read timeout, which
/// `axum::serve` leaves off: [`Options::read_timeout`] for a request's headers
/// (and for an idle keep-alive connection's next request), then as long again
/// for its body.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener
        .local_addr()
        .context("reading the address the local Upstash server is bound to")?;
    let stats = Arc::clone(&options.stats);
    let strict = options.strict;
    let read_timeout = options.read_timeout;
    let app = router(options, address.ip()).await?;
    tracing::info!(%address, strict, "local Upstash REST server listening");

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %error, "local Upstash server: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and written whole; don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Read timeouts and clients that go away end here; nothing to do.
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "local Upstash server: a connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("local Upstash server: requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }

    let counts = stats.counts();
    tracing::info!(
        key_locked = counts.key_locked,
        global_lock = counts.global_lock,
        refused_undeclared_key = counts.refused_undeclared_key,
        refused_strict = counts.refused_strict,
        "local Upstash REST server stopped; scripts run and refused"
    );
    Ok(())
}

#[derive(Clone)]
struct AppState {
    redis: ConnectionManager,
    token: Arc<ExpectedToken>,
    /// Bumped on every response; see [`stamp_sync_token`].
    sync_token: Arc<AtomicU64>,
    scripts: Arc<Scripts>,
    hosts: Arc<AllowedHosts>,
    /// See [`Options::read_timeout`]; the body's share of it.
    read_timeout: Duration,
}

// ---------------------------------------------------------------------------
// Host, auth, body and response headers
// ---------------------------------------------------------------------------

/// The token clients must present. Only its SHA-256 is kept: comparing digests in
/// constant time takes the same time whatever the presented token's length or
/// content.
struct ExpectedToken([u8; 32]);

impl ExpectedToken {
    fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, presented: &str) -> bool {
        Sha256::digest(presented.as_bytes())
            .as_slice()
            .ct_eq(&self.0)
            .into()
    }
}

/// The token a request presents: the bearer token, else the `_token` query parameter.
fn presented_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    bearer.or_else(|| {
        url::form_urlencoded::parse(uri.query()?.as_bytes())
            .find(|(name, _)| name == "_token")
            .map(|(_, token)| token.into_owned())
    })
}

/// Runs a request after `latency`, and answers `latency` after it is done.
async fn delayed(latency: Duration, request: Request, next: Next) -> Response {
    if latency.is_zero() {
        return next.run(request).await;
    }
    tokio::time::sleep(latency).await;
    let response = next.run(request).await;
    tokio::time::sleep(latency).await;
    response
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let authorized = presented_token(request.headers(), request.uri())
        .is_some_and(|token| state.token.matches(&token));
    if authorized {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// The names a request may reach this server by, in its `Host` (or in an
/// absolute request target, which takes the place of `Host`). The port is not
/// looked at.
#[derive(Debug)]
struct AllowedHosts {
    /// `--allow-host` names, lower case, without a trailing dot.
    names: HashSet<String>,
    /// The address the server is bound to, when it is a specific one.
    bound: Option<IpAddr>,
    /// Bound to every interface (`0.0.0.0`, `::`): any IP literal names this
    /// machine. A literal can't be rebound: a page reads answers only from the
    /// address it was itself loaded from.
    any_address: bool,
}

impl AllowedHosts {
    fn new(bound: IpAddr, names: &[String]) -> Self {
        Self {
            names: names.iter().filter_map(|name| host_name(name)).collect(),
            bound: (!bound.is_unspecified()).then_some(bound),
            any_address: bound.is_unspecified(),
        }
    }

    fn allows(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        match name.parse::<IpAddr>() {
            Ok(address) => address.is_loopback() || self.any_address || self.bound == Some(address),
            Err(_) => name == "localhost" || self.names.contains(&name),
        }
    }
}

/// The host of a `Host` value (`name`, `name:port`, `[v6]:port`), lower case,
/// without brackets or a trailing dot; `None` when it is not one.
fn host_name(value: &str) -> Option<String> {
    let authority: axum::http::uri::Authority = value.trim().parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Refuses a request whose `Host` is not one of [`AllowedHosts`]: 403, or 400
/// without one.
async fn require_known_host(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let named = match request.uri().authority() {
        Some(authority) => Some(authority.as_str().to_owned()),
        None => request
            .headers()
            .get(header::HOST)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
    };
    match named {
        Some(host) if state.hosts.allows(&host) => next.run(request).await,
        Some(host) => {
            let shown: String = host.chars().take(100).collect();
            tracing::warn!(
                host = shown,
                "local Upstash server refused a request for another host"
            );
            ApiError::UnknownHost(shown).into_response()
        }
        None => {
            ApiError::BadRequest("ERR the request has no Host header".to_owned()).into_response()
        }
    }
}

/// Reads the whole body, up to [`MAX_BODY_BYTES`], within the read timeout,
/// before the handler runs: 413 past the limit, 408 past the time.
async fn read_body_in_time(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, MAX_BODY_BYTES).collect();
    match tokio::time::timeout(state.read_timeout, read).await {
        Ok(Ok(collected)) => {
            next.run(Request::from_parts(parts, Body::from(collected.to_bytes())))
                .await
        }
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            ApiError::PayloadTooLarge.into_response()
        }
        Ok(Err(error)) => {
            ApiError::BadRequest(format!("ERR failed to read the request body: {error}"))
                .into_response()
        }
        Err(_) => {
            tracing::warn!(
                timeout = ?state.read_timeout,
                "local Upstash server cut off a client that sent its body too slowly"
            );
            ApiError::RequestTimeout(state.read_timeout).into_response()
        }
    }
}

/// Upstash answers every request with an `upstash-sync-token`, which the client
/// sends back so a replica can wait until it has caught up. A single Redis is
/// always caught up, so any value that changes will do.
async fn stamp_sync_token(State(state): State<AppState>, mut response: Response) -> Response {
    let token = state.sync_token.fetch_add(1, Ordering::Relaxed) + 1;
    response
        .headers_mut()
        .insert("upstash-sync-token", HeaderValue::from(token));
    response
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// `POST /` with `["SET","k","v"]`.
async fn json_command(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let command = Command::from_json(&read_body(body)?)?;
    run_single(state, command, Encoding::of(&headers)).await
}

/// `GET|POST|PUT /set/foo/bar?EX=100`: the command is in the path.
async fn path_command(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = match method {
        Method::GET | Method::HEAD => None,
        Method::POST | Method::PUT => Some(read_body(body)?),
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let command = Command::from_path(uri.path(), uri.query(), body.as_deref())?;
    run_single(state, command, Encoding::of(&headers)).await
}

/// `POST /pipeline` with `[["SET","a","1"],["GET","a"]]`: one result or error per
/// command, in order, always with a 200.
async fn pipeline(
    State(mut state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let commands = Command::list_from_json(&read_body(body)?)?;
    let encoding = Encoding::of(&headers);

    // A refused command gets its error entry in place and is never sent.
    let mut prepared = Vec::with_capacity(commands.len());
    for command in commands {
        prepared.push(match command.check_allowed() {
            Err(message) => Prepared::Refuse(message),
            Ok(()) => {
                state
                    .scripts
                    .prepare(&mut state.redis, command, Context::Direct)
                    .await?
            }
        });
    }
    let mut pipe = redis::pipe();
    for step in &prepared {
        if let Prepared::Send { command, .. } = step {
            pipe.add_command(command.to_cmd());
        }
    }
    let sent = prepared
        .iter()
        .filter(|step| matches!(step, Prepared::Send { .. }))
        .count();
    let mut replies = if sent == 0 {
        Vec::new()
    } else {
        state
            .redis
            .send_packed_commands(&pipe, 0, sent)
            .await
            .map_err(redis_failure)?
    }
    .into_iter();

    let mut entries = Vec::with_capacity(prepared.len());
    for step in prepared {
        let reply = match step {
            Prepared::Refuse(message) => Err(message),
            Prepared::Send { script, .. } => match replies.next() {
                Some(reply) => state.scripts.settle(script.as_ref(), split_error(reply)),
                None => {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "Redis answered {sent} pipelined commands with fewer replies"
                    )))
                }
            },
        };
        entries.push(entry_json(&reply, encoding));
    }
    Ok(Json(serde_json::Value::Array(entries)))
}

/// `POST /multi-exec`: like `/pipeline`, inside a real `MULTI`/`EXEC`.
async fn multi_exec(
    State(mut state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let commands = Command::list_from_json(&read_body(body)?)?;
    let mut steps = Vec::with_capacity(commands.len());
    for command in commands {
        command.check_allowed().map_err(ApiError::BadRequest)?;
        match state
            .scripts
            .prepare(&mut state.redis, command, Context::Transaction)
            .await?
        {
            Prepared::Refuse(message) => return Err(ApiError::BadRequest(message)),
            Prepared::Send { command, script } => steps.push((command, script)),
        }
    }

    // MULTI, the commands and EXEC go out as one write on the shared connection, so
    // no other request's command can land inside the transaction. It is sent as a
    // plain pipeline, not redis-rs's atomic one, to get EXEC's own reply, which
    // carries the error text Redis gives for an aborted transaction.
    let mut pipe = redis::pipe();
    pipe.cmd("MULTI");
    for (command, _) in &steps {
        pipe.add_command(command.to_cmd());
    }
    pipe.cmd("EXEC");
    let mut replies = state
        .redis
        .send_packed_commands(&pipe, 0, steps.len() + 2)
        .await
        .map_err(redis_failure)?;

    match replies.pop() {
        Some(Value::Array(results)) => {
            let encoding = Encoding::of(&headers);
            let entries = results
                .into_iter()
                .zip(&steps)
                .map(|(reply, (_, script))| {
                    entry_json(
                        &state.scripts.settle(script.as_ref(), split_error(reply)),
                        encoding,
                    )
                })
                .collect();
            Ok(Json(serde_json::Value::Array(entries)))
        }
        Some(Value::ServerError(error)) => Err(ApiError::BadRequest(server_error_message(&error))),
        other => Err(ApiError::Internal(anyhow::anyhow!(
            "EXEC answered with {other:?}"
        ))),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(format!(
                "ERR failed to read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

/// Runs one command: `{"result": ...}`, or a 400 with Redis's error.
async fn run_single(
    mut state: AppState,
    command: Command,
    encoding: Encoding,
) -> Result<Json<serde_json::Value>, ApiError> {
    command.check_allowed().map_err(ApiError::BadRequest)?;
    let (command, script) = match state
        .scripts
        .prepare(&mut state.redis, command, Context::Direct)
        .await?
    {
        Prepared::Refuse(message) => return Err(ApiError::BadRequest(message)),
        Prepared::Send { command, script } => (command, script),
    };
    let reply = server_reply(state.redis.send_packed_command(&command.to_cmd()).await)?;
    match state.scripts.settle(script.as_ref(), reply) {
        Ok(reply) => Ok(Json(json!({ "result": to_json(&reply, encoding) }))),
        Err(message) => Err(ApiError::BadRequest(message)),
    }
}

/// A reply, with a refusal from Redis as its error line; an error when Redis could
/// not be asked.
fn server_reply(result: RedisResult<Value>) -> Result<Result<Value, String>, ApiError> {
    match result {
        Ok(reply) => Ok(split_error(reply)),
        Err(error) => match redis_failure(error) {
            ApiError::BadRequest(message) => Ok(Err(message)),
            other => Err(other),
        },
    }
}

/// A reply as a result, a top-level error reply as its error line.
fn split_error(reply: Value) -> Result<Value, String> {
    match reply {
        Value::ServerError(error) => Err(server_error_message(&error)),
        reply => Ok(reply),
    }
}

/// A failed Redis call: a refusal from the server is the client's 400, anything
/// else (connection lost, timeout) means Redis is unavailable.
fn redis_failure(error: RedisError) -> ApiError {
    if matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension) {
        let message = match (error.code(), error.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            (Some(code), None) => code.to_owned(),
            _ => error.to_string(),
        };
        ApiError::BadRequest(message)
    } else {
        ApiError::RedisUnavailable(error)
    }
}

/// Redis's error line as it sent it: `WRONGTYPE Operation against a key ...`.
fn server_error_message(error: &ServerError) -> String {
    match error.details() {
        Some(detail) => format!("{} {detail}", error.code()),
        None => error.code().to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// One Redis command as the client sent it: the name, then the arguments, as bytes
/// because values are binary-safe. Never empty.
#[derive(Debug, PartialEq)]
struct Command(Vec<Vec<u8>>);

/// Every command the server runs, by name: the data commands of Upstash's REST
/// API (<https://upstash.com/docs/redis/features/restapi>), which are what
/// `@upstash/redis` and tollgate send, and a few commands that only read the
/// server. Anything else gets Redis's `ERR unknown command` line. Left out on
/// purpose:
///
/// - what Upstash's REST API does not run: blocking commands (`BLPOP`,
///   `XREAD BLOCK`...), connection and transaction commands (`SELECT`, `AUTH`,
///   `CLIENT`, `MULTI`, `WATCH`...: `/multi-exec` is the transaction),
///   `SUBSCRIBE` (Upstash serves it as its own endpoint, which this server has
///   not), cluster commands;
/// - what would reach past the one database Upstash gives: `CONFIG`, `ACL`,
///   `DEBUG`, `SHUTDOWN`, `MODULE`, `MONITOR`, `SAVE`, `BGSAVE`,
///   `BGREWRITEAOF`, `REPLICAOF`, `SLAVEOF`, `SYNC`, `PSYNC`, `FAILOVER`,
///   `MIGRATE`, `MOVE`, `SWAPDB`...;
/// - what Upstash runs but this stand-in can't hold to its rules: functions
///   (`FUNCTION`, `FCALL`: no prelude would check their commands), `DUMP` and
///   `RESTORE`, and `CONFIG SET notify-keyspace-events`;
/// - what tollgate and `@upstash/redis` never send and Upstash does not list:
///   `SORT`, `OBJECT`, `LCS`, `SUBSTR`...
///
/// Commands newer than the Redis behind (hash field expiry, `JSON.*` without
/// the module) pass this list and get Redis's own refusal.
#[rustfmt::skip]
pub const ALLOWED_COMMANDS: &[&str] = &[
    // Strings
    "APPEND", "DECR", "DECRBY", "DELEX", "DIGEST", "GET", "GETDEL", "GETEX", "GETRANGE",
    "GETSET", "INCR", "INCRBY", "INCRBYFLOAT", "MGET", "MSET", "MSETEX", "MSETNX", "PSETEX",
    "SET", "SETEX", "SETNX", "SETRANGE", "STRLEN",
    // Bitmaps
    "BITCOUNT", "BITFIELD", "BITFIELD_RO", "BITOP", "BITPOS", "GETBIT", "SETBIT",
    // Hashes
    "HDEL", "HEXISTS", "HEXPIRE", "HEXPIREAT", "HEXPIRETIME", "HGET", "HGETALL", "HGETDEL",
    "HGETEX", "HINCRBY", "HINCRBYFLOAT", "HKEYS", "HLEN", "HMGET", "HMSET", "HPERSIST",
    "HPEXPIRE", "HPEXPIREAT", "HPEXPIRETIME", "HPTTL", "HRANDFIELD", "HSCAN", "HSET",
    "HSETEX", "HSETNX", "HSTRLEN", "HTTL", "HVALS",
    // Lists, blocking ones left out
    "LINDEX", "LINSERT", "LLEN", "LMOVE", "LMPOP", "LPOP", "LPOS", "LPUSH", "LPUSHX",
    "LRANGE", "LREM", "LSET", "LTRIM", "RPOP", "RPOPLPUSH", "RPUSH", "RPUSHX",
    // Sets
    "SADD", "SCARD", "SDIFF", "SDIFFSTORE", "SINTER", "SINTERCARD", "SINTERSTORE",
    "SISMEMBER", "SMEMBERS", "SMISMEMBER", "SMOVE", "SPOP", "SRANDMEMBER", "SREM", "SSCAN",
    "SUNION", "SUNIONSTORE",
    // Sorted sets, blocking ones left out
    "ZADD", "ZCARD", "ZCOUNT", "ZDIFF", "ZDIFFSTORE", "ZINCRBY", "ZINTER", "ZINTERCARD",
    "ZINTERSTORE", "ZLEXCOUNT", "ZMPOP", "ZMSCORE", "ZPOPMAX", "ZPOPMIN", "ZRANDMEMBER",
    "ZRANGE", "ZRANGEBYLEX", "ZRANGEBYSCORE", "ZRANGESTORE", "ZRANK", "ZREM",
    "ZREMRANGEBYLEX", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "ZREVRANGE", "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE", "ZREVRANK", "ZSCAN", "ZSCORE", "ZUNION", "ZUNIONSTORE",
    // Streams; XREAD and XREADGROUP without BLOCK (see `Command::check_allowed`)
    "XACK", "XACKDEL", "XADD", "XAUTOCLAIM", "XCLAIM", "XDEL", "XDELEX", "XGROUP", "XINFO",
    "XLEN", "XPENDING", "XRANGE", "XREAD", "XREADGROUP", "XREVRANGE", "XTRIM",
    // HyperLogLog
    "PFADD", "PFCOUNT", "PFMERGE",
    // Geo
    "GEOADD", "GEODIST", "GEOHASH", "GEOPOS", "GEORADIUS", "GEORADIUS_RO",
    "GEORADIUSBYMEMBER", "GEORADIUSBYMEMBER_RO", "GEOSEARCH", "GEOSEARCHSTORE",
    // JSON, answered when the Redis behind has the module
    "JSON.ARRAPPEND", "JSON.ARRINDEX", "JSON.ARRINSERT", "JSON.ARRLEN", "JSON.ARRPOP",
    "JSON.ARRTRIM", "JSON.CLEAR", "JSON.DEL", "JSON.FORGET", "JSON.GET", "JSON.MERGE",
    "JSON.MGET", "JSON.MSET", "JSON.NUMINCRBY", "JSON.NUMMULTBY", "JSON.OBJKEYS",
    "JSON.OBJLEN", "JSON.RESP", "JSON.SET", "JSON.STRAPPEND", "JSON.STRLEN", "JSON.TOGGLE",
    "JSON.TYPE",
    // Keys
    "COPY", "DEL", "EXISTS", "EXPIRE", "EXPIREAT", "EXPIRETIME", "KEYS", "PERSIST",
    "PEXPIRE", "PEXPIREAT", "PEXPIRETIME", "PTTL", "RANDOMKEY", "RENAME", "RENAMENX", "SCAN",
    "TOUCH", "TTL", "TYPE", "UNLINK",
    // Scripts; SCRIPT is in ALLOWED_SUBCOMMANDS
    "EVAL", "EVALSHA", "EVALSHA_RO", "EVAL_RO",
    // Pub/Sub: publishing only, as over Upstash's REST API
    "PUBLISH",
    // Connection and server
    "COMMAND", "DBSIZE", "ECHO", "FLUSHALL", "FLUSHDB", "INFO", "PING", "TIME",
];

/// Commands allowed with these subcommands only. `SCRIPT KILL` is answered here
/// as Upstash answers it, `NOTBUSY`, without asking Redis: Upstash has no
/// running script a request could stop, and here it would stop another
/// request's.
pub const ALLOWED_SUBCOMMANDS: &[(&str, &[&str])] = &[
    ("MEMORY", &["USAGE"]),
    ("PUBSUB", &["CHANNELS", "NUMPAT", "NUMSUB"]),
    ("SCRIPT", &["EXISTS", "FLUSH", "KILL", "LOAD"]),
];

static ALLOWED: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| ALLOWED_COMMANDS.iter().copied().collect());

/// What Redis answers `SCRIPT KILL` with when no script runs, and Upstash always.
const NOTBUSY: &str = "NOTBUSY No scripts in execution right now.";

/// What Redis answers `EVALSHA` of a script it does not hold.
const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

impl Command {
    fn new(parts: Vec<Vec<u8>>) -> Result<Self, ApiError> {
        if parts.is_empty() {
            return Err(ApiError::BadRequest("ERR empty command".to_owned()));
        }
        Ok(Self(parts))
    }

    /// `["SET","k","v"]`. Numbers and booleans are taken as their JSON text, since
    /// Redis sees every argument as a string anyway.
    fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let parts: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "ERR failed to parse the command, a JSON array of strings: {e}"
            ))
        })?;
        Self::from_json_values(parts)
    }

    /// `[["SET","a","1"],["GET","a"]]`, for `/pipeline` and `/multi-exec`.
    fn list_from_json(body: &[u8]) -> Result<Vec<Self>, ApiError> {
        let lists: Vec<Vec<serde_json::Value>> = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "ERR failed to parse the commands, a JSON array of arrays of strings: {e}"
            ))
        })?;
        if lists.is_empty() {
            return Err(ApiError::BadRequest("ERR no commands given".to_owned()));
        }
        lists.into_iter().map(Self::from_json_values).collect()
    }

    fn from_json_values(parts: Vec<serde_json::Value>) -> Result<Self, ApiError> {
        let parts = parts
            .into_iter()
            .enumerate()
            .map(|(position, part)| match part {
                serde_json::Value::String(text) => Ok(text.into_bytes()),
                serde_json::Value::Number(number) => Ok(number.to_string().into_bytes()),
                serde_json::Value::Bool(flag) => Ok(flag.to_string().into_bytes()),
                other => Err(ApiError::BadRequest(format!(
                    "ERR command argument {position} must be a string or a number, not {other}"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Self::new(parts)
    }

    /// A path-style command: `/set/foo/bar`, then the body (when there is one), then
    /// the query parameters other than `_token`, in order.
    fn from_path(path: &str, query: Option<&str>, body: Option<&[u8]>) -> Result<Self, ApiError> {
        let path = path.strip_prefix('/').unwrap_or(path);
        // `/get/foo/` means `/get/foo`; empty segments in between are empty arguments.
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut parts: Vec<Vec<u8>> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').map(percent_decode).collect()
        };
        if let Some(body) = body.filter(|body| !body.is_empty()) {
            parts.push(body.to_vec());
        }
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if name == "_token" {
                continue;
            }
            parts.push(name.into_owned().into_bytes());
            if !value.is_empty() {
                parts.push(value.into_owned().into_bytes());
            }
        }
        Self::new(parts)
    }

    /// The command name in upper case, for checks and logs.
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.0[0]).to_ascii_uppercase()
    }

    /// The subcommand, upper case, if there is an argument.
    fn subcommand(&self) -> Option<String> {
        self.0
            .get(1)
            .map(|arg| String::from_utf8_lossy(arg).to_ascii_uppercase())
    }

    /// Refuses a command not in [`ALLOWED_COMMANDS`] or [`ALLOWED_SUBCOMMANDS`],
    /// with the error line the client will see; logs the refusal.
    fn check_allowed(&self) -> Result<(), String> {
        let verdict = self.verdict();
        if let Err(message) = &verdict {
            tracing::warn!(
                command = %self.name().chars().take(64).collect::<String>(),
                message,
                "local Upstash server refused a command Upstash's REST API does not run"
            );
        }
        verdict
    }

    fn verdict(&self) -> Result<(), String> {
        let name = self.name();
        if let Some((_, subcommands)) = ALLOWED_SUBCOMMANDS.iter().find(|(n, _)| *n == name) {
            return match self.subcommand() {
                Some(sub) if !subcommands.contains(&sub.as_str()) => Err(format!(
                    "ERR unknown subcommand '{}' of '{name}'",
                    shown(&self.0[1], 128)
                )),
                // Without one, Redis says what is missing.
                _ => Ok(()),
            };
        }
        if !ALLOWED.contains(name.as_str()) {
            return Err(self.unknown_command());
        }
        let blocks = self.0[1..]
            .iter()
            .any(|arg| arg.eq_ignore_ascii_case(b"BLOCK"));
        if matches!(name.as_str(), "XREAD" | "XREADGROUP") && blocks {
            return Err(format!(
                "ERR {name} with BLOCK is not supported over REST, as on Upstash"
            ));
        }
        Ok(())
    }

    /// Redis's own refusal of a command it does not have, which is what a
    /// client of Upstash's REST API gets too: the name and the first arguments,
    /// each quoted, up to about 128 characters.
    fn unknown_command(&self) -> String {
        let mut args = String::new();
        for arg in &self.0[1..] {
            if args.len() >= 128 {
                break;
            }
            args.push_str(&format!("'{}' ", shown(arg, 128 - args.len())));
        }
        format!(
            "ERR unknown command '{}', with args beginning with: {args}",
            shown(&self.0[0], 128)
        )
    }

    fn to_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::Cmd::new();
        for part in &self.0 {
            cmd.arg(part.as_slice());
        }
        cmd
    }
}

/// Up to `limit` characters of an argument, for an error line: lossy UTF-8,
/// line breaks as spaces.
fn shown(arg: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(arg)
        .chars()
        .take(limit)
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// Decodes `%XX` escapes into bytes. A `%` not followed by two hex digits is kept
/// as it is, as browsers and curl would have sent it.
fn percent_decode(segment: &str) -> Vec<u8> {
    fn hex(digit: u8) -> Option<u8> {
        (digit as char).to_digit(16).map(|value| value as u8)
    }
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    decoded
}

// ---------------------------------------------------------------------------
// Scripts under Upstash's rules
// ---------------------------------------------------------------------------

/// The shebang flag with which Upstash locks only the keys in a script's KEYS.
const KEY_LOCKING_FLAG: &str = "allow-key-locking";

/// The hash where every server in front of a Redis records the source of each
/// script under the SHA-1 its clients know, so that any of them, or one started
/// later, can answer `EVALSHA` by that SHA-1. Field: the client's SHA-1; value:
/// the source as the client sent it. No TTL: it holds one entry per script text
/// ever sent.
pub const SCRIPTS_KEY: &str = "__upstash_local:scripts";

/// Upstash's refusal of a key that a flagged script did not declare, as its
/// Key-Based Locking page gives it; the key follows.
const UNDECLARED_KEY_ERROR: &str =
    "ERR Dynamic keys are not allowed in Lua scripts when 'allow-key-locking' flag is set. Key was: ";

/// The commands a script may call, for the prelude's plain-text search: each
/// name of [`ALLOWED_COMMANDS`], and `NAME|SUBCOMMAND` for
/// [`ALLOWED_SUBCOMMANDS`], between spaces.
fn allowed_in_scripts() -> String {
    let mut allowed = String::from(" ");
    for name in ALLOWED_COMMANDS {
        allowed.push_str(name);
        allowed.push(' ');
    }
    for (name, subcommands) in ALLOWED_SUBCOMMANDS {
        for sub in *subcommands {
            allowed.push_str(&format!("{name}|{sub} "));
        }
    }
    allowed
}

/// Put in front of every script, on the line the script's body starts on, so
/// that Lua's line numbers in errors stay those of the client's source. It
/// shadows `redis` with a table whose `call` and `pcall` first refuse a command
/// not allowed over REST, with the error Redis gives for a command scripts
/// may not call. For a flagged script (`key_locked`) they then ask Redis
/// (`COMMAND GETKEYS`, itself refused for commands that take no key) which keys
/// the command touches, and raise Upstash's error for one not in KEYS; they
/// also refuse what Upstash calls database-wide writes. All of these raise even
/// from `pcall`, so the script stops where it would be refused.
fn prelude(key_locked: bool) -> String {
    let key_check = if key_locked {
        concat!(
            "if name == 'FLUSHDB' or name == 'FLUSHALL' then ",
            "error({err = 'ERR ' .. name .. ' is not allowed in Lua scripts when ",
            "\\'allow-key-locking\\' flag is set'}) ",
            "end ",
            "local keys = real.pcall('COMMAND', 'GETKEYS', ...) ",
            "if type(keys) == 'table' and keys.err == nil then ",
            "for _, key in ipairs(keys) do ",
            "if not declared[key] then ",
            "error({err = \"ERR Dynamic keys are not allowed in Lua scripts when ",
            "'allow-key-locking' flag is set. Key was: \" .. key}) ",
            "end ",
            "end ",
            "end ",
        )
    } else {
        ""
    };
    format!(
        concat!(
            "local redis = (function(real) ",
            "local allowed = '{allowed}' ",
            "{declare}",
            "local function check(...) ",
            // Without a command, Redis's own error is the right one.
            "if select('#', ...) == 0 then return end ",
            "local name = string.upper(tostring((...))) ",
            "local sub = string.upper(tostring((select(2, ...)) or '')) ",
            // Names hold letters, digits, `_`, `.` and `-`; anything else could
            // match across two entries of `allowed`.
            "local plain = '[^%w_%.%-]' ",
            "if string.find(name, plain) or not (",
            "string.find(allowed, ' ' .. name .. ' ', 1, true) or ",
            "(not string.find(sub, plain) and ",
            "string.find(allowed, ' ' .. name .. '|' .. sub .. ' ', 1, true))) then ",
            "error({{err = '{refusal}'}}) ",
            "end ",
            "{key_check}",
            "end ",
            "return setmetatable({{",
            "call = function(...) check(...) return real.call(...) end, ",
            "pcall = function(...) check(...) return real.pcall(...) end",
            "}}, {{__index = real}}) ",
            "end)(redis); ",
        ),
        allowed = allowed_in_scripts(),
        refusal = COMMAND_NOT_ALLOWED_FROM_SCRIPT,
        declare = if key_locked {
            "local declared = {} for _, key in ipairs(KEYS) do declared[key] = true end "
        } else {
            ""
        },
        key_check = key_check,
    )
}

/// Redis's refusal of a command scripts may not call, raised by the prelude for
/// every command not allowed over REST.
const COMMAND_NOT_ALLOWED_FROM_SCRIPT: &str = "ERR This Redis command is not allowed from script";

/// The prelude of a script without `allow-key-locking`.
static COMMAND_CHECK_PRELUDE: LazyLock<String> = LazyLock::new(|| prelude(false));

/// The prelude of a script with `allow-key-locking`.
static KEY_CHECK_PRELUDE: LazyLock<String> = LazyLock::new(|| prelude(true));

/// A script as Redis runs it here.
#[derive(Debug, PartialEq)]
struct Rewritten {
    source: Vec<u8>,
    /// The shebang carried `allow-key-locking`.
    key_locked: bool,
}

/// The source Redis runs for a client's script: its prelude in front of the
/// first line of the body. For a script whose shebang carries
/// `allow-key-locking`, the flag is taken out of the shebang (other flags kept;
/// `#!lua` alone when none is left), since stock Redis refuses it, and the
/// prelude checks keys too. Any other shebang stays as it was sent.
fn rewrite(source: &[u8]) -> Rewritten {
    if !source.starts_with(b"#!") {
        let mut rewritten = COMMAND_CHECK_PRELUDE.as_bytes().to_vec();
        rewritten.extend_from_slice(source);
        return Rewritten {
            source: rewritten,
            key_locked: false,
        };
    }
    let line_end = source
        .iter()
        .position(|&byte| byte == b'\n')
        .unwrap_or(source.len());
    let body = source.get(line_end + 1..).unwrap_or_default();
    let (shebang, key_locked) = match without_key_locking(&source[..line_end]) {
        Some(shebang) => (shebang, true),
        None => (source[..line_end].to_vec(), false),
    };
    let mut rewritten = shebang;
    rewritten.push(b'\n');
    let prelude = if key_locked {
        &KEY_CHECK_PRELUDE
    } else {
        &COMMAND_CHECK_PRELUDE
    };
    rewritten.extend_from_slice(prelude.as_bytes());
    rewritten.extend_from_slice(body);
    Rewritten {
        source: rewritten,
        key_locked,
    }
}

/// A shebang line without its `allow-key-locking` flag; `None` when it has
/// none.
fn without_key_locking(shebang: &[u8]) -> Option<Vec<u8>> {
    let shebang = std::str::from_utf8(shebang).ok()?;
    let mut flagged = false;
    let mut parts = Vec::new();
    // Redis splits the shebang on whitespace: `#!lua`, then `flags=a,b`.
    for part in shebang.split_whitespace() {
        match part.strip_prefix("flags=") {
            Some(flags) => {
                let kept: Vec<&str> = flags
                    .split(',')
                    .filter(|flag| {
                        let locking = *flag == KEY_LOCKING_FLAG;
                        flagged |= locking;
                        !locking && !flag.is_empty()
                    })
                    .collect();
                if !kept.is_empty() {
                    parts.push(format!("flags={}", kept.join(",")));
                }
            }
            None => parts.push(part.to_owned()),
        }
    }
    flagged.then(|| parts.join(" ").into_bytes())
}

/// Where a command runs, which decides the lock Upstash takes for a script.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Context {
    /// On its own or in a pipeline.
    Direct,
    /// Inside `/multi-exec`, where Upstash runs every script under the global lock.
    Transaction,
}

/// A command ready for Redis, or the error to answer instead.
enum Prepared {
    Send {
        command: Command,
        /// Set for the script commands whose reply [`Scripts::settle`] reads.
        script: Option<ScriptCall>,
    },
    Refuse(String),
}

impl Prepared {
    fn plain(command: Command) -> Self {
        Self::Send {
            command,
            script: None,
        }
    }
}

/// A script command as sent: what its reply means and how it is counted.
#[derive(Debug)]
struct ScriptCall {
    /// The SHA-1 the client knows the script by.
    sha: String,
    /// Redis's SHA-1 of what it runs, the rewritten source.
    rewritten_sha: String,
    /// `SCRIPT LOAD`: the reply is the client's SHA-1, and nothing ran.
    loads: bool,
    /// Whether Upstash would lock only the script's KEYS.
    key_locked: bool,
}

/// What the server has learnt about a script, by the SHA-1 its clients use.
#[derive(Clone, Debug)]
struct Known {
    /// Redis knows the rewritten source by this SHA-1.
    rewritten_sha: String,
    /// The shebang carries `allow-key-locking`.
    key_locked: bool,
}

impl Known {
    fn of(rewritten: &Rewritten) -> Self {
        Self {
            rewritten_sha: sha1_hex(&rewritten.source),
            key_locked: rewritten.key_locked,
        }
    }
}

/// Counters of the scripts the server ran and refused, shared with whoever
/// started it (see [`Options::stats`]).
#[derive(Debug, Default)]
pub struct Stats {
    key_locked: AtomicU64,
    global_lock: AtomicU64,
    refused_undeclared_key: AtomicU64,
    refused_strict: AtomicU64,
    last_undeclared_key: Mutex<Option<UndeclaredKey>>,
}

/// A key a flagged script touched without declaring it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndeclaredKey {
    /// The SHA-1 the client knows the script by.
    pub script_sha: String,
    pub key: String,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptCounts {
    /// Script runs that Upstash would lock by their KEYS only, refusals excepted.
    pub key_locked: u64,
    /// Script runs that Upstash would hold its global lock for: no flag, or
    /// inside a transaction.
    pub global_lock: u64,
    /// Flagged scripts stopped at a key not in KEYS.
    pub refused_undeclared_key: u64,
    /// Scripts refused by [`Options::strict`].
    pub refused_strict: u64,
    /// The latest of the `refused_undeclared_key`, for debugging.
    pub last_undeclared_key: Option<UndeclaredKey>,
}

impl Stats {
    /// The counters as they are now.
    pub fn counts(&self) -> ScriptCounts {
        ScriptCounts {
            key_locked: self.key_locked.load(Ordering::Relaxed),
            global_lock: self.global_lock.load(Ordering::Relaxed),
            refused_undeclared_key: self.refused_undeclared_key.load(Ordering::Relaxed),
            refused_strict: self.refused_strict.load(Ordering::Relaxed),
            last_undeclared_key: self
                .last_undeclared_key
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// The script rules of one server: its options, and the SHA-1s it has learnt.
struct Scripts {
    strict: bool,
    allow_global_lock: HashSet<String>,
    stats: Arc<Stats>,
    known: RwLock<HashMap<String, Known>>,
}

impl Scripts {
    fn new(options: &Options) -> Self {
        Self {
            strict: options.strict,
            allow_global_lock: options
                .allow_global_lock
                .iter()
                .map(|sha| sha.to_ascii_lowercase())
                .collect(),
            stats: Arc::clone(&options.stats),
            known: RwLock::default(),
        }
    }

    /// What Redis should run for a client's command. `EVAL`, `EVALSHA`, their
    /// `_RO` forms and `SCRIPT LOAD|EXISTS` are translated to the rewritten
    /// scripts, and `SCRIPT KILL` is answered here; every other command goes as
    /// it is.
    async fn prepare(
        &self,
        redis: &mut ConnectionManager,
        command: Command,
        context: Context,
    ) -> Result<Prepared, ApiError> {
        match command.name().as_str() {
            "EVAL" | "EVAL_RO" if command.0.len() > 1 => {
                self.prepare_eval(redis, command, context).await
            }
            "EVALSHA" | "EVALSHA_RO" if command.0.len() > 1 => {
                self.prepare_evalsha(redis, command, context).await
            }
            "SCRIPT" => match command.subcommand().as_deref() {
                Some("LOAD") if command.0.len() > 2 => self.prepare_load(redis, command).await,
                Some("EXISTS") if command.0.len() > 2 => self.prepare_exists(redis, command).await,
                Some("KILL") if command.0.len() == 2 => Ok(Prepared::Refuse(NOTBUSY.to_owned())),
                _ => Ok(Prepared::plain(command)),
            },
            _ => Ok(Prepared::plain(command)),
        }
    }

    async fn prepare_eval(
        &self,
        redis: &mut ConnectionManager,
        mut command: Command,
        context: Context,
    ) -> Result<Prepared, ApiError> {
        let sha = sha1_hex(&command.0[1]);
        let rewritten = rewrite(&command.0[1]);
        let known = Known::of(&rewritten);
        self.remember(redis, &sha, &command.0[1], &known).await?;
        command.0[1] = rewritten.source;
        let call = ScriptCall {
            sha,
            rewritten_sha: known.rewritten_sha,
            loads: false,
            key_locked: known.key_locked && context == Context::Direct,
        };
        if !call.key_locked && self.refuses_global_lock(&call.sha) {
            return Ok(Prepared::Refuse(self.strict_refusal(&call.sha, context)));
        }
        Ok(Prepared::Send {
            command,
            script: Some(call),
        })
    }

    async fn prepare_evalsha(
        &self,
        redis: &mut ConnectionManager,
        mut command: Command,
        context: Context,
    ) -> Result<Prepared, ApiError> {
        // Redis reads the SHA-1 in either case.
        let sha = String::from_utf8_lossy(&command.0[1]).to_ascii_lowercase();
        let Some(known) = self.lookup(redis, &sha).await? else {
            // No client sent this script through a server in front of this
            // Redis. Redis may still hold it, loaded past this server and so
            // without the prelude; that is no script to run either.
            if script_exists(redis, &sha).await? {
                return Ok(Prepared::Refuse(NOSCRIPT.to_owned()));
            }
            // Redis answers NOSCRIPT (inside a transaction too, for that
            // command only), and the client sends EVAL.
            return Ok(Prepared::plain(command));
        };
        let key_locked = known.key_locked && context == Context::Direct;
        // Strict mode refuses only a script that Redis would run; one it has
        // lost gets NOSCRIPT, and the client's EVAL is refused then.
        if !key_locked
            && self.refuses_global_lock(&sha)
            && script_exists(redis, &known.rewritten_sha).await?
        {
            return Ok(Prepared::Refuse(self.strict_refusal(&sha, context)));
        }
        command.0[1] = known.rewritten_sha.clone().into_bytes();
        Ok(Prepared::Send {
            command,
            script: Some(ScriptCall {
                sha,
                rewritten_sha: known.rewritten_sha,
                loads: false,
                key_locked,
            }),
        })
    }

    /// `SCRIPT LOAD` loads the rewritten source and answers the SHA-1 of the
    /// client's. Loading runs nothing, so strict mode lets any script load.
    async fn prepare_load(
        &self,
        redis: &mut ConnectionManager,
        mut command: Command,
    ) -> Result<Prepared, ApiError> {
        let sha = sha1_hex(&command.0[2]);
        let rewritten = rewrite(&command.0[2]);
        let known = Known::of(&rewritten);
        self.remember(redis, &sha, &command.0[2], &known).await?;
        command.0[2] = rewritten.source;
        Ok(Prepared::Send {
            command,
            script: Some(ScriptCall {
                sha,
                rewritten_sha: known.rewritten_sha,
                loads: true,
                key_locked: known.key_locked,
            }),
        })
    }

    /// `SCRIPT EXISTS` asks Redis about the rewritten source of each script it
    /// knows, so it answers 1 exactly when `EVALSHA` by that SHA-1 would run.
    async fn prepare_exists(
        &self,
        redis: &mut ConnectionManager,
        mut command: Command,
    ) -> Result<Prepared, ApiError> {
        for position in 2..command.0.len() {
            let sha = String::from_utf8_lossy(&command.0[position]).to_ascii_lowercase();
            if let Some(known) = self.lookup(redis, &sha).await? {
                command.0[position] = known.rewritten_sha.into_bytes();
            }
        }
        Ok(Prepared::plain(command))
    }

    /// Reads the reply of a prepared command: counts the script run, answers
    /// `SCRIPT LOAD` with the client's SHA-1, and shows the client's SHA-1 in
    /// errors where Redis named the rewritten one.
    fn settle(
        &self,
        call: Option<&ScriptCall>,
        reply: Result<Value, String>,
    ) -> Result<Value, String> {
        let Some(call) = call else {
            return reply;
        };
        match reply {
            Ok(_) if call.loads => Ok(Value::BulkString(call.sha.clone().into_bytes())),
            Ok(reply) => {
                self.count_run(call);
                Ok(reply)
            }
            Err(message) if message.starts_with("NOSCRIPT") => Err(message),
            Err(message) => {
                if let Some(rest) = message.strip_prefix(UNDECLARED_KEY_ERROR) {
                    // Redis adds ` script: <sha>, on @user_script:<line>.`, naming
                    // the rewritten script and the prelude's line; both would
                    // mislead, so they give way to the client's SHA-1.
                    let key = rest.rfind(" script: ").map_or(rest, |end| &rest[..end]);
                    self.count_undeclared_key(&call.sha, key);
                    return Err(format!("{UNDECLARED_KEY_ERROR}{key} script: {}", call.sha));
                }
                if message.starts_with(COMMAND_NOT_ALLOWED_FROM_SCRIPT) {
                    tracing::warn!(
                        script = call.sha,
                        "local Upstash server refused a command a script called: \
                         Upstash's REST API does not run it"
                    );
                }
                if !call.loads {
                    self.count_run(call);
                }
                Err(message.replace(call.rewritten_sha.as_str(), &call.sha))
            }
        }
    }

    fn count_run(&self, call: &ScriptCall) {
        if call.key_locked {
            self.stats.key_locked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.global_lock.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_undeclared_key(&self, sha: &str, key: &str) {
        tracing::warn!(
            script = sha,
            key,
            "local Upstash server refused a script: the key is not in its KEYS"
        );
        self.stats
            .refused_undeclared_key
            .fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .last_undeclared_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(UndeclaredKey {
            script_sha: sha.to_owned(),
            key: key.to_owned(),
        });
    }

    /// Whether strict mode refuses the script with this SHA-1 when it would run
    /// under the global lock.
    fn refuses_global_lock(&self, sha: &str) -> bool {
        self.strict && !self.allow_global_lock.contains(sha)
    }

    /// Strict mode's refusal of a script that would run under the global lock,
    /// counted and logged.
    fn strict_refusal(&self, sha: &str, context: Context) -> String {
        self.stats.refused_strict.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            script = sha,
            ?context,
            "local Upstash server (strict) refused a script that would hold Upstash's global lock"
        );
        match context {
            Context::Direct => format!(
                "ERR tollgate upstash-local --strict: this script has no `{KEY_LOCKING_FLAG}` \
                 flag, so Upstash would run it under the global lock (script {sha})"
            ),
            Context::Transaction => format!(
                "ERR tollgate upstash-local --strict: Upstash runs a script inside MULTI/EXEC \
                 under the global lock, whatever its flags (script {sha})"
            ),
        }
    }

    fn known(&self, sha: &str) -> Option<Known> {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sha)
            .cloned()
    }

    fn write_known(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Known>> {
        self.known.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// What is known of a SHA-1: from memory, else from [`SCRIPTS_KEY`], where
    /// another server, or this one before a restart, recorded the script.
    async fn lookup(
        &self,
        redis: &mut ConnectionManager,
        sha: &str,
    ) -> Result<Option<Known>, ApiError> {
        if let Some(known) = self.known(sha) {
            return Ok(Some(known));
        }
        let source: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(SCRIPTS_KEY)
            .arg(sha)
            .query_async(redis)
            .await
            .map_err(redis_failure)?;
        // A source whose SHA-1 does not match was not recorded by this server.
        Ok(source
            .filter(|source| sha1_hex(source) == sha)
            .map(|source| {
                let known = Known::of(&rewrite(&source));
                self.write_known().insert(sha.to_owned(), known.clone());
                known
            }))
    }

    /// Records a script, in memory and in [`SCRIPTS_KEY`].
    async fn remember(
        &self,
        redis: &mut ConnectionManager,
        sha: &str,
        source: &[u8],
        known: &Known,
    ) -> Result<(), ApiError> {
        if self.known(sha).is_some() {
            return Ok(());
        }
        let _: i64 = redis::cmd("HSET")
            .arg(SCRIPTS_KEY)
            .arg(sha)
            .arg(source)
            .query_async(redis)
            .await
            .map_err(redis_failure)?;
        self.write_known().insert(sha.to_owned(), known.clone());
        Ok(())
    }
}

/// Whether Redis's script cache holds this SHA-1.
async fn script_exists(redis: &mut ConnectionManager, sha: &str) -> Result<bool, ApiError> {
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha)
        .query_async(redis)
        .await
        .map_err(redis_failure)?;
    Ok(exists.first() == Some(&1))
}

/// The SHA-1 of `data` in lower-case hex, as Redis names scripts.
fn sha1_hex(data: &[u8]) -> String {
    sha1_smol::Sha1::from(data).digest().to_string()
}

// ---------------------------------------------------------------------------
// Replies to JSON
// ---------------------------------------------------------------------------

/// How strings in results are written, from the request's `Upstash-Encoding` header.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Encoding {
    /// Strings as they are; bytes that are not UTF-8 become U+FFFD, since JSON
    /// can't carry them.
    Plain,
    /// Strings in standard, padded base64 (what `@upstash/redis` asks for by default).
    Base64,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Self {
        let base64 = headers
            .get("upstash-encoding")
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"base64"));
        if base64 {
            Self::Base64
        } else {
            Self::Plain
        }
    }
}

/// A pipeline or transaction entry: `{"result": ...}` or `{"error": "..."}`. Errors
/// are never encoded.
fn entry_json(reply: &Result<Value, String>, encoding: Encoding) -> serde_json::Value {
    match reply {
        Err(message) => json!({ "error": message }),
        Ok(reply) => json!({ "result": to_json(reply, encoding) }),
    }
}

/// A Redis reply as the `result` of an Upstash response.
///
/// Integers are JSON numbers, nil is `null`, arrays are arrays (nested ones too),
/// and strings, bulk or simple, are JSON strings. With [`Encoding::Base64`] every
/// string is base64, except a top-level `OK` status, which stays `"OK"`. That is
/// Upstash's documented rule ("all strings in the response will be base64 encoded,
/// except for the OK response"). It is also what `@upstash/redis` decodes: a
/// top-level `"OK"` is kept as it is and other strings are base64-decoded, but
/// strings directly inside an array are always decoded, so an `OK` there has to
/// be encoded too.
///
/// The connection speaks RESP2, as Upstash does. Should a RESP3 type appear, it is
/// written as RESP2 would have sent it: a double as a string, a boolean as 1 or 0,
/// a map as a flat array of keys and values, a set as an array.
fn to_json(reply: &Value, encoding: Encoding) -> serde_json::Value {
    encode_reply(reply, encoding, true)
}

fn encode_reply(reply: &Value, encoding: Encoding, top_level: bool) -> serde_json::Value {
    let nested = |items: &mut dyn Iterator<Item = &Value>| {
        serde_json::Value::Array(
            items
                .map(|item| encode_reply(item, encoding, false))
                .collect(),
        )
    };
    match reply {
        Value::Nil => serde_json::Value::Null,
        Value::Int(number) => (*number).into(),
        Value::Okay if top_level => "OK".into(),
        Value::Okay => encode_string(b"OK", encoding),
        Value::SimpleString(text) => encode_string(text.as_bytes(), encoding),
        Value::BulkString(bytes) => encode_string(bytes, encoding),
        Value::VerbatimString { text, .. } => encode_string(text.as_bytes(), encoding),
        Value::Double(number) => encode_string(number.to_string().as_bytes(), encoding),
        Value::Boolean(flag) => i64::from(*flag).into(),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            nested(&mut items.iter())
        }
        Value::Map(pairs) => nested(&mut pairs.iter().flat_map(|(key, value)| [key, value])),
        Value::Attribute { data, .. } => encode_reply(data, encoding, top_level),
        // Only inside an array, from a Lua script or a transaction.
        Value::ServerError(error) => {
            encode_string(server_error_message(error).as_bytes(), encoding)
        }
        // Big numbers and whatever later redis-rs versions add; RESP2 sends neither.
        other => encode_string(format!("{other:?}").as_bytes(), encoding),
    }
}

fn encode_string(bytes: &[u8], encoding: Encoding) -> serde_json::Value {
    match encoding {
        Encoding::Plain => String::from_utf8_lossy(bytes).into_owned().into(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into(),
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Everything a request can fail with, each answered as `{"error": "..."}`.
#[derive(Debug)]
enum ApiError {
    /// 401: the token is missing or wrong.
    Unauthorized,
    /// 400: a malformed request, or a command Redis refused; the message is shown.
    BadRequest(String),
    /// 405: a method the endpoint does not take (commands: HEAD, GET, POST, PUT).
    MethodNotAllowed,
    /// 403: the `Host` is not one the server answers to; see [`AllowedHosts`].
    UnknownHost(String),
    /// 408: the body did not arrive within the read timeout. The connection
    /// is closed.
    RequestTimeout(Duration),
    /// 413: the body is over [`MAX_BODY_BYTES`].
    PayloadTooLarge,
    /// 503: Redis can't be reached or did not answer in time. The cause is logged.
    RedisUnavailable(RedisError),
    /// 500: Redis answered something this server does not understand. Logged.
    Internal(anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "WRONGPASS invalid or missing auth token".to_owned(),
            ),
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "ERR method not allowed".to_owned(),
            ),
            Self::UnknownHost(host) => (
                StatusCode::FORBIDDEN,
                format!(
                    "ERR this server answers to localhost, loopback addresses, the address it \
                     is bound to and --allow-host names, not to Host '{host}' (a page on \
                     another site may have pointed its name here: DNS rebinding)"
                ),
            ),
            Self::RequestTimeout(timeout) => {
                let message = format!("ERR the request body did not arrive within {timeout:?}");
                let mut response = (
                    StatusCode::REQUEST_TIMEOUT,
                    Json(json!({ "error": message })),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("ERR request body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            Self::RedisUnavailable(error) => {
                tracing::warn!(error = %error, "local Upstash server: Redis is unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ERR Redis is unavailable; see the server log".to_owned(),
                )
            }
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "local Upstash server failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ERR internal error; see the server log".to_owned(),
                )
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn command(parts: &[&str]) -> Command {
        Command(parts.iter().map(|part| part.as_bytes().to_vec()).collect())
    }

    fn server_error(line: &str) -> ServerError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
            Ok(Value::ServerError(error)) => error,
            Err(error) => match error.into_server_errors() {
                Some(errors) => errors[0].1.clone(),
                None => panic!("{line} did not parse as a server error"),
            },
            Ok(other) => panic!("{line} parsed as {other:?}"),
        }
    }

    #[test]
    fn plain_replies_map_to_json_numbers_strings_nulls_and_arrays() {
        let reply = Value::Array(vec![
            Value::Int(42),
            bulk("héllo"),
            Value::Nil,
            Value::Okay,
            Value::SimpleString("PONG".to_owned()),
            Value::Array(vec![bulk("a"), Value::Array(vec![Value::Int(-1)])]),
        ]);
        assert_eq!(
            to_json(&reply, Encoding::Plain),
            json!([42, "héllo", null, "OK", "PONG", ["a", [-1]]])
        );
        assert_eq!(to_json(&Value::Okay, Encoding::Plain), json!("OK"));
        assert_eq!(to_json(&Value::Nil, Encoding::Plain), json!(null));
    }

    #[test]
    fn plain_bytes_that_are_not_utf8_become_replacement_characters() {
        let reply = Value::BulkString(vec![b'a', 0xff, b'b']);
        assert_eq!(to_json(&reply, Encoding::Plain), json!("a\u{fffd}b"));
    }

    #[test]
    fn base64_encodes_every_string_but_a_top_level_ok() {
        assert_eq!(to_json(&Value::Okay, Encoding::Base64), json!("OK"));
        assert_eq!(to_json(&bulk("hello"), Encoding::Base64), json!("aGVsbG8="));
        // A stored value "OK" is a bulk string, not the status.
        assert_eq!(to_json(&bulk("OK"), Encoding::Base64), json!("T0s="));
        assert_eq!(
            to_json(&Value::SimpleString("PONG".to_owned()), Encoding::Base64),
            json!("UE9ORw==")
        );
        assert_eq!(
            to_json(&Value::BulkString(vec![0xff, 0x00]), Encoding::Base64),
            json!("/wA=")
        );
    }

    #[test]
    fn base64_leaves_numbers_and_nulls_and_recurses_into_arrays() {
        let reply = Value::Array(vec![
            Value::Int(7),
            Value::Nil,
            bulk("a"),
            Value::Okay,
            Value::Array(vec![
                bulk("b"),
                Value::Int(1),
                Value::Array(vec![bulk("c")]),
            ]),
        ]);
        assert_eq!(
            to_json(&reply, Encoding::Base64),
            json!([7, null, "YQ==", "T0s=", ["Yg==", 1, ["Yw=="]]])
        );
    }

    #[test]
    fn resp3_types_are_written_as_resp2_would_send_them() {
        let map = Value::Map(vec![(bulk("k"), Value::Int(1))]);
        assert_eq!(to_json(&map, Encoding::Plain), json!(["k", 1]));
        assert_eq!(to_json(&Value::Double(1.5), Encoding::Plain), json!("1.5"));
        assert_eq!(to_json(&Value::Boolean(true), Encoding::Plain), json!(1));
        assert_eq!(
            to_json(&Value::Set(vec![bulk("x")]), Encoding::Base64),
            json!(["eA=="])
        );
    }

    #[test]
    fn pipeline_entries_carry_results_or_unencoded_errors() {
        let error = Value::ServerError(server_error("WRONGTYPE Operation against a key"));
        assert_eq!(
            entry_json(&split_error(error), Encoding::Base64),
            json!({ "error": "WRONGTYPE Operation against a key" })
        );
        assert_eq!(
            entry_json(&split_error(bulk("1")), Encoding::Base64),
            json!({ "result": "MQ==" })
        );
        assert_eq!(
            entry_json(&split_error(Value::Okay), Encoding::Base64),
            json!({ "result": "OK" })
        );
    }

    #[test]
    fn server_errors_keep_their_code_prefix() {
        assert_eq!(
            server_error_message(&server_error(
                "NOSCRIPT No matching script. Please use EVAL."
            )),
            "NOSCRIPT No matching script. Please use EVAL."
        );
        assert_eq!(
            server_error_message(&server_error("ERR unknown command 'FOO'")),
            "ERR unknown command 'FOO'"
        );
        assert_eq!(server_error_message(&server_error("OOPS")), "OOPS");
    }

    #[test]
    fn path_commands_are_split_and_percent_decoded() {
        assert_eq!(
            Command::from_path("/set/foo/bar", None, None).unwrap(),
            command(&["set", "foo", "bar"])
        );
        assert_eq!(
            Command::from_path("/set/a%20b/%E2%9C%93%2Fx", None, None).unwrap(),
            command(&["set", "a b", "✓/x"])
        );
        assert_eq!(
            Command::from_path("/get/foo/", None, None).unwrap(),
            command(&["get", "foo"])
        );
        assert_eq!(
            Command::from_path("/set/k//v", None, None).unwrap(),
            command(&["set", "k", "", "v"])
        );
    }

    #[test]
    fn path_commands_append_the_body_then_the_query_parameters() {
        assert_eq!(
            Command::from_path(
                "/set/foo",
                Some("EX=100&_token=secret&NX"),
                Some(b"{\"a\":1}")
            )
            .unwrap(),
            command(&["set", "foo", "{\"a\":1}", "EX", "100", "NX"])
        );
        assert_eq!(
            Command::from_path("/set/foo/bar", None, Some(b"")).unwrap(),
            command(&["set", "foo", "bar"])
        );
    }

    #[test]
    fn path_commands_keep_binary_bodies_and_malformed_escapes() {
        let parsed = Command::from_path("/set/100%/x%zz", None, Some(&[0xff, 0x00])).unwrap();
        assert_eq!(
            parsed.0,
            vec![
                b"set".to_vec(),
                b"100%".to_vec(),
                b"x%zz".to_vec(),
                vec![0xff, 0x00]
            ]
        );
    }

    #[test]
    fn an_empty_path_is_not_a_command() {
        assert!(matches!(
            Command::from_path("/", None, None),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            Command::from_path("/", Some("_token=x"), None),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn json_commands_accept_strings_and_numbers_only() {
        assert_eq!(
            Command::from_json(br#"["SET","k",1.5,10,true]"#).unwrap(),
            command(&["SET", "k", "1.5", "10", "true"])
        );
        for bad in [
            &br#"[]"#[..],
            br#"["SET",{"a":1}]"#,
            br#"["GET",null]"#,
            br#"{"a":1}"#,
            b"nope",
        ] {
            assert!(
                matches!(Command::from_json(bad), Err(ApiError::BadRequest(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn json_pipelines_are_arrays_of_commands() {
        assert_eq!(
            Command::list_from_json(br#"[["SET","a","1"],["GET","a"]]"#).unwrap(),
            vec![command(&["SET", "a", "1"]), command(&["GET", "a"])]
        );
        for bad in [&br#"[]"#[..], br#"[[]]"#, br#"["GET","a"]"#] {
            assert!(matches!(
                Command::list_from_json(bad),
                Err(ApiError::BadRequest(_))
            ));
        }
    }

    #[test]
    fn only_commands_on_the_allow_list_run() {
        for refused in [
            &["multi"][..],
            &["EXEC"],
            &["select", "1"],
            &["subscribe", "c"],
            &["blpop", "l", "0"],
            &["client", "id"],
            &["client", "kill", "id", "7"],
            &["CONFIG", "SET", "appendonly", "yes"],
            &["debug", "sleep", "0"],
            &["shutdown", "nosave"],
            &["replicaof", "127.0.0.1", "1"],
            &["migrate", "127.0.0.1", "1", "k", "0", "10"],
            &["function", "flush"],
            &["xread", "block", "0", "streams", "s", "$"],
            &["script", "debug", "yes"],
            &["memory", "doctor"],
            &["nosuchcommand"],
        ] {
            assert!(command(refused).check_allowed().is_err(), "{refused:?}");
        }
        for allowed in [
            &["get", "k"][..],
            &["xread", "streams", "s", "0"],
            &["Script", "load", "return 1"],
            &["script", "kill"],
            &["SCRIPT"],
            &["memory", "usage", "k"],
            &["json.set", "k", "$", "1"],
            &["flushdb"],
        ] {
            assert!(command(allowed).check_allowed().is_ok(), "{allowed:?}");
        }
    }

    #[test]
    fn a_refused_command_gets_redis_s_own_unknown_command_line() {
        assert_eq!(
            command(&["Config", "get", "*"]).check_allowed(),
            Err("ERR unknown command 'Config', with args beginning with: 'get' '*' ".to_owned())
        );
        assert_eq!(
            command(&["SHUTDOWN"]).check_allowed(),
            Err("ERR unknown command 'SHUTDOWN', with args beginning with: ".to_owned())
        );
        assert_eq!(
            command(&["script", "debug", "yes"]).check_allowed(),
            Err("ERR unknown subcommand 'debug' of 'SCRIPT'".to_owned())
        );
        // Long or multi-line arguments are cut short and kept on one line.
        let long = "x".repeat(300);
        let message = command(&["debug", "a\r\nb", long.as_str(), "never shown"])
            .check_allowed()
            .unwrap_err();
        assert!(
            message
                .starts_with("ERR unknown command 'debug', with args beginning with: 'a  b' 'xxx"),
            "{message}"
        );
        assert!(
            !message.contains("never shown") && message.len() < 200,
            "{message}"
        );
    }

    #[test]
    fn only_loopback_names_are_allowed_hosts_of_a_loopback_server() {
        let hosts = AllowedHosts::new(DEFAULT_BIND, &[]);
        for allowed in [
            "localhost",
            "localhost:8079",
            "LOCALHOST.",
            "127.0.0.1:8079",
            "127.0.0.2",
            "[::1]:8079",
            "[::1]",
        ] {
            assert!(hosts.allows(allowed), "{allowed}");
        }
        for refused in [
            "evil.example",
            "evil.example:8079",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "192.168.1.5:8079",
            "user@localhost",
            "",
            "local host",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
    }

    #[test]
    fn a_server_bound_elsewhere_also_answers_to_its_address_and_the_names_it_was_given() {
        let bound: IpAddr = "192.168.1.5".parse().unwrap();
        let hosts = AllowedHosts::new(bound, &["Tollgate.Test".to_owned()]);
        for allowed in ["192.168.1.5:8079", "tollgate.test:8079", "localhost"] {
            assert!(hosts.allows(allowed), "{allowed}");
        }
        for refused in ["192.168.1.6", "evil.example"] {
            assert!(!hosts.allows(refused), "{refused}");
        }
        // Bound to every interface: any address, but still no other name.
        let everywhere = AllowedHosts::new("0.0.0.0".parse().unwrap(), &[]);
        assert!(everywhere.allows("192.168.1.6:8079"));
        assert!(everywhere.allows("[fe80::1]:8079"));
        assert!(!everywhere.allows("evil.example:8079"));
    }

    #[test]
    fn tokens_match_only_exactly() {
        let expected = ExpectedToken::new("s3cret");
        assert!(expected.matches("s3cret"));
        assert!(!expected.matches("s3cre"));
        assert!(!expected.matches("s3cret "));
        assert!(!expected.matches(""));
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_query() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        let uri: Uri = "/get/k?_token=xyz".parse().unwrap();
        assert_eq!(presented_token(&headers, &uri).as_deref(), Some("abc"));
        assert_eq!(
            presented_token(&HeaderMap::new(), &uri).as_deref(),
            Some("xyz")
        );
        let bare: Uri = "/get/k".parse().unwrap();
        assert_eq!(presented_token(&HeaderMap::new(), &bare), None);
    }

    #[test]
    fn debug_output_hides_the_token_and_the_redis_password() {
        let options = Options::new("s3cret", "redis://:hunter2@127.0.0.1:6379");
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    fn rewritten(source: &str) -> (String, bool) {
        let rewritten = rewrite(source.as_bytes());
        (
            String::from_utf8(rewritten.source).unwrap(),
            rewritten.key_locked,
        )
    }

    #[test]
    fn the_key_locking_flag_is_taken_out_of_the_shebang_and_other_flags_stay() {
        let body = "redis.call('INCR', KEYS[1])\nreturn 1";
        let prelude = KEY_CHECK_PRELUDE.as_str();
        assert_eq!(
            rewritten(&format!("#!lua flags=allow-key-locking\n{body}")),
            (format!("#!lua\n{prelude}{body}"), true)
        );
        assert_eq!(
            rewritten(&format!("#!lua flags=no-writes,allow-key-locking\n{body}")),
            (format!("#!lua flags=no-writes\n{prelude}{body}"), true)
        );
        assert_eq!(
            rewritten(&format!(
                "#!lua flags=allow-key-locking,no-writes\r\n{body}"
            )),
            (format!("#!lua flags=no-writes\n{prelude}{body}"), true)
        );
        assert_eq!(
            rewritten("#!lua flags=allow-key-locking"),
            (format!("#!lua\n{prelude}"), true)
        );
    }

    #[test]
    fn scripts_without_the_flag_keep_their_first_line_and_get_the_command_check_only() {
        let prelude = COMMAND_CHECK_PRELUDE.as_str();
        assert_eq!(rewritten("return 1"), (format!("{prelude}return 1"), false));
        for (shebang, body) in [
            ("#!lua", "return 1"),
            ("#!lua flags=no-writes", "return 1"),
            ("#!lua flags=allow-key-locking-later", "return 1"),
            ("#!lua  flags=no-writes\r", "return 1"),
        ] {
            assert_eq!(
                rewritten(&format!("{shebang}\n{body}")),
                (format!("{shebang}\n{prelude}{body}"), false),
                "{shebang}"
            );
        }
        assert_eq!(
            rewritten("-- #!lua flags=allow-key-locking\nreturn 1"),
            (
                format!("{prelude}-- #!lua flags=allow-key-locking\nreturn 1"),
                false
            )
        );
    }

    #[test]
    fn the_preludes_keep_line_numbers_and_raise_the_errors_settle_recognizes() {
        for prelude in [KEY_CHECK_PRELUDE.as_str(), COMMAND_CHECK_PRELUDE.as_str()] {
            assert!(!prelude.contains('\n'));
            assert!(
                prelude.contains(&format!(
                    "error({{err = '{COMMAND_NOT_ALLOWED_FROM_SCRIPT}'}})"
                )),
                "{prelude}"
            );
        }
        assert!(
            KEY_CHECK_PRELUDE.contains(&format!("\"{UNDECLARED_KEY_ERROR}\" .. key")),
            "{}",
            *KEY_CHECK_PRELUDE
        );
        assert!(!COMMAND_CHECK_PRELUDE.contains("GETKEYS"));
    }

    #[test]
    fn scripts_may_call_exactly_the_commands_allowed_over_rest() {
        let allowed = allowed_in_scripts();
        for entry in [
            "GET",
            "HINCRBY",
            "XAUTOCLAIM",
            "TIME",
            "MEMORY|USAGE",
            "SCRIPT|LOAD",
        ] {
            assert!(allowed.contains(&format!(" {entry} ")), "{entry}");
        }
        for entry in [
            "CONFIG", "MIGRATE", "CLUSTER", "SWAPDB", "MOVE", "MEMORY", "SELECT",
        ] {
            assert!(!allowed.contains(&format!(" {entry} ")), "{entry}");
        }
        // Nothing that would end the Lua string it sits in.
        assert!(allowed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _.|-".contains(c)));
    }

    #[test]
    fn scripts_are_named_as_redis_names_them() {
        assert_eq!(
            sha1_hex(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
