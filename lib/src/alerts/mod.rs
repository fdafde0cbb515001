//! Usage alerts: events about a key that fire exactly once, delivered to
//! its owner as Standard Webhooks (see docs/alerts.md).
//!
//! - `quota.threshold`: a request crossed a percentage
//!   (`TOLLGATE_ALERT_THRESHOLDS`) of the key's daily or monthly quota.
//!   `admit.lua` sees the crossing in the same round trip that counts the
//!   request, and records it in the key's write-behind hash next to its
//!   counters; the metrics sync inserts it here ([`Mark`], [`insert`]).
//! - `key.banned`: the admission script's escalation banned the key
//!   (recorded the same way), or the bans code banned it ([`record_ban`]).
//! - `key.expiring`: the key's `expires_at` is within seven days; the
//!   delivery cron finds those keys itself, so an unused key hears too.
//!
//! Exactly once rests on Postgres: `alerts_once`, a unique
//! (api_key_id, type, scope, period, threshold), and every insert is
//! `ON CONFLICT DO NOTHING`. A sync batch applied twice, a threshold
//! recorded again after a Redis flush, or two cron runs at once all meet
//! the row already there. Delivery ([`delivery`]) is at least once, under
//! one webhook-id per alert, which receivers use to drop repeats.

pub mod delivery;
pub mod webhook;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::RngCore;
use serde_json::json;
use uuid::Uuid;

use crate::db::Db;

pub use webhook::{Endpoint, WebhookSecret, WebhookUrl};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertType {
    /// A percentage of a daily or monthly quota was reached.
    QuotaThreshold,
    /// The key was banned.
    KeyBanned,
    /// The key expires within seven days.
    KeyExpiring,
}

impl AlertType {
    /// The webhook's `type`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QuotaThreshold => "quota.threshold",
            Self::KeyBanned => "key.banned",
            Self::KeyExpiring => "key.expiring",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "quota.threshold" => Some(Self::QuotaThreshold),
            "key.banned" => Some(Self::KeyBanned),
            "key.expiring" => Some(Self::KeyExpiring),
            _ => None,
        }
    }
}

/// How far ahead of a key's `expires_at` its `key.expiring` alert fires.
pub const EXPIRING_NOTICE: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// The reason admit.lua's escalation gives its bans.
const ESCALATION_REASON: &str = "rate limit violations";

/// An alert as admit.lua records it in the key's write-behind hash: the
/// field `<day>|al:<type>:<scope>:<period>:<threshold>:<limit>:<used>`,
/// whose value is the event's time in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub kind: AlertType,
    /// `day` or `month` for a quota; `key` for a ban.
    pub scope: String,
    /// The quota's day or month; a ban's start in Unix milliseconds.
    pub period: String,
    /// The percentage of the quota; 0 for a ban.
    pub threshold: i32,
    /// The quota's limit; a ban's end in Unix milliseconds, 0 for good.
    pub limit: i64,
    /// The quota's use when it was recorded.
    pub used: i64,
    pub at_ms: i64,
}

impl Mark {
    /// Parses a counter name after its `al:` (`quota.threshold:day:…`).
    pub fn parse(counter: &str, at_ms: i64) -> Option<Self> {
        let mut parts = counter.split(':');
        let kind = AlertType::parse(parts.next()?)?;
        let scope = parts.next()?.to_owned();
        let period = parts.next()?.to_owned();
        let threshold = parts.next()?.parse().ok()?;
        let limit = parts.next()?.parse().ok()?;
        let used = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        let valid = match kind {
            AlertType::QuotaThreshold => {
                (scope == "day" || scope == "month") && (1..=100).contains(&threshold)
            }
            AlertType::KeyBanned => scope == "key" && period.parse::<i64>().is_ok(),
            AlertType::KeyExpiring => false,
        };
        valid.then_some(Self {
            kind,
            scope,
            period,
            threshold,
            limit,
            used,
            at_ms,
        })
    }

