//! The body of a collect request, up to its list of events: decompression,
//! size limits, the JSON shapes a body may take and the batch limits.
//!
//! Everything that fails here fails the whole request with a
//! [`BodyError`] (400 or 413); each event is then parsed on its own by
//! [`super::parse`]. Decoding is a pure function over bytes: it detects
//! gzip from the magic bytes and caps both the decompressed size and the
//! decompression ratio.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use serde_json::Value;

use super::text::truncate_chars;

/// Limits of a collect request.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// The largest body, as received and after gzip decompression.
    pub max_body_bytes: usize,
    /// The largest ratio of decompressed to compressed size of a gzip body.
    pub max_decompression_ratio: u64,
    /// The most events in one request.
    pub max_batch: usize,
    /// The largest `properties` object, as compact JSON text.
    pub max_properties_bytes: usize,
    /// How far in the past an event's `timestamp` may be.
    pub max_age: Duration,
    /// How far ahead of the server clock an event's `timestamp` may be.
    pub max_future: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1_048_576,
            max_decompression_ratio: 100,
            max_batch: 500,
            max_properties_bytes: 32 * 1024,
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
            max_future: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A size limit in bytes, shown as "1048576 bytes (1 MB)".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteLimit(pub usize);

impl fmt::Display for ByteLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KB: usize = 1024;
        const MB: usize = 1024 * 1024;
        let bytes = self.0;
        if bytes >= MB && bytes.is_multiple_of(MB) {
            write!(f, "{bytes} bytes ({} MB)", bytes / MB)
        } else if bytes >= KB && bytes.is_multiple_of(KB) {
            write!(f, "{bytes} bytes ({} KB)", bytes / KB)
        } else {
            write!(f, "{bytes} bytes")
        }
    }
}

/// A failure that spoils the whole request (the handler maps these to 400
/// or 413, see [`BodyError::is_too_large`]).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// 413: the body as received is over `max_body_bytes`.
    #[error("the body is over the limit of {limit}")]
    TooLarge { limit: ByteLimit },
    /// 413: the gzip body inflates past `max_body_bytes`.
    #[error("the decompressed body is over the limit of {limit}")]
    DecompressedTooLarge { limit: ByteLimit },
    /// 413: the gzip body inflates more than `max_decompression_ratio` times
    /// its size, the signature of a decompression bomb.
    #[error(
        "the gzip body inflates to more than {ratio} times its {compressed} compressed bytes; \
         the limit is a ratio of {ratio}"
    )]
    DecompressionRatio { ratio: u64, compressed: usize },
    /// 400: the body claims or looks like gzip but does not decompress.
    #[error("the body is not valid gzip: {0}")]
    InvalidGzip(String),
    /// 400: a `Content-Encoding` other than gzip or identity.
    #[error(
        "the Content-Encoding {0:?} is not supported; send the body uncompressed or with gzip"
    )]
    UnsupportedEncoding(String),
    /// 400: the body is empty.
    #[error(
        "the body is empty; send one event object, an array of events or {{\"batch\": [...]}}"
    )]
    EmptyBody,
    /// 400: the body is not JSON (serde's message gives line and column).
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// 400: JSON of the wrong shape (not an event, an array or a batch).
    #[error("{0}")]
    InvalidBody(String),
    /// 400: a batch with no events.
    #[error("the batch holds no events; send from 1 to {max} events")]
    EmptyBatch { max: usize },
    /// 400: more events than `max_batch`.
    #[error("the batch holds {len} events; the limit is {max} events per request")]
    BatchTooLarge { len: usize, max: usize },
}

