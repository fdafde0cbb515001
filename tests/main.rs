//! Black-box tests of tollgate against a real Redis and a real Postgres.
//!
//! One binary (STYLE.md): every test module links once. Each test spawns the
//! app on port 0 with its own database and its own Redis key prefix, so tests
//! run in parallel.

mod admin;
mod admission;
mod alerts;
mod analytics;
mod analytics_exact;
mod blob_token;
mod browser;
mod calendar;
mod collect;
mod database;
mod dev_server;
mod drain;
mod health;
mod helpers;
mod hostile;
mod input;
mod keys_api;
mod openapi;
mod pooler;
mod request_logs;
mod rollups;
mod s3;
mod scripts;
mod signed_url;
mod sync;
mod trust;
mod upstash_client;
mod upstash_local;