    /// The alert to insert for `key_id`.
    pub(crate) fn into_alert(self, key_id: Uuid) -> Option<NewAlert> {
        let at = DateTime::from_timestamp_millis(self.at_ms)?;
        let (period, data) = match self.kind {
            AlertType::QuotaThreshold => {
                let quota = if self.scope == "day" {
                    "daily"
                } else {
                    "monthly"
                };
                let data = json!({
                    "key_id": key_id,
                    "quota": quota,
                    "period": self.period,
                    "threshold": self.threshold,
                    "limit": self.limit,
                    "used": self.used,
                });
                (self.period, data)
            }
            AlertType::KeyBanned => {
                let start = rfc3339(DateTime::from_timestamp_millis(self.period.parse().ok()?)?);
                let until = (self.limit > 0)
                    .then(|| DateTime::from_timestamp_millis(self.limit).map(rfc3339))
                    .flatten();
                let data = json!({
                    "key_id": key_id,
                    "reason": ESCALATION_REASON,
                    "banned_at": start,
                    "until": until,
                });
                (start, data)
            }
            AlertType::KeyExpiring => return None,
        };
        Some(NewAlert {
            key_id,
            kind: self.kind,
            scope: self.scope,
            period,
            threshold: self.threshold,
            payload: payload(self.kind, at, data),
            at,
        })
    }
}

/// An alert to insert: [`insert`] adds its id and its owner.
#[derive(Debug, Clone)]
pub(crate) struct NewAlert {
    key_id: Uuid,
    kind: AlertType,
    scope: String,
    period: String,
    threshold: i32,
    /// The webhook's body, without `data.owner_id`.
    payload: serde_json::Value,
    at: DateTime<Utc>,
}

/// A time as alerts write it: RFC 3339, UTC, milliseconds.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A webhook's body, in the Standard Webhooks shape.
fn payload(kind: AlertType, at: DateTime<Utc>, data: serde_json::Value) -> serde_json::Value {
    json!({"type": kind.as_str(), "timestamp": rfc3339(at), "data": data})
}

/// A new webhook-id: `msg_` and a UUID, kept by the alert for every attempt.
fn message_id() -> String {
    format!("msg_{}", Uuid::new_v4())
}

/// Inserts alerts in one statement, each at most once: one already there
/// (same key, type, scope, period and threshold) is left alone, and so is
/// one whose key is gone. The owner is the key's as it is now; the first
/// attempt is due at `due`. Returns how many were new.
pub(crate) async fn insert<'e>(
    db: &Db,
    executor: impl sqlx::PgExecutor<'e>,
    alerts: &[NewAlert],
    due: DateTime<Utc>,
) -> anyhow::Result<u64> {
    if alerts.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = alerts.iter().map(|_| message_id()).collect();
    let inserted = db
        .query(
            "INSERT INTO alerts (id, api_key_id, owner, type, scope, period, threshold, payload,
                                 created_at, next_attempt_at)
             SELECT t.id, t.key_id, k.owner, t.type, t.scope, t.period, t.threshold,
                    jsonb_set(t.payload::jsonb, '{data,owner_id}',
                              coalesce(to_jsonb(k.owner), 'null'::jsonb)),
                    t.at, $9
             FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[],
                         $7::text[], $8::timestamptz[])
                  AS t(id, key_id, type, scope, period, threshold, payload, at)
             JOIN api_keys k ON k.id = t.key_id
             ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(alerts.iter().map(|a| a.key_id).collect::<Vec<_>>())
        .bind(alerts.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>())
        .bind(alerts.iter().map(|a| a.scope.as_str()).collect::<Vec<_>>())
        .bind(alerts.iter().map(|a| a.period.as_str()).collect::<Vec<_>>())
        .bind(alerts.iter().map(|a| a.threshold).collect::<Vec<_>>())
        .bind(
            alerts
                .iter()
                .map(|a| a.payload.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(alerts.iter().map(|a| a.at).collect::<Vec<_>>())
        .bind(due)
        .execute(executor)
        .await
        .context("inserting alerts")?
        .rows_affected();
    Ok(inserted)
}

/// Records a `key.banned` alert for a ban placed on a key by an operator
/// (the CLI or the management API), to be delivered by the next run of the
/// delivery cron. `at` is the ban's start, which makes it this ban's alert:
/// calling again for the same ban records nothing more. `until` is `None`
/// for a ban for good. Run it in the transaction that adds the ban, so that
/// the alert exists if and only if the ban does. Returns whether it was new.
pub async fn record_ban<'e>(
    db: &Db,
    executor: impl sqlx::PgExecutor<'e>,
    key_id: Uuid,
    reason: &str,
    until: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let start = rfc3339(at);
    let data = json!({
        "key_id": key_id,
        "reason": reason,
        "banned_at": start,
        "until": until.map(rfc3339),
    });
    let alert = NewAlert {
        key_id,
        kind: AlertType::KeyBanned,
        scope: "key".to_owned(),
        period: start,
        threshold: 0,
        payload: payload(AlertType::KeyBanned, at, data),
        at,
    };
    Ok(insert(db, executor, &[alert], at).await? == 1)
}

