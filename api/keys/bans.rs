//! `/api/keys/bans` (GET, POST, DELETE) as a Vercel function.

#[tokio::main]
async fn main() -> Result<(), vercel_runtime::Error> {
    tollgate::vercel::serve("/api/keys/bans").await
}
