//! `/api/keys/webhooks`: where a key owner's usage alerts go, set with a
//! root key through the same functions as `tollgate webhooks`
//! (`admin::endpoints`).
//!
//! | operation | request | scope |
//! |---|---|---|
//! | read | `GET /api/keys/webhooks?owner_id=…` | `keys:read` |
//! | set | `PUT /api/keys/webhooks` `{"owner_id", "url"}` | `keys:write` |
//! | delete | `DELETE /api/keys/webhooks?owner_id=…` | `keys:write` |
//!
//! Setting answers the endpoint's signing secret (`whsec_…`), once: the
//! alerts to that URL are signed with it (Standard Webhooks).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::keys::{admin_error, authorize, bad, require, Fields, Params};
use crate::{
    admin::{endpoints, root_keys::Scope, OwnerId},
    alerts::WebhookUrl,
    error::ApiError,
    response::json_response,
    state::AppState,
};

pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    serve(state, request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn serve(state: &AppState, request: Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
    let method = request.method().clone();
    if !matches!(method, Method::GET | Method::PUT | Method::DELETE) {
        return Err(ApiError::MethodNotAllowed {
            allow: "GET, PUT, DELETE",
        });
    }
    let root = authorize(state, &request).await?;
    if method == Method::PUT {
        require(&root, Scope::KeysWrite)?;
        Params::parse(request.uri().query(), &[])?;
        let mut fields = Fields::parse(request.body(), &["owner_id", "url"])?;
        let owner = fields
            .string("owner_id")?
            .ok_or_else(|| bad("missing_field", "`owner_id`: whose alerts go to this URL"))?;
        let owner =
            OwnerId::parse(&owner).map_err(|e| bad("invalid_field", format!("`owner_id`: {e}")))?;
        let url = fields
            .string("url")?
            .ok_or_else(|| bad("missing_field", "`url`: where the alerts are sent"))?;
        let url =
            WebhookUrl::parse(&url).map_err(|e| bad("invalid_field", format!("`url`: {e}")))?;
        let secret = endpoints::set(&state.db, &root.actor(), &owner, &url)
            .await
            .map_err(admin_error)?;
        let endpoint = endpoints::get(&state.db, &owner)
            .await
            .map_err(admin_error)?;
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "endpoint": endpoint, "secret": secret.expose() }),
        ));
    }
    let query = Params::parse(request.uri().query(), &["owner_id"])?;
    let owner = query
        .get("owner_id")
        .ok_or_else(|| bad("missing_parameter", "`owner_id`: whose endpoint"))?;
    let owner =
        OwnerId::parse(owner).map_err(|e| bad("invalid_parameter", format!("`owner_id`: {e}")))?;
    if method == Method::GET {
        require(&root, Scope::KeysRead)?;
        let endpoint = endpoints::get(&state.db, &owner)
            .await
            .map_err(admin_error)?
            .ok_or_else(|| {
                ApiError::NotFound(format!("owner `{owner}` has no endpoint of its own"))
            })?;
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "endpoint": endpoint }),
        ));
    }
    require(&root, Scope::KeysWrite)?;
    let deleted = endpoints::delete(&state.db, &root.actor(), &owner)
        .await
        .map_err(admin_error)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted": deleted }),
    ))
}
