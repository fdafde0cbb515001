//! `GET /api/cron/queue-status`: the health of the event pipeline, for
//! operators and the cron. It takes the cron secret only: it reports every
//! tenant's traffic, which no tenant's key may read.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;
use sqlx::Row;

use crate::{auth, error::ApiError, queue, response::json_response, state::AppState};

#[derive(Debug, Serialize)]
struct QueueStatus {
    /// `ok`, `warning` or `critical`.
    status: &'static str,
    /// Why the status is not `ok`.
    reasons: Vec<String>,
    queue: Queued,
    in_flight: InFlight,
    dead_letters: i64,
    last_drain: Option<LastDrain>,
    fallbacks: Fallbacks,
    alerts: Alerts,
    thresholds: Thresholds,
}

/// Usage alerts (`alerts`), by delivery state.
#[derive(Debug, Serialize)]
struct Alerts {
    /// Waiting for their first or next attempt.
    pending: i64,
    /// Given up on: no 2xx within 24 hours.
    failed: i64,
    /// Given up on: no endpoint for 24 hours.
    undeliverable: i64,
}

#[derive(Debug, Serialize)]
struct Queued {
    /// Events waiting for a drain.
    events: u64,
    /// Collect requests (queue entries) holding them.
    requests: u64,
    oldest_age_seconds: Option<f64>,
    /// Bytes of events in the queue, claimed or not, against its capacity
    /// (`TOLLGATE_QUEUE_MAX_BYTES`); past it collect writes to Postgres.
    bytes: u64,
    capacity_bytes: u64,
}

