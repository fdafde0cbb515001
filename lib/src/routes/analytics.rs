//! `GET /api/analytics?view=…`: usage and event analytics of the secret key
//! presented, and of no other key (see [`crate::analytics`]).
//!
//! A read goes through admission first, as every metered route does: it is
//! refused while the key or client is banned, limited by the key's
//! per-minute rate, and logged. It is not usage, so it spends no quota and
//! moves no usage counter.
//!
//! The view is written as JSON, or as CSV with `format=csv` (see
//! [`crate::analytics::csv`]); errors are JSON either way.
//!
//! A root key with the `analytics:read` scope reads any key's views, naming
//! it with `key_id` (see [`crate::analytics::by_id`]).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tokio::time::Instant;

use uuid::Uuid;

use super::keys;
use crate::{
    admin::{self, root_keys::Scope},
    admission::{self, Decision, RateLimit},
    analytics::{self, Answer, Format, Query},
    auth::{self, Accepts},
    error::ApiError,
    state::AppState,
    telemetry,
};

/// Handles `GET /api/analytics`.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    let mut rate = RateLimit::default();
    let answered = answer(state, &request, &mut rate)
        .await
        .and_then(|(answer, query)| {
            let (body, content_type) = analytics::render(&answer.view, query.format())?;
            Ok((answer.cache, query, body, content_type))
        });
    let mut response = match answered {
        Ok((cache, query, body, content_type)) => {
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if query.format() == Format::Csv {
                // A name to save it under, for `curl -OJ` and browsers.
                let disposition = format!(
                    "attachment; filename=\"tollgate-{}.csv\"",
                    query.view().as_str()
                );
                if let Ok(value) = HeaderValue::from_str(&disposition) {
                    headers.insert(header::CONTENT_DISPOSITION, value);
                }
            }
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            headers.insert("x-cache", HeaderValue::from_static(cache.as_str()));
            *response.status_mut() = StatusCode::OK;
            response
        }
        Err(error) => error.into_response(),
    };
    rate.write_headers(response.headers_mut());
    response
}

async fn answer(
    state: &AppState,
    request: &Request<Bytes>,
    rate: &mut RateLimit,
) -> Result<(Answer, Query), ApiError> {
    let started = Instant::now();
    if request.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed { allow: "GET" });
    }
    if auth::bearer(request).is_some_and(|token| token.starts_with("rk_")) {
        return answer_root(state, request).await;
    }
    let key = auth::authenticate(request, Accepts::SecretOnly)?;
    // A bad query is limited and logged too, then refused with its error.
    let query = Query::parse(request.uri().query());
    let client_ip = state.client_ip(request.headers());
    let admission = admission::Request {
        route: "analytics",
        key: &key,
        origin: "",
        ip: client_ip.as_deref().unwrap_or(""),
        valid: query.is_ok(),
        metered: false,
        success_status: 200,
        invalid_status: 400,
        events: None,
        upload: None,
        latency: started.elapsed(),
    };
    // Where this instance knows the key's id, the cache is read beside
    // admission, so that a hit waits for one round trip, not two; what it
    // read is used only if admission lets the request through.
    let (decision, prefetched) = match &query {
        Ok(parsed) => tokio::join!(
            admission::admit(state, &admission),
            analytics::prefetch(state, &key, parsed)
        ),
        Err(_) => (admission::admit(state, &admission).await, None),
    };
    match decision {
        Ok(Decision::Admitted {
            key_id,
            rate: limits,
            ..
        }) => {
            telemetry::record_key_id(key_id);
            *rate = limits;
        }
        Ok(Decision::Refused {
            error,
            rate: limits,
        }) => {
            *rate = limits;
            return Err(error);
        }
        Ok(Decision::QueueFull) => {
            return Err(anyhow::anyhow!("admission answered queue_full for a read").into())
        }
        // Upstash is down or slow: nothing read beside the admission is
        // used. The view comes from Postgres alone (`X-Cache: bypass`),
        // after the key's checks there: active, and not banned. Reading
        // one's own numbers spends nothing a limit protects.
        Err(error) => {
            tracing::warn!(error = ?error.error, "admission failed; reading analytics from Postgres");
            let query = query?;
            let answer = analytics::read_unadmitted(state, &key, &query).await?;
            return Ok((answer, query));
        }
    }
    let query = query?;
    let answer = analytics::read(state, &key, client_ip.as_deref(), &query, prefetched).await?;
    Ok((answer, query))
}

/// A read by a root key with `analytics:read`, of the key named by
/// `key_id`: limited as every management call is (see `routes/keys.rs`),
/// and not logged as the key's request, since the key did not make it.
async fn answer_root(
    state: &AppState,
    request: &Request<Bytes>,
) -> Result<(Answer, Query), ApiError> {
    let root = keys::authorize(state, request).await?;
    keys::require(&root, Scope::AnalyticsRead)?;
    let (key_id, rest) = named_key(request.uri().query())?;
    let query = Query::parse(Some(&rest))?;
    let key = admin::get_key(&state.db, key_id)
        .await
        .map_err(keys::admin_error)?;
    let key = analytics::by_id::KeyById {
        id: key.id,
        timezone: key.timezone,
        created_ms: key.created_at.timestamp_millis(),
    };
    let answer = analytics::by_id::read(state, &key, &query).await?;
    Ok((answer, query))
}

/// The `key_id` a root key's read names, and the rest of its query string.
fn named_key(query: Option<&str>) -> Result<(Uuid, String), ApiError> {
    let mut key_id = None;
    let mut rest = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if name != "key_id" {
            rest.append_pair(&name, &value);
            continue;
        }
        if key_id.is_some() {
            return Err(keys::bad(
                "invalid_parameter",
                "`key_id` is given more than once; give each parameter once",
            ));
        }
        key_id = Some(Uuid::parse_str(&value).map_err(|_| {
            keys::bad(
                "invalid_parameter",
                format!("`key_id`: `{}` is not a UUID", keys::quote(&value)),
            )
        })?);
    }
    let key_id = key_id.ok_or_else(|| {
        keys::bad(
            "missing_parameter",
            "`key_id`: a root key names the key whose analytics it reads",
        )
    })?;
    Ok((key_id, rest.finish()))
}
