//! Who a request is, decided in one place.
//!
//! A route that takes an API key calls [`authenticate`] once, before it
//! reads its body, the way an extractor hands a verified identity to a
//! handler: the answer is a [`PresentedKey`] of the kind the route accepts,
//! or a [`KeyRejection`], which turns into the route's error through its one
//! `From`. Whether the key exists and is active is known only after a
//! lookup; the admission script checks it on the hot path, and the routes'
//! Postgres paths call [`require_active`] on what they looked up. The cron
//! routes and queue-status take the cron secret instead
//! ([`require_cron_secret`]).
//!
//! The client's IP comes from one header, chosen by configuration
//! ([`ClientIpSource`]), and is used in canonical form everywhere: in the
//! limiter's Redis keys, in bans and in the CLI's `bans lift --ip`.

use std::{net::IpAddr, time::Duration};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Request};
use uuid::Uuid;

use crate::{
    apikeys::{CachedKey, KeyKind, KeyStatus, PresentedKey},
    error::ApiError,
    secret::Secret,
};

/// Which keys a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// `sk_…` only, in `Authorization: Bearer`: routes that sign, read or
    /// spend on the key's behalf.
    SecretOnly,
    /// `sk_…` or `pk_…`, in `Authorization: Bearer` or `X-API-Key`: collect,
    /// which browsers call with the publishable half.
    Any,
}

/// Why a request's key is not accepted. Every route answers each case with
/// the same status, code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// The request carries no key.
    Missing(Accepts),
    /// The value is not shaped like a tollgate key, so no lookup is made.
    Malformed,
    /// A publishable key where the route needs the secret one.
    NotSecret,
    /// Well formed, but no key has it.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The key (or the previous half of a rotated key) is past its expiry.
    Expired,
    /// This client failed to authenticate too often in the last minute.
    TooManyFailures { retry_after: Duration },
}

impl From<KeyRejection> for ApiError {
    fn from(rejection: KeyRejection) -> Self {
        let unauthorized = |code, message: &str| ApiError::Unauthorized {
            code,
            message: message.to_owned(),
        };
        match rejection {
            KeyRejection::Missing(Accepts::SecretOnly) => unauthorized(
                "missing_key",
                "send the secret key as `Authorization: Bearer sk_…`",
            ),
            KeyRejection::Missing(Accepts::Any) => unauthorized(
                "missing_key",
                "send a key as `Authorization: Bearer pk_…`, `X-API-Key`, or the body's `key` field",
            ),
            KeyRejection::Malformed => unauthorized(
                "invalid_key",
                "not an API key: keys are `sk_` and 48 hex digits, or `pk_` and 24",
            ),
            KeyRejection::NotSecret => ApiError::Forbidden {
                code: "secret_key_required",
                message: "this route takes the secret key (sk_…), not the publishable one".into(),
            },
            KeyRejection::Unknown => unauthorized("invalid_key", "no API key matches"),
            KeyRejection::Revoked => unauthorized("revoked_key", "this API key has been revoked"),
            KeyRejection::Expired => {
                unauthorized("expired_key", "this API key expired at its expires_at")
            }
            KeyRejection::TooManyFailures { retry_after } => ApiError::TooManyRequests {
                code: "too_many_failed_authentications",
                message: "too many requests from this client with unknown keys; retry later"
                    .into(),
                retry_after,
            },
        }
    }
}

/// The key a request presents in its headers, checked for shape and kind.
pub fn authenticate<B>(
    request: &Request<B>,
    accepts: Accepts,
) -> Result<PresentedKey, KeyRejection> {
    // An `Authorization` (or, where it is read, `X-API-Key`) header that is
    // not a readable key is a wrong credential, not a missing one.
    let headers = request.headers();
    let unreadable_api_key = accepts == Accepts::Any
        && headers
            .get("x-api-key")
            .is_some_and(|value| value.to_str().is_err());
    if (headers.contains_key(header::AUTHORIZATION) && bearer(request).is_none())
        || unreadable_api_key
    {
        return Err(KeyRejection::Malformed);
    }
    let value = bearer(request).or_else(|| match accepts {
        Accepts::Any => request
            .headers()
            .get("x-api-key")
            .and_then(|value| value.to_str().ok()),
        Accepts::SecretOnly => None,
    });
    authenticate_value(value, accepts)
}

