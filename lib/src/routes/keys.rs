//! `/api/keys`: API keys over HTTP, for the backend of a product that hands
//! keys to its own customers. It takes a root key (`rk_…`) only, with the
//! scope each operation needs, and calls the same functions as the CLI
//! (`admin::keys`), so the two cannot drift.
//!
//! Vercel serves one path per file under `api/`, and a Rust function has no
//! dynamic path segments, so the key is named in the query string and the
//! operation by the method:
//!
//! | operation | request | scope |
//! |---|---|---|
//! | list | `GET /api/keys?owner_id=&cursor=&limit=` | `keys:read` |
//! | get, with usage | `GET /api/keys?id=…` | `keys:read` |
//! | create | `POST /api/keys` | `keys:write` |
//! | update | `PATCH /api/keys?id=…` | `keys:write` |
//! | revoke | `DELETE /api/keys?id=…` | `keys:write` |
//! | rotate | `POST /api/keys?id=…&action=rotate` | `keys:write` |
//!
//! Bans are at `/api/keys/bans` (`routes/bans.rs`), owners' alert endpoints
//! at `/api/keys/webhooks` (`routes/webhooks.rs`).

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Datelike, Utc};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::{
    admin::{
        self,
        root_keys::{PresentedRootKey, RootKey, Scope},
        usage, AdminError, Changed, KeyChange, KeyFilter, Metadata, Origin, Override, OwnerId,
    },
    apikeys::Tier,
    auth,
    error::ApiError,
    response::json_response,
    state::AppState,
    upstash::{FromReply, Reply, Script},
};

static ROOT_LIMIT: Script = Script::new("root_limit", include_str!("../scripts/root_limit.lua"));

/// Calls per minute one root key may make.
pub const ROOT_KEY_RATE_LIMIT: u32 = 600;

/// The largest request body: a key's fields, metadata (4 KB) included.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The most keys one `list` page holds, and the default.
const MAX_PAGE: u32 = 100;

pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    serve(state, request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn serve(state: &AppState, request: Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
    let method = request.method().clone();
    if !matches!(
        method,
        Method::GET | Method::POST | Method::PATCH | Method::DELETE
    ) {
        return Err(ApiError::MethodNotAllowed {
            allow: "GET, POST, PATCH, DELETE",
        });
    }
    let root = authorize(state, &request).await?;
    let query = Params::parse(
        request.uri().query(),
        &["id", "action", "owner_id", "cursor", "limit"],
    )?;
    let id = query.uuid("id")?;
    let action = query.get("action");
    match (&method, id, action) {
        (&Method::GET, None, None) => {
            require(&root, Scope::KeysRead)?;
            list(state, &query).await
        }
        (&Method::GET, Some(id), None) => {
            require(&root, Scope::KeysRead)?;
            get(state, id).await
        }
        (&Method::POST, None, None) => {
            require(&root, Scope::KeysWrite)?;
            create(state, &root, request.body()).await
        }
        (&Method::POST, Some(id), Some("rotate")) => {
            require(&root, Scope::KeysWrite)?;
            rotate(state, &root, id, request.body()).await
        }
        (&Method::PATCH, Some(id), None) => {
            require(&root, Scope::KeysWrite)?;
            update(state, &root, id, request.body()).await
        }
        (&Method::DELETE, Some(id), None) => {
            require(&root, Scope::KeysWrite)?;
            revoke(state, &root, id).await
        }
        (_, _, Some(action)) if action != "rotate" => Err(bad(
            "invalid_parameter",
            format!(
                "`action`: `{}` is not an action; the one action is `rotate`",
                quote(action)
            ),
        )),
        (&Method::PATCH | &Method::DELETE, None, _) => Err(bad(
            "missing_parameter",
            "`id`: this operation needs the key's id in the query string",
        )),
        _ => Err(bad(
            "invalid_operation",
            "no such operation: see the table in the API reference (openapi.yaml)",
        )),
    }
}

async fn list(state: &AppState, query: &Params) -> Result<Response<Bytes>, ApiError> {
    let owner = query
        .get("owner_id")
        .map(|owner| {
            OwnerId::parse(owner).map_err(|e| bad("invalid_parameter", format!("`owner_id`: {e}")))
        })
        .transpose()?;
    let after = query.uuid("cursor")?;
    let limit = match query.get("limit") {
        None => MAX_PAGE,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                bad(
                    "invalid_parameter",
                    format!("`limit`: expected a whole number from 1 to {MAX_PAGE}"),
                )
            })?,
    };
    let filter = KeyFilter {
        owner,
        after,
        limit: Some(limit),
    };
    let page = admin::list_keys(&state.db, &filter)
        .await
        .map_err(admin_error)?;
    Ok(json_response(StatusCode::OK, &page))
}

