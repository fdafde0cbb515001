//! `GET /api/analytics?view=…`: usage and event analytics of the secret key
//! presented, and of no other key (see [`crate::analytics`]).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::{
    analytics::{self, Answer, Query},
    auth::{self, Accepts},
    error::ApiError,
    state::AppState,
};

/// Handles `GET /api/analytics`.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    match answer(state, &request).await {
        Ok(Answer { body, cache }) => {
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            headers.insert("x-cache", HeaderValue::from_static(cache.as_str()));
            *response.status_mut() = StatusCode::OK;
            response
        }
        Err(error) => error.into_response(),
    }
}

async fn answer(state: &AppState, request: &Request<Bytes>) -> Result<Answer, ApiError> {
    if request.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed { allow: "GET" });
    }
    let key = auth::authenticate(request, Accepts::SecretOnly)?;
    let query = Query::parse(request.uri().query())?;
    let client_ip = state
        .config
        .admission
        .client_ip
        .client_ip(request.headers());
    analytics::read(state, &key, client_ip.as_deref(), &query).await
}
