//! The per-key rollups that analytics reads (see the migration
//! `20261202000001_event_rollups.sql`): maintained by the drain from the
//! events it stored, in the same transaction as their insert.
//!
//! # Design
//!
//! [`apply`] turns a batch of fresh events into deltas in Rust first, keyed
//! by (key, day, …), and writes them with a fixed handful of set-based
//! statements (`UNNEST` arrays), whatever the batch's size or number of
//! keys: one read of the keys' time zones, one read of the stored sessions
//! the batch continues, then a delete and an insert of sessions and an
//! upsert into each rollup table. Counts are added; unique visitors are
//! HyperLogLog sketches, unioned.
//!
//! Visits need state across batches. Each session's row in
//! `event_sessions` holds what its visit contributed (on the day it
//! started): a visit, a bounce if it had one event, its duration, its entry
//! and exit paths. When a batch continues a session, or an out-of-order
//! event lands before its start, or a late event bridges two of a visitor's
//! sessions, the old sessions' contributions are taken back and the merged
//! session's added, so a visit counts once however its events are split
//! into batches. Every merge is order-free (sums, minimum and maximum), so
//! the rollups do not depend on the order events arrive in.
//!
//! The caller's transaction holds the keys' locks ([`lock_keys`]), which
//! serializes the read-modify-write of sessions between concurrent drains;
//! the rows need no `FOR UPDATE` of their own.
//!
//! [`rebuild`] recomputes one key from the events Postgres still holds by
//! streaming them, in time order, through the same code. Days before the
//! key's oldest retained event keep their rollups, since their events are
//! gone (dropped by retention).

use std::collections::{hash_map::Entry, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};
use chrono_tz::Tz;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{
    store::StoredEvent, AgentFields, Event, EventKind, GeoFields, MobileFields, ServerFields,
    WebFields,
};
use crate::{apikeys, db::Db};

/// A visitor's events further apart than this belong to separate visits.
pub const SESSION_GAP: TimeDelta = TimeDelta::minutes(30);

/// Events a rebuild reads and applies at a time.
const REBUILD_PAGE: i64 = 5_000;

/// Serializes rollup maintenance per key across concurrent drains, for the
/// rest of the caller's transaction. Taken before the events' ids are
/// claimed, in key order, so that two drains never wait on each other in
/// opposite orders.
pub async fn lock_keys(db: &Db, conn: &mut PgConnection, keys: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    db.query(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(k::text, 7)))
         FROM (SELECT k FROM unnest($1::uuid[]) k ORDER BY k) keys",
    )
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// A key's days, from one on or before one.
#[derive(Debug, Clone, Copy)]
pub enum Days {
    From(NaiveDate),
    Before(NaiveDate),
}

