//! Building responses.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Bytes> {
    // Serializing our own response types cannot fail: they hold no maps with
    // non-string keys and no failing `Serialize` impls.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
