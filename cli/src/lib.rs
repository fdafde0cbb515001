//! The `tollgate` command's library: the local Upstash REST server, the private
//! Redis and Postgres instances, and the all-in-one dev server.

pub mod dev;
pub mod services;
pub mod upstash_local;