#[derive(Debug, Serialize)]
struct InFlight {
    /// Entries claimed by a drain and not yet acknowledged.
    requests: u64,
    /// Of those, the ones past their visibility timeout: their run died, and
    /// the next run reclaims them.
    expired: u64,
    oldest_age_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
struct LastDrain {
    at: DateTime<Utc>,
    events: u64,
    duration_ms: u64,
    events_per_second: f64,
}

#[derive(Debug, Serialize)]
struct Fallbacks {
    /// Events written straight to Postgres while Redis was unreachable.
    direct_to_postgres_events: i64,
    /// Events written straight to Postgres because the queue was full.
    queue_full_events: i64,
    /// Events dropped because a bot sent them.
    bots_dropped: u64,
    /// Requests admitted without limits because admission could not be
    /// decided (routes configured to fail open, other than collect).
    fail_open_admissions: i64,
}

#[derive(Debug, Serialize)]
struct Thresholds {
    warning_depth: u64,
    critical_depth: u64,
    warning_lag_seconds: u64,
    critical_lag_seconds: u64,
}

/// Handles `GET /api/cron/queue-status`.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    match status(state, &request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn status(state: &AppState, request: &Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
    if request.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed { allow: "GET" });
    }
    // It reports the whole deployment, so it is for operators: a tenant
    // sees its own pipeline through analytics.
    auth::require_cron_secret(&state.config.cron_secret, request)?;
    let config = &state.config.pipeline;
    let redis = queue::state(&state.upstash, &state.keys, config.drain_visibility)
        .await
        .map_err(|error| {
            tracing::error!(error = ?error, "queue-status could not reach Upstash");
            ApiError::Unavailable {
                message: "Upstash is unreachable, so the queue cannot be inspected".into(),
                retry_after: Duration::from_secs(10),
            }
        })?;
    let row = state
        .db
        .query(
            "SELECT (SELECT count(*) FROM dead_letter_events) AS dead_letters,
                    (SELECT coalesce(sum(value), 0)::bigint FROM operational_counters
                      WHERE name = 'direct_to_postgres_events') AS direct_writes,
                    (SELECT coalesce(sum(value), 0)::bigint FROM operational_counters
                      WHERE name = 'queue_full_events') AS queue_full,
                    (SELECT coalesce(sum(value), 0)::bigint FROM operational_counters
                      WHERE name = 'fail_open_admissions') AS fail_open,
                    (SELECT count(*) FROM alerts WHERE state = 'pending') AS alerts_pending,
                    (SELECT count(*) FROM alerts WHERE state = 'failed') AS alerts_failed,
                    (SELECT count(*) FROM alerts WHERE state = 'undeliverable')
                        AS alerts_undeliverable",
        )
        .fetch_one(state.db.executor())
        .await
        .map_err(|error| {
            tracing::error!(error = ?error, "queue-status could not reach Postgres");
            ApiError::Unavailable {
                message: "Postgres is unreachable, so dead letters and fallbacks cannot be read"
                    .into(),
                retry_after: Duration::from_secs(10),
            }
        })?;
    let dead_letters: i64 = row.try_get("dead_letters").context("dead_letters")?;
    let direct_writes: i64 = row.try_get("direct_writes").context("direct_writes")?;
    let queue_full: i64 = row.try_get("queue_full").context("queue_full")?;
    let fail_open: i64 = row.try_get("fail_open").context("fail_open")?;
    let alerts = Alerts {
        pending: row.try_get("alerts_pending").context("alerts_pending")?,
        failed: row.try_get("alerts_failed").context("alerts_failed")?,
        undeliverable: row
            .try_get("alerts_undeliverable")
            .context("alerts_undeliverable")?,
    };

    let now_ms = state.clock.now().timestamp_millis();
    let age = |ms: Option<i64>| ms.map(|ms| ((now_ms - ms).max(0) as f64) / 1000.0);
    let stat = |name: &str| {
        redis
            .stats
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    };
    let stat_u64 = |name: &str| {
        stat(name)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            .max(0) as u64
    };

    let queued_events = stat_u64("queued_events");
    let queued_bytes = stat_u64("queued_bytes");
    let capacity = config.queue_max_bytes;
    let oldest_age = age(redis.oldest_queued_ms);
    let last_drain = stat("last_drain_at")
        .and_then(|ms| ms.parse::<i64>().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map(|at| LastDrain {
            at,
            events: stat_u64("last_drain_events"),
            duration_ms: stat_u64("last_drain_ms"),
            events_per_second: stat("last_drain_rate")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        });

    // Each finding has a severity (1 warning, 2 critical); the status is the
    // worst, and the reasons are the findings of that severity.
    let lag = oldest_age.unwrap_or(0.0);
    let findings: Vec<(usize, String)> = [
        (
            queued_events > config.critical_depth,
            2,
            format!(
                "{queued_events} events queued (critical above {})",
                config.critical_depth
            ),
        ),
        (
            queued_bytes >= capacity,
            2,
            format!(
                "the queue holds {queued_bytes} bytes of events, its capacity of {capacity}: collect is writing straight to Postgres"
            ),
        ),
        (
            lag > config.critical_lag.as_secs_f64(),
            2,
            format!(
                "the oldest queued event is {lag:.0} s old (critical above {} s)",
                config.critical_lag.as_secs()
            ),
        ),
        (
            queued_events > config.warning_depth,
            1,
            format!(
                "{queued_events} events queued (warning above {})",
                config.warning_depth
            ),
        ),
        (
            queued_bytes >= capacity / 5 * 4,
            1,
            format!("the queue holds {queued_bytes} bytes of events, over 80 % of its capacity of {capacity}"),
        ),
        (
            lag > config.warning_lag.as_secs_f64(),
            1,
            format!(
                "the oldest queued event is {lag:.0} s old (warning above {} s)",
                config.warning_lag.as_secs()
            ),
        ),
        (
            redis.expired_entries > 0,
            1,
            format!(
                "{} in-flight requests outlived their drain run and wait to be reclaimed",
                redis.expired_entries
            ),
        ),
    ]
    .into_iter()
    .filter(|(found, _, _)| *found)
    .map(|(_, severity, reason)| (severity, reason))
    .collect();
    let level = findings
        .iter()
        .map(|(severity, _)| *severity)
        .max()
        .unwrap_or(0);
    let reasons = findings
        .into_iter()
        .filter(|(severity, _)| *severity == level)
        .map(|(_, reason)| reason)
        .collect();

    let body = QueueStatus {
        status: ["ok", "warning", "critical"][level],
        reasons,
        queue: Queued {
            events: queued_events,
            requests: redis.queued_entries,
            oldest_age_seconds: oldest_age,
            bytes: queued_bytes,
            capacity_bytes: capacity,
        },
        in_flight: InFlight {
            requests: redis.pending_entries,
            expired: redis.expired_entries,
            oldest_age_seconds: age(redis.oldest_pending_ms),
        },
        dead_letters,
        last_drain,
        fallbacks: Fallbacks {
            direct_to_postgres_events: direct_writes,
            queue_full_events: queue_full,
            bots_dropped: stat_u64("bots_dropped"),
            fail_open_admissions: fail_open,
        },
        alerts,
        thresholds: Thresholds {
            warning_depth: config.warning_depth,
            critical_depth: config.critical_depth,
            warning_lag_seconds: config.warning_lag.as_secs(),
            critical_lag_seconds: config.critical_lag.as_secs(),
        },
    };
    Ok(json_response(StatusCode::OK, &body))
}