/// Deletes a key's rollups and sessions of the given days, inside the
/// caller's transaction, which holds the key's lock.
pub async fn clear_days(
    db: &Db,
    conn: &mut PgConnection,
    key_id: Uuid,
    days: Days,
) -> Result<(), sqlx::Error> {
    let (condition, day) = match days {
        Days::From(day) => ("day >= $2", day),
        Days::Before(day) => ("day < $2", day),
    };
    for table in [
        "event_rollup_daily",
        "event_rollup_values",
        "event_sessions",
    ] {
        db.query(&format!(
            "DELETE FROM {table} WHERE api_key_id = $1 AND {condition}"
        ))
        .bind(key_id)
        .bind(day)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Sessions pruned per call, so one drain run's share stays small.
const PRUNE_LIMIT: i64 = 10_000;

/// Deletes up to [`PRUNE_LIMIT`] sessions whose last event is before
/// `before`: their visits stay counted in the rollups, and no event can
/// continue them any more. Returns how many were deleted.
pub async fn prune_sessions(db: &Db, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done = db
        .query(
            "DELETE FROM event_sessions WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM event_sessions WHERE last_at < $1 LIMIT $2))",
        )
        .bind(before)
        .bind(PRUNE_LIMIT)
        .execute(db.executor())
        .await?;
    Ok(done.rows_affected())
}

/// A path seen in a session, and when; ordered by time, then by path, so
/// that the entry (the least) and the exit (the greatest) do not depend on
/// the order events arrive in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    at: DateTime<Utc>,
    path: String,
}

/// A session: a row of `event_sessions`, or the part of one a batch holds.
#[derive(Debug, Clone)]
struct Session {
    key: Uuid,
    /// `s:<tracker id>` or `v:<visitor id>:<first event, unix ms>`.
    session_key: String,
    visitor_id: Option<String>,
    started_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    /// The day its visit is counted under.
    day: NaiveDate,
    events: i32,
    pageviews: i32,
    entry: Option<Seen>,
    exit: Option<Seen>,
}

impl Session {
    /// The session of one event, before it is merged with the rest.
    fn of(stored: &StoredEvent, session_key: String, zone: Tz) -> Self {
        let event = &stored.event;
        // As Postgres keeps it (microseconds), so that durations computed
        // here equal those a rebuild computes from the stored events.
        let at = event.occurred_at.trunc_subsecs(6);
        let seen = event.web.path.clone().map(|path| Seen { at, path });
        Session {
            key: stored.api_key_id,
            session_key,
            visitor_id: stored.visitor_id.clone(),
            started_at: at,
            last_at: at,
            day: apikeys::key_day(at, zone),
            events: 1,
            pageviews: is_pageview(event).into(),
            entry: seen.clone(),
            exit: seen,
        }
    }

    /// Both sessions as one. The merged session keeps `self`'s key; the
    /// caller renames it when its start decides its key.
    fn merge(mut self, other: Session) -> Session {
        if other.started_at < self.started_at {
            self.started_at = other.started_at;
            self.day = other.day;
        }
        self.last_at = self.last_at.max(other.last_at);
        self.visitor_id = least(self.visitor_id, other.visitor_id);
        self.events += other.events;
        self.pageviews += other.pageviews;
        self.entry = least(self.entry, other.entry);
        self.exit = self.exit.max(other.exit);
        self
    }

    /// Whether an event of the same visitor starting at `next` continues it.
    fn continues_into(&self, next: DateTime<Utc>) -> bool {
        next - self.last_at <= SESSION_GAP
    }
}

/// The lesser of two optional values, where `None` means "none seen".
fn least<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_pageview(event: &Event) -> bool {
    event.kind == EventKind::Web && event.name == "pageview"
}

/// One key's day in `event_rollup_daily`, as a change to add.
#[derive(Debug, Default)]
struct DayDelta {
    events: i64,
    pageviews: i64,
    visits: i64,
    bounces: i64,
    visit_seconds: i64,
    visitors: HashSet<String>,
}

/// (key, dimension, day, value): a row of `event_rollup_values`.
type ValueKey = (Uuid, &'static str, NaiveDate, String);

/// What a batch changes, aggregated before it is written.
#[derive(Debug, Default)]
struct Changes {
    days: HashMap<(Uuid, NaiveDate), DayDelta>,
    values: HashMap<ValueKey, i64>,
    /// Stored sessions the batch replaces (merged into `sessions`).
    replaced: Vec<(Uuid, String)>,
    sessions: Vec<Session>,
}

impl Changes {
    /// Counts one event on its day and under each dimension it has a value for.
    fn count_event(&mut self, stored: &StoredEvent, zone: Tz) {
        let event = &stored.event;
        let key = stored.api_key_id;
        let day = apikeys::key_day(event.occurred_at, zone);
        let delta = self.days.entry((key, day)).or_default();
        delta.events += 1;
        delta.pageviews += i64::from(is_pageview(event));
        if let Some(visitor) = &stored.visitor_id {
            delta.visitors.insert(visitor.clone());
        }
        let dimensions = [
            ("name", Some(event.name.as_str())),
            ("path", event.web.path.as_deref()),
            (
                "referrer",
                event.web.referrer.as_deref().and_then(referring_site),
            ),
            ("country", event.geo.country.as_deref()),
            ("browser", event.agent.browser.as_deref()),
            ("device", event.agent.device_type.as_deref()),
            ("utm_source", event.web.utm_source.as_deref()),
            ("utm_medium", event.web.utm_medium.as_deref()),
            ("utm_campaign", event.web.utm_campaign.as_deref()),
        ];
        for (dimension, value) in dimensions {
            if let Some(value) = value {
                self.add_value(key, dimension, day, value, 1);
            }
        }
    }

    /// Takes a stored session's visit back out of the rollups.
    fn replace(&mut self, old: Session) {
        self.count_visit(&old, -1);
        self.replaced.push((old.key, old.session_key));
    }

    /// Adds a session's visit to the rollups and keeps the session.
    fn keep(&mut self, new: Session) {
        self.count_visit(&new, 1);
        self.sessions.push(new);
    }

    /// A visit's contribution to the day it started, added (`sign` 1) or
    /// taken back (-1).
    fn count_visit(&mut self, session: &Session, sign: i64) {
        let delta = self.days.entry((session.key, session.day)).or_default();
        delta.visits += sign;
        delta.bounces += sign * i64::from(session.events == 1);
        delta.visit_seconds += sign * (session.last_at - session.started_at).num_seconds();
        let paths = [("entry", &session.entry), ("exit", &session.exit)];
        for (dimension, seen) in paths {
            if let Some(seen) = seen {
                self.add_value(session.key, dimension, session.day, &seen.path, sign);
            }
        }
    }

    fn add_value(
        &mut self,
        key: Uuid,
        dimension: &'static str,
        day: NaiveDate,
        value: &str,
        n: i64,
    ) {
        *self
            .values
            .entry((key, dimension, day, value.to_owned()))
            .or_default() += n;
    }
}

/// The referring site: the host part of a referrer URL, as the events view
/// has always ranked referrers (`^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]+)`).
pub fn referring_site(referrer: &str) -> Option<&str> {
    let (scheme, rest) = referrer.split_once("://")?;
    let mut letters = scheme.chars();
    let valid_scheme = letters.next().is_some_and(|c| c.is_ascii_alphabetic())
        && letters.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
    let host = rest.split(['/', '?', '#']).next()?;
    (valid_scheme && !host.is_empty()).then_some(host)
}

/// Adds events just inserted (each new for its key) to their keys'
/// rollups, inside the caller's transaction, which holds their keys' locks.
pub async fn apply(
    db: &Db,
    conn: &mut PgConnection,
    fresh: &[&StoredEvent],
) -> Result<(), sqlx::Error> {
    if fresh.is_empty() {
        return Ok(());
    }
    let zones = time_zones(db, conn, fresh).await?;
    let zone = |key: &Uuid| zones.get(key).copied().unwrap_or(chrono_tz::UTC);

    let mut changes = Changes::default();
    for stored in fresh {
        changes.count_event(stored, zone(&stored.api_key_id));
    }

    let threads = Threads::of(fresh, &zone);
    let stored = load_sessions(db, conn, &threads).await?;
    threads.stitch(stored, &zone, &mut changes);

    write(db, conn, &changes).await
}

/// The time zone of each key in the batch, read in the caller's
/// transaction so that a zone change (which rebuilds under the key's lock)
/// is seen by every batch after it.
async fn time_zones(
    db: &Db,
    conn: &mut PgConnection,
    events: &[&StoredEvent],
) -> Result<HashMap<Uuid, Tz>, sqlx::Error> {
    let keys: HashSet<Uuid> = events.iter().map(|e| e.api_key_id).collect();
    let rows = db
        .query("SELECT id, timezone FROM api_keys WHERE id = ANY($1)")
        .bind(keys.into_iter().collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let zone: String = row.try_get("timezone")?;
            Ok((row.try_get("id")?, apikeys::zone(&zone)))
        })
        .collect()
}

/// The batch's events by session, before stored sessions are considered.
#[derive(Debug, Default)]
struct Threads {
    /// Events with the tracker's session id, merged per (key, `s:<id>`).
    tracked: HashMap<(Uuid, String), Session>,
    /// Events without one, one session each, per (key, visitor); they are
    /// cut into visits by [`SESSION_GAP`] once stored sessions are known.
    by_visitor: HashMap<(Uuid, String), Vec<Session>>,
}

impl Threads {
    fn of(fresh: &[&StoredEvent], zone: &impl Fn(&Uuid) -> Tz) -> Self {
        let mut threads = Threads::default();
        for stored in fresh {
            let zone = zone(&stored.api_key_id);
            let key = stored.api_key_id;
            if let Some(id) = &stored.event.session_id {
                let session = Session::of(stored, format!("s:{id}"), zone);
                match threads.tracked.entry((key, session.session_key.clone())) {
                    Entry::Occupied(mut seen) => {
                        let merged = seen.get().clone().merge(session);
                        seen.insert(merged);
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(session);
                    }
                }
            } else if let Some(visitor) = &stored.visitor_id {
                // Named once its start is known; see `stitch`.
                let session = Session::of(stored, String::new(), zone);
                threads
                    .by_visitor
                    .entry((key, visitor.clone()))
                    .or_default()
                    .push(session);
            }
        }
        threads
    }

    /// Merges the batch's sessions with the stored ones they continue, and
    /// records the change: stored sessions taken back, merged ones added.
    fn stitch(self, stored: Vec<Session>, zone: &impl Fn(&Uuid) -> Tz, changes: &mut Changes) {
        let mut stored_tracked = HashMap::new();
        let mut stored_by_visitor: HashMap<(Uuid, String), Vec<Session>> = HashMap::new();
        for session in stored {
            if session.session_key.starts_with("s:") {
                stored_tracked.insert((session.key, session.session_key.clone()), session);
            } else if let Some(visitor) = session.visitor_id.clone() {
                stored_by_visitor
                    .entry((session.key, visitor))
                    .or_default()
                    .push(session);
            }
        }

        for (id, fresh) in self.tracked {
            let merged = match stored_tracked.remove(&id) {
                Some(old) => {
                    changes.replace(old.clone());
                    old.merge(fresh)
                }
                None => fresh,
            };
            changes.keep(counted_on_its_day(merged, zone));
        }

        for ((key, visitor), fresh) in self.by_visitor {
            let old = stored_by_visitor.remove(&(key, visitor.clone()));
            for visit in cut_visits(old.unwrap_or_default(), fresh) {
                for old in visit.replaces {
                    changes.replace(old);
                }
                let mut session = visit.session;
                session.session_key =
                    format!("v:{visitor}:{}", session.started_at.timestamp_millis());
                changes.keep(counted_on_its_day(session, zone));
            }
        }
    }
}

/// A session's day follows its start in the key's current time zone (a
/// stored session merged with new events may have been counted under
/// another).
fn counted_on_its_day(mut session: Session, zone: &impl Fn(&Uuid) -> Tz) -> Session {
    session.day = apikeys::key_day(session.started_at, zone(&session.key));
    session
}

/// A visit the batch made or changed, and the stored sessions it replaces.
struct Visit {
    session: Session,
    replaces: Vec<Session>,
}

/// Cuts one visitor's events into visits at gaps over [`SESSION_GAP`],
/// together with the visitor's stored sessions near them. Stored sessions
/// that no new event touches are left out: they do not change.
fn cut_visits(stored: Vec<Session>, fresh: Vec<Session>) -> Vec<Visit> {
    let mut pieces: Vec<(Session, bool)> = stored
        .into_iter()
        .map(|s| (s, true))
        .chain(fresh.into_iter().map(|s| (s, false)))
        .collect();
    pieces.sort_by_key(|(session, _)| session.started_at);

    let mut visits = Vec::new();
    let mut current: Option<(Visit, bool)> = None;
    for (piece, was_stored) in pieces {
        current = Some(match current.take() {
            Some((mut visit, has_fresh)) if visit.session.continues_into(piece.started_at) => {
                visit.session = visit.session.merge(piece.clone());
                if was_stored {
                    visit.replaces.push(piece);
                }
                (visit, has_fresh || !was_stored)
            }
            previous => {
                visits.extend(previous.filter(|(_, has_fresh)| *has_fresh).map(|(v, _)| v));
                let replaces = if was_stored {
                    vec![piece.clone()]
                } else {
                    vec![]
                };
                (
                    Visit {
                        session: piece,
                        replaces,
                    },
                    !was_stored,
                )
            }
        });
    }
    visits.extend(current.filter(|(_, has_fresh)| *has_fresh).map(|(v, _)| v));
    visits
}

/// The columns of `event_sessions`, in the order the statements use.
const SESSION_COLUMNS: &str = "api_key_id, session_key, visitor_id, started_at, last_at, day,
    events, pageviews, entry_path, exit_path, entry_at, exit_at";

/// The stored sessions the batch may continue: its tracker sessions, and
/// its visitors' sessions within [`SESSION_GAP`] of their new events.
/// A visitor's stored sessions are over a gap apart from each other, so
/// none outside that window can join a visit the batch touches.
async fn load_sessions(
    db: &Db,
    conn: &mut PgConnection,
    threads: &Threads,
) -> Result<Vec<Session>, sqlx::Error> {
    let (tracked_keys, tracked_ids): (Vec<Uuid>, Vec<&str>) = threads
        .tracked
        .keys()
        .map(|(key, id)| (*key, id.as_str()))
        .unzip();
    let mut window = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((key, visitor), sessions) in &threads.by_visitor {
        let first = sessions.iter().map(|s| s.started_at).min();
        let last = sessions.iter().map(|s| s.last_at).max();
        if let (Some(first), Some(last)) = (first, last) {
            window.0.push(*key);
            window.1.push(visitor.as_str());
            window.2.push(first - SESSION_GAP);
            window.3.push(last + SESSION_GAP);
        }
    }
    if tracked_keys.is_empty() && window.0.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM event_sessions
          WHERE (api_key_id, session_key) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))
         UNION ALL
         SELECT {SESSION_COLUMNS} FROM event_sessions s
           JOIN UNNEST($3::uuid[], $4::text[], $5::timestamptz[], $6::timestamptz[])
                AS w(key, visitor, from_at, to_at)
             ON s.api_key_id = w.key AND s.visitor_id = w.visitor
                AND s.visitor_id IS NOT NULL
                AND s.last_at >= w.from_at AND s.started_at <= w.to_at
          WHERE s.session_key LIKE 'v:%'"
    );
    let rows = db
        .query(&sql)
        .bind(tracked_keys)
        .bind(tracked_ids)
        .bind(window.0)
        .bind(window.1)
        .bind(window.2)
        .bind(window.3)
        .fetch_all(conn)
        .await?;
    rows.iter().map(session_from_row).collect()
}

