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

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerError, Value};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Requests above this size are refused with a 413, like Upstash's own limit.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Long enough for a slow Lua script or a large pipeline; redis-rs's default of
/// 500 ms would fail those.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for the local Upstash REST server.
#[derive(Clone)]
pub struct Options {
    /// The token clients must present (`UPSTASH_REDIS_REST_TOKEN`).
    pub token: String,
    /// Where the real Redis listens, as a `redis://` URL.
    pub redis_url: String,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("token", &"[redacted]")
            .field("redis_url", &redacted_url(&self.redis_url))
            .finish()
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

/// Builds the axum Router (state included) for the server; connects to Redis.
pub async fn router(options: Options) -> anyhow::Result<Router> {
    anyhow::ensure!(
        !options.token.is_empty(),
        "the local Upstash server needs a non-empty token"
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

    let state = AppState {
        redis,
        token: Arc::new(ExpectedToken::new(&options.token)),
        sync_token: Arc::new(AtomicU64::new(0)),
    };
    Ok(Router::new()
        .route("/", post(json_command).fallback(path_command))
        .route("/pipeline", post(pipeline).fallback(method_not_allowed))
        .route("/multi-exec", post(multi_exec).fallback(method_not_allowed))
        .fallback(path_command)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Auth runs before any handler reads the body, so a stranger can't make us
        // buffer 10 MB.
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Outermost, so that 401s and 413s carry the header too.
        .layer(middleware::map_response_with_state(
            state.clone(),
            stamp_sync_token,
        ))
        .with_state(state))
}

/// Serves on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(options).await?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "local Upstash REST server listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the local Upstash REST server")
}

#[derive(Clone)]
struct AppState {
    redis: ConnectionManager,
    token: Arc<ExpectedToken>,
    /// Bumped on every response; see [`stamp_sync_token`].
    sync_token: Arc<AtomicU64>,
}

// ---------------------------------------------------------------------------
// Auth and response headers
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

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let authorized = presented_token(request.headers(), request.uri())
        .is_some_and(|token| state.token.matches(&token));
    if authorized {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
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
    State(mut state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let command = Command::from_json(&read_body(body)?)?;
    run_single(&mut state.redis, &command, Encoding::of(&headers)).await
}

/// `GET|POST|PUT /set/foo/bar?EX=100`: the command is in the path.
async fn path_command(
    State(mut state): State<AppState>,
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
    run_single(&mut state.redis, &command, Encoding::of(&headers)).await
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
    let checks: Vec<Result<(), String>> = commands.iter().map(Command::check_allowed).collect();
    let mut pipe = redis::pipe();
    for (command, check) in commands.iter().zip(&checks) {
        if check.is_ok() {
            pipe.add_command(command.to_cmd());
        }
    }
    let sent = checks.iter().filter(|check| check.is_ok()).count();
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

    let mut entries = Vec::with_capacity(commands.len());
    for check in checks {
        let entry = match check {
            Err(message) => json!({ "error": message }),
            Ok(()) => match replies.next() {
                Some(reply) => entry_json(&reply, encoding),
                None => {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "Redis answered {sent} pipelined commands with fewer replies"
                    )))
                }
            },
        };
        entries.push(entry);
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
    for command in &commands {
        command.check_allowed().map_err(ApiError::BadRequest)?;
    }

    // MULTI, the commands and EXEC go out as one write on the shared connection, so
    // no other request's command can land inside the transaction. It is sent as a
    // plain pipeline, not redis-rs's atomic one, to get EXEC's own reply, which
    // carries the error text Redis gives for an aborted transaction.
    let mut pipe = redis::pipe();
    pipe.cmd("MULTI");
    for command in &commands {
        pipe.add_command(command.to_cmd());
    }
    pipe.cmd("EXEC");
    let mut replies = state
        .redis
        .send_packed_commands(&pipe, 0, commands.len() + 2)
        .await
        .map_err(redis_failure)?;

