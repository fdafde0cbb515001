//! Parsing of the events of a `POST /api/collect` body into [`Event`]s.
//!
//! Everything here is pure: no I/O and no clock (the handler passes `now`
//! and the id generator in), so every rule is unit-tested below. The work
//! is split the way the request fails:
//!
//! - [`decode_body`] and the body-level checks of [`parse_batch`] fail the
//!   whole request with a [`BodyError`] (400 or 413; see [`super::body`]);
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
//! - Every string is checked for the characters its kind of text may not
//!   hold ([`super::text`]): control characters and bidirectional controls
//!   are `control_character`, naming the field (NUL, which Postgres can't
//!   store at all, stays `invalid_character`). Page titles and string
//!   property values are free text and may hold tab, line breaks and the
//!   direction marks; everything else is plain text and may not.
//!
//! The body, the user agent and the location have modules of their own;
//! their items are re-exported here, where callers have always found them.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::body::{kind_of, read_batch};
use super::text::{find_forbidden, truncate_chars, without_forbidden, Forbidden, TextKind};
use super::{AgentFields, Event, EventKind, GeoFields, MobileFields, ServerFields, WebFields};

pub use super::agent::{classify_agent, Agent};
pub use super::body::{decode_body, BodyError, ByteLimit, Limits};
pub use super::geo::geo_from_headers;

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

    /// `control_character`, or `invalid_character` for NUL, which Postgres
    /// can't store at all (the code it had before other controls were
    /// refused).
    fn forbidden(field: &str, found: Forbidden, kind: TextKind) -> Self {
        if found.character == '\0' {
            return EventError::new(
                "invalid_character",
                format!("`{field}` contains the character U+0000 (NUL), which cannot be stored"),
            );
        }
        EventError::new(
            "control_character",
            format!("`{field}` contains {found}; {}", kind.rule()),
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
    let raw = read_batch(json, limits)?;
    let events = raw
        .events
        .into_iter()
        .map(|item| parse_event(item, context, limits, new_id))
        .collect();
    Ok(Batch {
        key: raw.key,
        events,
    })
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

    /// An optional line of plain text of at most `max` characters; `""`
    /// counts as absent.
    fn string(&mut self, field: &str, max: usize) -> Result<Option<String>, EventError> {
        self.text(field, max, TextKind::Plain)
    }

    /// An optional string of at most `max` characters of the given kind;
    /// `""` counts as absent.
    fn text(
        &mut self,
        field: &str,
        max: usize,
        kind: TextKind,
    ) -> Result<Option<String>, EventError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                check_text(field, &s, max, kind)?;
                Ok(Some(s))
            }
            Some(other) => Err(EventError::wrong_type(field, "a string", &other)),
        }
    }
}

