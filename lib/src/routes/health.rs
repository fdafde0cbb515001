//! `GET /api/health`: readiness. Answers 200 when Upstash and Postgres both
//! answer a round trip, and 503 naming the failing checks otherwise.

use std::{future::Future, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::time::Instant;

use crate::{error::ApiError, response::json_response, state::AppState, upstash::Command};

/// A check that takes longer than this counts as failed: a load balancer
/// would rather move on than wait.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    checks: Checks,
    /// The names of the failing checks; empty when all pass.
    failing: Vec<&'static str>,
    latency_ms: Latencies,
}

#[derive(Debug, Serialize)]
struct Checks {
    upstash: bool,
    postgres: bool,
}

#[derive(Debug, Serialize)]
struct Latencies {
    upstash: f64,
    postgres: f64,
}

/// Handles `GET /api/health`.
pub async fn handle(state: &AppState, request: Request<Bytes>) -> Response<Bytes> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return ApiError::MethodNotAllowed { allow: "GET, HEAD" }.into_response();
    }
    let ping = Command::new("PING");
    let ((upstash, upstash_ms), (postgres, postgres_ms)) = tokio::join!(
        timed("upstash", async {
            let pong: String = state.upstash.command(&ping).await?;
            anyhow::ensure!(pong == "PONG", "PING answered {pong:?}");
            Ok(())
        }),
        timed("postgres", state.db.ping()),
    );
    let failing: Vec<&'static str> = [("upstash", upstash), ("postgres", postgres)]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    let (status, code) = if failing.is_empty() {
        ("ok", StatusCode::OK)
    } else {
        ("unavailable", StatusCode::SERVICE_UNAVAILABLE)
    };
    json_response(
        code,
        &Health {
            status,
            checks: Checks { upstash, postgres },
            failing,
            latency_ms: Latencies {
                upstash: upstash_ms,
                postgres: postgres_ms,
            },
        },
    )
}

/// Runs one check within [`CHECK_TIMEOUT`], logging why it failed.
async fn timed(name: &'static str, check: impl Future<Output = anyhow::Result<()>>) -> (bool, f64) {
    let started = Instant::now();
    let ok = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(check = name, error = ?error, "health check failed");
            false
        }
        Err(_) => {
            tracing::warn!(check = name, timeout = ?CHECK_TIMEOUT, "health check timed out");
            false
        }
    };
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    (ok, (millis * 10.0).round() / 10.0)
}