async fn get(state: &AppState, id: Uuid) -> Result<Response<Bytes>, ApiError> {
    let key = admin::get_key(&state.db, id).await.map_err(admin_error)?;
    let sources = usage::Sources {
        db: &state.db,
        upstash: Some(&state.upstash),
        keys: &state.keys,
    };
    let usage = usage::of(&sources, id, &key.timezone, &key.limits, state.clock.now())
        .await
        .map_err(postgres_error)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "key": key, "usage": usage }),
    ))
}

async fn create(
    state: &AppState,
    root: &RootKey,
    body: &Bytes,
) -> Result<Response<Bytes>, ApiError> {
    let mut fields = Fields::parse(
        body,
        &[
            "name",
            "owner_id",
            "tier",
            "rate_limit",
            "daily",
            "monthly",
            "origins",
            "timezone",
            "expires_at",
            "metadata",
        ],
    )?;
    let name = fields
        .string("name")?
        .ok_or_else(|| bad("missing_field", "`name`: a key needs a name"))?;
    let tier = fields
        .tier()?
        .ok_or_else(|| bad("missing_field", "`tier`: one of free, pro, enterprise"))?;
    let request = admin::CreateKey {
        name,
        owner: fields.owner()?,
        tier,
        rate_limit: fields.rate_limit()?.and_then(value),
        daily: fields.quota("daily")?.and_then(value),
        monthly: fields.quota("monthly")?.and_then(value),
        origins: fields.origins()?.unwrap_or_default(),
        timezone: fields.string("timezone")?,
        expires_at: fields.time("expires_at")?.flatten(),
        metadata: fields.metadata()?.unwrap_or_default(),
    };
    let key = admin::create_key(&state.db, &root.actor(), request)
        .await
        .map_err(admin_error)?;
    let summary = admin::get_key(&state.db, key.id)
        .await
        .map_err(admin_error)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "key": summary,
            "secret_key": key.secret.expose(),
            "publishable_key": key.publishable,
        }),
    ))
}

async fn update(
    state: &AppState,
    root: &RootKey,
    id: Uuid,
    body: &Bytes,
) -> Result<Response<Bytes>, ApiError> {
    let mut fields = Fields::parse(
        body,
        &[
            "tier",
            "rate_limit",
            "daily",
            "monthly",
            "origins",
            "timezone",
            "expires_at",
            "metadata",
        ],
    )?;
    if fields.0.is_empty() {
        return Err(bad(
            "missing_field",
            "send at least one field to change: tier, rate_limit, daily, monthly, origins, timezone, expires_at or metadata",
        ));
    }
    let change = KeyChange {
        rate_limit: fields.rate_limit()?,
        daily: fields.quota("daily")?,
        monthly: fields.quota("monthly")?,
        origins: fields.origins()?,
        tier: fields.tier()?,
        timezone: fields.string("timezone")?,
        metadata: fields.metadata()?,
        expires_at: fields.time("expires_at")?,
    };
    let change = admin::update_key(&state.db, &state.keys, &root.actor(), id, change)
        .await
        .map_err(admin_error)?;
    let (key, propagation) = apply(state, change).await;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "key": key, "propagation": propagation }),
    ))
}

async fn revoke(state: &AppState, root: &RootKey, id: Uuid) -> Result<Response<Bytes>, ApiError> {
    let change = admin::revoke_key(&state.db, &state.keys, &root.actor(), id)
        .await
        .map_err(admin_error)?;
    let ((), propagation) = apply(state, change).await;
    let key = admin::get_key(&state.db, id).await.map_err(admin_error)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "key": key, "propagation": propagation }),
    ))
}