impl BodyError {
    /// The machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } | BodyError::DecompressedTooLarge { .. } => {
                "payload_too_large"
            }
            BodyError::DecompressionRatio { .. } => "decompression_ratio_exceeded",
            BodyError::InvalidGzip(_) => "invalid_gzip",
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::EmptyBody | BodyError::InvalidJson(_) => "invalid_json",
            BodyError::InvalidBody(_) => "invalid_body",
            BodyError::EmptyBatch { .. } => "empty_batch",
            BodyError::BatchTooLarge { .. } => "batch_too_large",
        }
    }

    /// Whether the answer is 413 (the body is too large) rather than 400.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            BodyError::TooLarge { .. }
                | BodyError::DecompressedTooLarge { .. }
                | BodyError::DecompressionRatio { .. }
        )
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Decodes the raw body: gzip when `Content-Encoding` says so or when the
/// body starts with the gzip magic bytes (a `sendBeacon` can't set
/// headers), capping the decompressed size at `max_body_bytes` and the
/// ratio of decompressed to compressed size at `max_decompression_ratio`.
/// A raw body over `max_body_bytes` is [`BodyError::TooLarge`].
pub fn decode_body<'a>(
    raw: &'a [u8],
    content_encoding: Option<&str>,
    limits: &Limits,
) -> Result<Cow<'a, [u8]>, BodyError> {
    if raw.len() > limits.max_body_bytes {
        return Err(BodyError::TooLarge {
            limit: ByteLimit(limits.max_body_bytes),
        });
    }
    let declared_gzip = match content_encoding.map(str::trim) {
        None | Some("") => false,
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => true,
        Some(e) if e.eq_ignore_ascii_case("identity") => false,
        Some(other) => {
            return Err(BodyError::UnsupportedEncoding(
                truncate_chars(other, 40).into(),
            ));
        }
    };
    // JSON never starts with 0x1f, so sniffing can't misread a JSON body.
    if declared_gzip || raw.starts_with(&GZIP_MAGIC) {
        gunzip(raw, limits).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

fn gunzip(compressed: &[u8], limits: &Limits) -> Result<Vec<u8>, BodyError> {
    let size_cap = limits.max_body_bytes as u64;
    let ratio_cap = (compressed.len() as u64).saturating_mul(limits.max_decompression_ratio);
    let cap = size_cap.min(ratio_cap);
    // Reading one byte past the cap tells "exactly at the cap" from "over".
    let mut decoder = MultiGzDecoder::new(compressed).take(cap.saturating_add(1));
    let guess = (compressed.len() as u64).saturating_mul(4).min(cap) as usize;
    let mut out = Vec::with_capacity(guess);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| BodyError::InvalidGzip(e.to_string()))?;
    let len = out.len() as u64;
    if len > size_cap {
        Err(BodyError::DecompressedTooLarge {
            limit: ByteLimit(limits.max_body_bytes),
        })
    } else if len > ratio_cap {
        Err(BodyError::DecompressionRatio {
            ratio: limits.max_decompression_ratio,
            compressed: compressed.len(),
        })
    } else {
        Ok(out)
    }
}

/// A body's events before parsing, with the `key` it carried.
#[derive(Debug)]
pub(super) struct RawBatch {
    /// The `key` body field, for clients that can't set headers.
    pub key: Option<String>,
    /// The events as sent, from 1 to `max_batch` of them.
    pub events: Vec<Value>,
}

/// Reads a decoded body: one event object, a JSON array of events, or
/// `{"batch": [...]}`. The object forms may carry a top-level `key` (a
/// single event's `key` is taken out, not treated as an event field); a
/// top-level object with a `batch` field is always the batch form.
pub(super) fn read_batch(json: &[u8], limits: &Limits) -> Result<RawBatch, BodyError> {
    // Some clients write a UTF-8 byte order mark; it isn't JSON but means
    // nothing, so it is skipped rather than rejected.
    let json = json.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(json);
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::EmptyBody);
    }
    let value: Value = serde_json::from_slice(json).map_err(BodyError::InvalidJson)?;
    let (key, items) = match value {
        Value::Array(items) => (None, items),
        Value::Object(mut map) => {
            let key = match map.remove("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(key)) => Some(key),
                Some(other) => {
                    return Err(BodyError::InvalidBody(format!(
                        "`key` must be a string (a publishable key pk_… or a secret key sk_…), got {}",
                        kind_of(&other)
                    )));
                }
            };
            match map.remove("batch") {
                Some(Value::Array(items)) => (key, items),
                Some(other) => {
                    return Err(BodyError::InvalidBody(format!(
                        "`batch` must be an array of events, got {}",
                        kind_of(&other)
                    )));
                }
                None => (key, vec![Value::Object(map)]),
            }
        }
        other => {
            return Err(BodyError::InvalidBody(format!(
                "the body must be an event object, an array of events or {{\"batch\": [...]}}, got {}",
                kind_of(&other)
            )));
        }
    };
    if items.is_empty() {
        return Err(BodyError::EmptyBatch {
            max: limits.max_batch,
        });
    }
    if items.len() > limits.max_batch {
        return Err(BodyError::BatchTooLarge {
            len: items.len(),
            max: limits.max_batch,
        });
    }
    Ok(RawBatch { key, events: items })
}

