//! The SQL of each analytics view, and the step that adds the usage
//! counters Redis still holds to what Postgres returns.
//!
//! Each view is one statement that returns one JSON document, so a view
//! costs one Postgres round trip and reads one consistent snapshot. Every
//! statement takes the same parameters (see [`Params`]), which lets the
//! tests run `EXPLAIN` on exactly the SQL served.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::query::View;
use crate::metrics::KeyDay;

/// The parameters every view's statement is bound with, in order.
#[derive(Debug, Clone)]
pub struct Params {
    /// `$1`: the key whose data is read; every statement filters by it.
    pub key_id: uuid::Uuid,
    /// `$2`, `$3`: the range as instants, start inclusive, end exclusive.
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// `$4`, `$5`: the range as the key's calendar days, inclusive.
    pub start: NaiveDate,
    pub end: NaiveDate,
    /// `$6`: ids of sync batches Redis holds as pending; the statement says
    /// which of them Postgres has already applied.
    pub pending: Vec<String>,
    /// `$7`: the key's IANA time zone, to bucket events by its days; each
    /// event takes the offset of its own time, so a range across a DST
    /// change splits its days where the key's clocks did.
    pub timezone: String,
}

/// Which of the pending batches Postgres has applied; part of every view.
const APPLIED: &str = "'applied', (SELECT coalesce(jsonb_agg(batch_id), '[]')
                                     FROM sync_batches WHERE batch_id = ANY($6))";

/// The statement of a view.
pub fn sql(view: View) -> String {
    let body = match view {
        View::Overview => {
            "'totals', (SELECT jsonb_build_object(
                            'requests', total_requests, 'successful', successful_requests,
                            'failed', failed_requests, 'files', total_files, 'bytes', total_bytes,
                            'last_used_at', last_used_at)
                        FROM api_keys WHERE id = $1),
             'providers', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                'provider', provider, 'uploads', uploads, 'bytes', bytes,
                                'last_used_at', last_used_at)), '[]')
                           FROM provider_usage WHERE api_key_id = $1)"
        }
        View::Daily => {
            "'days', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                          'day', day, 'requests', total_requests,
                          'successful', successful_requests, 'failed', failed_requests,
                          'files', total_files, 'bytes', total_bytes,
                          'last_used_at', last_used_at)), '[]')
                      FROM api_key_usage_daily
                      WHERE api_key_id = $1 AND day BETWEEN $4 AND $5)"
        }
        View::Providers => {
            "'providers', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                'provider', provider, 'uploads', uploads, 'bytes', bytes,
                                'last_used_at', last_used_at)), '[]')
                           FROM provider_usage WHERE api_key_id = $1),
             'days', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                          'provider', provider, 'day', day, 'uploads', uploads, 'bytes', bytes)), '[]')
                      FROM provider_usage_daily
                      WHERE api_key_id = $1 AND day BETWEEN $4 AND $5)"
        }
        View::FileTypes => {
            "'file_types', (SELECT file_type_counts FROM api_keys WHERE id = $1)"
        }
        View::Events => return events_sql(),
    };
    format!("SELECT jsonb_build_object({body}, {APPLIED})")
}

/// A ranking the events view returns: the rollup dimension it reads, the
/// response field it fills, how many values it keeps, and what its counts
/// are (events, or for entry and exit pages, visits).
struct Ranking {
    dimension: &'static str,
    field: &'static str,
    top: usize,
    label: &'static str,
    counts: &'static str,
}

const fn ranking(dimension: &'static str, field: &'static str, top: usize) -> Ranking {
    Ranking {
        dimension,
        field,
        top,
        label: "value",
        counts: "events",
    }
}

/// Every ranking of the events view, in the order of the response.
const RANKINGS: [Ranking; 11] = [
    Ranking {
        label: "name",
        ..ranking("name", "names", 50)
    },
    ranking("path", "top_paths", 10),
    // Referrers are rolled up by site (host), not by page.
    ranking("referrer", "top_referrers", 10),
    ranking("country", "countries", 10),
    ranking("browser", "browsers", 10),
    ranking("device", "devices", 10),
    ranking("utm_source", "utm_sources", 10),
    ranking("utm_medium", "utm_mediums", 10),
    ranking("utm_campaign", "utm_campaigns", 10),
    Ranking {
        counts: "visits",
        ..ranking("entry", "entry_pages", 10)
    },
    Ranking {
        counts: "visits",
        ..ranking("exit", "exit_pages", 10)
    },
];

