//! `Query::parse`: the query string of `GET /api/analytics`, and the range
//! it resolves to once the key's current day is known.
//!
//! Never panics, refuses only with a 400, and an accepted query's range,
//! for any current day a four-digit year allows, is ordered and bounded:
//! `start <= end`, at most 366 days, and at most `limit` (90 by default)
//! for the daily series; a view without a range has none.
#![no_main]

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use tollgate::analytics::{
    query::{MAX_LIMIT, MAX_RANGE_DAYS},
    Query, View,
};

fuzz_target!(|data: &[u8]| {
    // The route hands over the URI's query, which is text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let query = match Query::parse(Some(text)) {
        Ok(query) => query,
        Err(error) => {
            assert_eq!(error.status(), 400, "{error:?}");
            return;
        }
    };
    assert!(!query.cache_id().is_empty());
    for today in [
        NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
        NaiveDate::from_ymd_opt(0, 1, 1).unwrap(),
        NaiveDate::from_ymd_opt(9999, 12, 31).unwrap(),
    ] {
        let range = match query.range(today) {
            Ok(range) => range,
            Err(error) => {
                assert_eq!(error.status(), 400, "{error:?}");
                continue;
            }
        };
        let Some((start, end)) = range else {
            assert!(!query.view().has_range());
            continue;
        };
        assert!(query.view().has_range());
        assert!(start <= end, "{start} after {end}");
        let days = (end - start).num_days() + 1;
        assert!(days <= MAX_RANGE_DAYS, "{days} days");
        if matches!(query.view(), View::Daily | View::Providers) {
            assert!(days <= MAX_LIMIT, "{days} days in a series");
        }
    }
});
