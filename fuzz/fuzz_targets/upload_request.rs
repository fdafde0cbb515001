//! `UploadRequest::parse`: the JSON body of `POST /api/signed-url`, whose
//! file name ends up in an object key under the key's prefix.
//!
//! Never panics, refuses only with a 400, and an accepted request has:
//! - a file name of 1 to 255 bytes without `/`, `\`, `..`, a leading dot,
//!   surrounding whitespace, control characters or bidirectional controls,
//!   so it cannot leave the key's prefix or pass for another name;
//! - a content type of printable ASCII, `type/subtype`, lowercase;
//! - a size of at least one byte, and an expiry from 1 s to 7 days.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tollgate::uploads::{UploadRequest, MAX_FILENAME_BYTES};

fuzz_target!(|data: &[u8]| {
    let request = match UploadRequest::parse(data) {
        Ok(request) => request,
        Err(error) => {
            assert_eq!(error.status(), 400, "{error:?}");
            return;
        }
    };
    let name = &request.filename;
    assert!(!name.is_empty() && name.len() <= MAX_FILENAME_BYTES);
    assert!(!name.contains(['/', '\\']), "{name:?}");
    assert!(!name.contains(".."), "{name:?}");
    assert!(!name.starts_with('.'), "{name:?}");
    assert_eq!(name.trim(), name);
    assert!(
        !name.chars().any(|c| c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')),
        "{name:?}"
    );
    let content_type = &request.content_type;
    assert!(!content_type.is_empty() && content_type.len() <= 255);
    assert!(content_type.bytes().all(|b| (0x20..0x7f).contains(&b)));
    assert!(content_type.contains('/'));
    assert_eq!(content_type, &content_type.to_ascii_lowercase());
    assert!(request.size >= 1);
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 60 * 60))
            .contains(&request.expires_in)
    );
});
