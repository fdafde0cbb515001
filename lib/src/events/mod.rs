//! Analytics events: the domain type, its parsing from collect requests, and
//! its storage in Postgres.
//!
//! A collect request is read in stages, one module each: [`body`] decodes
//! it into a list of events, [`parse`] turns each into an [`Event`], with
//! the request's user agent from [`agent`] and location from [`geo`], and
//! [`text`] says which characters each text field may hold.
//!
//! An [`Event`] is what `/api/collect` accepted, normalized and enriched. It
//! travels through the queue as JSON and becomes one row of the wide,
//! monthly-partitioned `events` table. The key id and the visitor id are not
//! part of it: the collect script attaches them to the queue entry, because
//! only Redis knows the key id (from its key cache) and the daily salt.

pub mod agent;
pub mod body;
pub mod copy;
pub mod geo;
pub mod parse;
pub mod queued;
pub mod rollup;
pub mod sink;
pub mod store;
pub mod text;

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
    /// parses it into `jsonb`; the queue need not). It is queued as JSON
    /// itself, not as a string holding JSON, which would escape every quote.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "raw_json")]
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

/// `properties` in the queue: the object itself, read back as its text.
/// Entries queued as a string holding the JSON are read as well.
mod raw_json {
    use serde::{
        de::Error as _, ser::Error as _, Deserialize, Deserializer, Serialize, Serializer,
    };
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(text: &Option<String>, out: S) -> Result<S::Ok, S::Error> {
        match text {
            Some(text) => RawValue::from_string(text.clone())
                .map_err(S::Error::custom)?
                .serialize(out),
            None => out.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Option<String>, D::Error> {
        let Some(raw) = Option::<Box<RawValue>>::deserialize(input)? else {
            return Ok(None);
        };
        if raw.get().starts_with('"') {
            return serde_json::from_str(raw.get()).map_err(D::Error::custom);
        }
        Ok(Some(raw.get().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(properties: Option<&str>) -> Event {
        Event {
            id: Uuid::nil(),
            kind: EventKind::Web,
            name: "pageview".into(),
            occurred_at: "2031-01-01T00:00:00Z".parse().unwrap(),
            received_at: "2031-01-01T00:00:00Z".parse().unwrap(),
            session_id: None,
            user_id: None,
            properties: properties.map(str::to_owned),
            web: WebFields {
                url: Some("https://shop.example/".into()),
                ..WebFields::default()
            },
            mobile: MobileFields::default(),
            server: ServerFields::default(),
            agent: AgentFields::default(),
            geo: GeoFields::default(),
        }
    }

    #[test]
    fn properties_are_queued_as_json_not_as_an_escaped_string() {
        let queued = serde_json::to_string(&event(Some(r#"{"plan":"pro","n":[1,2]}"#))).unwrap();
        assert!(
            queued.contains(r#""properties":{"plan":"pro","n":[1,2]}"#),
            "{queued}"
        );
        let back: Event = serde_json::from_str(&queued).unwrap();
        assert_eq!(back, event(Some(r#"{"plan":"pro","n":[1,2]}"#)));
        let none: Event =
            serde_json::from_str(&serde_json::to_string(&event(None)).unwrap()).unwrap();
        assert_eq!(none.properties, None);
    }

    #[test]
    fn properties_queued_as_a_string_are_still_read() {
        let mut old = serde_json::to_value(event(None)).unwrap();
        old["properties"] = r#"{"plan":"pro"}"#.into();
        let back: Event = serde_json::from_value(old).unwrap();
        assert_eq!(back.properties.as_deref(), Some(r#"{"plan":"pro"}"#));
    }
}
