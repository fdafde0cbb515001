//! `GET /api/analytics` as a Vercel function.

#[tokio::main]
async fn main() -> Result<(), vercel_runtime::Error> {
    tollgate::vercel::serve("/api/analytics").await
}
