//! `GET /api/cron/sync-metrics`: moves the write-behind usage counters from
//! Redis into Postgres. Vercel cron calls it every minute with the cron secret.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use crate::{auth, error::ApiError, metrics, response::json_response, state::AppState};

/// Handles `GET /api/cron/sync-metrics`.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    if request.method() != Method::GET && request.method() != Method::POST {
        return ApiError::MethodNotAllowed { allow: "GET, POST" }.into_response();
    }
    if let Err(error) = auth::require_cron_secret(&state.config.cron_secret, &request) {
        return error.into_response();
    }
    match metrics::sync(state).await {
        Ok(report) => json_response(StatusCode::OK, &report),
        Err(error) => {
            tracing::error!(error = ?error, "metrics sync failed; its batch stays pending");
            ApiError::Unavailable {
                message: "the sync could not finish; pending counters are applied by the next run"
                    .into(),
                retry_after: std::time::Duration::from_secs(60),
            }
            .into_response()
        }
    }
}
