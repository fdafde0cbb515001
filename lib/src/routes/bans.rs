//! `/api/keys/bans`: bans of keys and client IPs over HTTP, with a root key,
//! through the same functions as `tollgate bans` (`admin::bans`).
//!
//! | operation | request | scope |
//! |---|---|---|
//! | list | `GET /api/keys/bans?key_id=&all=true` | `keys:read` |
//! | add | `POST /api/keys/bans` `{"key_id" or "ip", "reason", "duration_seconds"}` | `bans:write` |
//! | lift | `DELETE /api/keys/bans?key_id=…` or `?ip=…` | `bans:write` |

use std::{net::IpAddr, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::keys::{admin_error, apply, authorize, bad, quote, require, Fields, Params};
use crate::{
    admin::{self, root_keys::Scope, BanSubject, NewBan},
    error::ApiError,
    response::json_response,
    state::AppState,
};

/// The longest temporary ban, in seconds (ten years); longer is permanent.
const MAX_BAN_SECONDS: u64 = 10 * 365 * 86_400;

pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    serve(state, request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn serve(state: &AppState, request: Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
    let method = request.method().clone();
    if !matches!(method, Method::GET | Method::POST | Method::DELETE) {
        return Err(ApiError::MethodNotAllowed {
            allow: "GET, POST, DELETE",
        });
    }
    let root = authorize(state, &request).await?;
    let query = Params::parse(request.uri().query(), &["key_id", "ip", "all"])?;
    match method {
        Method::GET => {
            require(&root, Scope::KeysRead)?;
            let all = match query.get("all") {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(bad(
                        "invalid_parameter",
                        format!("`all`: expected true or false, got `{}`", quote(other)),
                    ))
                }
            };
            let subject = subject(&query)?;
            let bans = admin::list_bans(&state.db, all)
                .await
                .map_err(admin_error)?
                .into_iter()
                .filter(|ban| subject.is_none_or(|subject| ban.subject == subject))
                .collect::<Vec<_>>();
            Ok(json_response(StatusCode::OK, &json!({ "bans": bans })))
        }
        Method::POST => {
            require(&root, Scope::BansWrite)?;
            let mut fields = Fields::parse(
                request.body(),
                &["key_id", "ip", "reason", "duration_seconds"],
            )?;
            let key_id = fields.string("key_id")?;
            let ip = fields.string("ip")?;
            let subject = match (key_id, ip) {
                (Some(id), None) => BanSubject::Key(id.parse().map_err(|_| {
                    bad(
                        "invalid_field",
                        format!("`key_id`: `{}` is not a UUID", quote(&id)),
                    )
                })?),
                (None, Some(ip)) => BanSubject::Ip(parse_ip("ip", &ip, "invalid_field")?),
                _ => {
                    return Err(bad(
                        "missing_field",
                        "send exactly one of `key_id` and `ip`",
                    ))
                }
            };
            let reason = fields
                .string("reason")?
                .filter(|reason| (1..=500).contains(&reason.chars().count()))
                .ok_or_else(|| bad("invalid_field", "`reason`: 1 to 500 characters"))?;
            let duration = fields
                .number(
                    "duration_seconds",
                    MAX_BAN_SECONDS,
                    "a whole number of seconds from 1 to 315360000 (ten years); omit it for a permanent ban",
                )?
                .map(Duration::from_secs);
            if duration.is_some_and(|d| d.is_zero()) {
                return Err(bad(
                    "invalid_field",
                    "`duration_seconds`: at least 1; omit it for a permanent ban",
                ));
            }
            let ban = NewBan {
                subject,
                reason,
                duration,
            };
            let change = admin::add_ban(&state.db, &state.keys, &root.actor(), ban)
                .await
                .map_err(admin_error)?;
            let (ban, propagation) = apply(state, change).await;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({ "ban": ban, "propagation": propagation }),
            ))
        }
        _ => {
            require(&root, Scope::BansWrite)?;
            let subject = subject(&query)?.ok_or_else(|| {
                bad(
                    "missing_parameter",
                    "name the subject as `?key_id=…` or `?ip=…`",
                )
            })?;
            let change = admin::lift_ban(&state.db, &state.keys, &root.actor(), subject)
                .await
                .map_err(admin_error)?;
            let (lifted, propagation) = apply(state, change).await;
            Ok(json_response(
                StatusCode::OK,
                &json!({ "lifted": lifted, "propagation": propagation }),
            ))
        }
    }
}

/// The subject named by `key_id` or `ip` in the query string, if either.
fn subject(query: &Params) -> Result<Option<BanSubject>, ApiError> {
    match (query.uuid("key_id")?, query.get("ip")) {
        (Some(_), Some(_)) => Err(bad(
            "invalid_parameter",
            "name one subject: `key_id` or `ip`, not both",
        )),
        (Some(id), None) => Ok(Some(BanSubject::Key(id))),
        (None, Some(ip)) => Ok(Some(BanSubject::Ip(parse_ip(
            "ip",
            ip,
            "invalid_parameter",
        )?))),
        (None, None) => Ok(None),
    }
}

fn parse_ip(name: &str, text: &str, code: &'static str) -> Result<IpAddr, ApiError> {
    text.parse().map_err(|_| {
        bad(
            code,
            format!("`{name}`: `{}` is not an IP address", quote(text)),
        )
    })
}