/// How a JSON value is named in messages ("got a number").
pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use flate2::Compression;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Text that compresses only about 2:1, to reach size limits without
    /// tripping the ratio limit.
    fn incompressible_text(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"0123456789abcdef"[(state % 16) as usize]
            })
            .collect()
    }

    // --- decode_body -----------------------------------------------------

    #[test]
    fn a_plain_body_is_passed_through_without_a_copy() {
        let raw = br#"{"type":"web","name":"pageview"}"#;
        let decoded = decode_body(raw, None, &Limits::default()).unwrap();
        assert!(matches!(decoded, Cow::Borrowed(_)));
        assert_eq!(&*decoded, raw);
    }

    #[test]
    fn a_body_exactly_at_the_limit_is_accepted_and_one_byte_more_is_a_413_naming_the_limit() {
        let limits = Limits::default();
        let at_limit = vec![b' '; limits.max_body_bytes];
        assert!(decode_body(&at_limit, None, &limits).is_ok());

        let over = vec![b' '; limits.max_body_bytes + 1];
        let err = decode_body(&over, None, &limits).unwrap_err();
        assert!(err.is_too_large());
        assert_eq!(err.code(), "payload_too_large");
        assert_eq!(
            err.to_string(),
            "the body is over the limit of 1048576 bytes (1 MB)"
        );
    }

    #[test]
    fn a_gzip_body_with_content_encoding_is_decompressed() {
        let json = br#"[{"type":"web","name":"pageview"}]"#;
        let compressed = gzip(json);
        let decoded = decode_body(&compressed, Some("gzip"), &Limits::default()).unwrap();
        assert_eq!(&*decoded, json);
        let decoded = decode_body(&compressed, Some(" X-GZIP "), &Limits::default()).unwrap();
        assert_eq!(&*decoded, json);
    }

    #[test]
    fn a_gzip_body_is_detected_from_its_magic_bytes_without_a_header() {
        let json = br#"{"type":"web","name":"pageview"}"#;
        let compressed = gzip(json);
        let decoded = decode_body(&compressed, None, &Limits::default()).unwrap();
        assert_eq!(&*decoded, json);
        let decoded = decode_body(&compressed, Some("identity"), &Limits::default()).unwrap();
        assert_eq!(&*decoded, json);
    }

    #[test]
    fn a_gzip_bomb_beyond_the_ratio_is_a_413() {
        let bomb = gzip(&vec![b' '; 1_000_000]);
        assert!(bomb.len() * 100 < 1_000_000, "the test data must be a bomb");
        let err = decode_body(&bomb, Some("gzip"), &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "decompression_ratio_exceeded");
        assert!(err.is_too_large());
        assert!(err.to_string().contains("ratio of 100"), "{err}");
    }

    #[test]
    fn a_gzip_body_is_accepted_up_to_the_ratio_and_rejected_just_past_it() {
        let compressed = gzip(&vec![b' '; 10_000]);
        let c = compressed.len() as u64;
        // The smallest ratio that allows 10 000 bytes, and the one below it.
        let enough = 10_000u64.div_ceil(c);
        let with_ratio = |ratio| Limits {
            max_decompression_ratio: ratio,
            ..Limits::default()
        };
        assert_eq!(
            decode_body(&compressed, None, &with_ratio(enough))
                .unwrap()
                .len(),
            10_000
        );
        let err = decode_body(&compressed, None, &with_ratio(enough - 1)).unwrap_err();
        assert_eq!(err.code(), "decompression_ratio_exceeded");
    }

    #[test]
    fn a_gzip_body_that_inflates_past_the_body_limit_is_a_413_naming_the_limit() {
        let limits = Limits {
            max_body_bytes: 64 * 1024,
            ..Limits::default()
        };
        let compressed = gzip(&incompressible_text(64 * 1024 + 1));
        assert!(compressed.len() <= limits.max_body_bytes);
        let err = decode_body(&compressed, None, &limits).unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
        assert!(err.is_too_large());
        assert_eq!(
            err.to_string(),
            "the decompressed body is over the limit of 65536 bytes (64 KB)"
        );

        let at_limit = gzip(&incompressible_text(64 * 1024));
        assert_eq!(
            decode_body(&at_limit, None, &limits).unwrap().len(),
            64 * 1024
        );
    }

    #[test]
    fn a_truncated_gzip_body_is_a_400_invalid_gzip() {
        let compressed = gzip(br#"{"type":"web","name":"pageview","url":"https://example.com/"}"#);
        for cut in [
            compressed.len() - 1,
            compressed.len() - 8,
            compressed.len() / 2,
            5,
        ] {
            let err = decode_body(&compressed[..cut], None, &Limits::default()).unwrap_err();
            assert_eq!(err.code(), "invalid_gzip", "cut at {cut}: {err}");
            assert!(!err.is_too_large());
        }
    }

    #[test]
    fn a_body_declared_gzip_that_is_not_gzip_is_a_400_invalid_gzip() {
        let err = decode_body(br#"{"type":"web"}"#, Some("gzip"), &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "invalid_gzip");
    }

    #[test]
    fn garbage_after_a_gzip_member_is_a_400_invalid_gzip() {
        let mut compressed = gzip(b"{}");
        compressed.extend_from_slice(b"trailing");
        let err = decode_body(&compressed, None, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "invalid_gzip");
    }

    #[test]
    fn an_unsupported_content_encoding_is_a_400() {
        let err = decode_body(b"{}", Some("br"), &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "unsupported_encoding");
        assert!(!err.is_too_large());
    }

    // --- body shapes -----------------------------------------------------

    fn read(body: &str) -> Result<RawBatch, BodyError> {
        read_batch(body.as_bytes(), &Limits::default())
    }

    #[test]
    fn a_single_event_object_is_a_batch_of_one_without_its_key() {
        let batch = read(r#"{"key":"pk_abc","type":"web","name":"pageview"}"#).unwrap();
        assert_eq!(batch.key.as_deref(), Some("pk_abc"));
        assert_eq!(
            batch.events,
            [serde_json::json!({"type": "web", "name": "pageview"})]
        );
    }

    #[test]
    fn an_array_and_a_batch_object_are_both_lists_of_events() {
        let batch = read(r#"[{"name":"a"},{"name":"b"}]"#).unwrap();
        assert_eq!((batch.key, batch.events.len()), (None, 2));
        let batch = read(r#"{"key":"pk_abc","batch":[{"name":"a"},7]}"#).unwrap();
        assert_eq!(batch.key.as_deref(), Some("pk_abc"));
        assert_eq!(batch.events.len(), 2, "events are not judged here");
    }

    #[test]
    fn bodies_of_the_wrong_shape_are_refused_whole() {
        for (body, code) in [
            ("", "invalid_json"),
            ("\u{feff} ", "invalid_json"),
            ("[1,]", "invalid_json"),
            ("42", "invalid_body"),
            (r#"{"batch":{}}"#, "invalid_body"),
            (r#"{"key":1,"name":"a"}"#, "invalid_body"),
            ("[]", "empty_batch"),
        ] {
            assert_eq!(read(body).unwrap_err().code(), code, "{body}");
        }
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_naming_the_limit() {
        let limits = Limits {
            max_batch: 2,
            ..Limits::default()
        };
        assert_eq!(read_batch(b"[1,2]", &limits).unwrap().events.len(), 2);
        let err = read_batch(b"[1,2,3]", &limits).unwrap_err();
        assert_eq!(err.code(), "batch_too_large");
        assert_eq!(
            err.to_string(),
            "the batch holds 3 events; the limit is 2 events per request"
        );
    }

    #[test]
    fn byte_limits_read_naturally() {
        assert_eq!(ByteLimit(1_048_576).to_string(), "1048576 bytes (1 MB)");
        assert_eq!(ByteLimit(32 * 1024).to_string(), "32768 bytes (32 KB)");
        assert_eq!(ByteLimit(1000).to_string(), "1000 bytes");
    }
}
