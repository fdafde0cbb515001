//! The delivery cron's run: finds the keys about to expire, claims the
//! alerts that are due, sends them, and records every attempt.
//!
//! A run claims alerts by writing a lease into them (`leased_until`), in
//! one statement that skips rows another run has locked, so two runs at
//! once never send the same alert together. A run that dies mid-delivery
//! leaves its leases to expire, and a later run sends those alerts again
//! under the same webhook-id. A run records its outcomes only where its
//! lease still stands, so a run that outlived its lease records nothing
//! over the run that took the alert on.
//!
//! A failed attempt is tried again after a delay that doubles each time (a
//! minute, then 2, 4, … capped at six hours), until 24 hours after the
//! alert was made; an attempt that fails with no time left makes the alert
//! `failed`. An alert whose owner has no endpoint, on a deployment without
//! one, waits: an endpoint set within those 24 hours still gets it, and
//! after them it is `undeliverable`. Due times follow the app's clock.
//!
//! The statements of a run are a fixed handful, whatever the number of
//! alerts: the expiring keys' insert, the sweep of undeliverable alerts,
//! the claim, and one transaction of two `UNNEST` statements for the
//! outcomes.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use serde::Serialize;
use sqlx::Row;

use super::{rfc3339, webhook, Endpoint, WebhookSecret, WebhookUrl};
use crate::{fault, state::AppState};

/// Alerts one run claims: with [`CONCURRENCY`] and [`REQUEST_TIMEOUT`] the
/// run ends within about 40 s even if every endpoint hangs, inside the
/// cron's 60 s.
const BATCH: i64 = 64;
/// Webhooks in flight at once.
const CONCURRENCY: usize = 16;
/// How long one webhook request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run holds the alerts it claimed: longer than a run can last.
pub const LEASE: TimeDelta = TimeDelta::minutes(5);
/// How long after its creation an alert is still tried.
pub const RETRY_WINDOW: TimeDelta = TimeDelta::hours(24);
/// The first retry's delay, doubled for each further attempt.
const FIRST_RETRY: TimeDelta = TimeDelta::minutes(1);
/// The longest delay between two attempts.
const LONGEST_RETRY: TimeDelta = TimeDelta::hours(6);

/// What one run did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct DeliveryReport {
    /// `key.expiring` alerts made for keys that expire within seven days.
    pub expiring: u64,
    /// Alerts claimed and sent.
    pub sent: u64,
    pub delivered: u64,
    /// Sent, not delivered, to be tried again.
    pub retrying: u64,
    /// Sent, not delivered, with no time left: now `failed`.
    pub failed: u64,
    /// Alerts that waited 24 hours for an endpoint: now `undeliverable`.
    pub undeliverable: u64,
    pub statements: u64,
    pub duration_ms: u64,
}

/// An alert claimed for sending.
struct Claimed {
    id: String,
    body: Vec<u8>,
    created_at: DateTime<Utc>,
    /// Attempts before this one.
    attempts: i32,
    endpoint: Option<Endpoint>,
    lease: DateTime<Utc>,
}

/// The delay before the attempt after `attempts` failed ones.
pub fn retry_delay(attempts: i32) -> TimeDelta {
    let doublings = attempts.clamp(1, 20) - 1;
    (FIRST_RETRY * 2i32.pow(doublings as u32)).min(LONGEST_RETRY)
}

