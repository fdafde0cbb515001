//! Parsing of `POST /api/collect` bodies into [`Event`]s.
//!
//! Everything here is pure: no I/O and no clock (the handler passes `now`
//! and the id generator in), so every rule is unit-tested below. The work
//! is split the way the request fails:
//!
//! - [`decode_body`] and the body-level checks of [`parse_batch`] fail the
//!   whole request with a [`BodyError`] (400 or 413);
//! - each event is parsed on its own into `Result<Event, EventError>`, so a
//!   bad event is reported by its index and never spoils its batch.
//!
//! Conventions where the issue is silent:
//! - A JSON `null` for an optional field means "absent", and so does an
//!   empty string (browsers send `document.referrer` as `""`); `null` for a
//!   required field is `missing_field`.
//! - Unknown top-level fields are ignored for forward compatibility, and so
//!   are the fields of another event type (`status` on a web event).
//! - Limits on text are counted in characters (Unicode scalar values), like
//!   Postgres counts `varchar(n)`; `properties` is limited in bytes of its
//!   compact JSON text.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Read;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use flate2::read::MultiGzDecoder;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{AgentFields, Event, EventKind, GeoFields, MobileFields, ServerFields, WebFields};

/// Limits of a collect request.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// The largest body, as received and after gzip decompression.
    pub max_body_bytes: usize,
    /// The largest ratio of decompressed to compressed size of a gzip body.
    pub max_decompression_ratio: u64,
    /// The most events in one request.
    pub max_batch: usize,
    /// The largest `properties` object, as compact JSON text.
    pub max_properties_bytes: usize,
    /// How far in the past an event's `timestamp` may be.
    pub max_age: Duration,
    /// How far ahead of the server clock an event's `timestamp` may be.
    pub max_future: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1_048_576,
            max_decompression_ratio: 100,
            max_batch: 500,
            max_properties_bytes: 32 * 1024,
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
            max_future: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A size limit in bytes, shown as "1048576 bytes (1 MB)".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteLimit(pub usize);

impl fmt::Display for ByteLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KB: usize = 1024;
        const MB: usize = 1024 * 1024;
        let bytes = self.0;
        if bytes >= MB && bytes.is_multiple_of(MB) {
            write!(f, "{bytes} bytes ({} MB)", bytes / MB)
        } else if bytes >= KB && bytes.is_multiple_of(KB) {
            write!(f, "{bytes} bytes ({} KB)", bytes / KB)
        } else {
            write!(f, "{bytes} bytes")
        }
    }
}

/// A failure that spoils the whole request (the handler maps these to 400
/// or 413, see [`BodyError::is_too_large`]).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// 413: the body as received is over `max_body_bytes`.
    #[error("the body is over the limit of {limit}")]
    TooLarge { limit: ByteLimit },
    /// 413: the gzip body inflates past `max_body_bytes`.
    #[error("the decompressed body is over the limit of {limit}")]
    DecompressedTooLarge { limit: ByteLimit },
    /// 413: the gzip body inflates more than `max_decompression_ratio` times
    /// its size, the signature of a decompression bomb.
    #[error(
        "the gzip body inflates to more than {ratio} times its {compressed} compressed bytes; \
         the limit is a ratio of {ratio}"
    )]
    DecompressionRatio { ratio: u64, compressed: usize },
    /// 400: the body claims or looks like gzip but does not decompress.
    #[error("the body is not valid gzip: {0}")]
    InvalidGzip(String),
    /// 400: a `Content-Encoding` other than gzip or identity.
    #[error(
        "the Content-Encoding {0:?} is not supported; send the body uncompressed or with gzip"
    )]
    UnsupportedEncoding(String),
    /// 400: the body is empty.
    #[error(
        "the body is empty; send one event object, an array of events or {{\"batch\": [...]}}"
    )]
    EmptyBody,
    /// 400: the body is not JSON (serde's message gives line and column).
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// 400: JSON of the wrong shape (not an event, an array or a batch).
    #[error("{0}")]
    InvalidBody(String),
    /// 400: a batch with no events.
    #[error("the batch holds no events; send from 1 to {max} events")]
    EmptyBatch { max: usize },
    /// 400: more events than `max_batch`.
    #[error("the batch holds {len} events; the limit is {max} events per request")]
    BatchTooLarge { len: usize, max: usize },
}

impl BodyError {
    /// The machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } | BodyError::DecompressedTooLarge { .. } => {
                "payload_too_large"
            }
            BodyError::DecompressionRatio { .. } => "decompression_ratio_exceeded",
            BodyError::InvalidGzip(_) => "invalid_gzip",
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::EmptyBody | BodyError::InvalidJson(_) => "invalid_json",
            BodyError::InvalidBody(_) => "invalid_body",
            BodyError::EmptyBatch { .. } => "empty_batch",
            BodyError::BatchTooLarge { .. } => "batch_too_large",
        }
    }

    /// Whether the answer is 413 (the body is too large) rather than 400.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            BodyError::TooLarge { .. }
                | BodyError::DecompressedTooLarge { .. }
                | BodyError::DecompressionRatio { .. }
        )
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Decodes the raw body: gzip when `Content-Encoding` says so or when the
/// body starts with the gzip magic bytes (a `sendBeacon` can't set
/// headers), capping the decompressed size at `max_body_bytes` and the
/// ratio of decompressed to compressed size at `max_decompression_ratio`.
/// A raw body over `max_body_bytes` is [`BodyError::TooLarge`].
pub fn decode_body<'a>(
    raw: &'a [u8],
    content_encoding: Option<&str>,
    limits: &Limits,
) -> Result<Cow<'a, [u8]>, BodyError> {
    if raw.len() > limits.max_body_bytes {
        return Err(BodyError::TooLarge {
            limit: ByteLimit(limits.max_body_bytes),
        });
    }
    let declared_gzip = match content_encoding.map(str::trim) {
        None | Some("") => false,
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => true,
        Some(e) if e.eq_ignore_ascii_case("identity") => false,
        Some(other) => {
            return Err(BodyError::UnsupportedEncoding(
                truncate_chars(other, 40).into(),
            ));
        }
    };
    // JSON never starts with 0x1f, so sniffing can't misread a JSON body.
    if declared_gzip || raw.starts_with(&GZIP_MAGIC) {
        gunzip(raw, limits).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

fn gunzip(compressed: &[u8], limits: &Limits) -> Result<Vec<u8>, BodyError> {
    let size_cap = limits.max_body_bytes as u64;
    let ratio_cap = (compressed.len() as u64).saturating_mul(limits.max_decompression_ratio);
    let cap = size_cap.min(ratio_cap);
    // Reading one byte past the cap tells "exactly at the cap" from "over".
    let mut decoder = MultiGzDecoder::new(compressed).take(cap.saturating_add(1));
    let guess = (compressed.len() as u64).saturating_mul(4).min(cap) as usize;
    let mut out = Vec::with_capacity(guess);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| BodyError::InvalidGzip(e.to_string()))?;
    let len = out.len() as u64;
    if len > size_cap {
        Err(BodyError::DecompressedTooLarge {
            limit: ByteLimit(limits.max_body_bytes),
        })
    } else if len > ratio_cap {
        Err(BodyError::DecompressionRatio {
            ratio: limits.max_decompression_ratio,
            compressed: compressed.len(),
        })
    } else {
        Ok(out)
    }
}

/// Request-wide context taken from headers by the handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// The server clock when the request arrived: `received_at`, the
    /// default `timestamp`, and the reference for its bounds.
    pub now: DateTime<Utc>,
    /// The classified User-Agent, given to every event.
    pub agent: AgentFields,
    /// Location from the Vercel headers, given to every event.
    pub geo: GeoFields,
}

/// One event's failure: a stable code and a message naming the field and
/// the limit.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventError {
    /// Stable and machine-readable, like `field_too_long`.
    pub code: &'static str,
    /// For people: names the field and the limit.
    pub message: String,
}

impl EventError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        EventError {
            code,
            message: message.into(),
        }
    }

    fn missing(field: &str) -> Self {
        EventError::new("missing_field", format!("`{field}` is required"))
    }

    fn wrong_type(field: &str, expected: &str, got: &Value) -> Self {
        EventError::new(
            "invalid_field",
            format!("`{field}` must be {expected}, got {}", kind_of(got)),
        )
    }

    fn too_long(field: &str, chars: usize, max: usize) -> Self {
        EventError::new(
            "field_too_long",
            format!("`{field}` is {chars} characters long; the limit is {max} characters"),
        )
    }

    fn nul(field: &str) -> Self {
        EventError::new(
            "invalid_character",
            format!("`{field}` contains the character U+0000 (NUL), which cannot be stored"),
        )
    }
}

