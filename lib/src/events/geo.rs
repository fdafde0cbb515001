//! Location from Vercel's `x-vercel-ip-*` headers, given to every event of
//! a request.

use super::text::{find_forbidden, TextKind};
use super::GeoFields;

// Caps on the geo headers: longer values are not Vercel's and are dropped.
const COUNTRY_MAX: usize = 8;
const REGION_MAX: usize = 16;
const CITY_MAX: usize = 128;

/// Location from Vercel's `x-vercel-ip-*` headers. The city is URI-encoded
/// by Vercel and is percent-decoded here; coordinates must parse as
/// degrees in range. Malformed or oversized values, and values with a
/// character plain text may not hold (see [`super::text`]), are dropped
/// rather than rejected: geo is enrichment, not input.
pub fn geo_from_headers(headers: &http::HeaderMap) -> GeoFields {
    let text = |name: &str, max: usize, decode: bool| -> Option<String> {
        let raw = std::str::from_utf8(headers.get(name)?.as_bytes())
            .ok()?
            .trim();
        let value = if decode {
            percent_decode(raw)?
        } else {
            raw.to_owned()
        };
        let ok = !value.is_empty()
            && find_forbidden(&value, TextKind::Plain).is_none()
            && value.chars().count() <= max;
        ok.then_some(value)
    };
    let degrees = |name: &str, max: f64| -> Option<f64> {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value.abs() <= max).then_some(value)
    };
    GeoFields {
        country: text("x-vercel-ip-country", COUNTRY_MAX, false),
        region: text("x-vercel-ip-country-region", REGION_MAX, false),
        city: text("x-vercel-ip-city", CITY_MAX, true),
        latitude: degrees("x-vercel-ip-latitude", 90.0),
        longitude: degrees("x-vercel-ip-longitude", 180.0),
    }
}

/// Decodes `%XX` escapes (not `+`, which `encodeURIComponent` never
/// writes for a space); a `%` not followed by two hex digits stays as is.
/// `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn geo_comes_from_the_vercel_headers_with_the_city_percent_decoded() {
        let geo = geo_from_headers(&headers(&[
            ("x-vercel-ip-country", "BR"),
            ("x-vercel-ip-country-region", "SP"),
            ("x-vercel-ip-city", "S%C3%A3o%20Paulo"),
            ("x-vercel-ip-latitude", "-23.5475"),
            ("x-vercel-ip-longitude", "-46.6361"),
        ]));
        assert_eq!(
            geo,
            GeoFields {
                country: Some("BR".into()),
                region: Some("SP".into()),
                city: Some("São Paulo".into()),
                latitude: Some(-23.5475),
                longitude: Some(-46.6361),
            }
        );
    }

    #[test]
    fn missing_geo_headers_give_no_geo() {
        assert_eq!(geo_from_headers(&HeaderMap::new()), GeoFields::default());
    }

    #[test]
    fn malformed_geo_headers_are_dropped() {
        let geo = geo_from_headers(&headers(&[
            ("x-vercel-ip-country", "a-very-long-country"),
            ("x-vercel-ip-country-region", ""),
            ("x-vercel-ip-city", "Bad%00City"),
            ("x-vercel-ip-latitude", "north"),
            ("x-vercel-ip-longitude", "181"),
        ]));
        assert_eq!(geo, GeoFields::default());

        let geo = geo_from_headers(&headers(&[
            ("x-vercel-ip-city", "%E2%28"),
            ("x-vercel-ip-latitude", "NaN"),
            ("x-vercel-ip-longitude", "inf"),
        ]));
        assert_eq!(
            geo,
            GeoFields::default(),
            "invalid UTF-8 and non-finite numbers"
        );
    }

    #[test]
    fn a_stray_percent_in_the_city_is_kept() {
        let geo = geo_from_headers(&headers(&[("x-vercel-ip-city", "100%25 Town %zz %")]));
        assert_eq!(geo.city.as_deref(), Some("100% Town %zz %"));
    }

    #[test]
    fn a_city_with_a_bidi_override_or_an_escape_is_dropped() {
        for city in ["Berlin%E2%80%AE", "Berlin%1B%5B2J"] {
            let geo = geo_from_headers(&headers(&[
                ("x-vercel-ip-country", "DE"),
                ("x-vercel-ip-city", city),
            ]));
            assert_eq!(geo.city, None, "{city}");
            assert_eq!(geo.country.as_deref(), Some("DE"));
        }
    }
}