/// A key presented some other way (collect's beacons put it in the body,
/// since `navigator.sendBeacon` cannot set headers), checked the same way.
pub fn authenticate_value(
    value: Option<&str>,
    accepts: Accepts,
) -> Result<PresentedKey, KeyRejection> {
    let value = value.ok_or(KeyRejection::Missing(accepts))?;
    let key = PresentedKey::parse(value.trim()).ok_or(KeyRejection::Malformed)?;
    match (accepts, key.kind()) {
        (Accepts::SecretOnly, KeyKind::Pk) => Err(KeyRejection::NotSecret),
        _ => Ok(key),
    }
}

/// The id of a looked-up key that may be used at `now`, or why it may not.
/// The Postgres paths judge expiry by the app's clock; the admission script
/// by Redis's.
pub fn require_active(
    key: &CachedKey,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Uuid, KeyRejection> {
    match (key.status, key.id) {
        (KeyStatus::Active, Some(_)) if key.expired_at(now) => Err(KeyRejection::Expired),
        (KeyStatus::Active, Some(id)) => Ok(id),
        (KeyStatus::Revoked, _) => Err(KeyRejection::Revoked),
        _ => Err(KeyRejection::Unknown),
    }
}

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

/// Where the client's IP address is read from (`TOLLGATE_CLIENT_IP_HEADER`).
/// Only a header the platform's edge sets, overwriting what the client
/// sent, can be trusted: a client can write any header it likes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientIpSource {
    /// Vercel's edge, which overwrites `X-Real-IP` and `X-Forwarded-For`
    /// with the address it accepted the connection from.
    #[default]
    Vercel,
    /// One header set by a proxy in front of the deployment (Cloudflare's
    /// `CF-Connecting-IP`, say). If it holds a list, the last address is the
    /// one that proxy saw.
    Header(HeaderName),
}

impl ClientIpSource {
    /// `vercel`, or a header name.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("vercel") {
            return Ok(Self::Vercel);
        }
        HeaderName::try_from(value.to_ascii_lowercase())
            .map(Self::Header)
            .map_err(|_| format!("`{value}` is neither `vercel` nor a header name"))
    }

    /// The client's IP in canonical form, if the trusted header holds one.
    pub fn client_ip(&self, headers: &HeaderMap) -> Option<String> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let address = match self {
            ClientIpSource::Vercel => text("x-real-ip")
                .or_else(|| text("x-forwarded-for").and_then(|list| list.split(',').next())),
            ClientIpSource::Header(name) => {
                text(name.as_str()).and_then(|list| list.rsplit(',').next())
            }
        };
        canonical_ip(address?)
    }
}

