//! The parameters of `GET /api/analytics`, parsed from the query string into
//! a [`Query`] that can only hold a valid view and range.

use chrono::{Duration, NaiveDate};

use crate::error::ApiError;

/// One analytics view (`?view=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Totals of the key and its per-provider usage, all time.
    Overview,
    /// The usage series per day.
    Daily,
    /// Per-provider totals and their daily series.
    Providers,
    /// Uploads by content type, all time.
    FileTypes,
    /// The key's collected events: per day, per name, top pages and more.
    Events,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Overview,
        View::Daily,
        View::Providers,
        View::FileTypes,
        View::Events,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            View::Overview => "overview",
            View::Daily => "daily",
            View::Providers => "providers",
            View::FileTypes => "file-types",
            View::Events => "events",
        }
    }

    /// Whether the view reads the usage counters, and so must add the ones
    /// Redis holds that the sync has not moved yet.
    pub fn reads_counters(self) -> bool {
        self != View::Events
    }

    /// Whether the view takes a date range.
    pub fn has_range(self) -> bool {
        matches!(self, View::Daily | View::Providers | View::Events)
    }

    fn parse(value: &str) -> Option<View> {
        View::ALL.into_iter().find(|view| view.as_str() == value)
    }
}

/// How a view is written out (`?format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `application/json`, the default.
    #[default]
    Json,
    /// `text/csv`: the view flattened into one table (see `analytics::csv`).
    Csv,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Json, Format::Csv];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }

    fn parse(value: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|format| format.as_str() == value)
    }
}

/// Days a range covers when `start` is not given.
pub const DEFAULT_DAYS: i64 = 30;
/// The most days the daily series return (`limit`).
pub const MAX_LIMIT: i64 = 90;
/// The longest range any view accepts, in days.
pub const MAX_RANGE_DAYS: i64 = 366;

/// A validated analytics request. Its range is resolved against the key's
/// current day by [`Query::range`], because that day depends on the key's
/// time zone, which is only known once the key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    view: View,
    start: Option<NaiveDate>,
    end: Option<NaiveDate>,
    limit: Option<i64>,
    format: Format,
}

