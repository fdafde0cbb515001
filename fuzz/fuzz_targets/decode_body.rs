//! `decode_body`: the raw bytes of a collect request, before anything else
//! reads them, with the `Content-Encoding` the client claimed.
//!
//! The first byte picks the header (none, `gzip`, `identity`, or one that
//! is not supported); the rest is the body. The limits are the defaults but
//! a body cap of 2 KiB, so that inputs of libFuzzer's default length (up to
//! 4 KiB) reach both size checks, as received and once decompressed.
//!
//! Never panics, and:
//! - what decodes is at most the body cap, and at most the ratio cap times
//!   the bytes received;
//! - a body that neither claims nor looks like gzip comes back as it was,
//!   without a copy;
//! - a body over the cap is refused before it is read.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use tollgate::events::body::{decode_body, BodyError, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, raw)) = data.split_first() else {
        return;
    };
    let encoding = match selector % 4 {
        0 => None,
        1 => Some("gzip"),
        2 => Some("identity"),
        _ => Some("br"),
    };
    let limits = Limits {
        max_body_bytes: 2048,
        ..Limits::default()
    };
    let gzip = encoding == Some("gzip") || raw.starts_with(&[0x1f, 0x8b]);
    match decode_body(raw, encoding, &limits) {
        Ok(decoded) => {
            assert!(raw.len() <= limits.max_body_bytes);
            assert!(decoded.len() <= limits.max_body_bytes);
            if gzip {
                assert!(
                    decoded.len() as u64 <= raw.len() as u64 * limits.max_decompression_ratio,
                    "{} bytes from {} past the ratio cap",
                    decoded.len(),
                    raw.len()
                );
            } else {
                assert!(matches!(decoded, Cow::Borrowed(_)));
                assert_eq!(&*decoded, raw);
            }
        }
        Err(BodyError::TooLarge { .. }) => assert!(raw.len() > limits.max_body_bytes),
        Err(BodyError::UnsupportedEncoding(_)) => assert_eq!(encoding, Some("br")),
        Err(error) => {
            assert!(gzip, "{error} for a body that is not gzip");
            // Every refusal is a 400 or a 413 with a code and a message.
            assert!(!error.code().is_empty() && !error.to_string().is_empty());
        }
    }
});
