//! Analytics events: the domain type, its parsing from collect requests, and
//! its storage in Postgres.
//!
//! An [`Event`] is what `/api/collect` accepted, normalized and enriched. It
//! travels through the queue as JSON and becomes one row of the wide,
//! monthly-partitioned `events` table. The key id and the visitor id are not
//! part of it: the collect script attaches them to the queue entry, because
//! only Redis knows the key id (from its key cache) and the daily salt.

pub mod parse;
pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Web,
    Mobile,
    Server,
}

impl EventKind {
    /// The name stored in the `type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Web => "web",
            EventKind::Mobile => "mobile",
            EventKind::Server => "server",
        }
    }
}

/// One accepted event, with the server's enrichment, as queued and stored.
/// Optional fields are left out of the queued JSON when empty, to keep
/// queue entries small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub name: String,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// A JSON object of at most 32 KB, kept as its JSON text (Postgres
    /// parses it into `jsonb`; the queue need not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<String>,
    #[serde(flatten)]
    pub web: WebFields,
    #[serde(flatten)]
    pub mobile: MobileFields,
    #[serde(flatten)]
    pub server: ServerFields,
    #[serde(flatten)]
    pub agent: AgentFields,
    #[serde(flatten)]
    pub geo: GeoFields,
}

/// Fields of web events. `path` is also used by server events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<String>,
}

/// Fields of mobile events. `os` lives in [`AgentFields`], shared with the
/// user-agent parse of web events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MobileFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Fields of server events. `path` lives in [`WebFields`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
}

/// Browser, OS and device class, parsed from the User-Agent (for mobile
/// events `os` may come from the event itself).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
}

/// Location from Vercel's `x-vercel-ip-*` headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeoFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}
