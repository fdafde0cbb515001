//! `POST /api/collect`: analytics events from browsers, apps and servers.
//!
//! The body is decoded and every event validated here, then the valid ones
//! go to Redis in one round trip: admission (`admission.rs`) authenticates
//! the key, checks the origin, bans and limits, and enqueues the events in
//! the same script. No Postgres statement is made while the caches are warm. If Upstash cannot be reached, the
//! events are written straight to Postgres through the drain's own writer,
//! so a 202 always means the events are durable in Redis or in Postgres.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    admission::{self, Decision, EventsPayload, RateLimit},
    apikeys::{self, KeyKind, PresentedKey},
    auth::{self, Accepts, KeyRejection},
    error::ApiError,
    events::{
        agent,
        body::{self, BodyError, Limits},
        geo,
        parse::{self, Context, EventError},
        store::{self, StoredEvent},
        Event,
    },
    fallback,
    response::json_response,
    state::AppState,
    telemetry,
};

#[derive(Debug, Serialize)]
struct Accepted {
    accepted: usize,
    rejected: Vec<Rejected>,
    /// Events dropped because the user agent is a bot.
    #[serde(skip_serializing_if = "is_zero")]
    dropped_as_bot: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
struct Rejected {
    index: usize,
    error: EventError,
}

/// Handles `POST /api/collect` and its CORS preflight.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    let mut response = if request.method() == Method::OPTIONS {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
    } else if request.method() != Method::POST {
        ApiError::MethodNotAllowed {
            allow: "POST, OPTIONS",
        }
        .into_response()
    } else {
        let (result, rate) = collect(state, &request).await;
        let mut response = match result {
            Ok((status, body)) => json_response(status, &body),
            Err(error) => error.into_response(),
        };
        rate.write_headers(response.headers_mut());
        response
    };
    add_cors_headers(request.headers(), response.headers_mut());
    response
}

/// Browsers call collect from any site; a key's origin list is enforced by
/// the script, which knows the key, not by the preflight, which carries none.
fn add_cors_headers(request: &HeaderMap, response: &mut HeaderMap) {
    let origin = request
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    response.insert(header::VARY, HeaderValue::from_static("Origin"));
    response.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    response.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, content-encoding, x-api-key"),
    );
    response.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
}

/// The response body, or the error, and the rate-limit headers to send
/// with either.
async fn collect(
    state: &AppState,
    request: &Request<Bytes>,
) -> (Result<(StatusCode, Accepted), ApiError>, RateLimit) {
    let started = Instant::now();
    let mut rate = RateLimit::default();
    let result = accept(state, request, started, &mut rate).await;
    (result, rate)
}

