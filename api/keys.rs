//! `/api/keys` (GET, POST, PATCH, DELETE) as a Vercel function.

#[tokio::main]
async fn main() -> Result<(), vercel_runtime::Error> {
    tollgate::vercel::serve("/api/keys").await
}
