//! What a route checks in Postgres when admission cannot be decided
//! (Upstash down or slow) and it is configured to fail open: the same
//! rules admit.lua applies, from the records Postgres keeps. Redis's
//! per-minute limiter cannot be asked, but the key's bans, its synced use of
//! its quotas and its own upload policy can, so an outage is no free pass.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use uuid::Uuid;

use crate::{
    admission::Refusal,
    apikeys::{self, CachedKey},
    error::ApiError,
    state::AppState,
    uploads::{UploadRequest, DEFAULT_CONTENT_TYPES, DEFAULT_MAX_BYTES},
};

/// The bans and quotas Postgres knows: a ban in force
/// on the key or (for publishable keys) the client IP, and the key's use of
/// its daily and monthly quotas as far as it is synced. `unavailable` turns
/// Postgres's own failure into the route's answer.
pub async fn check_limits_directly(
    state: &AppState,
    key_id: Uuid,
    ip: Option<&str>,
    day: chrono::NaiveDate,
    limits: Option<&apikeys::CachedLimits>,
    unavailable: impl FnOnce(anyhow::Error) -> ApiError,
) -> Result<(), ApiError> {
    use sqlx::Row;
    let month_start = chrono::Datelike::with_day(&day, 1).unwrap_or(day);
    let row = state
        .db
        .query(
            "SELECT EXISTS (SELECT 1 FROM bans
                             WHERE lifted_at IS NULL AND (expires_at IS NULL OR expires_at > now())
                               AND ((subject_type = 'key' AND subject = $1::text)
                                    OR (subject_type = 'ip' AND subject = $2))) AS banned,
                    coalesce(sum(successful_requests) FILTER (WHERE day = $3), 0)::bigint AS day_used,
                    coalesce(sum(successful_requests), 0)::bigint AS month_used
             FROM api_key_usage_daily
             WHERE api_key_id = $1 AND day >= $4 AND day < ($4 + interval '1 month')",
        )
        .bind(key_id)
        .bind(ip.unwrap_or(""))
        .bind(day)
        .bind(month_start)
        .fetch_one(state.db.executor())
        .await
        .context("checking the key's bans and quotas in Postgres")
        .map_err(unavailable)?;
    let int = |name: &str| row.try_get::<i64, _>(name).unwrap_or(0).max(0) as u64;
    if row.try_get::<bool, _>("banned").unwrap_or(false) {
        return Err(ApiError::Forbidden {
            code: "banned",
            message: "this key or client is banned".into(),
        });
    }
    let over = |limit: Option<u64>, used: u64| limit.is_some_and(|limit| used >= limit);
    let quota = |code: &'static str, what: &str| ApiError::TooManyRequests {
        code,
        message: format!("the {what} quota of this key is used up"),
        retry_after: Duration::from_secs(3_600),
    };
    if over(limits.and_then(|l| l.day), int("day_used")) {
        return Err(quota("daily_quota_exceeded", "daily"));
    }
    if over(limits.and_then(|l| l.month), int("month_used")) {
        return Err(quota("monthly_quota_exceeded", "monthly"));
    }
    Ok(())
}

/// An upload checked against the key's own policy, as admit.lua checks it:
/// its content types (or the default list), its size limit (or the
/// default), and the provider (asked for, the key's default, or the first
/// configured), which must be configured. Returns the provider.
pub fn check_upload(
    key: &CachedKey,
    upload: &UploadRequest,
    configured: &BTreeMap<&str, bool>,
    fallback: Option<&str>,
) -> Result<String, ApiError> {
    let policy = key.upload.clone().unwrap_or_default();
    let allowed = match &policy.types {
        Some(types) => types.contains(&upload.content_type),
        None => DEFAULT_CONTENT_TYPES.contains(&upload.content_type.as_str()),
    };
    if !allowed {
        return Err(Refusal::ContentTypeNotAllowed.into_error());
    }
    let max = policy.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if upload.size > max {
        return Err(Refusal::FileTooLarge(max.to_string()).into_error());
    }
    let provider = upload
        .provider
        .map(|p| p.as_str().to_owned())
        .or(policy.provider)
        .or(fallback.map(str::to_owned));
    match provider {
        Some(provider) if configured.get(provider.as_str()) == Some(&true) => Ok(provider),
        provider => Err(Refusal::ProviderNotConfigured(provider.unwrap_or_default()).into_error()),
    }
}