/// An IP address in the one form tollgate stores and compares: IPv4 dotted,
/// IPv6 compressed and lowercase, an IPv4-mapped IPv6 address as IPv4.
/// Anything else is not an address.
pub fn canonical_ip(value: &str) -> Option<String> {
    let value = value.trim();
    let value = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    let address: IpAddr = value.parse().ok()?;
    Some(address.to_canonical().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<Bytes> {
        let mut builder = Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Bytes::new()).unwrap()
    }

    const SK: &str = "sk_0123456789abcdef0123456789abcdef0123456789abcdef";
    const PK: &str = "pk_0123456789abcdef01234567";

    #[test]
    fn the_cron_secret_must_match_exactly() {
        let secret = Secret::new("0123456789abcdef");
        let with = |value| request(&[("authorization", value)]);
        assert!(require_cron_secret(&secret, &with("Bearer 0123456789abcdef")).is_ok());
        assert!(require_cron_secret(&secret, &with("bearer 0123456789abcdef")).is_ok());
        let wrong = require_cron_secret(&secret, &with("Bearer 0123456789abcdeX"));
        assert_eq!(wrong.unwrap_err().code(), "invalid_cron_secret");
        let basic = require_cron_secret(&secret, &with("Basic 0123456789abcdef"));
        assert_eq!(basic.unwrap_err().code(), "missing_cron_secret");
        let missing = require_cron_secret(&secret, &request(&[]));
        assert_eq!(missing.unwrap_err().code(), "missing_cron_secret");
    }

    #[test]
    fn a_key_is_checked_for_shape_and_kind_before_any_lookup() {
        let bearer = |value: &str| request(&[("authorization", &format!("Bearer {value}"))]);
        assert_eq!(
            authenticate(&bearer(SK), Accepts::SecretOnly)
                .unwrap()
                .kind(),
            KeyKind::Sk
        );
        assert_eq!(
            authenticate(&bearer(PK), Accepts::Any).unwrap().kind(),
            KeyKind::Pk
        );
        assert_eq!(
            authenticate(&bearer(PK), Accepts::SecretOnly).unwrap_err(),
            KeyRejection::NotSecret
        );
        for malformed in [
            "sk_",
            "sk_0123",
            "pk_0123456789ABCDEF01234567",
            &format!("{SK}0"),
            "sk_0123456789abcdef0123456789abcdef0123456789abcdeg",
            "rk_0123456789abcdef01234567",
        ] {
            assert_eq!(
                authenticate(&bearer(malformed), Accepts::Any).unwrap_err(),
                KeyRejection::Malformed,
                "{malformed}"
            );
        }
        assert_eq!(
            authenticate(&request(&[]), Accepts::Any).unwrap_err(),
            KeyRejection::Missing(Accepts::Any)
        );
        let basic = request(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(
            authenticate(&basic, Accepts::Any).unwrap_err(),
            KeyRejection::Malformed
        );
        let api_key = request(&[("x-api-key", PK)]);
        assert!(authenticate(&api_key, Accepts::Any).is_ok());
        assert_eq!(
            authenticate(&api_key, Accepts::SecretOnly).unwrap_err(),
            KeyRejection::Missing(Accepts::SecretOnly)
        );
    }

    #[test]
    fn every_rejection_has_one_status_and_code() {
        let answer = |rejection: KeyRejection| {
            let error = ApiError::from(rejection);
            (error.status().as_u16(), error.code())
        };
        assert_eq!(
            answer(KeyRejection::Missing(Accepts::Any)),
            (401, "missing_key")
        );
        assert_eq!(answer(KeyRejection::Malformed), (401, "invalid_key"));
        assert_eq!(answer(KeyRejection::Unknown), (401, "invalid_key"));
        assert_eq!(answer(KeyRejection::Revoked), (401, "revoked_key"));
        assert_eq!(answer(KeyRejection::Expired), (401, "expired_key"));
        assert_eq!(
            answer(KeyRejection::NotSecret),
            (403, "secret_key_required")
        );
        assert_eq!(
            answer(KeyRejection::TooManyFailures {
                retry_after: Duration::from_secs(60)
            }),
            (429, "too_many_failed_authentications")
        );
    }

    #[test]
    fn client_ips_come_from_the_trusted_header_in_canonical_form() {
        let vercel = ClientIpSource::default();
        let headers = |pairs: &[(&str, &str)]| request(pairs).headers().clone();
        assert_eq!(
            vercel.client_ip(&headers(&[("x-real-ip", "203.0.113.7")])),
            Some("203.0.113.7".into())
        );
        assert_eq!(
            vercel.client_ip(&headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.1")])),
            Some("203.0.113.7".into())
        );
        assert_eq!(
            vercel.client_ip(&headers(&[("x-real-ip", "2001:DB8:0:0:0:0:0:1")])),
            Some("2001:db8::1".into())
        );
        assert_eq!(
            vercel.client_ip(&headers(&[("x-real-ip", "::ffff:198.51.100.4")])),
            Some("198.51.100.4".into())
        );
        assert_eq!(
            vercel.client_ip(&headers(&[("x-real-ip", "not-an-ip")])),
            None
        );
        assert_eq!(vercel.client_ip(&headers(&[])), None);

        let proxy = ClientIpSource::parse("CF-Connecting-IP").unwrap();
        assert_eq!(
            proxy.client_ip(&headers(&[
                ("x-real-ip", "10.0.0.1"),
                ("cf-connecting-ip", "[2001:db8::7]")
            ])),
            Some("2001:db8::7".into())
        );
        let forwarded = ClientIpSource::parse("x-forwarded-for").unwrap();
        assert_eq!(
            forwarded.client_ip(&headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.9")])),
            Some("198.51.100.9".into()),
            "the client wrote the first address; the proxy appended the last"
        );
        assert!(ClientIpSource::parse("not a header").is_err());
        assert_eq!(
            ClientIpSource::parse("Vercel").unwrap(),
            ClientIpSource::Vercel
        );
    }
}