async fn rotate(
    state: &AppState,
    root: &RootKey,
    id: Uuid,
    body: &Bytes,
) -> Result<Response<Bytes>, ApiError> {
    let mut fields = if body.is_empty() {
        Fields(Map::new())
    } else {
        Fields::parse(body, &["overlap_seconds"])?
    };
    let limit = admin::MAX_ROTATION_OVERLAP.as_secs();
    let overlap = fields
        .number(
            "overlap_seconds",
            limit,
            "a whole number of seconds from 0 to 86400 (24 hours)",
        )?
        .map(Duration::from_secs);
    let change = admin::rotate_key(&state.db, &state.keys, &root.actor(), id, overlap)
        .await
        .map_err(admin_error)?;
    let (rotated, propagation) = apply(state, change).await;
    let key = admin::get_key(&state.db, id).await.map_err(admin_error)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "key": key,
            "secret_key": rotated.key.secret.expose(),
            "publishable_key": rotated.key.publishable,
            "previous_expires_at": rotated.previous_expires_at,
            "propagation": propagation,
        }),
    ))
}

/// Applies a change's Redis side. The change is in Postgres either way;
/// the answer says whether it took effect at once (`immediate`) or takes
/// effect as cached copies expire (`within_5_minutes`).
pub(crate) async fn apply<T>(state: &AppState, change: Changed<T>) -> (T, &'static str) {
    match change.redis.apply(&state.upstash).await {
        Ok(()) => (change.value, "immediate"),
        Err(error) => {
            tracing::warn!(error = ?error, "a management change reached Postgres but not Redis");
            (change.value, "within_5_minutes")
        }
    }
}

/// The root key of a request, rate-limited, looked up and not revoked.
/// Tenant keys never get past the shape check: this route takes `rk_…`.
pub(crate) async fn authorize(
    state: &AppState,
    request: &Request<Bytes>,
) -> Result<RootKey, ApiError> {
    let unauthorized = |code, message: &str| ApiError::Unauthorized {
        code,
        message: message.to_owned(),
    };
    let Some(token) = auth::bearer(request) else {
        return Err(unauthorized(
            "missing_root_key",
            "send a root key as `Authorization: Bearer rk_…`",
        ));
    };
    if token.starts_with("sk_") || token.starts_with("pk_") {
        return Err(ApiError::Forbidden {
            code: "root_key_required",
            message: "this route takes a root key (rk_…), never an API key".into(),
        });
    }
    let presented = PresentedRootKey::parse(token).ok_or_else(|| {
        unauthorized(
            "invalid_root_key",
            "not a root key: root keys are `rk_` and 48 hex digits",
        )
    })?;
    let client_ip = state.client_ip(request.headers());
    let rate_key = state.keys.root_rate(&presented.hash_hex());
    let mut names = vec![rate_key];
    names.extend(client_ip.as_deref().map(|ip| state.keys.auth_failures(ip)));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let limit = |mode: &str| vec![mode.to_owned(), ROOT_KEY_RATE_LIMIT.to_string()];
    let verdict: Reply = state
        .upstash
        .eval(&ROOT_LIMIT, &names, &limit("admit"))
        .await
        .map_err(|error| ApiError::Unavailable {
            message: format!("the rate limiter is unreachable ({error}); retry shortly"),
            retry_after: Duration::from_secs(5),
        })?;
    let numbers = Vec::<i64>::from_reply(verdict.clone()).unwrap_or_default();
    let [allowed, retry_ms, failures, failures_ttl] = numbers[..] else {
        return Err(ApiError::Unexpected(anyhow::anyhow!(
            "root_limit.lua answered {verdict:?}"
        )));
    };
    if failures >= i64::from(state.config.admission.failed_auth_limit) {
        return Err(ApiError::TooManyRequests {
            code: "too_many_failed_authentications",
            message: "too many requests from this client with unknown keys; retry later".into(),
            retry_after: Duration::from_millis(failures_ttl.max(1_000) as u64),
        });
    }
    if allowed != 1 {
        return Err(ApiError::TooManyRequests {
            code: "rate_limited",
            message: format!(
                "this root key may make {ROOT_KEY_RATE_LIMIT} calls a minute; retry later"
            ),
            retry_after: Duration::from_millis(retry_ms.max(1) as u64),
        });
    }
    let found = admin::root_keys::authenticate(&state.db, &presented)
        .await
        .map_err(postgres_error)?;
    match found {
        Some(root) => {
            // The key this request is made with, as the other routes log theirs.
            crate::telemetry::record_key_id(root.id);
            Ok(root)
        }
        None => {
            let counted: Result<Reply, _> = state
                .upstash
                .eval(&ROOT_LIMIT, &names, &limit("fail"))
                .await;
            if let Err(error) = counted {
                tracing::warn!(error = ?error, "counting a failed root key authentication");
            }
            Err(unauthorized(
                "invalid_root_key",
                "no root key matches, or it was revoked",
            ))
        }
    }
}

