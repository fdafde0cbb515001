//! Parsing of `POST /api/signed-url` requests: the file name, its type and
//! size, and the storage provider, checked before anything is signed.

use serde::Deserialize;

use crate::error::ApiError;
use crate::events::text::{find_forbidden, TextKind};

/// Content types allowed when a key has no list of its own.
pub const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/svg+xml",
    "application/pdf",
    "text/plain",
    "text/csv",
    "application/json",
    "application/zip",
    "audio/mpeg",
    "audio/wav",
    "video/mp4",
    "video/webm",
];

/// The largest upload when a key sets no maximum: 100 MB.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// How long a signed URL or token is valid unless the request says otherwise.
pub const DEFAULT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The longest file name, in bytes (UTF-8).
pub const MAX_FILENAME_BYTES: usize = 255;

/// A storage provider tollgate can sign uploads for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Any S3-compatible store: AWS S3, Cloudflare R2, MinIO.
    S3,
    /// Vercel Blob.
    Blob,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Blob => "blob",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "s3" => Some(Provider::S3),
            "blob" | "vercel-blob" => Some(Provider::Blob),
            _ => None,
        }
    }
}

/// A checked upload request.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadRequest {
    /// The name as given, checked: no separators, traversal, control
    /// characters, bidirectional controls or leading dot; unicode kept.
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    /// The provider asked for; `None` takes the key's default.
    pub provider: Option<Provider>,
    /// How long the signed URL or token stays valid.
    pub expires_in: std::time::Duration,
}

#[derive(Deserialize)]
struct RawRequest {
    filename: Option<serde_json::Value>,
    content_type: Option<serde_json::Value>,
    size: Option<serde_json::Value>,
    provider: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.into(),
    }
}

impl UploadRequest {
    /// Parses and checks the JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        // serde also reads a struct from an array of its fields in order
        // (`["a.png","image/png",10,null,null]`); only an object is a request.
        let first = body.iter().find(|b| !b" \t\n\r".contains(b));
        if first != Some(&b'{') {
            return Err(bad(
                "invalid_json",
                "the body is not a JSON object; send {\"filename\": …, \"content_type\": …, \"size\": …}",
            ));
        }
        let raw: RawRequest = serde_json::from_slice(body).map_err(|e| {
            bad(
                "invalid_json",
                format!("the body is not a JSON object: {e}"),
            )
        })?;
        let text = |value: Option<serde_json::Value>, field: &str| -> Result<String, ApiError> {
            match value {
                None | Some(serde_json::Value::Null) => {
                    Err(bad("missing_field", format!("`{field}` is required")))
                }
                Some(serde_json::Value::String(s)) => Ok(s),
                Some(_) => Err(bad("invalid_field", format!("`{field}` must be a string"))),
            }
        };
        let filename = check_filename(&text(raw.filename, "filename")?)?;
        let content_type = text(raw.content_type, "content_type")?
            .trim()
            .to_ascii_lowercase();
        // Signed as a header, so it must be a header value that no one
        // normalizes on the way: printable ASCII without runs of spaces.
        if content_type.is_empty()
            || content_type.len() > 255
            || !content_type.bytes().all(|b| (0x20..0x7f).contains(&b))
            || content_type.contains("  ")
            || !content_type.contains('/')
        {
            return Err(bad(
                "invalid_content_type",
                "`content_type` must be a MIME type (`type/subtype`) of 1 to 255 printable ASCII characters",
            ));
        }
        let size = match raw.size {
            None | Some(serde_json::Value::Null) => {
                return Err(bad("missing_field", "`size` is required"))
            }
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    bad(
                        "invalid_field",
                        "`size` must be a whole number of bytes above 0",
                    )
                })?
            }
            Some(_) => return Err(bad("invalid_field", "`size` must be a number of bytes")),
        };
        let provider = match raw.provider {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(name)) => {
                Some(Provider::parse(&name).ok_or_else(|| {
                    bad(
                        "unknown_provider",
                        format!(
                            "`provider` must be `s3` or `blob`, not `{}`",
                            name.chars().take(40).collect::<String>()
                        ),
                    )
                })?)
            }
            Some(_) => return Err(bad("invalid_field", "`provider` must be a string")),
        };
        let expires_in = match raw.expires_in {
            None | Some(serde_json::Value::Null) => DEFAULT_EXPIRY,
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(seconds @ 1..=604_800) => std::time::Duration::from_secs(seconds),
                _ => {
                    return Err(bad(
                        "invalid_expiry",
                        "`expires_in` must be whole seconds from 1 to 604800 (7 days)",
                    ))
                }
            },
            Some(_) => {
                return Err(bad(
                    "invalid_expiry",
                    "`expires_in` must be a number of seconds",
                ))
            }
        };
        Ok(Self {
            filename,
            content_type,
            size,
            provider,
            expires_in,
        })
    }
}