/// Rejects text with a character its kind may not hold (NUL, which
/// Postgres can't store, among them) or over `max` characters.
fn check_text(field: &str, s: &str, max: usize, kind: TextKind) -> Result<(), EventError> {
    if let Some(found) = find_forbidden(s, kind) {
        return Err(EventError::forbidden(field, found, kind));
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
            check_text("name", &s, NAME_MAX, TextKind::Plain)?;
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
    if let Some((found, kind)) = find_forbidden_in(&object, &mut path) {
        return Err(EventError::forbidden(
            truncate_chars(&path, 200),
            found,
            kind,
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

/// The first character anywhere in `value` that its kind of text may not
/// hold: string values are free text, object keys are names. If there is
/// one, `path` is left naming where: `properties.a[2]`, or
/// `properties.a (a key)` for a key of the object `properties.a`.
fn find_forbidden_in(value: &Value, path: &mut String) -> Option<(Forbidden, TextKind)> {
    match value {
        Value::String(s) => {
            find_forbidden(s, TextKind::Prose).map(|found| (found, TextKind::Prose))
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            let _ = write!(path, "[{i}]");
            let found = find_forbidden_in(item, path);
            if found.is_none() {
                path.truncate(len);
            }
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            // The key itself is left out of the path: it is what is wrong.
            if let Some(found) = find_forbidden(key, TextKind::Plain) {
                path.push_str(" (a key)");
                return Some((found, TextKind::Plain));
            }
            let len = path.len();
            path.push('.');
            path.push_str(key);
            let found = find_forbidden_in(item, path);
            if found.is_none() {
                path.truncate(len);
            }
            found
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

fn parse_web(fields: &mut Fields) -> Result<WebFields, EventError> {
    let url = fields.string("url", URL_MAX)?;
    // Read even when `url` wins, so that a wrong type is still reported.
    let explicit_path = fields.string("path", PATH_MAX)?;
    let mut web = WebFields {
        referrer: fields.string("referrer", REFERRER_MAX)?,
        title: fields.text("title", TITLE_MAX, TextKind::Prose)?,
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
            check_text("path (of url)", parsed.path(), PATH_MAX, TextKind::Plain)?;
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
/// wins, characters plain text may not hold (NUL, controls, bidirectional
/// controls, which percent-decoding can bring back) are dropped, values
/// are truncated to 200 characters, and empty values are left out.
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
        let clean = without_forbidden(&value, TextKind::Plain);
        let clean = truncate_chars(&clean, UTM_MAX);
        if !clean.is_empty() {
            *slot = Some(clean.to_owned());
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
    use chrono::TimeZone;
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
            (
                r#"{"type":"web","name":"a\u001b[2Jb"}"#.into(),
                "control_character",
            ),
            (
                r#"{"type":"web","name":"invoice\u202egpj.exe"}"#.into(),
                "control_character",
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

    // --- control characters ----------------------------------------------

    /// Every text field an event may carry, by event type.
    const TEXT_FIELDS: [(&str, &str); 17] = [
        ("web", "name"),
        ("web", "session_id"),
        ("web", "user_id"),
        ("web", "url"),
        ("web", "path"),
        ("web", "referrer"),
        ("web", "title"),
        ("web", "screen"),
        ("web", "language"),
        ("mobile", "app_version"),
        ("mobile", "os"),
        ("mobile", "os_version"),
        ("mobile", "device"),
        ("server", "service"),
        ("server", "environment"),
        ("server", "method"),
        ("server", "path"),
    ];

    /// An event of `kind` whose `field` holds `c` among valid text.
    fn with_char(kind: &str, field: &str, c: char) -> serde_json::Value {
        let value = match field {
            "url" => format!("https://example.com/a{c}b"),
            "method" => format!("GE{c}T"),
            _ => format!("a{c}b"),
        };
        let mut body = json!({"type": kind, "name": "e"});
        body[field] = json!(value);
        body
    }

    #[test]
    fn every_text_field_refuses_escapes_c1_controls_and_bidi_overrides_naming_the_field() {
        for (kind, field) in TEXT_FIELDS {
            for c in [
                '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{202a}', '\u{202e}', '\u{2066}',
                '\u{2069}',
            ] {
                let err = event(with_char(kind, field, c)).unwrap_err();
                let what = format!("{kind} `{field}` with U+{:04X}", c as u32);
                assert_eq!(err.code, "control_character", "{what}");
                assert!(
                    err.message
                        .starts_with(&format!("`{field}` contains U+{:04X}", c as u32)),
                    "{what}: {}",
                    err.message
                );
            }
        }
    }

    #[test]
    fn plain_fields_also_refuse_tab_line_breaks_and_direction_marks() {
        for (kind, field) in TEXT_FIELDS.into_iter().filter(|(_, f)| *f != "title") {
            for c in ['\t', '\n', '\r', '\u{200e}', '\u{200f}', '\u{61c}'] {
                let err = event(with_char(kind, field, c)).unwrap_err();
                assert_eq!(
                    err.code, "control_character",
                    "{kind} `{field}` with U+{:04X}",
                    c as u32
                );
            }
        }
    }

    #[test]
    fn a_raw_tab_in_the_url_is_refused_not_silently_dropped() {
        // The URL parser would strip it and store a different path.
        let err =
            event(json!({"type": "web", "name": "a", "url": "https://example.com/pri\tcing"}))
                .unwrap_err();
        assert_eq!(err.code, "control_character");
        assert!(
            err.message.contains("U+0009 (TAB) at character 24"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_title_is_free_text_with_line_breaks_and_direction_marks() {
        let title = "\u{200f}חדשות\u{200f} | News\r\n\tPage";
        let e = event(json!({"type": "web", "name": "a", "title": title})).unwrap();
        assert_eq!(e.web.title.as_deref(), Some(title));
        for c in ['\u{1b}', '\u{202e}', '\u{2067}', '\u{0}'] {
            let err = event(with_char("web", "title", c)).unwrap_err();
            assert!(
                matches!(err.code, "control_character" | "invalid_character"),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn string_properties_are_free_text_and_their_keys_are_plain() {
        let free = json!({"note": "line one\nline two\ttabbed\r\n", "he": "שלום\u{200f}!"});
        let e = event(json!({"type": "web", "name": "a", "properties": free})).unwrap();
        let back: Value = serde_json::from_str(&e.properties.unwrap()).unwrap();
        assert_eq!(back, free);

        let cases = [
            (
                json!({"a": [1, {"b": "x\u{1b}[2J"}]}),
                "`properties.a[1].b` contains U+001B (ESCAPE) at character 2; free text",
            ),
            (
                json!({"file": "invoice\u{202e}gpj.exe"}),
                "`properties.file` contains U+202E (RIGHT-TO-LEFT OVERRIDE) at character 8",
            ),
            (
                json!({"x": {"k\u{1b}": 1}}),
                "`properties.x (a key)` contains U+001B (ESCAPE) at character 2; names",
            ),
            (
                json!({"k\u{200f}": 1}),
                "`properties (a key)` contains U+200F (RIGHT-TO-LEFT MARK)",
            ),
            (
                json!({"k\n": 1}),
                "`properties (a key)` contains U+000A (LINE FEED)",
            ),
        ];
        for (properties, message) in cases {
            let err =
                event(json!({"type": "web", "name": "a", "properties": properties})).unwrap_err();
            assert_eq!(err.code, "control_character", "{properties}");
            assert!(err.message.starts_with(message), "{}", err.message);
        }
    }

    #[test]
    fn utm_values_lose_the_controls_percent_decoding_brings_back() {
        let url = "https://example.com/?utm_source=news%E2%80%AEletter%1B&utm_medium=%0A";
        let e = event(json!({"type": "web", "name": "a", "url": url})).unwrap();
        assert_eq!(e.web.utm_source.as_deref(), Some("newsletter"));
        assert_eq!(e.web.utm_medium, None);
        assert_eq!(
            e.web.url.as_deref(),
            Some(url),
            "the URL itself is plain ASCII"
        );
    }

    #[test]
    fn text_that_only_looks_unusual_is_accepted() {
        let e = event(json!({
            "type": "web", "name": "Résumé 履歴書 📊", "user_id": "مستخدم-7",
            "referrer": "https://例え.jp/パス", "title": "Ünïcödé",
        }))
        .unwrap();
        assert_eq!(e.name, "Résumé 履歴書 📊");
    }

    // --- small helpers ---------------------------------------------------

    #[test]
    fn durations_read_naturally() {
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
