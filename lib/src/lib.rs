//! tollgate: API metering, rate limiting and event analytics for apps on Vercel.
//!
//! Upstash Redis (over its REST API) carries the hot path, Postgres is the
//! system of record, and cron routes move data from one to the other. Every
//! Vercel function under `api/` is a thin adapter ([`vercel::serve`]) over a
//! route in [`routes`], and `tollgate dev` serves the same routes locally.

pub mod admin;
pub mod admission;
pub mod alerts;
pub mod analytics;
pub mod apikeys;
pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod drain;
pub mod error;
pub mod events;
pub mod fallback;
pub mod fault;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod presign;
pub mod queue;
pub mod redis_keys;
pub mod response;
pub mod routes;
pub mod secret;
pub mod state;
pub mod telemetry;
pub mod uploads;
pub mod upstash;
pub mod vercel;

/// mimalloc instead of the system allocator: request handling allocates many
/// small, short-lived buffers, and glibc's malloc spent about a sixth of the
/// collect path's CPU on them (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