/// Refuses names that could leave the key's prefix or confuse a client:
/// separators, `..`, control characters and bidirectional controls (see
/// [`crate::events::text`]), a leading dot, more than 255 bytes.
fn check_filename(name: &str) -> Result<String, ApiError> {
    let invalid = |why: &str| bad("invalid_filename", format!("`filename` {why}"));
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_FILENAME_BYTES {
        return Err(invalid(&format!(
            "is {} bytes; the limit is {MAX_FILENAME_BYTES} bytes",
            name.len()
        )));
    }
    if name.contains(['/', '\\']) {
        return Err(invalid("must not contain path separators (`/` or `\\`)"));
    }
    if name.contains("..") {
        return Err(invalid("must not contain `..`"));
    }
    // A bidirectional override disguises `gpj.exe` as `exe.jpg`.
    if let Some(found) = find_forbidden(name, TextKind::Plain) {
        return Err(invalid(&format!(
            "must not contain control characters or bidirectional controls \
             (U+0000–U+001F, U+007F–U+009F, U+061C, U+200E, U+200F, U+202A–U+202E, \
             U+2066–U+2069); it has {found}"
        )));
    }
    if name.starts_with('.') {
        return Err(invalid("must not start with a dot"));
    }
    if name.trim() != name {
        return Err(invalid("must not start or end with whitespace"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: serde_json::Value) -> Result<UploadRequest, ApiError> {
        UploadRequest::parse(body.to_string().as_bytes())
    }

    #[test]
    fn a_valid_request_keeps_unicode_names() {
        let request = parse(serde_json::json!({
            "filename": "Résumé 履歴書.pdf", "content_type": "Application/PDF", "size": 1234
        }))
        .unwrap();
        assert_eq!(request.filename, "Résumé 履歴書.pdf");
        assert_eq!(request.content_type, "application/pdf");
        assert_eq!(request.provider, None);
    }

    #[test]
    fn only_an_object_is_a_request() {
        for body in [r#"["a.png","image/png",10,null,null]"#, "null", "", " 7"] {
            let err = UploadRequest::parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.code(), "invalid_json", "{body}");
        }
        let duplicate = r#"{"filename":"a.png","content_type":"image/png","size":1,"size":2}"#;
        assert_eq!(
            UploadRequest::parse(duplicate.as_bytes())
                .unwrap_err()
                .code(),
            "invalid_json"
        );
        assert!(UploadRequest::parse(
            b" \n{\"filename\":\"a.png\",\"content_type\":\"image/png\",\"size\":1}"
        )
        .is_ok());
    }

    #[test]
    fn an_unknown_provider_is_named_in_part() {
        let err = parse(serde_json::json!({
            "filename": "a.png", "content_type": "image/png", "size": 1, "provider": "x".repeat(10_000)
        }))
        .unwrap_err();
        assert_eq!(err.code(), "unknown_provider");
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn right_to_left_names_are_kept_when_they_hold_no_bidi_controls() {
        for name in ["تقرير 2026.pdf", "דוח שנתי.pdf", "Отчёт.pdf"] {
            assert_eq!(check_filename(name).unwrap(), name);
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_rule_they_break() {
        for (name, why) in [
            ("../etc/passwd", "separators"),
            ("a/b.png", "separators"),
            ("a\\b.png", "separators"),
            ("..", ".."),
            ("x..y", ".."),
            (".env", "dot"),
            ("a\u{0}b", "control"),
            ("tab\there", "control"),
            ("new\nline.txt", "control"),
            ("\u{1b}[31mred.png", "U+001B (ESCAPE)"),
            ("c1\u{85}.png", "control"),
            ("invoice\u{202E}gpj.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
            ("a\u{202A}b.pdf", "bidirectional"),
            ("a\u{202D}b.pdf", "bidirectional"),
            ("a\u{2066}b.pdf", "bidirectional"),
            ("a\u{2069}b.pdf", "bidirectional"),
            ("a\u{200E}b.pdf", "bidirectional"),
            ("a\u{200F}b.pdf", "bidirectional"),
            ("a\u{061C}b.pdf", "bidirectional"),
            ("", "empty"),
            (" padded.png", "whitespace"),
        ] {
            let err = check_filename(name).unwrap_err();
            assert_eq!(err.code(), "invalid_filename", "{name}");
            assert!(err.to_string().contains(why), "{name}: {err}");
        }
        let err = check_filename("invoice\u{202E}gpj.exe").unwrap_err();
        assert!(err.to_string().ends_with("at character 8"), "{err}");
        let long = "é".repeat(128) + ".png";
        assert!(check_filename(&long)
            .unwrap_err()
            .to_string()
            .contains("255 bytes"));
    }
}
