//! Where a key owner's usage alerts go: one webhook endpoint per `owner_id`,
//! set through `/api/keys/webhooks` or `tollgate webhooks`, each with its own
//! signing secret, shown once. Alerts of keys whose owner has none go to the
//! deployment's endpoint (`TOLLGATE_ALERT_WEBHOOK_URL`), see `alerts`.

use anyhow::Context;
use serde_json::json;

use super::{audit, Actor, AdminError, OwnerId};
use crate::{
    alerts::{self, EndpointInfo, WebhookSecret, WebhookUrl},
    db::Db,
};

/// Sets an owner's endpoint, replacing any it had, and returns its new
/// signing secret: the only time it is shown.
pub async fn set(
    db: &Db,
    actor: &Actor,
    owner: &OwnerId,
    url: &WebhookUrl,
) -> Result<WebhookSecret, AdminError> {
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    let secret = alerts::set_endpoint(db, &mut *tx, owner.as_str(), url).await?;
    let detail = json!({ "owner_id": owner, "url": url.as_str() });
    audit::record(db, &mut tx, actor, "webhook.set", None, detail).await?;
    tx.commit().await.context("committing the endpoint")?;
    Ok(secret)
}

/// An owner's endpoint, without its secret.
pub async fn get(db: &Db, owner: &OwnerId) -> Result<Option<EndpointInfo>, AdminError> {
    Ok(alerts::get_endpoint(db, owner.as_str()).await?)
}

/// Removes an owner's endpoint; its alerts go to the deployment's again.
/// Returns whether it had one.
pub async fn delete(db: &Db, actor: &Actor, owner: &OwnerId) -> Result<bool, AdminError> {
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    let deleted = alerts::delete_endpoint(db, &mut *tx, owner.as_str()).await?;
    if deleted {
        let detail = json!({ "owner_id": owner });
        audit::record(db, &mut tx, actor, "webhook.delete", None, detail).await?;
    }
    tx.commit().await.context("committing the deletion")?;
    Ok(deleted)
}
