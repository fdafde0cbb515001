//! Where the drain writes events: the one boundary between the queue and
//! the event store.
//!
//! Postgres is the one sink today. A deployment that outgrows it (see
//! docs/scaling.md) adds a sink for a columnar store; the queue, the claim,
//! the acknowledgement and the crash guarantees stay as they are, because
//! the drain only asks a sink to store a batch exactly once.

use std::future::Future;

use super::store::{self, StoreOutcome, StoredEvent};
use crate::db::Db;

/// Stores batches of events.
///
/// `store` must be idempotent per (key, event id): the drain acknowledges a
/// batch only after `store` returned, so a crash in between hands the same
/// batch to `store` again. Rows the sink can never store are set aside (and
/// counted as dead-lettered), not returned as an error; an error means a
/// later try may succeed, and the batch stays queued.
pub trait Sink: Sync {
    fn store(
        &self,
        events: &[StoredEvent],
        attempts: i32,
    ) -> impl Future<Output = anyhow::Result<StoreOutcome>> + Send;
}

/// The event tables and rollups in Postgres (see `store`).
pub struct PostgresSink<'a> {
    db: &'a Db,
}

impl<'a> PostgresSink<'a> {
    pub fn new(db: &'a Db) -> Self {
        Self { db }
    }
}

impl Sink for PostgresSink<'_> {
    async fn store(&self, events: &[StoredEvent], attempts: i32) -> anyhow::Result<StoreOutcome> {
        Ok(store::store(self.db, events, attempts).await?)
    }
}