/// The events view reads only the key's rollups, each through its primary
/// key over the days of the range, so its cost grows with the days and
/// distinct values of the range, never with its events. The daily rollup
/// is read once for the range and the previous period of the same length
/// just before it; each period's visitors are the union of its days'
/// sketches, and each day's visitors its own sketch, counted by
/// `visitor_count`, which corrects the extension's estimate where it runs
/// high (and costs no more than it elsewhere).
///
/// Ratios (views per visit, bounce rate, visit duration) and the change
/// against the previous period are derived in [`assemble`], from the sums
/// this returns.
fn events_sql() -> String {
    let dimensions: Vec<&str> = RANKINGS.iter().map(|r| r.dimension).collect();
    let tops: Vec<String> = RANKINGS
        .iter()
        .map(|r| format!("('{}', {})", r.dimension, r.top))
        .collect();
    format!(
        "
WITH daily AS MATERIALIZED (
    SELECT day >= $4 AS current, day, events, pageviews, visitors, visits, bounces, visit_seconds
    FROM event_rollup_daily
    WHERE api_key_id = $1 AND day BETWEEN $4::date - ($5::date - $4::date + 1) AND $5
),
totals AS (
    SELECT current, jsonb_build_object(
               'events', sum(events), 'pageviews', sum(pageviews),
               'visitors', visitor_count(hll_union_agg(visitors)),
               'visits', sum(visits), 'bounces', sum(bounces),
               'visit_seconds', sum(visit_seconds)) AS figures
    FROM daily GROUP BY current
),
ranked AS (
    SELECT dimension, value, n,
           row_number() OVER (PARTITION BY dimension ORDER BY n DESC, value) AS rank
    FROM (SELECT dimension, value, sum(events)::bigint AS n
          FROM event_rollup_values
          WHERE api_key_id = $1 AND dimension = ANY ('{{{dimensions}}}'::text[])
            AND day BETWEEN $4 AND $5
          GROUP BY dimension, value) v
)
SELECT jsonb_build_object(
    'current', (SELECT figures FROM totals WHERE current),
    'previous', (SELECT figures FROM totals WHERE NOT current),
    'days', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                 'day', day, 'events', events, 'pageviews', pageviews, 'visits', visits,
                 'visitors', visitor_count(visitors)) ORDER BY day), '[]')
             FROM daily WHERE current),
    'rankings', (SELECT coalesce(jsonb_object_agg(dimension, items), '{{}}')
                 FROM (SELECT r.dimension,
                              jsonb_agg(jsonb_build_array(value, n) ORDER BY rank) AS items
                       FROM ranked r
                       JOIN (VALUES {tops}) AS top(dimension, keep) USING (dimension)
                       WHERE rank <= keep
                       GROUP BY r.dimension) t),
    'applied', '[]'::jsonb)",
        dimensions = dimensions.join(","),
        tops = tops.join(", "),
    )
}

/// Usage counters: all time, or of one day.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub requests: i64,
    pub successful: i64,
    pub failed: i64,
    pub files: i64,
    pub bytes: i64,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl Usage {
    fn add(&mut self, counters: &KeyDay) {
        self.requests += counters.requests;
        self.successful += counters.successful;
        self.failed += counters.failed;
        self.files += counters.files;
        self.bytes += counters.bytes;
        self.last_used_at = later(self.last_used_at, counters.last_ms);
    }
}