fn session_from_row(row: &sqlx::postgres::PgRow) -> Result<Session, sqlx::Error> {
    let seen = |path: &str, at: &str| -> Result<Option<Seen>, sqlx::Error> {
        let path: Option<String> = row.try_get(path)?;
        let at: Option<DateTime<Utc>> = row.try_get(at)?;
        Ok(path.zip(at).map(|(path, at)| Seen { at, path }))
    };
    Ok(Session {
        key: row.try_get("api_key_id")?,
        session_key: row.try_get("session_key")?,
        visitor_id: row.try_get("visitor_id")?,
        started_at: row.try_get("started_at")?,
        last_at: row.try_get("last_at")?,
        day: row.try_get("day")?,
        events: row.try_get("events")?,
        pageviews: row.try_get("pageviews")?,
        entry: seen("entry_path", "entry_at")?,
        exit: seen("exit_path", "exit_at")?,
    })
}

/// Writes a batch's changes: sessions first, then the two rollup tables.
async fn write(db: &Db, conn: &mut PgConnection, changes: &Changes) -> Result<(), sqlx::Error> {
    write_sessions(db, conn, changes).await?;
    write_days(db, conn, &changes.days).await?;
    write_values(db, conn, &changes.values).await
}

async fn write_sessions(
    db: &Db,
    conn: &mut PgConnection,
    changes: &Changes,
) -> Result<(), sqlx::Error> {
    if !changes.replaced.is_empty() {
        let (keys, ids): (Vec<Uuid>, Vec<&str>) = changes
            .replaced
            .iter()
            .map(|(key, id)| (*key, id.as_str()))
            .unzip();
        db.query(
            "DELETE FROM event_sessions
              WHERE (api_key_id, session_key) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))",
        )
        .bind(keys)
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    }
    if changes.sessions.is_empty() {
        return Ok(());
    }
    let s = &changes.sessions;
    fn path(seen: &Option<Seen>) -> Option<&str> {
        seen.as_ref().map(|seen| seen.path.as_str())
    }
    fn at(seen: &Option<Seen>) -> Option<DateTime<Utc>> {
        seen.as_ref().map(|seen| seen.at)
    }
    let sql = format!(
        "INSERT INTO event_sessions ({SESSION_COLUMNS})
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                              $5::timestamptz[], $6::date[], $7::integer[], $8::integer[],
                              $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[])"
    );
    db.query(&sql)
        .bind(s.iter().map(|s| s.key).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.session_key.as_str()).collect::<Vec<_>>())
        .bind(
            s.iter()
                .map(|s| s.visitor_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(s.iter().map(|s| s.started_at).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.last_at).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.day).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.events).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.pageviews).collect::<Vec<_>>())
        .bind(s.iter().map(|s| path(&s.entry)).collect::<Vec<_>>())
        .bind(s.iter().map(|s| path(&s.exit)).collect::<Vec<_>>())
        .bind(s.iter().map(|s| at(&s.entry)).collect::<Vec<_>>())
        .bind(s.iter().map(|s| at(&s.exit)).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

/// One upsert for every (key, day): counts are added, and the day's new
/// visitors are hashed into a sketch and unioned into the stored one.
async fn write_days(
    db: &Db,
    conn: &mut PgConnection,
    days: &HashMap<(Uuid, NaiveDate), DayDelta>,
) -> Result<(), sqlx::Error> {
    if days.is_empty() {
        return Ok(());
    }
    let (mut keys, mut dates, mut counts) = (Vec::new(), Vec::new(), [(); 5].map(|_| Vec::new()));
    let (mut visitor_keys, mut visitor_days, mut visitors) = (Vec::new(), Vec::new(), Vec::new());
    for ((key, day), delta) in days {
        keys.push(*key);
        dates.push(*day);
        let figures = [
            delta.events,
            delta.pageviews,
            delta.visits,
            delta.bounces,
            delta.visit_seconds,
        ];
        for (column, figure) in counts.iter_mut().zip(figures) {
            column.push(figure);
        }
        for visitor in &delta.visitors {
            visitor_keys.push(*key);
            visitor_days.push(*day);
            visitors.push(visitor.as_str());
        }
    }
    let [events, pageviews, visits, bounces, visit_seconds] = counts;
    db.query(
        "WITH delta AS (
            SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::bigint[], $4::bigint[],
                                 $5::bigint[], $6::bigint[], $7::bigint[])
                AS d(api_key_id, day, events, pageviews, visits, bounces, visit_seconds)
         ), seen AS (
            SELECT api_key_id, day, hll_add_agg(hll_hash_text(visitor), 14, 5) AS visitors
              FROM UNNEST($8::uuid[], $9::date[], $10::text[]) AS v(api_key_id, day, visitor)
             GROUP BY api_key_id, day
         )
         INSERT INTO event_rollup_daily AS r
                (api_key_id, day, events, pageviews, visitors, visits, bounces, visit_seconds)
         SELECT d.api_key_id, d.day, d.events, d.pageviews,
                coalesce(s.visitors, hll_empty(14, 5)), d.visits, d.bounces, d.visit_seconds
           FROM delta d LEFT JOIN seen s USING (api_key_id, day)
         ON CONFLICT (api_key_id, day) DO UPDATE SET
            events        = r.events + EXCLUDED.events,
            pageviews     = r.pageviews + EXCLUDED.pageviews,
            visitors      = hll_union(r.visitors, EXCLUDED.visitors),
            visits        = r.visits + EXCLUDED.visits,
            bounces       = r.bounces + EXCLUDED.bounces,
            visit_seconds = r.visit_seconds + EXCLUDED.visit_seconds",
    )
    .bind(keys)
    .bind(dates)
    .bind(events)
    .bind(pageviews)
    .bind(visits)
    .bind(bounces)
    .bind(visit_seconds)
    .bind(visitor_keys)
    .bind(visitor_days)
    .bind(visitors)
    .execute(conn)
    .await?;
    Ok(())
}

