//! `POST /api/signed-url`: a presigned upload for a secret key, behind the
//! same admission as every metered route (bans, rate limit, quotas), which
//! also counts the upload in the write-behind metrics and logs it, all in
//! one Upstash round trip and no Postgres statement.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    admission::{self, Decision, RateLimit, UploadCheck},
    apikeys::{self, PresentedKey},
    auth::{self, Accepts},
    error::ApiError,
    fallback,
    presign::{blob, s3},
    response::json_response,
    state::AppState,
    telemetry,
    uploads::{Provider, UploadRequest, DEFAULT_CONTENT_TYPES, DEFAULT_MAX_BYTES},
};

#[derive(Debug, Serialize)]
struct Signed {
    provider: &'static str,
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Headers the upload must carry, exactly.
    headers: BTreeMap<String, String>,
    object_key: String,
    expires_at: DateTime<Utc>,
}

/// Handles `POST /api/signed-url`.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    if request.method() != Method::POST {
        return ApiError::MethodNotAllowed { allow: "POST" }.into_response();
    }
    let mut rate = RateLimit::default();
    let mut response = match sign(state, &request, &mut rate).await {
        Ok(signed) => json_response(StatusCode::OK, &signed),
        Err(error) => error.into_response(),
    };
    rate.write_headers(response.headers_mut());
    response
}