/// One run of the delivery cron.
pub async fn run(state: &AppState) -> anyhow::Result<DeliveryReport> {
    let started = std::time::Instant::now();
    let statements_before = state.db.statements();
    let db = &state.db;
    let now = state.clock.now();
    let default = state.config.alerts.webhook.as_ref();

    // Keys that expire within the notice, once each: their expires_at is
    // the alert's period, so a key whose expiry moves hears again.
    let expiring = db
        .query(
            "INSERT INTO alerts (id, api_key_id, owner, type, scope, period, threshold, payload,
                                 created_at, next_attempt_at)
             SELECT 'msg_' || gen_random_uuid(), k.id, k.owner, 'key.expiring', 'key', e.at, 0,
                    jsonb_build_object('type', 'key.expiring', 'timestamp', $3::text,
                        'data', jsonb_build_object('key_id', k.id, 'owner_id', k.owner,
                                                   'expires_at', e.at)),
                    $1, $1
             FROM api_keys k,
                  LATERAL (SELECT to_char(k.expires_at AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS at) e
             WHERE k.status = 'active' AND k.expires_at > $1 AND k.expires_at <= $2
             ON CONFLICT DO NOTHING",
        )
        .bind(now)
        .bind(now + super::EXPIRING_NOTICE)
        .bind(rfc3339(now))
        .execute(db.executor())
        .await
        .context("inserting the alerts of keys about to expire")?
        .rows_affected();

    // Alerts that found no endpoint for the whole window.
    let undeliverable = db
        .query(
            "UPDATE alerts a SET state = 'undeliverable', leased_until = NULL,
                    last_error = 'no webhook endpoint for its owner or the deployment'
             WHERE a.state = 'pending' AND a.created_at <= $1 AND NOT $2
               AND NOT EXISTS (SELECT 1 FROM alert_endpoints e WHERE e.owner = a.owner)",
        )
        .bind(now - RETRY_WINDOW)
        .bind(default.is_some())
        .execute(db.executor())
        .await
        .context("giving up on alerts without an endpoint")?
        .rows_affected();

    let mut report = DeliveryReport {
        expiring,
        undeliverable,
        ..DeliveryReport::default()
    };
    let lease = now + LEASE;
    let rows = db
        .query(
            "WITH due AS (
                SELECT a.id FROM alerts a
                WHERE a.state = 'pending' AND a.next_attempt_at <= $1
                  AND (a.leased_until IS NULL OR a.leased_until <= $1)
                  AND ($3 OR EXISTS (SELECT 1 FROM alert_endpoints e WHERE e.owner = a.owner))
                ORDER BY a.next_attempt_at
                LIMIT $4
                FOR UPDATE SKIP LOCKED
             )
             UPDATE alerts a SET leased_until = $2
             FROM due WHERE a.id = due.id
             RETURNING a.id, a.payload::text AS body, a.created_at, a.attempts,
                       (SELECT e.url FROM alert_endpoints e WHERE e.owner = a.owner) AS url,
                       (SELECT e.secret FROM alert_endpoints e WHERE e.owner = a.owner) AS secret",
        )
        .bind(now)
        .bind(lease)
        .bind(default.is_some())
        .bind(BATCH)
        .fetch_all(db.executor())
        .await
        .context("claiming the alerts that are due")?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let url: Option<String> = row.try_get("url")?;
        let secret: Option<String> = row.try_get("secret")?;
        // An owner's endpoint the table holds was checked when it was set;
        // one that no longer parses is reported on the attempt.
        let endpoint = match (url, secret) {
            (Some(url), Some(secret)) => WebhookUrl::parse(&url)
                .and_then(|url| {
                    Ok(Endpoint {
                        url,
                        secret: WebhookSecret::parse(&secret)?,
                    })
                })
                .ok(),
            _ => default.cloned(),
        };
        claimed.push(Claimed {
            id: row.try_get("id")?,
            body: row.try_get::<String, _>("body")?.into_bytes(),
            created_at: row.try_get("created_at")?,
            attempts: row.try_get("attempts")?,
            endpoint,
            lease,
        });
    }
    fault::point("alerts:after-claim");

    if !claimed.is_empty() {
        let client = webhook::client(REQUEST_TIMEOUT)?;
        // The signature's timestamp is the real sending time, not the app's
        // clock: receivers check it against their own clocks.
        let timestamp = Utc::now().timestamp();
        let outcomes: Vec<(Claimed, webhook::Outcome)> = futures::stream::iter(claimed)
            .map(|alert| {
                let client = &client;
                async move {
                    let outcome = match &alert.endpoint {
                        Some(endpoint) => {
                            webhook::send(
                                client,
                                endpoint,
                                &alert.id,
                                timestamp,
                                alert.body.clone(),
                            )
                            .await
                        }
                        None => webhook::Outcome {
                            status: None,
                            error: Some("the owner's endpoint is malformed".into()),
                            duration: Duration::ZERO,
                        },
                    };
                    (alert, outcome)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        fault::point("alerts:after-send");
        record(state, now, &outcomes, &mut report).await?;
    }

    report.statements = state.db.statements() - statements_before;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Records what came of each attempt, in one transaction: the alerts'
/// new states and one row per attempt.
async fn record(
    state: &AppState,
    now: DateTime<Utc>,
    outcomes: &[(Claimed, webhook::Outcome)],
    report: &mut DeliveryReport,
) -> anyhow::Result<()> {
    let db = &state.db;
    let mut ids = vec![];
    let mut leases = vec![];
    let mut states = vec![];
    let mut next = vec![];
    let mut delivered_at = vec![];
    let mut errors = vec![];
    let mut attempts = vec![];
    let mut urls = vec![];
    let mut statuses = vec![];
    let mut durations = vec![];
    for (alert, outcome) in outcomes {
        let attempt = alert.attempts + 1;
        let retry_at = now + retry_delay(attempt);
        let (alert_state, next_at) = if outcome.delivered() {
            report.delivered += 1;
            ("delivered", now)
        } else if retry_at <= alert.created_at + RETRY_WINDOW {
            report.retrying += 1;
            ("pending", retry_at)
        } else {
            report.failed += 1;
            ("failed", now)
        };
        report.sent += 1;
        ids.push(alert.id.as_str());
        leases.push(alert.lease);
        states.push(alert_state);
        next.push(next_at);
        delivered_at.push(outcome.delivered().then_some(now));
        errors.push(outcome.error.as_deref());
        attempts.push(attempt);
        urls.push(
            alert
                .endpoint
                .as_ref()
                .map_or("", |endpoint| endpoint.url.as_str()),
        );
        statuses.push(outcome.status.map(i32::from));
        durations.push(outcome.duration.as_millis().min(i32::MAX as u128) as i32);
    }
    let mut tx = db
        .pool()
        .begin()
        .await
        .context("starting to record deliveries")?;
    db.query(
        "INSERT INTO alert_attempts (alert_id, attempt, at, url, status, error, duration_ms)
         SELECT t.id, t.attempt, $3, t.url, t.status, t.error, t.duration_ms
         FROM UNNEST($1::text[], $2::int[], $4::text[], $5::int[], $6::text[], $7::int[])
              AS t(id, attempt, url, status, error, duration_ms)
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(now)
    .bind(&urls)
    .bind(&statuses)
    .bind(&errors)
    .bind(&durations)
    .execute(&mut *tx)
    .await
    .context("recording delivery attempts")?;
    // Only where this run's lease still stands: a run that outlived it
    // leaves the alert to the run that took it on.
    db.query(
        "UPDATE alerts a SET state = t.state, attempts = a.attempts + 1,
                next_attempt_at = t.next, leased_until = NULL,
                delivered_at = t.delivered_at, last_error = t.error
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::timestamptz[],
                     $5::timestamptz[], $6::text[])
              AS t(id, lease, state, next, delivered_at, error)
         WHERE a.id = t.id AND a.leased_until = t.lease",
    )
    .bind(&ids)
    .bind(&leases)
    .bind(&states)
    .bind(&next)
    .bind(&delivered_at)
    .bind(&errors)
    .execute(&mut *tx)
    .await
    .context("recording the alerts' states")?;
    tx.commit().await.context("committing the deliveries")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_to_a_cap() {
        assert_eq!(retry_delay(1), TimeDelta::minutes(1));
        assert_eq!(retry_delay(2), TimeDelta::minutes(2));
        assert_eq!(retry_delay(5), TimeDelta::minutes(16));
        assert_eq!(retry_delay(9), TimeDelta::minutes(256));
        assert_eq!(retry_delay(10), TimeDelta::hours(6));
        assert_eq!(retry_delay(1_000), TimeDelta::hours(6));
    }

    #[test]
    fn an_alert_gets_about_a_dozen_attempts_in_its_window() {
        let mut at = TimeDelta::zero();
        let mut attempts = 0;
        while at <= RETRY_WINDOW {
            attempts += 1;
            at += retry_delay(attempts);
        }
        assert_eq!(attempts, 12);
    }
}