/// One provider's uploads, all time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProviderTotals {
    pub provider: String,
    pub uploads: i64,
    pub bytes: i64,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct DayUsage {
    day: NaiveDate,
    #[serde(flatten)]
    usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ProviderDay {
    day: NaiveDate,
    uploads: i64,
    bytes: i64,
}

#[derive(Debug, Deserialize)]
struct ProviderDayRow {
    provider: String,
    #[serde(flatten)]
    day: ProviderDay,
}

/// The key's counters that are in Redis and not in Postgres, by day.
pub(crate) type Unsynced = BTreeMap<NaiveDate, KeyDay>;

/// Turns a view's Postgres document and the unsynced counters into the
/// view's fields. `range` is the view's inclusive range, if it has one.
pub(crate) fn assemble(
    view: View,
    document: Value,
    unsynced: &Unsynced,
    range: Option<(NaiveDate, NaiveDate)>,
) -> anyhow::Result<Map<String, Value>> {
    let (start, end) = range.unwrap_or_default();
    let in_range = || unsynced.range(start..=end);
    let value = match view {
        View::Overview => {
            #[derive(Deserialize)]
            struct Doc {
                totals: Usage,
                providers: Vec<ProviderTotals>,
            }
            let Doc {
                mut totals,
                providers,
            } = serde_json::from_value(document)?;
            for counters in unsynced.values() {
                totals.add(counters);
            }
            serde_json::json!({
                "totals": totals,
                "providers": merge_providers(providers, unsynced.values()),
            })
        }
        View::Daily => {
            #[derive(Deserialize)]
            struct Doc {
                days: Vec<DayUsage>,
            }
            let doc: Doc = serde_json::from_value(document)?;
            let mut by_day: BTreeMap<NaiveDate, Usage> = days(start, end)
                .map(|day| (day, Usage::default()))
                .collect();
            for row in doc.days {
                by_day.insert(row.day, row.usage);
            }
            for (day, counters) in in_range() {
                by_day.entry(*day).or_default().add(counters);
            }
            let days: Vec<DayUsage> = by_day
                .into_iter()
                .map(|(day, usage)| DayUsage { day, usage })
                .collect();
            serde_json::json!({ "days": days })
        }
        View::Providers => {
            #[derive(Deserialize)]
            struct Doc {
                providers: Vec<ProviderTotals>,
                days: Vec<ProviderDayRow>,
            }
            let doc: Doc = serde_json::from_value(document)?;
            let providers = merge_providers(doc.providers, unsynced.values());
            let mut series: BTreeMap<&str, BTreeMap<NaiveDate, ProviderDay>> = providers
                .iter()
                .map(|p| {
                    let empty = days(start, end).map(|day| {
                        (
                            day,
                            ProviderDay {
                                day,
                                uploads: 0,
                                bytes: 0,
                            },
                        )
                    });
                    (p.provider.as_str(), empty.collect())
                })
                .collect();
            for row in doc.days {
                if let Some(slot) = series
                    .get_mut(row.provider.as_str())
                    .and_then(|s| s.get_mut(&row.day.day))
                {
                    *slot = row.day;
                }
            }
            for (day, counters) in in_range() {
                for (provider, (uploads, bytes, _)) in &counters.providers {
                    if let Some(slot) = series
                        .get_mut(provider.as_str())
                        .and_then(|s| s.get_mut(day))
                    {
                        slot.uploads += uploads;
                        slot.bytes += bytes;
                    }
                }
            }
            let daily: Vec<Value> = series
                .into_iter()
                .map(|(provider, days)| {
                    serde_json::json!({
                        "provider": provider,
                        "days": days.into_values().collect::<Vec<_>>(),
                    })
                })
                .collect();
            serde_json::json!({ "providers": providers, "daily": daily })
        }
        View::FileTypes => {
            #[derive(Deserialize)]
            struct Doc {
                file_types: BTreeMap<String, i64>,
            }
            let mut counts = serde_json::from_value::<Doc>(document)?.file_types;
            for counters in unsynced.values() {
                for (content_type, n) in &counters.file_types {
                    *counts.entry(content_type.clone()).or_default() += n;
                }
            }
            let mut file_types: Vec<(String, i64)> = counts.into_iter().collect();
            file_types.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let total: i64 = file_types.iter().map(|(_, n)| n).sum();
            serde_json::json!({
                "total_files": total,
                "file_types": file_types
                    .into_iter()
                    .map(|(content_type, files)| serde_json::json!({
                        "content_type": content_type,
                        "files": files,
                    }))
                    .collect::<Vec<_>>(),
            })
        }
        View::Events => events_view(document, start, end)?,
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => anyhow::bail!("a view did not assemble into an object"),
    }
}

/// The sums of one period of the events view, as its statement returns them.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Sums {
    events: i64,
    pageviews: i64,
    visitors: i64,
    visits: i64,
    bounces: i64,
    visit_seconds: i64,
}

