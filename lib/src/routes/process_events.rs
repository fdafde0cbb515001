//! `GET /api/cron/process-events`: drains the event queue into Postgres.
//! Vercel cron calls it every minute with the cron secret.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use crate::{auth, drain, error::ApiError, response::json_response, state::AppState};

/// Handles `GET /api/cron/process-events`.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    match process(state, &request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn process(state: &AppState, request: &Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
    if request.method() != Method::GET && request.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed { allow: "GET, POST" });
    }
    auth::require_cron_secret(&state.config.cron_secret, request)?;
    match drain::run(state).await {
        Ok(report) => Ok(json_response(StatusCode::OK, &report)),
        Err(error) => {
            tracing::error!(error = ?error, "drain run failed; its batch stays queued");
            Err(ApiError::Unavailable {
                message:
                    "the drain could not finish; unacknowledged events stay queued for the next run"
                        .into(),
                retry_after: std::time::Duration::from_secs(60),
            })
        }
    }
}