/// Refuses a root key without the scope an operation needs.
pub(crate) fn require(root: &RootKey, scope: Scope) -> Result<(), ApiError> {
    if root.may(scope) {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        code: "insufficient_scope",
        message: format!("this root key lacks the `{scope}` scope"),
    })
}

/// A management failure as the route answers it.
pub(crate) fn admin_error(error: AdminError) -> ApiError {
    match error {
        AdminError::NoSuchKey(id) => ApiError::NotFound(format!("no key with id {id}")),
        AdminError::NoSuchRootKey(id) => ApiError::NotFound(format!("no root key with id {id}")),
        AdminError::KeyRevoked(_) => ApiError::Conflict {
            code: "key_revoked",
            message: error.to_string(),
        },
        AdminError::ConcurrentBan(_) => ApiError::Conflict {
            code: "concurrent_ban",
            message: error.to_string(),
        },
        AdminError::Invalid(message) => ApiError::BadRequest {
            code: "invalid_field",
            message,
        },
        AdminError::Unexpected(error) => postgres_error(error),
    }
}

/// An unexpected failure, unless Postgres was out of reach or out of
/// connections: that is a 503 to retry, not a 500.
pub(crate) fn postgres_error(error: anyhow::Error) -> ApiError {
    let unreachable = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
        )
    });
    if !unreachable {
        return ApiError::Unexpected(error);
    }
    tracing::error!(error = ?error, "a management call could not reach Postgres");
    ApiError::Unavailable {
        message: "Postgres is unreachable or busy; retry shortly".into(),
        retry_after: Duration::from_secs(5),
    }
}

pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.into(),
    }
}

fn field(name: &str, error: AdminError) -> ApiError {
    bad("invalid_field", format!("`{name}`: {error}"))
}

/// At most 100 characters of what a client sent, escaped, for an error
/// message.
pub(crate) fn quote(text: &str) -> String {
    crate::events::text::truncate_chars(text, 100)
        .escape_default()
        .to_string()
}

fn value<T>(change: Override<T>) -> Option<T> {
    match change {
        Override::Default => None,
        Override::Value(n) => Some(n),
    }
}

/// The query string's parameters, each at most once, none unknown.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(bad(
                    "unknown_parameter",
                    format!(
                        "`{}` is not a parameter here; known: {}",
                        quote(name),
                        known.join(", ")
                    ),
                ));
            }
            if pairs[..i].iter().any(|(other, _)| other == name) {
                return Err(bad(
                    "invalid_parameter",
                    format!("`{name}` is given more than once"),
                ));
            }
        }
        Ok(Self(pairs))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.get(name)
            .map(|text| {
                Uuid::parse_str(text).map_err(|_| {
                    bad(
                        "invalid_parameter",
                        format!("`{name}`: `{}` is not a UUID", quote(text)),
                    )
                })
            })
            .transpose()
    }
}

/// A JSON object body, read field by field so that every bad field gets
/// its own message.
pub(crate) struct Fields(pub(crate) Map<String, Value>);

