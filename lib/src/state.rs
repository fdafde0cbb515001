//! The shared state every handler receives: configuration and the ways out
//! to the world (Upstash, Postgres, the clock).

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

use anyhow::Context;

use crate::{
    apikeys::KeyIds,
    clock::{Clock, SystemClock},
    config::Config,
    db::Db,
    redis_keys::RedisKeys,
    upstash::Upstash,
};

/// Built once per function instance (or once per dev server) and shared.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub upstash: Arc<Upstash>,
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    /// Names of the Redis keys, under the configured prefix.
    pub keys: RedisKeys,
    /// The key id of each presented key this instance has seen.
    pub key_ids: Arc<KeyIds>,
    /// Added to Redis's clock by the admission script: zero in production;
    /// tests move it to walk through time-based behaviour (bans, windows).
    redis_time_offset_ms: Arc<AtomicI64>,
    /// When non-zero, the wall-clock time (ms) at which tests stopped the
    /// admission script's clock; it then moves only by the offset.
    redis_time_frozen_at_ms: Arc<AtomicI64>,
}

impl AppState {
    /// The client's IP, in canonical form, from the header the deployment
    /// trusts (`TOLLGATE_CLIENT_IP_HEADER`, see `auth.rs`).
    pub fn client_ip(&self, headers: &http::HeaderMap) -> Option<String> {
        self.config.admission.client_ip.client_ip(headers)
    }

    /// Builds the state from a validated configuration; connects lazily.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let upstash = Upstash::new(&config.upstash).context("building the Upstash client")?;
        let db = Db::connect_lazy(&config.database)?;
        Ok(Self {
            keys: RedisKeys::new(&config.key_prefix, config.redis_shards),
            key_ids: Arc::default(),
            config: Arc::new(config),
            upstash: Arc::new(upstash),
            db,
            clock: Arc::new(SystemClock),
            redis_time_offset_ms: Arc::default(),
            redis_time_frozen_at_ms: Arc::default(),
        })
    }

    /// The offset added to Redis's clock by the admission script.
    pub fn redis_time_offset_ms(&self) -> i64 {
        self.redis_time_offset_ms.load(Ordering::Relaxed)
    }

    /// The admission script's time when tests froze it, in ms since the
    /// epoch; `None` (Redis's own clock) otherwise.
    pub fn redis_time_frozen_ms(&self) -> Option<i64> {
        let at = self.redis_time_frozen_at_ms.load(Ordering::Relaxed);
        (at != 0).then(|| at + self.redis_time_offset_ms())
    }

    /// Stops the admission script's clock at the present, for tests whose
    /// limiter must not refill while they run; `advance_redis_time` still
    /// moves it.
    pub fn freeze_redis_time(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as i64);
        self.redis_time_frozen_at_ms.store(now, Ordering::Relaxed);
    }

    /// Moves the admission script's clock forward, for tests.
    pub fn advance_redis_time(&self, by: std::time::Duration) {
        self.redis_time_offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }

    /// Replaces the clock, for tests.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}
