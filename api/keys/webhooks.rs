//! `/api/keys/webhooks` (GET, PUT, DELETE) as a Vercel function.

#[tokio::main]
async fn main() -> Result<(), vercel_runtime::Error> {
    tollgate::vercel::serve("/api/keys/webhooks").await
}
