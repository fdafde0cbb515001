//! The request log and the upload log: rows the admission script enqueues
//! with each metered request, and the drain inserts in bulk, one statement
//! per table per batch. They are never written synchronously.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::Db;

/// One metered request, as `admit.lua` enqueues it (`t` = `req`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RequestLog {
    pub id: Uuid,
    pub route: String,
    /// `admitted`, `invalid`, or the refusal (`rate_limited`, `banned`, ...).
    pub outcome: String,
    pub status: i32,
    pub latency_ms: f64,
    /// When Redis admitted or refused it, in ms since the epoch.
    pub at: i64,
}

/// One presigned upload handed out, as signed-url enqueues it (`t` = `up`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadLog {
    pub id: Uuid,
    pub provider: String,
    pub object_key: String,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// Inserts request logs of one batch; a redelivered row is skipped.
pub async fn insert_requests(db: &Db, rows: &[(Uuid, RequestLog)]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|(_, r)| r.id).collect();
    let keys: Vec<Uuid> = rows.iter().map(|(key, _)| *key).collect();
    let routes: Vec<&str> = rows.iter().map(|(_, r)| r.route.as_str()).collect();
    let outcomes: Vec<&str> = rows.iter().map(|(_, r)| r.outcome.as_str()).collect();
    let statuses: Vec<i32> = rows.iter().map(|(_, r)| r.status).collect();
    let latencies: Vec<f64> = rows.iter().map(|(_, r)| r.latency_ms).collect();
    let times: Vec<DateTime<Utc>> = rows
        .iter()
        .map(|(_, r)| DateTime::from_timestamp_millis(r.at).unwrap_or_default())
        .collect();
    let result = db
        .query(
            "INSERT INTO api_requests_log (id, api_key_id, route, outcome, status, latency_ms, created_at)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::integer[],
                                  $6::float8[], $7::timestamptz[])
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ids)
        .bind(keys)
        .bind(routes)
        .bind(outcomes)
        .bind(statuses)
        .bind(latencies)
        .bind(times)
        .execute(db.executor())
        .await?;
    Ok(result.rows_affected())
}

/// Inserts upload logs of one batch; a redelivered row is skipped.
pub async fn insert_uploads(db: &Db, rows: &[(Uuid, UploadLog)]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|(_, r)| r.id).collect();
    let keys: Vec<Uuid> = rows.iter().map(|(key, _)| *key).collect();
    let providers: Vec<&str> = rows.iter().map(|(_, r)| r.provider.as_str()).collect();
    let object_keys: Vec<&str> = rows.iter().map(|(_, r)| r.object_key.as_str()).collect();
    let filenames: Vec<&str> = rows.iter().map(|(_, r)| r.filename.as_str()).collect();
    let types: Vec<&str> = rows.iter().map(|(_, r)| r.content_type.as_str()).collect();
    let sizes: Vec<i64> = rows.iter().map(|(_, r)| r.size_bytes).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|(_, r)| r.created_at).collect();
    let result = db
        .query(
            "INSERT INTO uploads_log (id, api_key_id, provider, object_key, filename, content_type,
                                      size_bytes, created_at)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::bigint[], $8::timestamptz[])
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ids)
        .bind(keys)
        .bind(providers)
        .bind(object_keys)
        .bind(filenames)
        .bind(types)
        .bind(sizes)
        .bind(times)
        .execute(db.executor())
        .await?;
    Ok(result.rows_affected())
}

/// Rows deleted per table and drain run, past the log retention: a backlog
/// (retention just turned on) is worked off over several runs rather than
/// in one long statement.
pub const RETENTION_BATCH: i64 = 10_000;

/// Deletes up to [`RETENTION_BATCH`] rows older than `cutoff` from each of
/// the request log, the upload log and the refusal counts. Returns the rows
/// deleted.
pub async fn delete_before(
    db: &crate::db::Db,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let mut deleted = 0;
    for (table, column, key) in [
        ("api_requests_log", "created_at", "id"),
        ("uploads_log", "created_at", "id"),
        ("api_refusals_minutely", "minute", "ctid"),
    ] {
        let sql = format!(
            "DELETE FROM {table} WHERE {key} IN
               (SELECT {key} FROM {table} WHERE {column} < $1 LIMIT $2)"
        );
        deleted += db
            .query(&sql)
            .bind(cutoff)
            .bind(RETENTION_BATCH)
            .execute(db.executor())
            .await
            .with_context(|| format!("deleting {table} rows past retention"))?
            .rows_affected();
    }
    Ok(deleted)
}
