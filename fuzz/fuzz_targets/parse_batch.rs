//! `parse_batch`: a decoded collect body (one event, an array, or
//! `{"batch": [...]}`) into events, each accepted or refused on its own.
//!
//! Never panics, and:
//! - a batch holds from 1 to `max_batch` events;
//! - an accepted event has a name that is neither blank, nor too long, nor
//!   holding a control or bidirectional character; a timestamp inside the
//!   window around the server clock; properties, if any, a JSON object
//!   within their size limit;
//! - every accepted event comes back unchanged from the queue's form
//!   (`queued::encode`, then `queued::decode` as the drain reads it), so
//!   nothing collect accepts is lost or altered on its way to Postgres.
#![no_main]

use chrono::{DateTime, TimeDelta, Utc};
use libfuzzer_sys::fuzz_target;
use tollgate::events::{
    body::Limits,
    parse::{parse_batch, Context},
    queued, AgentFields, Event, GeoFields,
};
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
    let context = Context {
        now,
        agent: AgentFields {
            browser: Some("Firefox".into()),
            os: Some("Linux".into()),
            ..AgentFields::default()
        },
        geo: GeoFields {
            country: Some("DE".into()),
            latitude: Some(52.52),
            ..GeoFields::default()
        },
    };
    let limits = Limits::default();
    let mut next = 0u128;
    let mut new_id = || {
        next += 1;
        Uuid::from_u128(next)
    };
    let Ok(batch) = parse_batch(data, &context, &limits, &mut new_id) else {
        return;
    };
    assert!((1..=limits.max_batch).contains(&batch.events.len()));
    let accepted: Vec<Event> = batch.events.into_iter().filter_map(Result::ok).collect();
    for event in &accepted {
        check_event(event, now, &limits);
    }
    let Some((shared, events)) = queued::encode(&accepted).expect("accepted events encode") else {
        assert!(accepted.is_empty());
        return;
    };
    let back = queued::decode(events.as_bytes(), Some(shared.as_bytes()))
        .expect("the drain reads what collect queued");
    assert_eq!(back, accepted, "the queue changed accepted events");
});

fn check_event(event: &Event, now: DateTime<Utc>, limits: &Limits) {
    assert!(!event.name.trim().is_empty());
    assert!(event.name.chars().count() <= 200);
    assert!(!event.name.chars().any(forbidden), "{:?}", event.name);
    assert_eq!(event.received_at, now);
    let age = TimeDelta::from_std(limits.max_age).unwrap();
    let ahead = TimeDelta::from_std(limits.max_future).unwrap();
    assert!(event.occurred_at >= now - age && event.occurred_at <= now + ahead);
    if let Some(properties) = &event.properties {
        assert!(properties.len() <= limits.max_properties_bytes);
        let value: serde_json::Value =
            serde_json::from_str(properties).expect("properties are JSON");
        assert!(value.is_object());
    }
    for text in [
        &event.session_id,
        &event.user_id,
        &event.web.url,
        &event.web.path,
    ]
    .into_iter()
    .flatten()
    {
        assert!(!text.chars().any(forbidden), "{text:?}");
    }
}

/// What no line of plain text may hold, written out here rather than taken
/// from the library: control characters and the bidirectional controls.
fn forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}