/// The parsed body: the `key` field if the body carried one (beacons can't
/// set headers), and one result per event, in input order.
#[derive(Debug)]
pub struct Batch {
    /// The `key` body field, for clients that can't set headers.
    pub key: Option<String>,
    /// One result per event, in input order, so that a rejection can be
    /// reported with its index.
    pub events: Vec<Result<Event, EventError>>,
}

/// Parses a decoded body: one event object, a JSON array of events, or
/// `{"batch": [...]}`. The object forms may carry a top-level `key` (a
/// single event's `key` is taken out, not treated as an event field); a
/// top-level object with a `batch` field is always the batch form.
/// Server-assigned ids come from `new_id` (the handler passes
/// `Uuid::now_v7`), called only for valid events without an `id`.
pub fn parse_batch(
    json: &[u8],
    context: &Context,
    limits: &Limits,
    new_id: &mut dyn FnMut() -> Uuid,
) -> Result<Batch, BodyError> {
    // Some clients write a UTF-8 byte order mark; it isn't JSON but means
    // nothing, so it is skipped rather than rejected.
    let json = json.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(json);
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::EmptyBody);
    }
    let value: Value = serde_json::from_slice(json).map_err(BodyError::InvalidJson)?;
    let (key, items) = match value {
        Value::Array(items) => (None, items),
        Value::Object(mut map) => {
            let key = match map.remove("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(key)) => Some(key),
                Some(other) => {
                    return Err(BodyError::InvalidBody(format!(
                        "`key` must be a string (a publishable key pk_… or a secret key sk_…), got {}",
                        kind_of(&other)
                    )));
                }
            };
            match map.remove("batch") {
                Some(Value::Array(items)) => (key, items),
                Some(other) => {
                    return Err(BodyError::InvalidBody(format!(
                        "`batch` must be an array of events, got {}",
                        kind_of(&other)
                    )));
                }
                None => (key, vec![Value::Object(map)]),
            }
        }
        other => {
            return Err(BodyError::InvalidBody(format!(
                "the body must be an event object, an array of events or {{\"batch\": [...]}}, got {}",
                kind_of(&other)
            )));
        }
    };
    if items.is_empty() {
        return Err(BodyError::EmptyBatch {
            max: limits.max_batch,
        });
    }
    if items.len() > limits.max_batch {
        return Err(BodyError::BatchTooLarge {
            len: items.len(),
            max: limits.max_batch,
        });
    }
    let events = items
        .into_iter()
        .map(|item| parse_event(item, context, limits, new_id))
        .collect();
    Ok(Batch { key, events })
}

// Limits on the text fields, in characters.
const NAME_MAX: usize = 200;
const SESSION_ID_MAX: usize = 200;
const USER_ID_MAX: usize = 200;
const URL_MAX: usize = 2048;
const PATH_MAX: usize = 2048;
const REFERRER_MAX: usize = 2048;
const TITLE_MAX: usize = 500;
const SCREEN_MAX: usize = 32;
const LANGUAGE_MAX: usize = 35;
const UTM_MAX: usize = 200;
const APP_VERSION_MAX: usize = 50;
const OS_MAX: usize = 50;
const OS_VERSION_MAX: usize = 50;
const DEVICE_MAX: usize = 100;
const SERVICE_MAX: usize = 100;
const ENVIRONMENT_MAX: usize = 50;
const METHOD_MAX: usize = 16;

/// The fields of one event object, taken out one by one so that strings
/// move into the [`Event`] without a copy.
struct Fields(Map<String, Value>);

impl Fields {
    /// The field's value; `null` counts as absent.
    fn take(&mut self, field: &str) -> Option<Value> {
        match self.0.remove(field) {
            None | Some(Value::Null) => None,
            value => value,
        }
    }

    /// An optional string of at most `max` characters; `""` counts as absent.
    fn string(&mut self, field: &str, max: usize) -> Result<Option<String>, EventError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                check_text(field, &s, max)?;
                Ok(Some(s))
            }
            Some(other) => Err(EventError::wrong_type(field, "a string", &other)),
        }
    }
}

/// Rejects text Postgres can't store (NUL) or over `max` characters.
fn check_text(field: &str, s: &str, max: usize) -> Result<(), EventError> {
    if s.contains('\0') {
        return Err(EventError::nul(field));
    }
    // A string can't have more characters than bytes: count only if needed.
    if s.len() > max {
        let chars = s.chars().count();
        if chars > max {
            return Err(EventError::too_long(field, chars, max));
        }
    }
    Ok(())
}

fn parse_event(
    value: Value,
    context: &Context,
    limits: &Limits,
    new_id: &mut dyn FnMut() -> Uuid,
) -> Result<Event, EventError> {
    let map = match value {
        Value::Object(map) => map,
        other => {
            return Err(EventError::new(
                "invalid_event",
                format!("an event must be a JSON object, got {}", kind_of(&other)),
            ));
        }
    };
    let mut fields = Fields(map);

    let kind = match fields.take("type") {
        None => return Err(EventError::missing("type")),
        Some(Value::String(s)) => match s.as_str() {
            "web" => EventKind::Web,
            "mobile" => EventKind::Mobile,
            "server" => EventKind::Server,
            _ => {
                return Err(EventError::new(
                    "invalid_type",
                    format!(
                        "`type` must be one of web, mobile or server, got {:?}",
                        truncate_chars(&s, 40)
                    ),
                ));
            }
        },
        Some(other) => {
            return Err(EventError::new(
                "invalid_type",
                format!(
                    "`type` must be one of web, mobile or server, got {}",
                    kind_of(&other)
                ),
            ));
        }
    };

    let name = match fields.take("name") {
        None => return Err(EventError::missing("name")),
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                return Err(EventError::new(
                    "invalid_field",
                    "`name` must not be empty or blank",
                ));
            }
            check_text("name", &s, NAME_MAX)?;
            s
        }
        Some(other) => return Err(EventError::wrong_type("name", "a string", &other)),
    };

    let id = parse_id(fields.take("id"))?;
    let occurred_at = parse_timestamp(fields.take("timestamp"), context.now, limits)?;
    let session_id = fields.string("session_id", SESSION_ID_MAX)?;
    let user_id = fields.string("user_id", USER_ID_MAX)?;
    let properties = parse_properties(fields.take("properties"), limits)?;

    let mut web = WebFields::default();
    let mut mobile = MobileFields::default();
    let mut server = ServerFields::default();
    let mut agent = context.agent.clone();
    match kind {
        EventKind::Web => web = parse_web(&mut fields)?,
        EventKind::Mobile => {
            mobile.app_version = fields.string("app_version", APP_VERSION_MAX)?;
            if let Some(os) = fields.string("os", OS_MAX)? {
                agent.os = Some(os);
            }
            mobile.os_version = fields.string("os_version", OS_VERSION_MAX)?;
            mobile.device = fields.string("device", DEVICE_MAX)?;
        }
        EventKind::Server => {
            server.service = fields.string("service", SERVICE_MAX)?;
            server.environment = fields.string("environment", ENVIRONMENT_MAX)?;
            server.method = parse_method(&mut fields)?;
            web.path = fields.string("path", PATH_MAX)?;
            server.status = parse_status(fields.take("status"))?;
            server.duration_ms = parse_duration_ms(fields.take("duration_ms"))?;
        }
    }

    Ok(Event {
        id: id.unwrap_or_else(new_id),
        kind,
        name,
        occurred_at,
        received_at: context.now,
        session_id,
        user_id,
        properties,
        web,
        mobile,
        server,
        agent,
        geo: context.geo.clone(),
    })
}

fn parse_id(value: Option<Value>) -> Result<Option<Uuid>, EventError> {
    let invalid = |got: &str| {
        EventError::new(
            "invalid_id",
            format!(
                "`id` must be a UUID string like 0190c8d2-5a4e-7bd1-9f3a-2c1e8d4b6a70, got {got}"
            ),
        )
    };
    match value {
        None => Ok(None),
        Some(Value::String(s)) => match Uuid::try_parse(&s) {
            // The nil UUID would make every client that sends it one event.
            Ok(id) if id.is_nil() => Err(invalid("the nil UUID")),
            Ok(id) => Ok(Some(id)),
            Err(_) => Err(invalid("a string that is not a UUID")),
        },
        Some(other) => Err(invalid(kind_of(&other))),
    }
}

