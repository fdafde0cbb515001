//! `GET /api/cron/deliver-alerts`: sends the usage alerts that are due as
//! Standard Webhooks, and makes the `key.expiring` ones. Vercel cron calls
//! it every minute with the cron secret.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use crate::{alerts, auth, error::ApiError, response::json_response, state::AppState};

/// Handles `GET /api/cron/deliver-alerts`.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    if request.method() != Method::GET && request.method() != Method::POST {
        return ApiError::MethodNotAllowed { allow: "GET, POST" }.into_response();
    }
    if let Err(error) = auth::require_cron_secret(&state.config.cron_secret, &request) {
        return error.into_response();
    }
    match alerts::delivery::run(state).await {
        Ok(report) => json_response(StatusCode::OK, &report),
        Err(error) => {
            tracing::error!(error = ?error, "alert delivery failed; due alerts stay pending");
            ApiError::Unavailable {
                message: "the delivery could not finish; due alerts are sent by the next run"
                    .into(),
                retry_after: std::time::Duration::from_secs(60),
            }
            .into_response()
        }
    }
}