/// One upsert for every (key, dimension, day, value), then one delete of
/// the rows a taken-back visit brought to zero (an entry or exit path that
/// changed).
async fn write_values(
    db: &Db,
    conn: &mut PgConnection,
    values: &HashMap<ValueKey, i64>,
) -> Result<(), sqlx::Error> {
    let changed: Vec<(&ValueKey, i64)> = values
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(row, n)| (row, *n))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    type Columns<'a> = (
        Vec<Uuid>,
        Vec<&'static str>,
        Vec<NaiveDate>,
        Vec<&'a str>,
        Vec<i64>,
    );
    fn columns<'a>(rows: &[(&'a ValueKey, i64)]) -> Columns<'a> {
        let mut columns: Columns<'a> = Default::default();
        for ((key, dimension, day, value), n) in rows {
            columns.0.push(*key);
            columns.1.push(*dimension);
            columns.2.push(*day);
            columns.3.push(value.as_str());
            columns.4.push(*n);
        }
        columns
    }
    let (keys, dimensions, days, names, counts) = columns(&changed);
    db.query(
        "INSERT INTO event_rollup_values AS r (api_key_id, dimension, day, value, events)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::date[], $4::text[], $5::bigint[])
         ON CONFLICT (api_key_id, dimension, day, value) DO UPDATE SET
            events = r.events + EXCLUDED.events",
    )
    .bind(keys)
    .bind(dimensions)
    .bind(days)
    .bind(names)
    .bind(counts)
    .execute(&mut *conn)
    .await?;

    let lowered: Vec<(&ValueKey, i64)> = changed.into_iter().filter(|(_, n)| *n < 0).collect();
    if lowered.is_empty() {
        return Ok(());
    }
    let (keys, dimensions, days, names, _) = columns(&lowered);
    db.query(
        "DELETE FROM event_rollup_values r
          USING UNNEST($1::uuid[], $2::text[], $3::date[], $4::text[])
                AS z(api_key_id, dimension, day, value)
          WHERE r.api_key_id = z.api_key_id AND r.dimension = z.dimension
            AND r.day = z.day AND r.value = z.value AND r.events <= 0",
    )
    .bind(keys)
    .bind(dimensions)
    .bind(days)
    .bind(names)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a rebuild recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rebuilt {
    /// The first day recomputed (the day of the key's oldest retained
    /// event); `None` when the key has no events left.
    pub from: Option<NaiveDate>,
    /// Events replayed.
    pub events: u64,
}