fn parse_timestamp(
    value: Option<Value>,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<DateTime<Utc>, EventError> {
    const EXPECTED: &str =
        "an RFC 3339 string (like 2024-05-01T12:00:00Z) or epoch milliseconds (a whole number)";
    let invalid = |why: String| {
        EventError::new(
            "invalid_timestamp",
            format!("`timestamp` must be {EXPECTED}; {why}"),
        )
    };
    let mut from_number = false;
    let at = match value {
        None => return Ok(now),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| invalid(format!("the string is not RFC 3339 ({e})")))?,
        Some(Value::Number(n)) => {
            from_number = true;
            let ms = match n.as_i64() {
                Some(ms) if ms >= 0 => ms,
                Some(_) => return Err(invalid(format!("got the negative number {n}"))),
                None if n.is_u64() => return Err(invalid(format!("{n} is out of range"))),
                None => return Err(invalid(format!("{n} is not a whole number"))),
            };
            DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| invalid(format!("{n} is out of range")))?
        }
        Some(other) => return Err(invalid(format!("got {}", kind_of(&other)))),
    };

    // An unrepresentable bound (a huge configured limit) means no bound.
    let bound = |d: Duration| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
    if let Some(latest) = now.checked_add_signed(bound(limits.max_future)) {
        if at > latest {
            return Err(EventError::new(
                "timestamp_in_future",
                format!(
                    "`timestamp` {} is ahead of the server clock ({}) by more than the limit of {}",
                    show_time(at),
                    show_time(now),
                    show_duration(limits.max_future)
                ),
            ));
        }
    }
    if let Some(earliest) = now.checked_sub_signed(bound(limits.max_age)) {
        if at < earliest {
            // Epoch seconds read as milliseconds land in January 1970.
            let hint = if from_number && at.timestamp_millis() < 100_000_000_000 {
                " (epoch milliseconds are expected, not seconds)"
            } else {
                ""
            };
            return Err(EventError::new(
                "timestamp_too_old",
                format!(
                    "`timestamp` {} is older than the limit of {} before the server clock ({}){hint}",
                    show_time(at),
                    show_duration(limits.max_age),
                    show_time(now)
                ),
            ));
        }
    }
    Ok(at)
}

fn parse_properties(value: Option<Value>, limits: &Limits) -> Result<Option<String>, EventError> {
    let map = match value {
        None => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(EventError::wrong_type("properties", "an object", &other)),
    };
    // An empty object says nothing, and queue entries stay small without it.
    if map.is_empty() {
        return Ok(None);
    }
    let object = Value::Object(map);
    let mut path = String::from("properties");
    if find_nul(&object, &mut path) {
        return Err(EventError::new(
            "invalid_character",
            format!(
                "`{}` contains the character U+0000 (NUL), which cannot be stored",
                truncate_chars(&path, 200)
            ),
        ));
    }
    let text = object.to_string();
    if text.len() > limits.max_properties_bytes {
        return Err(EventError::new(
            "properties_too_large",
            format!(
                "`properties` is {} bytes as JSON; the limit is {}",
                text.len(),
                ByteLimit(limits.max_properties_bytes)
            ),
        ));
    }
    Ok(Some(text))
}