impl Query {
    /// Parses a query string.
    ///
    /// `start` and `end` are `YYYY-MM-DD` and inclusive; `end` defaults to
    /// the key's today and `start` to `limit` days (or 30) back from `end`.
    /// `limit` (1 to 90, default 90) keeps only the most recent days of a
    /// daily or providers series. `format` (`json` or `csv`, default
    /// `json`) applies to every view. Each parameter may be given once.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut view = None;
        let (mut start, mut end, mut limit, mut format) = (None, None, None, None);
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            // A repeated parameter is refused rather than read first or
            // last: a proxy in front may have read the other one.
            let given = match name.as_ref() {
                "view" => view.is_some(),
                "start" => start.is_some(),
                "end" => end.is_some(),
                "limit" => limit.is_some(),
                "format" => format.is_some(),
                _ => false,
            };
            if given {
                return Err(bad(
                    "invalid_parameter",
                    format!("`{name}` is given more than once; give each parameter once"),
                ));
            }
            match name.as_ref() {
                "view" => {
                    view = Some(View::parse(&value).ok_or_else(|| {
                        bad(
                            "invalid_view",
                            format!(
                                "`view` must be one of {}; got `{}`",
                                View::ALL.map(View::as_str).join(", "),
                                truncate(&value)
                            ),
                        )
                    })?)
                }
                "start" => start = Some(date("start", &value)?),
                "end" => end = Some(date("end", &value)?),
                "limit" => {
                    limit = Some(
                        value
                            .parse::<i64>()
                            .ok()
                            .filter(|n| (1..=MAX_LIMIT).contains(n))
                            .ok_or_else(|| {
                                bad(
                                    "invalid_limit",
                                    format!(
                                        "`limit` must be a whole number from 1 to {MAX_LIMIT}; got `{}`",
                                        truncate(&value)
                                    ),
                                )
                            })?,
                    )
                }
                "format" => {
                    format = Some(Format::parse(&value).ok_or_else(|| {
                        bad(
                            "invalid_format",
                            format!(
                                "`format` must be one of {}; got `{}`",
                                Format::ALL.map(Format::as_str).join(", "),
                                truncate(&value)
                            ),
                        )
                    })?)
                }
                other => {
                    return Err(bad(
                        "unknown_parameter",
                        format!(
                            "unknown parameter `{}`; use view, start, end, limit and format",
                            truncate(other)
                        ),
                    ))
                }
            }
        }
        let view = view.ok_or_else(|| {
            bad(
                "missing_view",
                format!(
                    "`view` is required: one of {}",
                    View::ALL.map(View::as_str).join(", ")
                ),
            )
        })?;
        let applies = |name: &str| match name {
            "limit" => matches!(view, View::Daily | View::Providers),
            _ => view.has_range(),
        };
        if let Some(name) = [
            ("start", start.is_some()),
            ("end", end.is_some()),
            ("limit", limit.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| (given && !applies(name)).then_some(name))
        {
            return Err(bad(
                "invalid_parameter",
                format!("`{name}` does not apply to the {} view", view.as_str()),
            ));
        }
        let query = Self {
            view,
            start,
            end,
            limit,
            format: format.unwrap_or_default(),
        };
        // A range given in full is checked now; one ending today once the
        // key's today is known.
        if let Some(end) = end {
            query.range(end)?;
        }
        Ok(query)
    }

    pub fn view(&self) -> View {
        self.view
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The inclusive days the view covers, given the key's current day;
    /// `None` for views without a range.
    pub fn range(&self, today: NaiveDate) -> Result<Option<(NaiveDate, NaiveDate)>, ApiError> {
        if !self.view.has_range() {
            return Ok(None);
        }
        let end = self.end.unwrap_or(today);
        // Without a start, a series covers `limit` days (30 by default).
        let start = self
            .start
            .unwrap_or(end - Duration::days(self.limit.unwrap_or(DEFAULT_DAYS) - 1));
        if start > end {
            return Err(bad(
                "invalid_range",
                format!("`start` ({start}) is after `end` ({end})"),
            ));
        }
        let days = (end - start).num_days() + 1;
        if days > MAX_RANGE_DAYS {
            return Err(bad(
                "invalid_range",
                format!("`start` to `end` covers {days} days; the most is {MAX_RANGE_DAYS}"),
            ));
        }
        // A series keeps its most recent `limit` days.
        let start = match self.view {
            View::Events => start,
            _ => start.max(end - Duration::days(self.limit.unwrap_or(MAX_LIMIT) - 1)),
        };
        Ok(Some((start, end)))
    }

    /// The view and its parameters in one canonical form: the part of the
    /// cache key that tells results apart. Parameters left to their
    /// defaults stay empty, so a cached "last 30 days" is at most one cache
    /// lifetime late in turning over at midnight. The format is not part
    /// of it: the cache keeps what every format is written from.
    pub fn cache_id(&self) -> String {
        let text = |day: Option<NaiveDate>| day.map(|d| d.to_string()).unwrap_or_default();
        match self.view.has_range() {
            true => format!(
                "{}:{}:{}:{}",
                self.view.as_str(),
                text(self.start),
                text(self.end),
                self.limit.map(|n| n.to_string()).unwrap_or_default()
            ),
            false => self.view.as_str().to_owned(),
        }
    }
}

fn date(name: &str, value: &str) -> Result<NaiveDate, ApiError> {
    // Exactly four, two and two digits: chrono alone also takes a signed
    // or shorter year (`-999-01-01`).
    let shaped = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shaped
        .then(|| NaiveDate::parse_from_str(value, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| {
            bad(
                "invalid_date",
                format!(
                    "`{name}` must be a date as YYYY-MM-DD; got `{}`",
                    truncate(value)
                ),
            )
        })
}

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::BadRequest { code, message }
}

