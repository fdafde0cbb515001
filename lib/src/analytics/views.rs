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
        View::Events => return EVENTS.to_owned(),
    };
    format!("SELECT jsonb_build_object({body}, {APPLIED})")
}

/// The events view reads the key's events of the range once (through the
/// `(api_key_id, occurred_at)` index) and aggregates them several ways.
const EVENTS: &str = "
WITH e AS MATERIALIZED (
    SELECT (occurred_at AT TIME ZONE $7)::date AS day,
           name, path, visitor_id, country, browser, device_type, referrer
    FROM events
    WHERE api_key_id = $1 AND occurred_at >= $2 AND occurred_at < $3
)
SELECT jsonb_build_object(
    'events', (SELECT count(*) FROM e),
    'visitors', (SELECT count(DISTINCT visitor_id) FROM e),
    'days', (SELECT coalesce(jsonb_agg(jsonb_build_object('day', day, 'events', n, 'visitors', v)), '[]')
             FROM (SELECT day, count(*) AS n, count(DISTINCT visitor_id) AS v FROM e GROUP BY day) d),
    'names', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', name, 'events', n) ORDER BY n DESC, name), '[]')
              FROM (SELECT name, count(*) AS n FROM e GROUP BY name ORDER BY n DESC, name LIMIT 50) t),
    'top_paths', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                  FROM (SELECT path AS v, count(*) AS n FROM e WHERE path IS NOT NULL
                        GROUP BY path ORDER BY n DESC, v LIMIT 10) t),
    -- Referrers are ranked by site, not by page; the site is taken from each
    -- distinct referrer once, not from every row.
    'top_referrers', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                      FROM (SELECT site AS v, sum(n)::bigint AS n
                            FROM (SELECT nullif(substring(referrer FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]+)'), '') AS site,
                                         count(*) AS n
                                  FROM e WHERE referrer IS NOT NULL GROUP BY referrer) r
                            WHERE site IS NOT NULL
                            GROUP BY site ORDER BY n DESC, v LIMIT 10) t),
    'countries', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                  FROM (SELECT country AS v, count(*) AS n FROM e WHERE country IS NOT NULL
                        GROUP BY country ORDER BY n DESC, v LIMIT 10) t),
    'browsers', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                 FROM (SELECT browser AS v, count(*) AS n FROM e WHERE browser IS NOT NULL
                       GROUP BY browser ORDER BY n DESC, v LIMIT 10) t),
    'devices', (SELECT coalesce(jsonb_agg(jsonb_build_object('value', v, 'events', n) ORDER BY n DESC, v), '[]')
                FROM (SELECT device_type AS v, count(*) AS n FROM e WHERE device_type IS NOT NULL
                      GROUP BY device_type ORDER BY n DESC, v LIMIT 10) t),
    'applied', '[]'::jsonb)";

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
        View::Events => {
            let mut document = document;
            let object = document
                .as_object_mut()
                .ok_or_else(|| anyhow::anyhow!("the events view is not an object"))?;
            object.remove("applied");
            // Every day of the range gets a row, so charts need no gap-filling.
            #[derive(Deserialize)]
            struct EventDay {
                day: NaiveDate,
                events: i64,
                visitors: i64,
            }
            let counted: Vec<EventDay> =
                serde_json::from_value(object.remove("days").unwrap_or_default())?;
            let mut by_day: BTreeMap<NaiveDate, (i64, i64)> =
                days(start, end).map(|day| (day, (0, 0))).collect();
            for row in counted {
                by_day.insert(row.day, (row.events, row.visitors));
            }
            object.insert(
                "days".into(),
                by_day
                    .into_iter()
                    .map(|(day, (events, visitors))| {
                        serde_json::json!({"day": day, "events": events, "visitors": visitors})
                    })
                    .collect(),
            );
            document
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => anyhow::bail!("a view did not assemble into an object"),
    }
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
                "events",
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
}