    match replies.pop() {
        Some(Value::Array(results)) => {
            let encoding = Encoding::of(&headers);
            let entries = results.iter().map(|r| entry_json(r, encoding)).collect();
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
    redis: &mut ConnectionManager,
    command: &Command,
    encoding: Encoding,
) -> Result<Json<serde_json::Value>, ApiError> {
    command.check_allowed().map_err(ApiError::BadRequest)?;
    let reply = redis
        .send_packed_command(&command.to_cmd())
        .await
        .map_err(redis_failure)?;
    match reply {
        Value::ServerError(error) => Err(ApiError::BadRequest(server_error_message(&error))),
        reply => Ok(Json(json!({ "result": to_json(&reply, encoding) }))),
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

/// Commands that would change the state of the connection every request shares
/// (a stray `MULTI` would queue everybody else's commands) or could break its
/// request/reply pairing.
const CONNECTION_STATE_COMMANDS: &[&str] = &[
    "AUTH",
    "DISCARD",
    "EXEC",
    "HELLO",
    "MONITOR",
    "MULTI",
    "PSUBSCRIBE",
    "PSYNC",
    "PUNSUBSCRIBE",
    "QUIT",
    "RESET",
    "SELECT",
    "SSUBSCRIBE",
    "SUBSCRIBE",
    "SUNSUBSCRIBE",
    "SYNC",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WATCH",
];

/// Commands that would hold the shared connection, and so every other request,
/// until they time out.
const BLOCKING_COMMANDS: &[&str] = &[
    "BLMOVE",
    "BLMPOP",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZMPOP",
    "BZPOPMAX",
    "BZPOPMIN",
    "WAIT",
    "WAITAOF",
];

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

    /// Refuses the commands this server can't run on its shared connection, with
    /// the error message the client will see.
    fn check_allowed(&self) -> Result<(), String> {
        let name = self.name();
        let has_arg = |wanted: &str| {
            self.0[1..]
                .iter()
                .any(|arg| arg.eq_ignore_ascii_case(wanted.as_bytes()))
        };
        if CONNECTION_STATE_COMMANDS.contains(&name.as_str())
            || (name == "CLIENT" && has_arg("REPLY"))
        {
            Err(format!(
                "ERR Command is not available: '{name}'. The local Upstash server shares one \
                 connection; use POST /multi-exec for transactions"
            ))
        } else if BLOCKING_COMMANDS.contains(&name.as_str())
            || (matches!(name.as_str(), "XREAD" | "XREADGROUP") && has_arg("BLOCK"))
        {
            Err(format!(
                "ERR Command is not available: '{name}'. The local Upstash server does not run \
                 blocking commands"
            ))
        } else {
            Ok(())
        }
    }

    fn to_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::Cmd::new();
        for part in &self.0 {
            cmd.arg(part.as_slice());
        }
        cmd
    }
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
fn entry_json(reply: &Value, encoding: Encoding) -> serde_json::Value {
    match reply {
        Value::ServerError(error) => json!({ "error": server_error_message(error) }),
        reply => json!({ "result": to_json(reply, encoding) }),
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
            entry_json(&error, Encoding::Base64),
            json!({ "error": "WRONGTYPE Operation against a key" })
        );
        assert_eq!(
            entry_json(&bulk("1"), Encoding::Base64),
            json!({ "result": "MQ==" })
        );
        assert_eq!(
            entry_json(&Value::Okay, Encoding::Base64),
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
    fn commands_that_would_disturb_the_shared_connection_are_refused() {
        for refused in [
            &["multi"][..],
            &["EXEC"],
            &["select", "1"],
            &["subscribe", "c"],
            &["blpop", "l", "0"],
            &["client", "reply", "off"],
            &["xread", "block", "0", "streams", "s", "$"],
        ] {
            assert!(command(refused).check_allowed().is_err(), "{refused:?}");
        }
        for allowed in [
            &["get", "k"][..],
            &["xread", "streams", "s", "0"],
            &["client", "id"],
        ] {
            assert!(command(allowed).check_allowed().is_ok(), "{allowed:?}");
        }
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
        let options = Options {
            token: "s3cret".to_owned(),
            redis_url: "redis://:hunter2@127.0.0.1:6379".to_owned(),
        };
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
