//! `/api/cron/sync-metrics` as a Vercel function.

#[tokio::main]
async fn main() -> Result<(), vercel_runtime::Error> {
    tollgate::vercel::serve("/api/cron/sync-metrics").await
}
