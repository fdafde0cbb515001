//! The adapter between Vercel's Rust runtime and a [`Route`]: each file under
//! `api/` is one call to [`serve`].

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use vercel_runtime::{service_fn, Request, ResponseBody};

use crate::{config::Config, error::ApiError, routes, state::AppState, telemetry};

/// Vercel refuses bodies over 4.5 MB before they reach a function; this cap
/// only guards the process should that ever change.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Serves the route at `path` as a Vercel function: reads the configuration
/// once for this instance, then hands every request to the route's handler,
/// in the request's span ([`telemetry::request_span`]).
pub async fn serve(path: &'static str) -> Result<(), vercel_runtime::Error> {
    telemetry::init();
    let route = routes::find(path).ok_or_else(|| format!("no route is registered at {path}"))?;
    let config = Config::from_env().inspect_err(|err| tracing::error!("{err}"))?;
    let state = Arc::new(AppState::new(config)?);
    vercel_runtime::run(service_fn(move |request: Request| {
        let state = Arc::clone(&state);
        async move {
            // The body is read inside the request's span too: a refusal of
            // an oversized body is that request's answer, with its id.
            let span = telemetry::request_span(&request);
            let response = span
                .instrument(async {
                    match read_body(request).await {
                        Ok(request) => (route.handler)(&state, request).await,
                        Err(error) => error.into_response(),
                    }
                })
                .await;
            Ok::<_, vercel_runtime::Error>(response.map(ResponseBody::from))
        }
    }))
    .await
}

/// Buffers the body, refusing one over [`MAX_BODY_BYTES`].
async fn read_body(request: Request) -> Result<http::Request<Bytes>, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| {
            ApiError::PayloadTooLarge(format!(
                "the request body is over the limit of {MAX_BODY_BYTES} bytes"
            ))
        })?
        .to_bytes();
    Ok(http::Request::from_parts(parts, bytes))
}