impl Fields {
    pub(crate) fn parse(body: &Bytes, known: &[&str]) -> Result<Self, ApiError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "the body is {} bytes; at most {MAX_BODY_BYTES} are accepted",
                body.len()
            )));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| bad("invalid_json", format!("the body is not JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(bad("invalid_json", "the body must be a JSON object"));
        };
        if let Some(name) = map.keys().find(|name| !known.contains(&name.as_str())) {
            return Err(bad(
                "unknown_field",
                format!(
                    "`{}` is not a field here; known: {}",
                    quote(name),
                    known.join(", ")
                ),
            ));
        }
        Ok(Self(map))
    }

    /// A string without U+0000, which Postgres text cannot hold.
    pub(crate) fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.remove(name) {
            None => Ok(None),
            Some(Value::String(text)) if text.contains('\0') => Err(bad(
                "invalid_field",
                format!("`{name}`: U+0000 is not allowed"),
            )),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(bad("invalid_field", format!("`{name}`: expected a string"))),
        }
    }

    /// A whole number from 0 to `max`.
    pub(crate) fn number(
        &mut self,
        name: &str,
        max: u64,
        expected: &str,
    ) -> Result<Option<u64>, ApiError> {
        match self.0.remove(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|n| *n <= max)
                .map(Some)
                .ok_or_else(|| bad("invalid_field", format!("`{name}`: expected {expected}"))),
            Some(_) => Err(bad(
                "invalid_field",
                format!("`{name}`: expected {expected}"),
            )),
        }
    }

    /// `rate_limit`: requests per minute, 1 to the column's `integer`
    /// range, or `null` for the tier's.
    fn rate_limit(&mut self) -> Result<Option<Override<u32>>, ApiError> {
        Ok(self
            .limit("rate_limit", 1, i32::MAX as u64)?
            .map(|change| match change {
                Override::Default => Override::Default,
                Override::Value(n) => Override::Value(n as u32),
            }))
    }

    /// `daily` or `monthly`: 0 to the column's `bigint` range, or `null`
    /// for the tier's.
    fn quota(&mut self, name: &str) -> Result<Option<Override<u64>>, ApiError> {
        self.limit(name, 0, i64::MAX as u64)
    }

    /// A limit override: a number from `min` to `max`, or `null` for the
    /// tier's.
    fn limit(&mut self, name: &str, min: u64, max: u64) -> Result<Option<Override<u64>>, ApiError> {
        let expected = format!("a whole number from {min} to {max}, or null for the tier's");
        if self.0.get(name) == Some(&Value::Null) {
            self.0.remove(name);
            return Ok(Some(Override::Default));
        }
        match self.number(name, max, &expected)? {
            Some(n) if n < min => Err(bad(
                "invalid_field",
                format!("`{name}`: expected {expected}"),
            )),
            n => Ok(n.map(Override::Value)),
        }
    }

    fn tier(&mut self) -> Result<Option<Tier>, ApiError> {
        self.string("tier")?
            .map(|text| {
                text.parse::<Tier>().map_err(|_| {
                    bad(
                        "invalid_field",
                        format!("`tier`: `{}` is not free, pro or enterprise", quote(&text)),
                    )
                })
            })
            .transpose()
    }

    fn owner(&mut self) -> Result<Option<OwnerId>, ApiError> {
        self.string("owner_id")?
            .map(|text| OwnerId::parse(&text).map_err(|e| field("owner_id", e)))
            .transpose()
    }

    fn origins(&mut self) -> Result<Option<Vec<Origin>>, ApiError> {
        let expected = || {
            bad(
                "invalid_field",
                "`origins`: expected a list of origins such as [\"https://shop.example.com\"]",
            )
        };
        match self.0.remove("origins") {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let text = item.as_str().ok_or_else(expected)?;
                    Origin::parse(text).map_err(|e| bad("invalid_field", format!("`origins`: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(expected()),
        }
    }

    /// An RFC 3339 time, or `null` for none.
    fn time(&mut self, name: &str) -> Result<Option<Option<DateTime<Utc>>>, ApiError> {
        let expected = || {
            bad(
                "invalid_field",
                format!(
                    "`{name}`: expected an RFC 3339 time such as 2027-01-31T00:00:00Z, or null"
                ),
            )
        };
        match self.0.remove(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            // A time past 9999 in UTC would be answered in a form that is
            // not RFC 3339 (`+10000-…`).
            Some(Value::String(text)) => DateTime::parse_from_rfc3339(&text)
                .ok()
                .map(|at| at.with_timezone(&Utc))
                .filter(|at| at.year() <= 9999)
                .map(|at| Some(Some(at)))
                .ok_or_else(expected),
            Some(_) => Err(expected()),
        }
    }

    fn metadata(&mut self) -> Result<Option<Metadata>, ApiError> {
        self.0
            .remove("metadata")
            .map(|value| Metadata::parse(value).map_err(|e| field("metadata", e)))
            .transpose()
    }
}