/// Client text echoed in an error, cut short.
fn truncate(value: &str) -> String {
    value.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        day("2026-11-22")
    }

    fn parse(query: &str) -> Result<Query, ApiError> {
        Query::parse(Some(query))
    }

    fn range(query: &str) -> Result<Option<(NaiveDate, NaiveDate)>, ApiError> {
        parse(query)?.range(today())
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_range_defaults_to_the_thirty_days_ending_today() {
        assert_eq!(
            range("view=daily").unwrap(),
            Some((day("2026-10-24"), day("2026-11-22")))
        );
        assert_eq!(range("view=overview").unwrap(), None);
    }

    #[test]
    fn limit_keeps_the_most_recent_days_of_a_series() {
        assert_eq!(
            range("view=providers&start=2026-01-01&end=2026-03-31&limit=7").unwrap(),
            Some((day("2026-03-25"), day("2026-03-31")))
        );
        assert_eq!(
            range("view=daily&start=2026-01-01&end=2026-12-31")
                .unwrap()
                .unwrap()
                .0,
            day("2026-10-03")
        );
    }

    #[test]
    fn a_limit_without_a_start_sets_the_length_of_the_series() {
        assert_eq!(
            range("view=daily&limit=90").unwrap(),
            Some((day("2026-08-25"), day("2026-11-22")))
        );
        assert_eq!(
            range("view=providers&limit=7").unwrap(),
            Some((day("2026-11-16"), day("2026-11-22")))
        );
    }

    #[test]
    fn the_events_view_keeps_its_whole_range() {
        assert_eq!(
            range("view=events&start=2026-01-01&end=2026-12-31").unwrap(),
            Some((day("2026-01-01"), day("2026-12-31")))
        );
    }

    #[test]
    fn equal_queries_share_a_cache_id() {
        let a = parse("view=daily&end=2026-11-22&start=2026-11-01").unwrap();
        let b = parse("start=2026-11-01&view=daily&end=2026-11-22").unwrap();
        assert_eq!(a.cache_id(), b.cache_id());
        assert_eq!(a.cache_id(), "daily:2026-11-01:2026-11-22:");
        assert_eq!(parse("view=overview").unwrap().cache_id(), "overview");
        assert_ne!(
            parse("view=daily").unwrap().cache_id(),
            parse("view=daily&limit=7").unwrap().cache_id()
        );
    }

    #[test]
    fn format_defaults_to_json_and_leaves_the_cache_id_alone() {
        assert_eq!(parse("view=overview").unwrap().format(), Format::Json);
        let csv = parse("view=daily&limit=7&format=csv").unwrap();
        assert_eq!(csv.format(), Format::Csv);
        assert_eq!(
            csv.cache_id(),
            parse("view=daily&limit=7").unwrap().cache_id()
        );
        assert_eq!(
            parse("view=events&format=json").unwrap().format(),
            Format::Json
        );
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_parameter() {
        let cases = [
            ("", "missing_view", "`view`"),
            ("view=weekly", "invalid_view", "`view`"),
            ("view=daily&start=2026-13-01", "invalid_date", "`start`"),
            ("view=daily&end=yesterday", "invalid_date", "`end`"),
            ("view=daily&start=2026-1-1", "invalid_date", "`start`"),
            ("view=daily&start=-999-01-01", "invalid_date", "`start`"),
            ("view=daily&end=+999-01-01", "invalid_date", "`end`"),
            ("view=daily&start=2026-11-23", "invalid_range", "`start`"),
            (
                "view=daily&start=2026-11-02&end=2026-11-01",
                "invalid_range",
                "`start`",
            ),
            ("view=events&start=2024-01-01", "invalid_range", "`start`"),
            ("view=daily&limit=0", "invalid_limit", "`limit`"),
            ("view=daily&limit=91", "invalid_limit", "`limit`"),
            ("view=daily&limit=ten", "invalid_limit", "`limit`"),
            ("view=events&limit=5", "invalid_parameter", "`limit`"),
            (
                "view=overview&start=2026-11-01",
                "invalid_parameter",
                "`start`",
            ),
            ("view=file-types&limit=3", "invalid_parameter", "`limit`"),
            ("view=daily&key=sk_x", "unknown_parameter", "`key`"),
            ("view=daily&format=xml", "invalid_format", "`format`"),
            ("view=overview&format=CSV", "invalid_format", "`format`"),
            ("view=daily&format=", "invalid_format", "`format`"),
            (
                "view=daily&format=csv&format=csv",
                "invalid_parameter",
                "`format`",
            ),
            ("view=daily&view=overview", "invalid_parameter", "`view`"),
            ("view=daily&limit=7&limit=7", "invalid_parameter", "`limit`"),
            (
                "view=daily&end=2026-11-01&end=2026-11-02",
                "invalid_parameter",
                "`end`",
            ),
        ];
        for (query, code, names) in cases {
            let error = range(query).expect_err(query);
            assert_eq!(error.code(), code, "{query}");
            assert!(
                error.to_string().contains(names),
                "{query}: {error} should name {names}"
            );
        }
    }
}