async fn accept(
    state: &AppState,
    request: &Request<Bytes>,
    started: Instant,
    rate: &mut RateLimit,
) -> Result<(StatusCode, Accepted), ApiError> {
    // The key's shape is checked before the body is read: a malformed key
    // costs nothing more. Beacons carry it in the body instead.
    let header_key = match auth::authenticate(request, Accepts::Any) {
        Ok(key) => Some(key),
        Err(KeyRejection::Missing(_)) => None,
        Err(rejection) => return Err(rejection.into()),
    };
    // A key this instance found unknown a moment ago costs no body either.
    if header_key
        .as_ref()
        .is_some_and(|key| state.key_ids.is_unknown(&key.cache_id()))
    {
        return Err(KeyRejection::Unknown.into());
    }
    let headers = request.headers();
    let limits = Limits {
        max_age: state.config.pipeline.event_max_age,
        ..Limits::default()
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let body = body::decode_body(request.body(), encoding, &limits).map_err(body_error)?;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    // Bots are dropped from browser traffic only (publishable keys): a
    // server's events are its own, whatever HTTP client sends them. A
    // beacon's key is in its body, and beacons come from browsers.
    let browser = header_key
        .as_ref()
        .is_none_or(|key| key.kind() == KeyKind::Pk);
    let agent = if browser {
        agent::classify_agent(user_agent)
    } else {
        agent::Agent {
            is_bot: false,
            fields: agent::describe_agent(user_agent),
        }
    };
    let now = state.clock.now();
    let context = Context {
        now,
        agent: agent.fields.clone(),
        geo: geo::geo_from_headers(headers),
    };
    let batch =
        parse::parse_batch(&body, &context, &limits, &mut Uuid::now_v7).map_err(body_error)?;
    let key = match header_key {
        Some(key) => key,
        None => auth::authenticate_value(batch.key.as_deref(), Accepts::Any)?,
    };

    let mut events = Vec::with_capacity(batch.events.len());
    let mut rejected = Vec::new();
    for (index, result) in batch.events.into_iter().enumerate() {
        match result {
            Ok(event) => events.push(event),
            Err(error) => rejected.push(Rejected { index, error }),
        }
    }
    if events.is_empty() && !rejected.is_empty() {
        return Err(ApiError::BadRequest {
            code: "no_valid_events",
            message: format!(
                "none of the {} events is valid: event {} failed with `{}`: {}",
                rejected.len(),
                rejected[0].index,
                rejected[0].error.code,
                rejected[0].error.message
            ),
        });
    }
    let dropped_as_bot = if agent.is_bot && key.kind() == KeyKind::Pk {
        std::mem::take(&mut events).len()
    } else {
        0
    };

    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Hashed into the visitor id and limited for publishable keys; never stored.
    let client_ip = state.client_ip(headers);
    let submission = Submission {
        key: &key,
        origin,
        events: &events,
        ip: client_ip.as_deref().unwrap_or(""),
        user_agent: user_agent.unwrap_or(""),
    };
    let (shared, queued) = crate::events::queued::encode(&events)
        .context("encoding the events")?
        .unwrap_or_default();
    let payload = EventsPayload {
        n: events.len(),
        json: queued,
        shared,
        bots: dropped_as_bot,
        ua: submission.user_agent,
        day: now.date_naive(),
        salt: Uuid::new_v4().simple().to_string(),
    };
    let admission = admission::Request {
        route: "collect",
        key: &key,
        origin,
        ip: submission.ip,
        valid: true,
        metered: true,
        success_status: 202,
        invalid_status: 400,
        events: Some(payload),
        upload: None,
        latency: started.elapsed(),
    };
    let accepted = match admission::admit(state, &admission).await {
        Ok(Decision::Admitted {
            key_id,
            rate: limits,
            ..
        }) => {
            telemetry::record_key_id(key_id);
            *rate = limits;
            events.len()
        }
        Ok(Decision::Refused {
            error,
            rate: limits,
        }) => {
            *rate = limits;
            return Err(error);
        }
        // The queue holds its capacity: the events go straight to Postgres,
        // and the request is counted there, since admit.lua did not run.
        Ok(Decision::QueueFull) => {
            tracing::warn!("the event queue is full; writing events straight to Postgres");
            write_direct(state, &submission, true, Fallback::QueueFull).await?
        }
        Err(error) if state.config.admission.fails_open("collect") => {
            tracing::error!(error = ?error.error, "admission failed; writing events straight to Postgres");
            // Counted here only if admit.lua surely did not count it.
            write_direct(
                state,
                &submission,
                !error.may_have_run,
                Fallback::Unavailable,
            )
            .await?
        }
        Err(error) => {
            tracing::error!(error = ?error.error, "admission failed; collect fails closed");
            return Err(ApiError::Unavailable {
                message: "event collection is unavailable; retry shortly".into(),
                retry_after: Duration::from_secs(5),
            });
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        Accepted {
            accepted,
            rejected,
            dropped_as_bot,
        },
    ))
}

fn body_error(error: BodyError) -> ApiError {
    if error.is_too_large() {
        ApiError::TooLarge {
            code: error.code(),
            message: error.to_string(),
        }
    } else {
        ApiError::BadRequest {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// One collect request, ready to enqueue.
struct Submission<'a> {
    key: &'a PresentedKey,
    origin: &'a str,
    events: &'a [Event],
    ip: &'a str,
    user_agent: &'a str,
}

fn origin_not_allowed(origin: &str) -> ApiError {
    ApiError::Forbidden {
        code: "origin_not_allowed",
        message: format!(
            "origin `{}` is not allowed to use this key",
            origin.chars().take(100).collect::<String>()
        ),
    }
}

/// Writes the events straight to Postgres, the way the drain would, after
/// checking the key there, and counts the request in the usage tables if
/// `count`.
/// Visitor ids need the daily salt, which lives in Redis, so these events
/// have none. If Postgres fails too, the client is told to retry: nothing
/// was accepted. (Events written before a failed count stay; a client that
/// resends them with its own event ids, as t.js does, does not double them.)
async fn write_direct(
    state: &AppState,
    submission: &Submission<'_>,
    count: bool,
    why: Fallback,
) -> Result<usize, ApiError> {
    let unavailable = |error: anyhow::Error| {
        tracing::error!(error = ?error, "Postgres unavailable too; refusing the events");
        ApiError::Unavailable {
            message: "event storage is unavailable; retry later".into(),
            retry_after: Duration::from_secs(30),
        }
    };
    let key = apikeys::lookup(&state.db, submission.key, state.clock.now())
        .await
        .map_err(unavailable)?;
    let api_key_id = auth::require_active(&key, state.clock.now())?;
    telemetry::record_key_id(api_key_id);
    if key.kind == KeyKind::Pk
        && !key.origins.is_empty()
        && !key.origins.iter().any(|o| o == submission.origin)
    {
        return Err(origin_not_allowed(submission.origin));
    }
    let now = state.clock.now();
    let day = apikeys::key_day(now, apikeys::zone(&key.timezone));
    // Redis's limits cannot be asked, but Postgres's bans and the synced
    // use of the quotas can: a banned key or client, or a key whose quota
    // Postgres already shows used up, gets no free pass from an outage.
    let ip = (key.kind == KeyKind::Pk).then_some(submission.ip);
    fallback::check_limits_directly(state, api_key_id, ip, day, key.limits.as_ref(), unavailable)
        .await?;
    let rows: Vec<StoredEvent> = submission
        .events
        .iter()
        .map(|event| StoredEvent {
            api_key_id,
            visitor_id: None,
            event: event.clone(),
        })
        .collect();
    // One transaction: the events, the request's count and the fallback's,
    // all or none, so that a client told to retry never has its events
    // (server-assigned ids and all) stored twice. Postgres may end one of
    // two colliding transactions as a deadlock; it is then run again.
    let mut tries = 0;
    loop {
        tries += 1;
        match write_direct_once(state, &rows, count, why, (api_key_id, day, now)).await {
            Err(error) if tries < 3 && is_retryable(&error) => {
                tracing::warn!(error = ?error, "a direct write collided; running it again");
            }
            other => break other.map_err(unavailable)?,
        }
    }
    Ok(rows.len())
}

/// The direct write's one transaction.
async fn write_direct_once(
    state: &AppState,
    rows: &[StoredEvent],
    count: bool,
    why: Fallback,
    (api_key_id, day, now): (Uuid, chrono::NaiveDate, chrono::DateTime<chrono::Utc>),
) -> anyhow::Result<()> {
    store::ensure_partitions(&state.db, rows)
        .await
        .context("creating the events' partitions")?;
    let mut transaction = state
        .db
        .pool()
        .begin()
        .await
        .context("starting the direct write")?;
    if !rows.is_empty() {
        store::store_in(&state.db, &mut transaction, rows)
            .await
            .context("writing events straight to Postgres")?;
    }
    // When the admission script surely did not count this request (it never
    // ran, or settled as not run), the usage it would have moved through
    // the sync goes straight to the same tables, on the key's day. When it
    // may have run (Upstash silent past the resolve time), its count stands.
    if count {
        crate::metrics::count_directly(&state.db, &mut transaction, api_key_id, day, now, true)
            .await?;
    }
    state
        .db
        .query(
            "INSERT INTO operational_counters (name, value) VALUES ($2, $1)
             ON CONFLICT (name) DO UPDATE
                SET value = operational_counters.value + EXCLUDED.value, updated_at = now()",
        )
        .bind(rows.len() as i64)
        .bind(why.counter())
        .execute(&mut *transaction)
        .await
        .context("counting the direct write")?;
    transaction
        .commit()
        .await
        .context("committing the direct write")?;
    Ok(())
}

/// Whether Postgres ended the transaction to break a deadlock or a
/// serialization conflict, which running it again resolves.
fn is_retryable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|error| error.as_database_error())
            .and_then(|error| error.code())
            .is_some_and(|code| code == "40P01" || code == "40001")
    })
}

/// Why collect wrote straight to Postgres, as queue-status counts it.
#[derive(Debug, Clone, Copy)]
enum Fallback {
    /// Admission could not be decided (Upstash unreachable or failing).
    Unavailable,
    /// The queue held its capacity of events.
    QueueFull,
}

impl Fallback {
    /// The `operational_counters` row.
    fn counter(self) -> &'static str {
        match self {
            Fallback::Unavailable => "direct_to_postgres_events",
            Fallback::QueueFull => "queue_full_events",
        }
    }
}
