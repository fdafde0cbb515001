//! `/api/cron/process-events` as a Vercel function.

#[tokio::main]
async fn main() -> Result<(), vercel_runtime::Error> {
    tollgate::vercel::serve("/api/cron/process-events").await
}