/// The summary figures of a period, as the events view answers them. A
/// ratio over no visits is `None` (`null`), never a division by zero.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Figures {
    pub events: i64,
    pub visitors: i64,
    pub visits: i64,
    pub pageviews: i64,
    /// Pageviews per visit, to two decimals.
    pub views_per_visit: Option<f64>,
    /// The share of visits of a single event, from 0 to 1, to four decimals.
    pub bounce_rate: Option<f64>,
    /// The mean visit length in seconds, to one decimal.
    pub visit_duration: Option<f64>,
}

impl From<Sums> for Figures {
    fn from(sums: Sums) -> Self {
        let per_visit = |total: i64, decimals: i32| {
            (sums.visits > 0).then(|| round(total as f64 / sums.visits as f64, decimals))
        };
        Figures {
            events: sums.events,
            visitors: sums.visitors,
            visits: sums.visits,
            pageviews: sums.pageviews,
            views_per_visit: per_visit(sums.pageviews, 2),
            bounce_rate: per_visit(sums.bounces, 4),
            visit_duration: per_visit(sums.visit_seconds, 1),
        }
    }
}

/// How a period's figures moved from the previous period's: counts and
/// means as a relative change (0.25 is 25 % more), `None` when the previous
/// period had none; the bounce rate as a difference of rates (0.05 is five
/// points more), as web-analytics tools show it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Change {
    pub events: Option<f64>,
    pub visitors: Option<f64>,
    pub visits: Option<f64>,
    pub pageviews: Option<f64>,
    pub views_per_visit: Option<f64>,
    pub bounce_rate: Option<f64>,
    pub visit_duration: Option<f64>,
}

