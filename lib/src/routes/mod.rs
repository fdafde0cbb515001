//! Every route, and the registry that the Vercel functions and the dev
//! server both dispatch through.
//!
//! A route is a path and a handler over `http::Request<Bytes>`. Adding one
//! means writing its module, listing it in [`ROUTES`] and adding its thin
//! file under `api/`; `tollgate dev` serves it with no further wiring.

pub mod analytics;
pub mod bans;
pub mod collect;
pub mod deliver_alerts;
pub mod health;
pub mod keys;
pub mod process_events;
pub mod queue_status;
pub mod signed_url;
pub mod sync_metrics;
pub mod webhooks;

use std::{future::Future, pin::Pin};

use bytes::Bytes;
use http::{Request, Response};

use crate::state::AppState;

/// The future a handler returns.
pub type ResponseFuture<'a> = Pin<Box<dyn Future<Output = Response<Bytes>> + Send + 'a>>;

/// A route handler: it answers every request, errors included.
pub type Handler = for<'a> fn(&'a AppState, Request<Bytes>) -> ResponseFuture<'a>;

/// A path served by one Vercel function.
#[derive(Debug)]
pub struct Route {
    /// The URL path, as Vercel derives it from the file under `api/`.
    pub path: &'static str,
    pub handler: Handler,
}

/// Every route tollgate serves.
pub static ROUTES: &[Route] = &[
    Route {
        path: "/api/health",
        handler: |state, request| Box::pin(health::handle(state, request)),
    },
    Route {
        path: "/api/collect",
        handler: |state, request| Box::pin(collect::handle(state, request)),
    },
    Route {
        path: "/api/signed-url",
        handler: |state, request| Box::pin(signed_url::handle(state, request)),
    },
    Route {
        path: "/api/analytics",
        handler: |state, request| Box::pin(analytics::handle(state, request)),
    },
    Route {
        path: "/api/keys",
        handler: |state, request| Box::pin(keys::handle(state, request)),
    },
    Route {
        path: "/api/keys/bans",
        handler: |state, request| Box::pin(bans::handle(state, request)),
    },
    Route {
        path: "/api/keys/webhooks",
        handler: |state, request| Box::pin(webhooks::handle(state, request)),
    },
    Route {
        path: "/api/cron/process-events",
        handler: |state, request| Box::pin(process_events::handle(state, request)),
    },
    Route {
        path: "/api/cron/queue-status",
        handler: |state, request| Box::pin(queue_status::handle(state, request)),
    },
    Route {
        path: "/api/cron/sync-metrics",
        handler: |state, request| Box::pin(sync_metrics::handle(state, request)),
    },
    Route {
        path: "/api/cron/deliver-alerts",
        handler: |state, request| Box::pin(deliver_alerts::handle(state, request)),
    },
];

/// The route serving `path`, if any.
pub fn find(path: &str) -> Option<&'static Route> {
    let path = path.trim_end_matches('/');
    ROUTES.iter().find(|route| route.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_with_or_without_a_trailing_slash() {
        assert_eq!(find("/api/health").map(|r| r.path), Some("/api/health"));
        assert_eq!(find("/api/health/").map(|r| r.path), Some("/api/health"));
        assert!(find("/api/nope").is_none());
    }
}