async fn sign(
    state: &AppState,
    request: &Request<Bytes>,
    rate: &mut RateLimit,
) -> Result<Signed, ApiError> {
    let started = Instant::now();
    let key = auth::authenticate(request, Accepts::SecretOnly)?;
    // A malformed request still goes through admission: it is rate limited
    // and counted as failed, then refused with its own error.
    let parsed = UploadRequest::parse(request.body());
    let now = state.clock.now();
    let upload_id = Uuid::now_v7();
    let providers = &state.config.providers;
    let configured = BTreeMap::from([
        (Provider::S3.as_str(), providers.s3.is_some()),
        (Provider::Blob.as_str(), providers.blob.is_some()),
    ]);
    let fallback = [Provider::S3, Provider::Blob]
        .into_iter()
        .find(|p| configured[p.as_str()])
        .map(Provider::as_str);
    let suffix = parsed
        .as_ref()
        .ok()
        .map(|upload| format!("{}/{upload_id}-{}", now.format("%Y/%m"), upload.filename));
    let check = match (&parsed, &suffix) {
        (Ok(upload), Some(suffix)) => Some(UploadCheck {
            id: upload_id,
            filename: &upload.filename,
            content_type: &upload.content_type,
            size: upload.size,
            provider: upload.provider.map(Provider::as_str),
            fallback,
            configured: configured.clone(),
            default_type_ok: DEFAULT_CONTENT_TYPES.contains(&upload.content_type.as_str()),
            default_max: DEFAULT_MAX_BYTES,
            suffix: suffix.clone(),
            created_at: now,
        }),
        _ => None,
    };
    let client_ip = state.client_ip(request.headers());
    let admission = admission::Request {
        route: "signed-url",
        key: &key,
        origin: "",
        ip: client_ip.as_deref().unwrap_or(""),
        valid: parsed.is_ok(),
        metered: true,
        success_status: 200,
        invalid_status: 400,
        events: None,
        upload: check,
        latency: started.elapsed(),
    };
    let (key_id, provider) = match admission::admit(state, &admission).await {
        Ok(Decision::Admitted {
            key_id,
            rate: limits,
            provider,
        }) => {
            telemetry::record_key_id(key_id);
            *rate = limits;
            (key_id, provider)
        }
        // Only events fill the queue, and an upload brings none.
        Ok(Decision::QueueFull) => {
            return Err(anyhow::anyhow!("admission answered queue_full for an upload").into())
        }
        Ok(Decision::Refused {
            error,
            rate: limits,
        }) => {
            *rate = limits;
            return Err(error);
        }
        // Unmetered uploads escape billing, so signed-url fails closed unless
        // configured otherwise; an open failure is counted where
        // queue-status reports it.
        Err(error) if state.config.admission.fails_open("signed-url") => {
            tracing::error!(error = ?error.error, "admission failed; signing without metering");
            let postgres_down = |error: anyhow::Error| {
                tracing::error!(error = ?error, "Postgres unavailable too; refusing the upload");
                ApiError::Unavailable {
                    message: "usage metering is unavailable; retry shortly".into(),
                    retry_after: std::time::Duration::from_secs(5),
                }
            };
            let key = apikeys::lookup(&state.db, &key, state.clock.now())
                .await
                .map_err(postgres_down)?;
            let key_id = auth::require_active(&key, state.clock.now())?;
            telemetry::record_key_id(key_id);
            let upload = parsed.as_ref().map_err(|e| ApiError::BadRequest {
                code: e.code(),
                message: e.to_string(),
            })?;
            // The key's own bans, quotas and upload policy, from Postgres.
            let day = apikeys::key_day(now, apikeys::zone(&key.timezone));
            let limits = key.limits.as_ref();
            fallback::check_limits_directly(state, key_id, None, day, limits, postgres_down)
                .await?;
            let provider = fallback::check_upload(&key, upload, &configured, fallback)?;
            count_fail_open(state).await?;
            (key_id, Some(provider))
        }
        Err(error) => {
            tracing::error!(error = ?error.error, "admission failed; refusing the upload");
            // Bad input is the client's error whatever Upstash does: it gets
            // its 400, never a 5xx, and is counted as failed here when the
            // script surely did not count it.
            if let Err(bad) = &parsed {
                if !error.may_have_run {
                    if let Err(error) = count_refusal_directly(state, &key).await {
                        tracing::error!(error = ?error, "could not count a refused upload");
                    }
                }
                return Err(ApiError::BadRequest {
                    code: bad.code(),
                    message: bad.to_string(),
                });
            }
            return Err(ApiError::Unavailable {
                message: "usage metering is unavailable; retry shortly".into(),
                retry_after: std::time::Duration::from_secs(5),
            });
        }
    };
    let upload = parsed?;
    let object_key = format!("{key_id}/{}", suffix.unwrap_or_default());
    let expires_at = now + upload.expires_in;
    match provider.as_deref().and_then(Provider::parse) {
        Some(Provider::S3) => {
            let config = providers.s3.as_ref().ok_or_else(unconfigured)?;
            // The declared size is signed: a PUT of any other length fails.
            let presigned = s3::presign_sized_put(
                config,
                &s3::PresignRequest {
                    object_key: &object_key,
                    content_type: &upload.content_type,
                    expires_in: upload.expires_in,
                    now,
                },
                upload.size,
            )
            .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("presigning")))?;
            Ok(Signed {
                provider: "s3",
                method: presigned.method,
                url: Some(presigned.url.to_string()),
                token: None,
                headers: presigned.headers.into_iter().collect(),
                object_key,
                expires_at: presigned.expires_at,
            })
        }
        Some(Provider::Blob) => {
            let config = providers.blob.as_ref().ok_or_else(unconfigured)?;
            let token = blob::client_token(
                config,
                &blob::ClientTokenRequest {
                    pathname: &object_key,
                    allowed_content_types: std::slice::from_ref(&upload.content_type),
                    maximum_size_in_bytes: upload.size,
                    valid_until: expires_at,
                },
            );
            Ok(Signed {
                provider: "blob",
                method: "PUT",
                url: None,
                token: Some(token),
                headers: BTreeMap::from([("Content-Type".to_owned(), upload.content_type.clone())]),
                object_key,
                expires_at,
            })
        }
        None => Err(unconfigured()),
    }
}

/// Counts a request signed without admission, for queue-status.
async fn count_fail_open(state: &AppState) -> anyhow::Result<()> {
    state
        .db
        .query(
            "INSERT INTO operational_counters (name, value) VALUES ('fail_open_admissions', 1)
             ON CONFLICT (name) DO UPDATE
                SET value = operational_counters.value + 1, updated_at = now()",
        )
        .execute(state.db.executor())
        .await?;
    Ok(())
}

fn unconfigured() -> ApiError {
    admission::Refusal::ProviderNotConfigured(String::new()).into_error()
}

/// Counts a refused request of an active key in Postgres, as admit.lua
/// would have; nothing is counted for an unknown or revoked key.
async fn count_refusal_directly(state: &AppState, key: &PresentedKey) -> anyhow::Result<()> {
    let now = state.clock.now();
    let cached = apikeys::lookup(&state.db, key, now).await?;
    let Ok(key_id) = auth::require_active(&cached, now) else {
        return Ok(());
    };
    let day = apikeys::key_day(now, apikeys::zone(&cached.timezone));
    let mut transaction = state.db.pool().begin().await?;
    crate::metrics::count_directly(&state.db, &mut transaction, key_id, day, now, false).await?;
    transaction.commit().await?;
    Ok(())
}