impl Change {
    fn between(now: &Figures, before: &Figures) -> Self {
        let relative = |now: Option<f64>, before: Option<f64>| match (now, before) {
            (Some(now), Some(before)) if before != 0.0 => Some(round((now - before) / before, 4)),
            _ => None,
        };
        let count = |now: i64, before: i64| relative(Some(now as f64), Some(before as f64));
        Change {
            events: count(now.events, before.events),
            visitors: count(now.visitors, before.visitors),
            visits: count(now.visits, before.visits),
            pageviews: count(now.pageviews, before.pageviews),
            views_per_visit: relative(now.views_per_visit, before.views_per_visit),
            bounce_rate: now
                .bounce_rate
                .zip(before.bounce_rate)
                .map(|(now, before)| round(now - before, 4)),
            visit_duration: relative(now.visit_duration, before.visit_duration),
        }
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The events view's fields from its statement's document: the range's
/// figures, every day of the range (so charts need no gap-filling), the
/// rankings, and the previous period with the change against it.
fn events_view(document: Value, start: NaiveDate, end: NaiveDate) -> anyhow::Result<Value> {
    #[derive(Deserialize)]
    struct EventDay {
        day: NaiveDate,
        events: i64,
        visitors: i64,
        visits: i64,
        pageviews: i64,
    }
    #[derive(Deserialize)]
    struct Doc {
        current: Option<Sums>,
        previous: Option<Sums>,
        days: Vec<EventDay>,
        rankings: BTreeMap<String, Vec<(String, i64)>>,
    }
    let mut doc: Doc = serde_json::from_value(document)?;
    let now = Figures::from(doc.current.unwrap_or_default());
    let before = Figures::from(doc.previous.unwrap_or_default());
    let length = (end - start).num_days() + 1;

    let mut out = match serde_json::to_value(now)? {
        Value::Object(map) => map,
        _ => anyhow::bail!("figures are not an object"),
    };
    let mut by_day: BTreeMap<NaiveDate, Value> = days(start, end)
        .map(|day| {
            let zero = serde_json::json!({"day": day, "events": 0, "visitors": 0, "visits": 0, "pageviews": 0});
            (day, zero)
        })
        .collect();
    for d in doc.days {
        by_day.insert(
            d.day,
            serde_json::json!({"day": d.day, "events": d.events, "visitors": d.visitors,
                               "visits": d.visits, "pageviews": d.pageviews}),
        );
    }
    out.insert("days".into(), by_day.into_values().collect());
    for ranking in &RANKINGS {
        let items = doc.rankings.remove(ranking.dimension).unwrap_or_default();
        let items: Vec<Value> = items
            .into_iter()
            .map(|(value, n)| serde_json::json!({ranking.label: value, ranking.counts: n}))
            .collect();
        out.insert(ranking.field.into(), items.into());
    }
    let mut previous = match serde_json::to_value(before)? {
        Value::Object(map) => map,
        _ => anyhow::bail!("figures are not an object"),
    };
    previous.insert(
        "start".into(),
        (start - Duration::days(length)).to_string().into(),
    );
    previous.insert("end".into(), (start - Duration::days(1)).to_string().into());
    out.insert("previous".into(), previous.into());
    out.insert(
        "change".into(),
        serde_json::to_value(Change::between(&now, &before))?,
    );
    Ok(Value::Object(out))
}

/// Provider totals from Postgres plus the unsynced counters, by name.
fn merge_providers<'a>(
    rows: Vec<ProviderTotals>,
    unsynced: impl Iterator<Item = &'a KeyDay>,
) -> Vec<ProviderTotals> {
    let mut by_name: BTreeMap<String, ProviderTotals> = rows
        .into_iter()
        .map(|row| (row.provider.clone(), row))
        .collect();
    for counters in unsynced {
        for (provider, (uploads, bytes, last_ms)) in &counters.providers {
            let slot = by_name
                .entry(provider.clone())
                .or_insert_with(|| ProviderTotals {
                    provider: provider.clone(),
                    uploads: 0,
                    bytes: 0,
                    last_used_at: None,
                });
            slot.uploads += uploads;
            slot.bytes += bytes;
            slot.last_used_at = later(slot.last_used_at, *last_ms);
        }
    }
    by_name.into_values().collect()
}

fn later(at: Option<DateTime<Utc>>, ms: i64) -> Option<DateTime<Utc>> {
    let other = (ms > 0)
        .then(|| DateTime::from_timestamp_millis(ms))
        .flatten();
    at.max(other)
}

fn days(start: NaiveDate, end: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    let count = (end - start).num_days().max(-1) + 1;
    (0..count).map(move |i| start + Duration::days(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn unsynced() -> Unsynced {
        let mut counters = KeyDay {
            requests: 3,
            successful: 2,
            failed: 1,
            files: 2,
            bytes: 300,
            last_ms: 1_795_000_000_000,
            ..KeyDay::default()
        };
        counters
            .providers
            .insert("s3".into(), (2, 300, 1_795_000_000_000));
        counters.file_types.insert("image/png".into(), 2);
        [(day("2026-11-22"), counters)].into_iter().collect()
    }

    #[test]
    fn overview_adds_unsynced_counters_to_the_postgres_totals() {
        let document = json!({
            "totals": {"requests": 10, "successful": 9, "failed": 1, "files": 4, "bytes": 1000,
                       "last_used_at": "2026-11-20T10:00:00+00:00"},
            "providers": [{"provider": "s3", "uploads": 4, "bytes": 1000, "last_used_at": null}],
            "applied": [],
        });
        let view = assemble(View::Overview, document, &unsynced(), None).unwrap();
        assert_eq!(view["totals"]["requests"], 13);
        assert_eq!(view["totals"]["files"], 6);
        assert_eq!(view["totals"]["last_used_at"], "2026-11-20T10:00:00Z");
        assert_eq!(view["providers"][0]["uploads"], 6);
        assert_eq!(view["providers"][0]["bytes"], 1300);
    }

    #[test]
    fn daily_fills_every_day_of_the_range() {
        let document = json!({"days": [{"day": "2026-11-20", "requests": 5, "successful": 5,
            "failed": 0, "files": 0, "bytes": 0, "last_used_at": null}], "applied": []});
        let range = Some((day("2026-11-19"), day("2026-11-22")));
        let view = assemble(View::Daily, document, &unsynced(), range).unwrap();
        let requests: Vec<i64> = view["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["requests"].as_i64().unwrap())
            .collect();
        assert_eq!(requests, [0, 5, 0, 3]);
    }

    #[test]
    fn unsynced_days_outside_the_range_are_left_out_of_series() {
        let document = json!({"providers": [], "days": [], "applied": []});
        let range = Some((day("2026-11-01"), day("2026-11-02")));
        let view = assemble(View::Providers, document, &unsynced(), range).unwrap();
        assert_eq!(view["providers"][0]["uploads"], 2, "totals count every day");
        let series = &view["daily"][0]["days"];
        assert_eq!(series.as_array().unwrap().len(), 2);
        assert_eq!(series[0]["uploads"], 0);
        assert_eq!(series[1]["uploads"], 0);
    }

    #[test]
    fn file_types_are_merged_and_sorted_by_count() {
        let document = json!({"file_types": {"application/pdf": 5, "image/png": 4}, "applied": []});
        let view = assemble(View::FileTypes, document, &unsynced(), None).unwrap();
        assert_eq!(view["total_files"], 11);
        assert_eq!(
            view["file_types"][0],
            json!({"content_type": "image/png", "files": 6})
        );
    }

    #[test]
    fn every_statement_reads_only_the_given_key() {
        for view in View::ALL {
            let sql = sql(view);
            for table in [
                "api_keys",
                "provider_usage",
                "api_key_usage_daily",
                "event_rollup_daily",
                "event_rollup_values",
            ] {
                for (at, _) in sql.match_indices(&format!("FROM {table}")) {
                    let rest = &sql[at..];
                    let clause = &rest[..rest.find(')').unwrap_or(rest.len())];
                    assert!(
                        clause.contains("= $1"),
                        "{}: `{clause}` must filter by the key",
                        view.as_str()
                    );
                }
            }
        }
    }

    #[test]
    fn no_statement_reads_raw_events() {
        for view in View::ALL {
            let sql = sql(view);
            assert!(
                !sql.contains("FROM events") && !sql.contains("JOIN events"),
                "{}",
                view.as_str()
            );
        }
    }

    #[test]
    fn an_empty_range_has_zeros_and_no_ratios_and_every_day() {
        let document =
            json!({"current": null, "previous": null, "days": [], "rankings": {}, "applied": []});
        let range = Some((day("2026-11-01"), day("2026-11-03")));
        let view = assemble(View::Events, document, &Unsynced::new(), range).unwrap();
        assert_eq!(view["events"], 0);
        assert_eq!(view["visits"], 0);
        assert_eq!(view["views_per_visit"], Value::Null);
        assert_eq!(view["bounce_rate"], Value::Null);
        assert_eq!(view["visit_duration"], Value::Null);
        assert_eq!(view["days"].as_array().unwrap().len(), 3);
        assert_eq!(
            view["days"][1],
            json!({"day": "2026-11-02", "events": 0, "visitors": 0, "visits": 0, "pageviews": 0})
        );
        assert_eq!(view["entry_pages"], json!([]));
        assert_eq!(view["previous"]["start"], "2026-10-29");
        assert_eq!(view["previous"]["end"], "2026-10-31");
        assert!(view["change"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_null));
    }

    #[test]
    fn ratios_and_the_change_come_from_the_sums() {
        let document = json!({
            "current": {"events": 12, "pageviews": 9, "visitors": 3, "visits": 4, "bounces": 1, "visit_seconds": 250},
            "previous": {"events": 8, "pageviews": 6, "visitors": 3, "visits": 3, "bounces": 2, "visit_seconds": 90},
            "days": [], "applied": [],
            "rankings": {"entry": [["/", 3], ["/a", 1]], "name": [["pageview", 9]]},
        });
        let range = Some((day("2026-11-01"), day("2026-11-07")));
        let view = assemble(View::Events, document, &Unsynced::new(), range).unwrap();
        assert_eq!(view["views_per_visit"], 2.25);
        assert_eq!(view["bounce_rate"], 0.25);
        assert_eq!(view["visit_duration"], 62.5);
        assert_eq!(
            view["entry_pages"],
            json!([{"value": "/", "visits": 3}, {"value": "/a", "visits": 1}])
        );
        assert_eq!(view["names"], json!([{"name": "pageview", "events": 9}]));
        assert_eq!(view["previous"]["bounce_rate"], 0.6667);
        assert_eq!(view["previous"]["start"], "2026-10-25");
        let change = &view["change"];
        assert_eq!(change["events"], 0.5);
        assert_eq!(change["visitors"], 0.0);
        assert_eq!(change["views_per_visit"], 0.125);
        assert_eq!(change["bounce_rate"], -0.4167);
        assert_eq!(change["visit_duration"], 1.0833);
    }
}
