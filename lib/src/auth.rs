//! Authentication of cron routes and API keys from request headers.

use bytes::Bytes;
use http::{header, Request};

use crate::{error::ApiError, secret::Secret};

/// The bearer token of a request, if it has one.
pub fn bearer<B>(request: &Request<B>) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks `Authorization: Bearer $CRON_SECRET` in constant time.
pub fn require_cron_secret(secret: &Secret, request: &Request<Bytes>) -> Result<(), ApiError> {
    match bearer(request) {
        Some(token) if secret.matches(token) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized {
            code: "invalid_cron_secret",
            message: "the bearer token is not the cron secret".into(),
        }),
        None => Err(ApiError::Unauthorized {
            code: "missing_cron_secret",
            message: "this route needs `Authorization: Bearer $CRON_SECRET`".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<Bytes> {
        let mut builder = Request::builder();
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(Bytes::new()).unwrap()
    }

    #[test]
    fn the_cron_secret_must_match_exactly() {
        let secret = Secret::new("0123456789abcdef");
        assert!(require_cron_secret(&secret, &request(Some("Bearer 0123456789abcdef"))).is_ok());
        assert!(require_cron_secret(&secret, &request(Some("bearer 0123456789abcdef"))).is_ok());
        let wrong = require_cron_secret(&secret, &request(Some("Bearer 0123456789abcdeX")));
        assert_eq!(wrong.unwrap_err().code(), "invalid_cron_secret");
        let basic = require_cron_secret(&secret, &request(Some("Basic 0123456789abcdef")));
        assert_eq!(basic.unwrap_err().code(), "missing_cron_secret");
        let missing = require_cron_secret(&secret, &request(None));
        assert_eq!(missing.unwrap_err().code(), "missing_cron_secret");
    }
}