/// Recomputes one key's rollups and sessions from the events Postgres still
/// holds, in one transaction under the key's lock.
pub async fn rebuild(db: &Db, key_id: Uuid) -> Result<Rebuilt, sqlx::Error> {
    let mut transaction = db.pool().begin().await?;
    lock_keys(db, &mut transaction, &[key_id]).await?;
    let rebuilt = rebuild_in(db, &mut transaction, key_id).await?;
    transaction.commit().await?;
    Ok(rebuilt)
}

/// [`rebuild`] inside the caller's transaction, which holds the key's lock
/// (a time zone change, a deletion). From the day of the key's oldest event
/// on, the rollups and the sessions counted on those days are deleted and
/// the events replayed through [`apply`] in time order, a page at a time;
/// so a rebuild equals what the drain built. Earlier days keep their
/// rollups: their events are gone, and these are all that is left of them.
pub async fn rebuild_in(
    db: &Db,
    conn: &mut PgConnection,
    key_id: Uuid,
) -> Result<Rebuilt, sqlx::Error> {
    let row = db
        .query(
            "SELECT k.timezone, (SELECT min(occurred_at) FROM events WHERE api_key_id = k.id) AS first
               FROM api_keys k WHERE k.id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(Rebuilt {
            from: None,
            events: 0,
        });
    };
    let zone = apikeys::zone(&row.try_get::<String, _>("timezone")?);
    let Some(first) = row.try_get::<Option<DateTime<Utc>>, _>("first")? else {
        return Ok(Rebuilt {
            from: None,
            events: 0,
        });
    };
    let from = apikeys::key_day(first, zone);
    clear_days(db, conn, key_id, Days::From(from)).await?;

    let mut events = 0;
    let mut after: Option<(DateTime<Utc>, Uuid)> = None;
    loop {
        let page = read_page(db, conn, key_id, first, after).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.event.occurred_at, last.event.id));
        events += page.len() as u64;
        apply(db, conn, &page.iter().collect::<Vec<_>>()).await?;
    }
    Ok(Rebuilt {
        from: Some(from),
        events,
    })
}