/// Whether a string or object key anywhere in `value` contains NUL; if so,
/// `path` is left naming where (`properties.a[2]`).
fn find_nul(value: &Value, path: &mut String) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
            let len = path.len();
            let _ = write!(path, "[{i}]");
            let found = find_nul(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Object(map) => map.iter().any(|(key, item)| {
            if key.contains('\0') {
                path.push_str(" (a key)");
                return true;
            }
            let len = path.len();
            path.push('.');
            path.push_str(key);
            let found = find_nul(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn parse_web(fields: &mut Fields) -> Result<WebFields, EventError> {
    let url = fields.string("url", URL_MAX)?;
    // Read even when `url` wins, so that a wrong type is still reported.
    let explicit_path = fields.string("path", PATH_MAX)?;
    let mut web = WebFields {
        referrer: fields.string("referrer", REFERRER_MAX)?,
        title: fields.string("title", TITLE_MAX)?,
        screen: fields.string("screen", SCREEN_MAX)?,
        language: fields.string("language", LANGUAGE_MAX)?,
        ..WebFields::default()
    };
    match &url {
        None => web.path = explicit_path,
        Some(text) => {
            let parsed = url::Url::parse(text).map_err(|e| {
                EventError::new(
                    "invalid_field",
                    format!("`url` must be an absolute http(s) URL like https://example.com/pricing ({e})"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(EventError::new(
                    "invalid_field",
                    format!(
                        "`url` must be an http or https URL, got the scheme {:?}",
                        truncate_chars(parsed.scheme(), 40)
                    ),
                ));
            }
            // The parser percent-encodes what the client left raw, so the
            // path can outgrow the URL it came from.
            check_text("path (of url)", parsed.path(), PATH_MAX)?;
            derive_from_url(&parsed, &mut web);
        }
    }
    web.url = url;
    Ok(web)
}

/// Fills a web event's `path` and `utm_*` fields from its URL: at collect,
/// and again when the drain reads an event queued without them.
pub(crate) fn derive_from_url(url: &url::Url, web: &mut WebFields) {
    web.path = Some(url.path().to_owned());
    read_utm(url, web);
}

/// Fills the `utm_*` fields from the URL's query string. They are derived,
/// not sent, so they never reject the event: the first occurrence of each
/// wins, values are truncated to 200 characters, NULs are dropped, and
/// empty values are left out.
fn read_utm(url: &url::Url, web: &mut WebFields) {
    if !url.query().is_some_and(|q| q.contains("utm_")) {
        return;
    }
    for (key, value) in url.query_pairs() {
        let slot = match key.as_ref() {
            "utm_source" => &mut web.utm_source,
            "utm_medium" => &mut web.utm_medium,
            "utm_campaign" => &mut web.utm_campaign,
            "utm_term" => &mut web.utm_term,
            "utm_content" => &mut web.utm_content,
            _ => continue,
        };
        if slot.is_some() {
            continue;
        }
        let clean: String = value.chars().filter(|&c| c != '\0').take(UTM_MAX).collect();
        if !clean.is_empty() {
            *slot = Some(clean);
        }
    }
}

fn parse_method(fields: &mut Fields) -> Result<Option<String>, EventError> {
    let Some(method) = fields.string("method", METHOD_MAX)? else {
        return Ok(None);
    };
    // RFC 9110 `token`: what an HTTP method may be made of.
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !method.bytes().all(is_tchar) {
        return Err(EventError::new(
            "invalid_field",
            format!(
                "`method` must be an HTTP method like GET or POST (letters, digits and !#$%&'*+-.^_`|~), got {:?}",
                method
            ),
        ));
    }
    Ok(Some(method.to_ascii_uppercase()))
}

fn parse_status(value: Option<Value>) -> Result<Option<i32>, EventError> {
    let invalid = |got: String| {
        EventError::new(
            "invalid_field",
            format!("`status` must be an integer from 100 to 599, got {got}"),
        )
    };
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(status @ 100..=599) => Ok(Some(status as i32)),
            _ => Err(invalid(n.to_string())),
        },
        Some(other) => Err(invalid(kind_of(&other).to_owned())),
    }
}

fn parse_duration_ms(value: Option<Value>) -> Result<Option<f64>, EventError> {
    match value {
        None => Ok(None),
        // serde_json numbers are always finite.
        Some(Value::Number(n)) => match n.as_f64() {
            Some(ms) if ms >= 0.0 => Ok(Some(ms.abs())),
            _ => Err(EventError::new(
                "invalid_field",
                format!("`duration_ms` must be a number of milliseconds of at least 0, got {n}"),
            )),
        },
        Some(other) => Err(EventError::wrong_type(
            "duration_ms",
            "a number of milliseconds of at least 0",
            &other,
        )),
    }
}

/// The user agent, classified. Bots are dropped (and counted) by the
/// handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Agent {
    /// A crawler or an automated browser, whose events are not counted.
    pub is_bot: bool,
    /// Browser, version, OS and device class, as far as they are known.
    pub fields: AgentFields,
}

/// Case-insensitive markers of clear bots that woothee does not list as
/// crawlers (it only tries its vague "maybe crawler" patterns on agents it
/// can't otherwise place, and headless browsers look like browsers).
const BOT_MARKERS: [&str; 7] = [
    "bot",
    "crawl",
    "spider",
    "headlesschrome",
    "lighthouse",
    "facebookexternalhit",
    "slurp",
];

/// Classifies the User-Agent with `woothee`: its crawlers are bots, and so
/// is any agent with one of a few clear markers. HTTP clients (curl,
/// reqwest, node, Python, Go) and a missing agent are *not* bots: servers
/// and SDKs send events with them.
///
/// `device_type` is `desktop`, `mobile` or `tablet`, or else woothee's
/// category (`crawler`, `appliance`, `misc`); woothee can't tell tablets,
/// so iPads and Android agents without `Mobile` are taken as tablets.
pub fn classify_agent(user_agent: Option<&str>) -> Agent {
    let Some(ua) = user_agent.map(str::trim).filter(|ua| !ua.is_empty()) else {
        return Agent::default();
    };
    let parsed = woothee::parser::Parser::new().parse(ua);
    let woothee_bot = parsed.as_ref().is_some_and(|r| r.category == "crawler");
    let Some(result) = parsed else {
        return Agent {
            is_bot: has_bot_marker(ua),
            fields: AgentFields::default(),
        };
    };
    let known = |s: &str| -> Option<String> {
        let s = s.trim();
        (!s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN && !s.contains('\0'))
            .then(|| truncate_chars(s, 50).to_owned())
    };
    let device_type = match result.category {
        "pc" => Some("desktop".to_owned()),
        "smartphone"
            if result.os == "iPad" || (result.os == "Android" && !ua.contains("Mobile")) =>
        {
            Some("tablet".to_owned())
        }
        "smartphone" | "mobilephone" => Some("mobile".to_owned()),
        other => known(other),
    };
    Agent {
        is_bot: woothee_bot || has_bot_marker(ua),
        fields: AgentFields {
            browser: known(result.name),
            browser_version: known(result.version),
            os: known(result.os),
            device_type,
        },
    }
}

fn has_bot_marker(ua: &str) -> bool {
    let ua = ua.to_ascii_lowercase();
    BOT_MARKERS.iter().any(|marker| {
        ua.match_indices(marker).any(|(at, _)| {
            // CUBOT is a phone brand, not a bot.
            !(*marker == "bot" && ua[..at].ends_with("cu"))
        })
    })
}

// Caps on the geo headers: longer values are not Vercel's and are dropped.
const COUNTRY_MAX: usize = 8;
const REGION_MAX: usize = 16;
const CITY_MAX: usize = 128;

/// Location from Vercel's `x-vercel-ip-*` headers. The city is URI-encoded
/// by Vercel and is percent-decoded here; coordinates must parse as
/// degrees in range. Malformed, oversized or control-character values are
/// dropped rather than rejected: geo is enrichment, not input.
pub fn geo_from_headers(headers: &http::HeaderMap) -> GeoFields {
    let text = |name: &str, max: usize, decode: bool| -> Option<String> {
        let raw = std::str::from_utf8(headers.get(name)?.as_bytes())
            .ok()?
            .trim();
        let value = if decode {
            percent_decode(raw)?
        } else {
            raw.to_owned()
        };
        let ok = !value.is_empty()
            && !value.chars().any(char::is_control)
            && value.chars().count() <= max;
        ok.then_some(value)
    };
    let degrees = |name: &str, max: f64| -> Option<f64> {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value.abs() <= max).then_some(value)
    };
    GeoFields {
        country: text("x-vercel-ip-country", COUNTRY_MAX, false),
        region: text("x-vercel-ip-country-region", REGION_MAX, false),
        city: text("x-vercel-ip-city", CITY_MAX, true),
        latitude: degrees("x-vercel-ip-latitude", 90.0),
        longitude: degrees("x-vercel-ip-longitude", 180.0),
    }
}

/// Decodes `%XX` escapes (not `+`, which `encodeURIComponent` never
/// writes for a space); a `%` not followed by two hex digits stays as is.
/// `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// How a JSON value is named in messages ("got a number").
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first `max` characters of `s`.
fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

fn show_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// "24 hours", "7 days", "90 seconds" (a day is shown as 24 hours, as
/// limits are usually said).
fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs == 0 {
        (0, "second")
    } else if secs.is_multiple_of(86_400) && secs > 86_400 {
        (secs / 86_400, "day")
    } else if secs.is_multiple_of(3_600) {
        (secs / 3_600, "hour")
    } else if secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use chrono::TimeZone;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    fn context() -> Context {
        Context {
            now: now(),
            agent: AgentFields {
                browser: Some("Chrome".into()),
                browser_version: Some("124.0.0.0".into()),
                os: Some("Windows 10".into()),
                device_type: Some("desktop".into()),
            },
            geo: GeoFields {
                country: Some("DE".into()),
                city: Some("Berlin".into()),
                ..GeoFields::default()
            },
        }
    }

    /// Ids handed out in order: 00000000-0000-0000-0000-000000000001, ...
    fn counter() -> impl FnMut() -> Uuid {
        let mut n = 0u128;
        move || {
            n += 1;
            Uuid::from_u128(n)
        }
    }

    fn parse_with(body: &str, limits: &Limits) -> Result<Batch, BodyError> {
        parse_batch(body.as_bytes(), &context(), limits, &mut counter())
    }

    fn parse(body: &str) -> Result<Batch, BodyError> {
        parse_with(body, &Limits::default())
    }

    /// The one event of a body that must parse as a body.
    fn event(body: serde_json::Value) -> Result<Event, EventError> {
        event_with(body, &Limits::default())
    }

    fn event_with(body: serde_json::Value, limits: &Limits) -> Result<Event, EventError> {
        let mut batch = parse_with(&body.to_string(), limits).expect("the body parses");
        assert_eq!(batch.events.len(), 1);
        batch.events.remove(0)
    }

    fn error_code(body: serde_json::Value) -> &'static str {
        event(body).expect_err("the event is rejected").code
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Text that compresses only about 2:1, to reach size limits without
    /// tripping the ratio limit.
    fn incompressible_text(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"0123456789abcdef"[(state % 16) as usize]
            })
            .collect()
    }

    // --- decode_body -----------------------------------------------------

    #[test]
    fn a_plain_body_is_passed_through_without_a_copy() {
        let raw = br#"{"type":"web","name":"pageview"}"#;
        let decoded = decode_body(raw, None, &Limits::default()).unwrap();
        assert!(matches!(decoded, Cow::Borrowed(_)));
        assert_eq!(&*decoded, raw);
    }

    #[test]
    fn a_body_exactly_at_the_limit_is_accepted_and_one_byte_more_is_a_413_naming_the_limit() {
        let limits = Limits::default();
        let at_limit = vec![b' '; limits.max_body_bytes];
        assert!(decode_body(&at_limit, None, &limits).is_ok());

        let over = vec![b' '; limits.max_body_bytes + 1];
        let err = decode_body(&over, None, &limits).unwrap_err();
        assert!(err.is_too_large());
        assert_eq!(err.code(), "payload_too_large");
        assert_eq!(
            err.to_string(),
            "the body is over the limit of 1048576 bytes (1 MB)"
        );
    }

    #[test]
    fn a_gzip_body_with_content_encoding_is_decompressed() {
        let json = br#"[{"type":"web","name":"pageview"}]"#;
        let compressed = gzip(json);
        let decoded = decode_body(&compressed, Some("gzip"), &Limits::default()).unwrap();
        assert_eq!(&*decoded, json);
        let decoded = decode_body(&compressed, Some(" X-GZIP "), &Limits::default()).unwrap();
        assert_eq!(&*decoded, json);
    }

    #[test]
    fn a_gzip_body_is_detected_from_its_magic_bytes_without_a_header() {
        let json = br#"{"type":"web","name":"pageview"}"#;
        let compressed = gzip(json);
        let decoded = decode_body(&compressed, None, &Limits::default()).unwrap();
        assert_eq!(&*decoded, json);
        let decoded = decode_body(&compressed, Some("identity"), &Limits::default()).unwrap();
        assert_eq!(&*decoded, json);
    }

    #[test]
    fn a_gzip_bomb_beyond_the_ratio_is_a_413() {
        let bomb = gzip(&vec![b' '; 1_000_000]);
        assert!(bomb.len() * 100 < 1_000_000, "the test data must be a bomb");
        let err = decode_body(&bomb, Some("gzip"), &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "decompression_ratio_exceeded");
        assert!(err.is_too_large());
        assert!(err.to_string().contains("ratio of 100"), "{err}");
    }

    #[test]
    fn a_gzip_body_is_accepted_up_to_the_ratio_and_rejected_just_past_it() {
        let compressed = gzip(&vec![b' '; 10_000]);
        let c = compressed.len() as u64;
        // The smallest ratio that allows 10 000 bytes, and the one below it.
        let enough = 10_000u64.div_ceil(c);
        let with_ratio = |ratio| Limits {
            max_decompression_ratio: ratio,
            ..Limits::default()
        };
        assert_eq!(
            decode_body(&compressed, None, &with_ratio(enough))
                .unwrap()
                .len(),
            10_000
        );
        let err = decode_body(&compressed, None, &with_ratio(enough - 1)).unwrap_err();
        assert_eq!(err.code(), "decompression_ratio_exceeded");
    }

    #[test]
    fn a_gzip_body_that_inflates_past_the_body_limit_is_a_413_naming_the_limit() {
        let limits = Limits {
            max_body_bytes: 64 * 1024,
            ..Limits::default()
        };
        let compressed = gzip(&incompressible_text(64 * 1024 + 1));
        assert!(compressed.len() <= limits.max_body_bytes);
        let err = decode_body(&compressed, None, &limits).unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
        assert!(err.is_too_large());
        assert_eq!(
            err.to_string(),
            "the decompressed body is over the limit of 65536 bytes (64 KB)"
        );

        let at_limit = gzip(&incompressible_text(64 * 1024));
        assert_eq!(
            decode_body(&at_limit, None, &limits).unwrap().len(),
            64 * 1024
        );
    }

    #[test]
    fn a_truncated_gzip_body_is_a_400_invalid_gzip() {
        let compressed = gzip(br#"{"type":"web","name":"pageview","url":"https://example.com/"}"#);
        for cut in [
            compressed.len() - 1,
            compressed.len() - 8,
            compressed.len() / 2,
            5,
        ] {
            let err = decode_body(&compressed[..cut], None, &Limits::default()).unwrap_err();
            assert_eq!(err.code(), "invalid_gzip", "cut at {cut}: {err}");
            assert!(!err.is_too_large());
        }
    }

    #[test]
    fn a_body_declared_gzip_that_is_not_gzip_is_a_400_invalid_gzip() {
        let err = decode_body(br#"{"type":"web"}"#, Some("gzip"), &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "invalid_gzip");
    }

    #[test]
    fn garbage_after_a_gzip_member_is_a_400_invalid_gzip() {
        let mut compressed = gzip(b"{}");
        compressed.extend_from_slice(b"trailing");
        let err = decode_body(&compressed, None, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "invalid_gzip");
    }

    #[test]
    fn an_unsupported_content_encoding_is_a_400() {
        let err = decode_body(b"{}", Some("br"), &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "unsupported_encoding");
        assert!(!err.is_too_large());
    }

    // --- body shapes -----------------------------------------------------

    #[test]
    fn a_single_event_object_is_a_batch_of_one() {
        let batch = parse(r#"{"type":"web","name":"pageview"}"#).unwrap();
        assert_eq!(batch.key, None);
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].as_ref().unwrap().name, "pageview");
    }

    #[test]
    fn a_single_event_may_carry_the_key_which_is_not_an_event_field() {
        let batch = parse(r#"{"key":"pk_abc","type":"web","name":"pageview"}"#).unwrap();
        assert_eq!(batch.key.as_deref(), Some("pk_abc"));
        let event = batch.events[0].as_ref().unwrap();
        assert_eq!(event.properties, None);
    }

    #[test]
    fn an_array_of_events_keeps_their_order() {
        let batch = parse(
            r#"[{"type":"web","name":"a"},{"type":"mobile","name":"b"},{"type":"server","name":"c"}]"#,
        )
        .unwrap();
        let names: Vec<_> = batch
            .events
            .iter()
            .map(|e| e.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn a_batch_object_carries_its_events_and_key() {
        let batch = parse(
            r#"{"key":"pk_abc","batch":[{"type":"web","name":"a"},{"type":"web","name":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(batch.key.as_deref(), Some("pk_abc"));
        assert_eq!(batch.events.len(), 2);
    }

    #[test]
    fn a_bad_event_does_not_spoil_its_batch_and_keeps_its_index() {
        let batch = parse(
            r#"[{"type":"web","name":"ok"}, 42, {"type":"nope","name":"x"}, {"type":"web","name":"ok2"}]"#,
        )
        .unwrap();
        let codes: Vec<_> = batch
            .events
            .iter()
            .map(|e| e.as_ref().map(|_| "ok").unwrap_or_else(|e| e.code))
            .collect();
        assert_eq!(codes, ["ok", "invalid_event", "invalid_type", "ok"]);
    }

    #[test]
    fn server_ids_are_assigned_in_order_and_only_to_valid_events() {
        let batch =
            parse(r#"[{"type":"web","name":"a"},{"type":"web"},{"type":"web","name":"c"}]"#)
                .unwrap();
        assert_eq!(batch.events[0].as_ref().unwrap().id, Uuid::from_u128(1));
        assert!(batch.events[1].is_err());
        assert_eq!(batch.events[2].as_ref().unwrap().id, Uuid::from_u128(2));
    }

    #[test]
    fn a_batch_of_exactly_the_limit_is_accepted_and_one_more_is_rejected_naming_the_limit() {
        let one = r#"{"type":"web","name":"e"}"#;
        let body = |n: usize| format!("[{}]", vec![one; n].join(","));
        assert_eq!(parse(&body(500)).unwrap().events.len(), 500);
        let err = parse(&body(501)).unwrap_err();
        assert_eq!(err.code(), "batch_too_large");
        assert!(!err.is_too_large());
        assert_eq!(
            err.to_string(),
            "the batch holds 501 events; the limit is 500 events per request"
        );
    }

    #[test]
    fn invalid_json_is_reported_with_line_and_column() {
        let err = parse("{\"type\": \"web\",\n \"name\": }").unwrap_err();
        assert_eq!(err.code(), "invalid_json");
        assert!(err.to_string().contains("line 2 column"), "{err}");
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        let batch = parse("\u{feff}{\"type\":\"web\",\"name\":\"pageview\"}").unwrap();
        assert!(batch.events[0].is_ok());
    }

    // --- the table of malformed input ------------------------------------

    /// The code a body gets: its body-level error, or else its only event's.
    fn code_of(body: &str) -> &'static str {
        match parse(body) {
            Err(err) => err.code(),
            Ok(batch) => match batch.events.as_slice() {
                [Ok(_)] => "ok",
                [Err(err)] => err.code,
                _ => panic!("expected one event in {body}"),
            },
        }
    }

    #[test]
    fn malformed_payloads_get_their_exact_error_codes() {
        let long = |n: usize| "x".repeat(n);
        let big_properties = format!(
            r#"{{"type":"web","name":"p","properties":{{"blob":"{}"}}}}"#,
            long(32 * 1024)
        );
        let cases: Vec<(String, &str)> = vec![
            // The body.
            ("".into(), "invalid_json"),
            ("   \n".into(), "invalid_json"),
            ("not json".into(), "invalid_json"),
            (r#"{"type":"web","name":"a""#.into(), "invalid_json"),
            (r#"[{"type":"web","name":"a"},]"#.into(), "invalid_json"),
            (r#""a string""#.into(), "invalid_body"),
            ("42".into(), "invalid_body"),
            ("null".into(), "invalid_body"),
            ("true".into(), "invalid_body"),
            (
                r#"{"batch":{"type":"web","name":"a"}}"#.into(),
                "invalid_body",
            ),
            (r#"{"batch":null}"#.into(), "invalid_body"),
            (
                r#"{"key":42,"type":"web","name":"a"}"#.into(),
                "invalid_body",
            ),
            ("[]".into(), "empty_batch"),
            (r#"{"batch":[]}"#.into(), "empty_batch"),
            // The event as a whole.
            ("[42]".into(), "invalid_event"),
            (r#"["pageview"]"#.into(), "invalid_event"),
            ("[null]".into(), "invalid_event"),
            ("[[]]".into(), "invalid_event"),
            ("{}".into(), "missing_field"),
            // type
            (r#"{"name":"a"}"#.into(), "missing_field"),
            (r#"{"type":null,"name":"a"}"#.into(), "missing_field"),
            (r#"{"type":"desktop","name":"a"}"#.into(), "invalid_type"),
            (r#"{"type":"Web","name":"a"}"#.into(), "invalid_type"),
            (r#"{"type":1,"name":"a"}"#.into(), "invalid_type"),
            // name
            (r#"{"type":"web"}"#.into(), "missing_field"),
            (r#"{"type":"web","name":""}"#.into(), "invalid_field"),
            (r#"{"type":"web","name":"   "}"#.into(), "invalid_field"),
            (r#"{"type":"web","name":7}"#.into(), "invalid_field"),
            (
                format!(r#"{{"type":"web","name":"{}"}}"#, long(201)),
                "field_too_long",
            ),
            (
                r#"{"type":"web","name":"a\u0000b"}"#.into(),
                "invalid_character",
            ),
            // timestamp
            (
                r#"{"type":"web","name":"a","timestamp":"yesterday"}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":"2024-05-01 12:00"}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":"1714564800000"}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":1714564800000.5}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":-1}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":true}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":99999999999999999999}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":"2030-01-01T00:00:00Z"}"#.into(),
                "timestamp_in_future",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":"2020-01-01T00:00:00Z"}"#.into(),
                "timestamp_too_old",
            ),
            (
                r#"{"type":"web","name":"a","timestamp":1714564800}"#.into(),
                "timestamp_too_old",
            ),
            // id
            (
                r#"{"type":"web","name":"a","id":"not-a-uuid"}"#.into(),
                "invalid_id",
            ),
            (
                r#"{"type":"web","name":"a","id":12345}"#.into(),
                "invalid_id",
            ),
            (
                r#"{"type":"web","name":"a","id":"00000000-0000-0000-0000-000000000000"}"#.into(),
                "invalid_id",
            ),
            // session_id, user_id
            (
                r#"{"type":"web","name":"a","session_id":123}"#.into(),
                "invalid_field",
            ),
            (
                format!(r#"{{"type":"web","name":"a","user_id":"{}"}}"#, long(201)),
                "field_too_long",
            ),
            (
                r#"{"type":"web","name":"a","user_id":"u\u0000"}"#.into(),
                "invalid_character",
            ),
            // properties
            (
                r#"{"type":"web","name":"a","properties":"plan=pro"}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"web","name":"a","properties":[1,2]}"#.into(),
                "invalid_field",
            ),
            (big_properties, "properties_too_large"),
            (
                r#"{"type":"web","name":"a","properties":{"a":["x\u0000"]}}"#.into(),
                "invalid_character",
            ),
            (
                r#"{"type":"web","name":"a","properties":{"k\u0000":1}}"#.into(),
                "invalid_character",
            ),
            // web
            (
                r#"{"type":"web","name":"a","url":"/pricing"}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"web","name":"a","url":"ftp://example.com/"}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"web","name":"a","url":"javascript:alert(1)"}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"web","name":"a","url":["https://example.com"]}"#.into(),
                "invalid_field",
            ),
            (
                format!(
                    r#"{{"type":"web","name":"a","url":"https://example.com/{}"}}"#,
                    long(2048)
                ),
                "field_too_long",
            ),
            (
                format!(r#"{{"type":"web","name":"a","title":"{}"}}"#, long(501)),
                "field_too_long",
            ),
            (
                format!(r#"{{"type":"web","name":"a","screen":"{}"}}"#, long(33)),
                "field_too_long",
            ),
            (
                format!(r#"{{"type":"web","name":"a","language":"{}"}}"#, long(36)),
                "field_too_long",
            ),
            (
                r#"{"type":"web","name":"a","referrer":false}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"web","name":"a","path":5}"#.into(),
                "invalid_field",
            ),
            // mobile
            (
                format!(
                    r#"{{"type":"mobile","name":"a","app_version":"{}"}}"#,
                    long(51)
                ),
                "field_too_long",
            ),
            (
                r#"{"type":"mobile","name":"a","os":{"name":"iOS"}}"#.into(),
                "invalid_field",
            ),
            (
                format!(r#"{{"type":"mobile","name":"a","device":"{}"}}"#, long(101)),
                "field_too_long",
            ),
            // server
            (
                r#"{"type":"server","name":"a","status":99}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"server","name":"a","status":600}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"server","name":"a","status":200.5}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"server","name":"a","status":"200"}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"server","name":"a","duration_ms":-1}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"server","name":"a","duration_ms":"12ms"}"#.into(),
                "invalid_field",
            ),
            (
                r#"{"type":"server","name":"a","method":"GE T"}"#.into(),
                "invalid_field",
            ),
            (
                format!(r#"{{"type":"server","name":"a","method":"{}"}}"#, long(17)),
                "field_too_long",
            ),
            (
                format!(
                    r#"{{"type":"server","name":"a","service":"{}"}}"#,
                    long(101)
                ),
                "field_too_long",
            ),
            (
                format!(
                    r#"{{"type":"server","name":"a","environment":"{}"}}"#,
                    long(51)
                ),
                "field_too_long",
            ),
            (
                format!(r#"{{"type":"server","name":"a","path":"/{}"}}"#, long(2048)),
                "field_too_long",
            ),
        ];
        assert!(cases.len() >= 30);
        let failures: Vec<String> = cases
            .iter()
            .filter(|(body, expected)| code_of(body) != *expected)
            .map(|(body, expected)| {
                format!(
                    "{}: expected {expected}, got {}",
                    truncate_chars(body, 80),
                    code_of(body)
                )
            })
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn every_error_message_names_its_field_and_limit() {
        let err = event(json!({"type": "web", "name": "x".repeat(201)})).unwrap_err();
        assert_eq!(
            err.message,
            "`name` is 201 characters long; the limit is 200 characters"
        );
        let err =
            event(json!({"type": "web", "name": "a", "properties": {"blob": "x".repeat(40_000)}}))
                .unwrap_err();
        assert!(
            err.message.starts_with("`properties` is 40011 bytes"),
            "{}",
            err.message
        );
        assert!(
            err.message.ends_with("the limit is 32768 bytes (32 KB)"),
            "{}",
            err.message
        );
        let err =
            event(json!({"type": "web", "name": "a", "properties": {"a": [1, {"b": "\u{0}"}]}}))
                .unwrap_err();
        assert!(
            err.message.starts_with("`properties.a[1].b` contains"),
            "{}",
            err.message
        );
        let err = event(json!({"type": "server", "name": "a", "status": 700})).unwrap_err();
        assert_eq!(
            err.message,
            "`status` must be an integer from 100 to 599, got 700"
        );
    }

    #[test]
    fn text_limits_count_characters_not_bytes() {
        let name = "é".repeat(200);
        assert!(name.len() > 200);
        assert_eq!(
            event(json!({"type": "web", "name": name})).unwrap().name,
            name
        );
        assert_eq!(
            error_code(json!({"type": "web", "name": "é".repeat(201)})),
            "field_too_long"
        );
    }

    // --- timestamps ------------------------------------------------------

    #[test]
    fn a_missing_or_null_timestamp_is_the_server_clock() {
        let e = event(json!({"type": "web", "name": "a"})).unwrap();
        assert_eq!(e.occurred_at, now());
        assert_eq!(e.received_at, now());
        let e = event(json!({"type": "web", "name": "a", "timestamp": null})).unwrap();
        assert_eq!(e.occurred_at, now());
    }

    #[test]
    fn an_rfc_3339_timestamp_with_an_offset_is_converted_to_utc() {
        let e = event(
            json!({"type": "web", "name": "a", "timestamp": "2024-05-01T13:30:00.250+02:00"}),
        )
        .unwrap();
        assert_eq!(
            e.occurred_at,
            Utc.with_ymd_and_hms(2024, 5, 1, 11, 30, 0).unwrap() + TimeDelta::milliseconds(250)
        );
    }

    #[test]
    fn an_epoch_milliseconds_timestamp_is_read_as_milliseconds() {
        let ms = now().timestamp_millis() - 90_000;
        let e = event(json!({"type": "web", "name": "a", "timestamp": ms})).unwrap();
        assert_eq!(e.occurred_at, now() - TimeDelta::seconds(90));
    }

    #[test]
    fn a_timestamp_exactly_at_the_future_bound_is_accepted_and_one_millisecond_later_is_not() {
        let edge = now() + TimeDelta::hours(24);
        let e = event(json!({"type": "web", "name": "a", "timestamp": edge.timestamp_millis()}))
            .unwrap();
        assert_eq!(e.occurred_at, edge);
        let err =
            event(json!({"type": "web", "name": "a", "timestamp": edge.timestamp_millis() + 1}))
                .unwrap_err();
        assert_eq!(err.code, "timestamp_in_future");
        assert!(
            err.message.contains("by more than the limit of 24 hours"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_timestamp_exactly_at_the_age_bound_is_accepted_and_one_millisecond_older_is_not() {
        let edge = now() - TimeDelta::days(7);
        let text = edge.to_rfc3339();
        assert_eq!(
            event(json!({"type": "web", "name": "a", "timestamp": text}))
                .unwrap()
                .occurred_at,
            edge
        );
        let older =
            (edge - TimeDelta::milliseconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
        let err = event(json!({"type": "web", "name": "a", "timestamp": older})).unwrap_err();
        assert_eq!(err.code, "timestamp_too_old");
        assert!(
            err.message.contains("the limit of 7 days"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_age_bound_is_configurable() {
        let limits = Limits {
            max_age: Duration::from_secs(3600),
            ..Limits::default()
        };
        let two_hours_ago = (now() - TimeDelta::hours(2)).timestamp_millis();
        let err = event_with(
            json!({"type": "web", "name": "a", "timestamp": two_hours_ago}),
            &limits,
        )
        .unwrap_err();
        assert_eq!(err.code, "timestamp_too_old");
        assert!(
            err.message.contains("the limit of 1 hour"),
            "{}",
            err.message
        );
        assert!(event(json!({"type": "web", "name": "a", "timestamp": two_hours_ago})).is_ok());
    }

    #[test]
    fn epoch_seconds_sent_as_milliseconds_get_a_hint() {
        let err =
            event(json!({"type": "web", "name": "a", "timestamp": now().timestamp()})).unwrap_err();
        assert_eq!(err.code, "timestamp_too_old");
        assert!(err.message.contains("not seconds"), "{}", err.message);
    }

    // --- ids and properties ----------------------------------------------

    #[test]
    fn a_client_id_is_kept_and_a_missing_one_comes_from_the_generator() {
        let id = "0190c8d2-5a4e-7bd1-9f3a-2c1e8d4b6a70";
        let e = event(json!({"type": "web", "name": "a", "id": id})).unwrap();
        assert_eq!(e.id, Uuid::parse_str(id).unwrap());
        let e = event(json!({"type": "web", "name": "a"})).unwrap();
        assert_eq!(e.id, Uuid::from_u128(1));
    }

    #[test]
    fn properties_are_kept_as_compact_json_text() {
        let e = event(json!({"type": "web", "name": "a", "properties": {"plan": "pro", "seats": 3, "tags": ["a"]}}))
            .unwrap();
        let text = e.properties.unwrap();
        assert!(!text.contains(' '));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, json!({"plan": "pro", "seats": 3, "tags": ["a"]}));
    }

    #[test]
    fn properties_exactly_at_the_limit_are_accepted() {
        // {"b":"…"} is 8 bytes of syntax around the string.
        let at_limit = json!({"b": "x".repeat(32 * 1024 - 8)});
        assert_eq!(at_limit.to_string().len(), 32 * 1024);
        let e = event(json!({"type": "web", "name": "a", "properties": at_limit})).unwrap();
        assert_eq!(e.properties.unwrap().len(), 32 * 1024);
        let over = json!({"b": "x".repeat(32 * 1024 - 7)});
        assert_eq!(
            error_code(json!({"type": "web", "name": "a", "properties": over})),
            "properties_too_large"
        );
    }

    #[test]
    fn empty_or_null_properties_are_left_out() {
        for properties in [json!({}), json!(null)] {
            let e = event(json!({"type": "web", "name": "a", "properties": properties})).unwrap();
            assert_eq!(e.properties, None);
        }
    }

    #[test]
    fn null_and_empty_optional_strings_count_as_absent() {
        let e = event(
            json!({"type": "web", "name": "a", "referrer": "", "title": null, "session_id": ""}),
        )
        .unwrap();
        assert_eq!(e.web.referrer, None);
        assert_eq!(e.web.title, None);
        assert_eq!(e.session_id, None);
    }

    // --- web -------------------------------------------------------------

    #[test]
    fn a_web_event_gets_its_path_and_utm_parameters_from_the_url() {
        let e = event(json!({
            "type": "web",
            "name": "pageview",
            "url": "https://example.com/pricing/pro?utm_source=news%20letter&utm_medium=email&utm_campaign=spring+sale&utm_term=rust&utm_content=top&x=1#plans",
            "path": "/ignored",
            "referrer": "https://google.com/",
            "title": "Pricing",
            "screen": "1920x1080",
            "language": "en-US",
            "session_id": "s1",
            "user_id": "u1",
        }))
        .unwrap();
        assert_eq!(e.kind, EventKind::Web);
        assert_eq!(e.web.path.as_deref(), Some("/pricing/pro"));
        assert_eq!(e.web.utm_source.as_deref(), Some("news letter"));
        assert_eq!(e.web.utm_medium.as_deref(), Some("email"));
        assert_eq!(e.web.utm_campaign.as_deref(), Some("spring sale"));
        assert_eq!(e.web.utm_term.as_deref(), Some("rust"));
        assert_eq!(e.web.utm_content.as_deref(), Some("top"));
        assert_eq!(e.web.referrer.as_deref(), Some("https://google.com/"));
        assert_eq!(e.web.title.as_deref(), Some("Pricing"));
        assert_eq!(e.web.screen.as_deref(), Some("1920x1080"));
        assert_eq!(e.web.language.as_deref(), Some("en-US"));
        assert_eq!(e.session_id.as_deref(), Some("s1"));
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert!(
            e.web.url.unwrap().ends_with("#plans"),
            "the url is kept as sent"
        );
    }

    #[test]
    fn utm_values_are_truncated_to_200_characters_and_the_first_occurrence_wins() {
        let long = "é".repeat(250);
        let url = format!(
            "https://example.com/?utm_source={long}&utm_source=second&utm_medium=&utm_term=a%00b"
        );
        let e = event(json!({"type": "web", "name": "a", "url": url})).unwrap();
        assert_eq!(e.web.utm_source.unwrap(), "é".repeat(200));
        assert_eq!(e.web.utm_medium, None, "an empty value is left out");
        assert_eq!(e.web.utm_term.as_deref(), Some("ab"), "NULs are dropped");
    }

    #[test]
    fn a_url_without_a_path_has_the_root_path_and_no_utm() {
        let e = event(json!({"type": "web", "name": "a", "url": "https://example.com"})).unwrap();
        assert_eq!(e.web.path.as_deref(), Some("/"));
        assert_eq!(e.web.utm_source, None);
    }

    #[test]
    fn a_web_event_without_a_url_takes_the_explicit_path() {
        let e = event(json!({"type": "web", "name": "a", "path": "/docs"})).unwrap();
        assert_eq!(e.web.path.as_deref(), Some("/docs"));
        assert_eq!(e.web.url, None);
    }

    // --- mobile and server ------------------------------------------------

    #[test]
    fn a_mobile_event_os_overrides_the_user_agent_os() {
        let e = event(json!({
            "type": "mobile", "name": "app_open", "app_version": "2.3.1",
            "os": "iOS", "os_version": "17.4", "device": "iPhone15,2",
        }))
        .unwrap();
        assert_eq!(e.agent.os.as_deref(), Some("iOS"));
        assert_eq!(e.agent.browser.as_deref(), Some("Chrome"));
        assert_eq!(e.mobile.app_version.as_deref(), Some("2.3.1"));
        assert_eq!(e.mobile.os_version.as_deref(), Some("17.4"));
        assert_eq!(e.mobile.device.as_deref(), Some("iPhone15,2"));

        let e = event(json!({"type": "mobile", "name": "app_open"})).unwrap();
        assert_eq!(e.agent.os.as_deref(), Some("Windows 10"));
    }

    #[test]
    fn a_server_event_keeps_its_fields_with_the_method_uppercased() {
        let e = event(json!({
            "type": "server", "name": "request", "service": "billing", "environment": "prod",
            "method": "post", "path": "/v1/charges", "status": 201, "duration_ms": 12.5,
        }))
        .unwrap();
        assert_eq!(e.server.service.as_deref(), Some("billing"));
        assert_eq!(e.server.environment.as_deref(), Some("prod"));
        assert_eq!(e.server.method.as_deref(), Some("POST"));
        assert_eq!(e.web.path.as_deref(), Some("/v1/charges"));
        assert_eq!(e.server.status, Some(201));
        assert_eq!(e.server.duration_ms, Some(12.5));

        let e =
            event(json!({"type": "server", "name": "a", "status": 100, "duration_ms": 0})).unwrap();
        assert_eq!(
            (e.server.status, e.server.duration_ms),
            (Some(100), Some(0.0))
        );
        let e = event(json!({"type": "server", "name": "a", "status": 599})).unwrap();
        assert_eq!(e.server.status, Some(599));
    }

    #[test]
    fn fields_of_another_type_and_unknown_fields_are_ignored() {
        let e = event(json!({
            "type": "web", "name": "a", "status": "not even a number", "service": 5,
            "app_version": [], "sdk": {"name": "tracker", "version": 3},
        }))
        .unwrap();
        assert_eq!(e.server, ServerFields::default());
        assert_eq!(e.mobile, MobileFields::default());
        let e =
            event(json!({"type": "server", "name": "a", "url": "not a url", "title": 5})).unwrap();
        assert_eq!(e.web, WebFields::default());
    }

    #[test]
    fn every_event_gets_the_request_context() {
        let batch = parse(r#"[{"type":"web","name":"a"},{"type":"server","name":"b"}]"#).unwrap();
        for e in batch.events {
            let e = e.unwrap();
            assert_eq!(e.agent, context().agent);
            assert_eq!(e.geo, context().geo);
            assert_eq!(e.received_at, now());
        }
    }

    #[test]
    fn a_parsed_event_survives_the_queue_as_json() {
        let e = event(json!({
            "type": "web", "name": "pageview", "url": "https://example.com/?utm_source=x",
            "properties": {"a": 1},
        }))
        .unwrap();
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
    }

    // --- user agents -----------------------------------------------------

    const CHROME_DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

    #[test]
    fn googlebot_and_other_crawlers_are_bots() {
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
            "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            "CCBot/2.0 (https://commoncrawl.org/faq/)",
        ] {
            assert!(classify_agent(Some(ua)).is_bot, "{ua}");
        }
    }

    #[test]
    fn chrome_on_desktop_is_a_desktop_browser_and_not_a_bot() {
        let agent = classify_agent(Some(CHROME_DESKTOP));
        assert!(!agent.is_bot);
        assert_eq!(agent.fields.browser.as_deref(), Some("Chrome"));
        assert_eq!(agent.fields.browser_version.as_deref(), Some("124.0.0.0"));
        assert_eq!(agent.fields.os.as_deref(), Some("Windows 10"));
        assert_eq!(agent.fields.device_type.as_deref(), Some("desktop"));
    }

    #[test]
    fn safari_on_an_iphone_is_a_mobile_browser_and_not_a_bot() {
        let agent = classify_agent(Some(IPHONE_SAFARI));
        assert!(!agent.is_bot);
        assert_eq!(agent.fields.browser.as_deref(), Some("Safari"));
        assert_eq!(agent.fields.os.as_deref(), Some("iPhone"));
        assert_eq!(agent.fields.device_type.as_deref(), Some("mobile"));
    }

    #[test]
    fn ipads_and_android_agents_without_mobile_are_tablets() {
        let ipad = "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
        let android_tablet = "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
        let android_phone = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
        assert_eq!(
            classify_agent(Some(ipad)).fields.device_type.as_deref(),
            Some("tablet")
        );
        assert_eq!(
            classify_agent(Some(android_tablet))
                .fields
                .device_type
                .as_deref(),
            Some("tablet")
        );
        assert_eq!(
            classify_agent(Some(android_phone))
                .fields
                .device_type
                .as_deref(),
            Some("mobile")
        );
    }

    #[test]
    fn http_clients_and_a_missing_user_agent_are_not_bots() {
        for ua in [
            "curl/8.5.0",
            "Wget/1.21.4",
            "reqwest/0.12.4",
            "python-requests/2.31.0",
            "Python-urllib/3.12",
            "Go-http-client/1.1",
            "Go-http-client/2.0",
            "node",
            "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
            "undici",
            "axios/1.6.8",
            "okhttp/4.12.0",
            "Java/17.0.2",
            "Ruby",
            "PostmanRuntime/7.37.0",
            // A phone brand that contains "bot".
            "Mozilla/5.0 (Linux; Android 9; CUBOT_X20) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
        ] {
            assert!(!classify_agent(Some(ua)).is_bot, "{ua}");
        }
        assert_eq!(classify_agent(None), Agent::default());
        assert_eq!(classify_agent(Some("  ")), Agent::default());
    }

    #[test]
    fn an_unknown_user_agent_has_no_fields() {
        let agent = classify_agent(Some("something-unheard-of"));
        assert!(!agent.is_bot);
        assert_eq!(agent.fields.browser, None);
        assert_eq!(agent.fields.os, None);
    }

    // --- geo -------------------------------------------------------------

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn geo_comes_from_the_vercel_headers_with_the_city_percent_decoded() {
        let geo = geo_from_headers(&headers(&[
            ("x-vercel-ip-country", "BR"),
            ("x-vercel-ip-country-region", "SP"),
            ("x-vercel-ip-city", "S%C3%A3o%20Paulo"),
            ("x-vercel-ip-latitude", "-23.5475"),
            ("x-vercel-ip-longitude", "-46.6361"),
        ]));
        assert_eq!(
            geo,
            GeoFields {
                country: Some("BR".into()),
                region: Some("SP".into()),
                city: Some("São Paulo".into()),
                latitude: Some(-23.5475),
                longitude: Some(-46.6361),
            }
        );
    }

    #[test]
    fn missing_geo_headers_give_no_geo() {
        assert_eq!(geo_from_headers(&HeaderMap::new()), GeoFields::default());
    }

    #[test]
    fn malformed_geo_headers_are_dropped() {
        let geo = geo_from_headers(&headers(&[
            ("x-vercel-ip-country", "a-very-long-country"),
            ("x-vercel-ip-country-region", ""),
            ("x-vercel-ip-city", "Bad%00City"),
            ("x-vercel-ip-latitude", "north"),
            ("x-vercel-ip-longitude", "181"),
        ]));
        assert_eq!(geo, GeoFields::default());

        let geo = geo_from_headers(&headers(&[
            ("x-vercel-ip-city", "%E2%28"),
            ("x-vercel-ip-latitude", "NaN"),
            ("x-vercel-ip-longitude", "inf"),
        ]));
        assert_eq!(
            geo,
            GeoFields::default(),
            "invalid UTF-8 and non-finite numbers"
        );
    }

    #[test]
    fn a_stray_percent_in_the_city_is_kept() {
        let geo = geo_from_headers(&headers(&[("x-vercel-ip-city", "100%25 Town %zz %")]));
        assert_eq!(geo.city.as_deref(), Some("100% Town %zz %"));
    }

    // --- small helpers ---------------------------------------------------

    #[test]
    fn byte_limits_and_durations_read_naturally() {
        assert_eq!(ByteLimit(1_048_576).to_string(), "1048576 bytes (1 MB)");
        assert_eq!(ByteLimit(32 * 1024).to_string(), "32768 bytes (32 KB)");
        assert_eq!(ByteLimit(1000).to_string(), "1000 bytes");
        assert_eq!(show_duration(Duration::from_secs(86_400)), "24 hours");
        assert_eq!(show_duration(Duration::from_secs(3600)), "1 hour");
        assert_eq!(show_duration(Duration::from_secs(7 * 86_400)), "7 days");
        assert_eq!(
            show_duration(Duration::from_secs(24 * 3600 + 3600)),
            "25 hours"
        );
        assert_eq!(show_duration(Duration::from_secs(90)), "90 seconds");
    }
}
