//! The queue's form of a collect request's events, as compact as the JSON
//! the client sent: what every event of a request shares (the receive
//! time, the user agent's browser, OS and device, the location) travels
//! once per queue entry, and what can be derived (a web event's path and
//! UTM parameters, from its URL) is derived again by the drain. An event
//! keeps its own `occurred_at` only when the client gave one.
//!
//! Entries queued as whole [`Event`]s (before this form) are read as well.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AgentFields, Event, EventKind, GeoFields, MobileFields, ServerFields, WebFields};

/// What the events of one request share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shared {
    pub received_at: DateTime<Utc>,
    #[serde(default)]
    pub agent: AgentFields,
    #[serde(default)]
    pub geo: GeoFields,
}

/// One event as queued: [`Event`] less what [`Shared`] holds and what the
/// URL gives. Each shared part appears only where it differs (a mobile
/// event's own `os`).
#[derive(Debug, Serialize, Deserialize)]
struct Queued {
    id: Uuid,
    #[serde(rename = "type")]
    kind: EventKind,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    occurred_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    received_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::raw_json"
    )]
    properties: Option<String>,
    #[serde(flatten)]
    web: WebFields,
    #[serde(flatten)]
    mobile: MobileFields,
    #[serde(flatten)]
    server: ServerFields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<AgentFields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    geo: Option<GeoFields>,
}

/// The events of one request in their queued form: the shared part and the
/// events, each as JSON. `None` for no events.
pub fn encode(events: &[Event]) -> serde_json::Result<Option<(String, String)>> {
    let Some(first) = events.first() else {
        return Ok(None);
    };
    let shared = Shared {
        received_at: first.received_at,
        agent: first.agent.clone(),
        geo: first.geo.clone(),
    };
    let queued: Vec<Queued> = events
        .iter()
        .map(|event| {
            let mut web = event.web.clone();
            if event.kind == EventKind::Web && web.url.is_some() {
                web.path = None;
                web.utm_source = None;
                web.utm_medium = None;
                web.utm_campaign = None;
                web.utm_term = None;
                web.utm_content = None;
            }
            Queued {
                id: event.id,
                kind: event.kind,
                name: event.name.clone(),
                occurred_at: (event.occurred_at != event.received_at).then_some(event.occurred_at),
                received_at: (event.received_at != shared.received_at).then_some(event.received_at),
                session_id: event.session_id.clone(),
                user_id: event.user_id.clone(),
                properties: event.properties.clone(),
                web,
                mobile: event.mobile.clone(),
                server: event.server.clone(),
                agent: (event.agent != shared.agent).then(|| event.agent.clone()),
                geo: (event.geo != shared.geo).then(|| event.geo.clone()),
            }
        })
        .collect();
    Ok(Some((
        serde_json::to_string(&shared)?,
        serde_json::to_string(&queued)?,
    )))
}

/// Reads a queue entry's events back: from their queued form with the
/// entry's shared part, or, with none, as whole events.
pub fn decode(events: &[u8], shared: Option<&[u8]>) -> serde_json::Result<Vec<Event>> {
    let Some(shared) = shared else {
        return serde_json::from_slice(events);
    };
    let shared: Shared = serde_json::from_slice(shared)?;
    let queued: Vec<Queued> = serde_json::from_slice(events)?;
    Ok(queued
        .into_iter()
        .map(|q| {
            let received_at = q.received_at.unwrap_or(shared.received_at);
            let mut web = q.web;
            if q.kind == EventKind::Web {
                if let Some(url) = web.url.as_deref().and_then(|u| url::Url::parse(u).ok()) {
                    super::parse::derive_from_url(&url, &mut web);
                }
            }
            Event {
                id: q.id,
                kind: q.kind,
                name: q.name,
                occurred_at: q.occurred_at.unwrap_or(received_at),
                received_at,
                session_id: q.session_id,
                user_id: q.user_id,
                properties: q.properties,
                web,
                mobile: q.mobile,
                server: q.server,
                agent: q.agent.unwrap_or_else(|| shared.agent.clone()),
                geo: q.geo.unwrap_or_else(|| shared.geo.clone()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::parse::{self, Context, Limits};
    use serde_json::json;

    fn parsed(body: serde_json::Value, user_agent: &str) -> Vec<Event> {
        let context = Context {
            now: "2031-03-01T12:00:00.123Z".parse().unwrap(),
            agent: crate::events::agent::describe_agent(Some(user_agent)),
            geo: GeoFields {
                country: Some("DE".into()),
                city: Some("Berlin".into()),
                ..GeoFields::default()
            },
        };
        let json = serde_json::to_vec(&body).unwrap();
        parse::parse_batch(&json, &context, &Limits::default(), &mut Uuid::now_v7)
            .unwrap()
            .events
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn every_kind_of_event_reads_back_as_it_was_accepted() {
        let events = parsed(
            json!([
                {"type": "web", "name": "pageview", "url": "https://shop.example/p/1?utm_source=news&utm_campaign=spring",
                 "referrer": "https://news.example/", "title": "P1", "properties": {"plan": "pro"}},
                {"type": "web", "name": "click", "path": "/no-url", "timestamp": "2031-03-01T11:59:00Z"},
                {"type": "mobile", "name": "open", "os": "iOS", "os_version": "18.1", "app_version": "2.0"},
                {"type": "server", "name": "call", "path": "/api/x", "method": "POST", "status": 201,
                 "duration_ms": 12.5, "session_id": "s1", "user_id": "u1"},
            ]),
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        );
        let (shared, queued) = encode(&events).unwrap().unwrap();
        assert!(!queued.contains(r#""utm_source""#), "{queued}");
        // The user agent's fields come once, from the shared part, except
        // for the mobile event that names its own OS.
        assert_eq!(queued.matches("Firefox").count(), 1, "{queued}");
        assert!(queued.contains(r#""os":"iOS""#), "{queued}");
        assert_eq!(
            decode(queued.as_bytes(), Some(shared.as_bytes())).unwrap(),
            events
        );
    }

    #[test]
    fn whole_events_queued_before_are_read_as_they_are() {
        let events = parsed(
            json!([{"type": "web", "name": "a", "url": "https://x.example/"}]),
            "",
        );
        let whole = serde_json::to_string(&events).unwrap();
        assert_eq!(decode(whole.as_bytes(), None).unwrap(), events);
    }

    #[test]
    fn no_events_queue_nothing() {
        assert_eq!(encode(&[]).unwrap(), None);
    }
}