/// An owner's endpoint as the management API shows it: never its secret,
/// which is shown once, when set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointInfo {
    #[serde(rename = "owner_id")]
    pub owner: String,
    pub url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Sets the webhook endpoint of a key owner, replacing any it had, with a
/// new signing secret, which is returned: the only time it is shown.
/// Alerts already pending go to the new endpoint.
pub async fn set_endpoint<'e>(
    db: &Db,
    executor: impl sqlx::PgExecutor<'e>,
    owner: &str,
    url: &WebhookUrl,
) -> anyhow::Result<WebhookSecret> {
    let secret = WebhookSecret::generate();
    db.query(
        "INSERT INTO alert_endpoints (owner, url, secret) VALUES ($1, $2, $3)
         ON CONFLICT (owner) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret,
                                           updated_at = now()",
    )
    .bind(owner)
    .bind(url.as_str())
    .bind(secret.expose())
    .execute(executor)
    .await
    .context("setting an alert endpoint")?;
    Ok(secret)
}

/// The webhook endpoint of a key owner, if it has one of its own.
pub async fn get_endpoint(db: &Db, owner: &str) -> anyhow::Result<Option<EndpointInfo>> {
    use sqlx::Row;
    let row = db
        .query("SELECT owner, url, created_at, updated_at FROM alert_endpoints WHERE owner = $1")
        .bind(owner)
        .fetch_optional(db.executor())
        .await
        .context("reading an alert endpoint")?;
    row.map(|row| {
        Ok(EndpointInfo {
            owner: row.try_get("owner")?,
            url: row.try_get("url")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    })
    .transpose()
}

/// Deletes a key owner's endpoint; its alerts then go to the deployment's
/// endpoint, if there is one. Returns whether there was one to delete.
pub async fn delete_endpoint<'e>(
    db: &Db,
    executor: impl sqlx::PgExecutor<'e>,
    owner: &str,
) -> anyhow::Result<bool> {
    let deleted = db
        .query("DELETE FROM alert_endpoints WHERE owner = $1")
        .bind(owner)
        .execute(executor)
        .await
        .context("deleting an alert endpoint")?
        .rows_affected();
    Ok(deleted == 1)
}

/// 32 random bytes, for a signing secret.
fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0192f0c4-7d2e-7c1a-9a55-3f1d2b6e8a10";

    #[test]
    fn a_quota_mark_becomes_a_standard_webhooks_payload() {
        let mark = Mark::parse(
            "quota.threshold:month:2026-12:80:1000:800",
            1_765_100_000_000,
        )
        .expect("a mark");
        let alert = mark.into_alert(KEY.parse().unwrap()).unwrap();
        assert_eq!(alert.period, "2026-12");
        assert_eq!(alert.threshold, 80);
        assert_eq!(
            alert.payload,
            json!({
                "type": "quota.threshold",
                "timestamp": "2025-12-07T09:33:20.000Z",
                "data": {"key_id": KEY, "quota": "monthly", "period": "2026-12",
                         "threshold": 80, "limit": 1000, "used": 800}
            })
        );
    }

    #[test]
    fn a_ban_mark_is_keyed_by_the_bans_start() {
        let start = 1_765_100_000_000_i64;
        let mark = Mark::parse(
            &format!("key.banned:key:{start}:0:{}:0", start + 300_000),
            start,
        )
        .unwrap();
        let alert = mark.into_alert(KEY.parse().unwrap()).unwrap();
        assert_eq!(alert.period, "2025-12-07T09:33:20.000Z");
        assert_eq!(alert.payload["data"]["until"], "2025-12-07T09:38:20.000Z");
        let forever = Mark::parse(&format!("key.banned:key:{start}:0:0:0"), start).unwrap();
        let alert = forever.into_alert(KEY.parse().unwrap()).unwrap();
        assert_eq!(alert.payload["data"]["until"], serde_json::Value::Null);
    }

    #[test]
    fn malformed_marks_are_refused() {
        for bad in [
            "",
            "quota.threshold:day:2026-12-07:80:1000",
            "quota.threshold:day:2026-12-07:80:1000:800:9",
            "quota.threshold:week:2026-12-07:80:1000:800",
            "quota.threshold:day:2026-12-07:0:1000:800",
            "quota.threshold:day:2026-12-07:101:1000:800",
            "key.banned:key:soon:0:0:0",
            "key.expiring:key:2026-12-07:0:0:0",
            "usage.spike:day:2026-12-07:80:1000:800",
        ] {
            assert_eq!(Mark::parse(bad, 1), None, "{bad}");
        }
    }
}