/// The key's next events in (time, id) order, with the fields the rollups
/// read.
async fn read_page(
    db: &Db,
    conn: &mut PgConnection,
    key_id: Uuid,
    first: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let (since, after_id) = after.map_or((first, None), |(at, id)| (at, Some(id)));
    let rows = db
        .query(
            "SELECT id, type, name, occurred_at, received_at, session_id, user_id, visitor_id,
                    path, referrer, utm_source, utm_medium, utm_campaign,
                    browser, device_type, country
               FROM events
              WHERE api_key_id = $1 AND occurred_at >= $2
                AND ($3::uuid IS NULL OR (occurred_at, id) > ($2, $3))
              ORDER BY occurred_at, id
              LIMIT $4",
        )
        .bind(key_id)
        .bind(since)
        .bind(after_id)
        .bind(REBUILD_PAGE)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let kind = match row.try_get::<&str, _>("type")? {
                "web" => EventKind::Web,
                "mobile" => EventKind::Mobile,
                _ => EventKind::Server,
            };
            Ok(StoredEvent {
                api_key_id: key_id,
                visitor_id: row.try_get("visitor_id")?,
                event: Event {
                    id: row.try_get("id")?,
                    kind,
                    name: row.try_get("name")?,
                    occurred_at: row.try_get("occurred_at")?,
                    received_at: row.try_get("received_at")?,
                    session_id: row.try_get("session_id")?,
                    user_id: row.try_get("user_id")?,
                    properties: None,
                    web: WebFields {
                        path: row.try_get("path")?,
                        referrer: row.try_get("referrer")?,
                        utm_source: row.try_get("utm_source")?,
                        utm_medium: row.try_get("utm_medium")?,
                        utm_campaign: row.try_get("utm_campaign")?,
                        ..WebFields::default()
                    },
                    mobile: MobileFields::default(),
                    server: ServerFields::default(),
                    agent: AgentFields {
                        browser: row.try_get("browser")?,
                        device_type: row.try_get("device_type")?,
                        ..AgentFields::default()
                    },
                    geo: GeoFields {
                        country: row.try_get("country")?,
                        ..GeoFields::default()
                    },
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_referring_site_is_the_host_of_the_referrer_url() {
        let cases = [
            ("https://news.example.com/a/b?c#d", Some("news.example.com")),
            ("http://example.com", Some("example.com")),
            ("android-app://com.example.app/", Some("com.example.app")),
            ("https://user@host:8080/x", Some("user@host:8080")),
            ("https:///nohost", None),
            ("example.com/page", None),
            ("1http://example.com", None),
            ("ht tp://example.com", None),
            ("", None),
        ];
        for (referrer, site) in cases {
            assert_eq!(referring_site(referrer), site, "{referrer}");
        }
    }

    fn piece(started: i64, last: i64, stored: bool) -> (Session, bool) {
        let at = |minutes: i64| DateTime::<Utc>::UNIX_EPOCH + TimeDelta::minutes(minutes);
        let session = Session {
            key: Uuid::nil(),
            session_key: format!("v:x:{started}"),
            visitor_id: Some("x".into()),
            started_at: at(started),
            last_at: at(last),
            day: NaiveDate::MIN,
            events: 1,
            pageviews: 0,
            entry: None,
            exit: None,
        };
        (session, stored)
    }

    fn split(pieces: Vec<(Session, bool)>) -> (Vec<Session>, Vec<Session>) {
        let (stored, fresh): (Vec<_>, Vec<_>) = pieces.into_iter().partition(|(_, s)| *s);
        (
            stored.into_iter().map(|(s, _)| s).collect(),
            fresh.into_iter().map(|(s, _)| s).collect(),
        )
    }

    #[test]
    fn a_late_event_between_two_visits_joins_them_into_one() {
        let (stored, fresh) = split(vec![
            piece(0, 10, true),
            piece(100, 110, true),
            piece(40, 40, false),
            piece(70, 70, false),
        ]);
        let visits = cut_visits(stored, fresh);
        assert_eq!(visits.len(), 1);
        assert_eq!(visits[0].replaces.len(), 2);
        assert_eq!(visits[0].session.events, 4);
        assert_eq!(
            (visits[0].session.last_at - visits[0].session.started_at).num_minutes(),
            110
        );
    }

    #[test]
    fn stored_visits_no_new_event_touches_are_left_alone() {
        let (stored, fresh) = split(vec![
            piece(0, 10, true),
            piece(200, 210, true),
            piece(400, 400, false),
        ]);
        let visits = cut_visits(stored, fresh);
        assert_eq!(visits.len(), 1);
        assert!(visits[0].replaces.is_empty());
    }

    #[test]
    fn a_gap_of_exactly_thirty_minutes_continues_the_visit_and_more_does_not() {
        let (stored, fresh) = split(vec![
            piece(0, 0, false),
            piece(30, 30, false),
            piece(61, 61, false),
        ]);
        let visits = cut_visits(stored, fresh);
        assert_eq!(visits.len(), 2);
        assert_eq!(visits[0].session.events, 2);
    }

    #[test]
    fn entry_and_exit_do_not_depend_on_arrival_order() {
        let seen = |minute: i64, path: &str| {
            Some(Seen {
                at: DateTime::<Utc>::UNIX_EPOCH + TimeDelta::minutes(minute),
                path: path.into(),
            })
        };
        let (mut a, _) = piece(5, 5, false);
        a.entry = seen(5, "/b");
        a.exit = seen(5, "/b");
        let (mut b, _) = piece(5, 5, false);
        b.entry = seen(5, "/a");
        b.exit = seen(5, "/a");
        let ab = a.clone().merge(b.clone());
        let ba = b.merge(a);
        assert_eq!(ab.entry, ba.entry);
        assert_eq!(ab.exit, ba.exit);
        assert_eq!(ab.entry.unwrap().path, "/a");
        assert_eq!(ab.exit.unwrap().path, "/b");
    }
}
