//! Vercel Blob client upload tokens.
//!
//! A browser uploads straight to Vercel Blob with a short-lived client token
//! that the server derives from `BLOB_READ_WRITE_TOKEN`, so the read-write
//! token itself never leaves the server. [`client_token`] reproduces
//! `generateClientTokenFromReadWriteToken` from `@vercel/blob` (read in
//! `dist/client.js` of version 2.8.0) byte for byte:
//!
//! ```text
//! payload = base64(JSON of the constraints)
//! mac     = hex(HMAC-SHA256(key = the whole read-write token, message = payload))
//! token   = "vercel_blob_client_" + storeId + "_" + base64(mac + "." + payload)
//! ```
//!
//! The HMAC covers the base64 text of the payload, not the JSON, and its key is
//! the full `vercel_blob_rw_…` string, not only the part after the store id.
//! `tests/blob-js` checks the result with the npm package itself.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::secret::Secret;

/// The variable Vercel sets when a Blob store is connected to a project.
const TOKEN_VARIABLE: &str = "BLOB_READ_WRITE_TOKEN";
const READ_WRITE_PREFIX: &str = "vercel_blob_rw_";
const CLIENT_PREFIX: &str = "vercel_blob_client_";

/// A Vercel Blob store that tollgate may issue client tokens for.
#[derive(Debug, Clone)]
pub struct BlobConfig {
    /// The whole `vercel_blob_rw_<storeId>_<secret>` token: the HMAC key.
    pub read_write_token: Secret,
    /// The store id taken from the token; every client token names it.
    pub store_id: String,
}

impl BlobConfig {
    /// Reads BLOB_READ_WRITE_TOKEN via lookup: Ok(None) if unset, Err(problem) if malformed (must look like vercel_blob_rw_<storeId>_<secret>).
    ///
    /// A blank value counts as unset, as elsewhere in the configuration. The
    /// problem never quotes the token.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        match lookup(TOKEN_VARIABLE).filter(|value| !value.trim().is_empty()) {
            None => Ok(None),
            Some(token) => Self::parse(token)
                .map(Some)
                .map_err(|problem| format!("{TOKEN_VARIABLE} {problem}")),
        }
    }

    fn parse(token: String) -> Result<Self, &'static str> {
        // `@vercel/blob` takes the fourth `_`-separated field as the store id,
        // so the id can't contain `_`, while the secret after it may.
        let rest = token
            .strip_prefix(READ_WRITE_PREFIX)
            .ok_or("must start with vercel_blob_rw_")?;
        let (store_id, secret) = rest
            .split_once('_')
            .ok_or("must look like vercel_blob_rw_<storeId>_<secret>")?;
        if store_id.is_empty() || !store_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("has a store id that is empty or not alphanumeric");
        }
        // The token is the HMAC key as is: a stray space or newline would
        // sign every token with the wrong key, so refuse it instead of trimming.
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("has a secret that is empty or contains whitespace or non-ASCII");
        }
        Ok(Self {
            store_id: store_id.to_owned(),
            read_write_token: Secret::new(token),
        })
    }
}

/// What one client token allows: a single pathname, the content types, the
/// size and the moment it stops working.
#[derive(Debug, Clone, Copy)]
pub struct ClientTokenRequest<'a> {
    /// The object key, stored as given: tollgate's keys are already unique.
    pub pathname: &'a str,
    /// Media types Vercel Blob accepts for this upload (`text/*` allowed).
    pub allowed_content_types: &'a [String],
    pub maximum_size_in_bytes: u64,
    pub valid_until: DateTime<Utc>,
}

/// The JSON inside a client token.
///
/// Fields are declared in the order `handleUpload` from `@vercel/blob` emits
/// them for the same options, so the token equals the one the package's own
/// route helper issues, not merely an equivalent one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    allowed_content_types: &'a [String],
    maximum_size_in_bytes: u64,
    /// Milliseconds since the epoch.
    valid_until: i64,
    /// Said explicitly: the object key we return must be the one stored, and
    /// the default has been `true` in earlier versions of the service.
    add_random_suffix: bool,
    pathname: &'a str,
}

/// A client token for one upload, in the format of `@vercel/blob`'s
/// `generateClientTokenFromReadWriteToken`.
pub fn client_token(config: &BlobConfig, request: &ClientTokenRequest) -> String {
    let payload = Payload {
        allowed_content_types: request.allowed_content_types,
        maximum_size_in_bytes: request.maximum_size_in_bytes,
        valid_until: request.valid_until.timestamp_millis(),
        add_random_suffix: false,
        pathname: request.pathname,
    };
    // serde_json's compact output escapes strings exactly as JSON.stringify
    // does, which the byte-for-byte test in tests/blob-js relies on.
    let json = serde_json::to_string(&payload).expect("the payload is plain data");
    let encoded_payload = STANDARD.encode(json);

    let mut mac = Hmac::<Sha256>::new_from_slice(config.read_write_token.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(encoded_payload.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());

    format!(
        "{CLIENT_PREFIX}{}_{}",
        config.store_id,
        STANDARD.encode(format!("{signature}.{encoded_payload}"))
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;
    use serde_json::{json, Value};

    use super::*;

    const TOKEN: &str = "vercel_blob_rw_AbC123xyz_s3cr3tV4lue";

    fn config_from(value: Option<&str>) -> Result<Option<BlobConfig>, String> {
        let vars: HashMap<&str, String> = value
            .map(|v| (TOKEN_VARIABLE, v.to_owned()))
            .into_iter()
            .collect();
        BlobConfig::from_lookup(&|name| vars.get(name).cloned())
    }

    fn config() -> BlobConfig {
        config_from(Some(TOKEN)).unwrap().unwrap()
    }

    /// Splits a token into its store id, signature and decoded payload.
    fn open(token: &str) -> (String, String, String, Value) {
        let rest = token.strip_prefix(CLIENT_PREFIX).unwrap();
        let (store_id, body) = rest.split_once('_').unwrap();
        let body = String::from_utf8(STANDARD.decode(body).unwrap()).unwrap();
        let (signature, encoded) = body.split_once('.').unwrap();
        let json = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
        let value = serde_json::from_str(&json).unwrap();
        (store_id.into(), signature.into(), encoded.into(), value)
    }

    #[test]
    fn an_unset_or_blank_token_means_blob_is_not_configured() {
        assert!(config_from(None).unwrap().is_none());
        assert!(config_from(Some("")).unwrap().is_none());
        assert!(config_from(Some("  \n")).unwrap().is_none());
    }

    #[test]
    fn a_well_formed_token_yields_its_store_id() {
        let config = config();
        assert_eq!(config.store_id, "AbC123xyz");
        assert_eq!(config.read_write_token.expose(), TOKEN);

        // The secret may itself contain `_`; only the store id may not.
        let config = config_from(Some("vercel_blob_rw_store1_a_b_c"))
            .unwrap()
            .unwrap();
        assert_eq!(config.store_id, "store1");
    }

    #[test]
    fn malformed_tokens_are_refused_without_quoting_them() {
        let cases = [
            ("s3cr3tV4lue", "no prefix"),
            (
                "vercel_blob_client_AbC_s3cr3t",
                "a client token, not a read-write one",
            ),
            ("vercel_blob_rw_AbC123xyz", "no secret"),
            ("vercel_blob_rw_AbC123xyz_", "an empty secret"),
            ("vercel_blob_rw__s3cr3t", "an empty store id"),
            ("vercel_blob_rw_Ab-C_s3cr3t", "a store id with punctuation"),
            ("vercel_blob_rw_AbC_s3cr3t\n", "a trailing newline"),
            ("vercel_blob_rw_AbC_s3 cr3t", "a space in the secret"),
            ("vercel_blob_rw_AbC_sécret", "non-ASCII in the secret"),
        ];
        for (token, reason) in cases {
            let problem = config_from(Some(token))
                .err()
                .unwrap_or_else(|| panic!("accepted {reason}"));
            assert!(problem.starts_with(TOKEN_VARIABLE), "{reason}: {problem}");
            assert!(!problem.contains("s3cr3t"), "{reason}: {problem}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_read_write_token() {
        let printed = format!("{:?}", config());
        assert!(!printed.contains("s3cr3tV4lue"), "{printed}");
        assert!(printed.contains("AbC123xyz"), "{printed}");
    }

    #[test]
    fn a_token_names_the_store_and_carries_the_constraints() {
        let types = vec!["image/png".to_owned(), "text/*".to_owned()];
        let valid_until = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        let token = client_token(
            &config(),
            &ClientTokenRequest {
                pathname: "key_1/2030/01/ü-ñame 📄.png",
                allowed_content_types: &types,
                maximum_size_in_bytes: 104_857_600,
                valid_until,
            },
        );

        let (store_id, signature, encoded, payload) = open(&token);
        assert_eq!(store_id, "AbC123xyz");
        assert_eq!(
            payload,
            json!({
                "allowedContentTypes": ["image/png", "text/*"],
                "maximumSizeInBytes": 104_857_600,
                "validUntil": valid_until.timestamp_millis(),
                "addRandomSuffix": false,
                "pathname": "key_1/2030/01/ü-ñame 📄.png",
            })
        );
        // The signature is lowercase hex of HMAC-SHA256 over the base64 text.
        let mut mac = Hmac::<Sha256>::new_from_slice(TOKEN.as_bytes()).unwrap();
        mac.update(encoded.as_bytes());
        mac.verify_slice(&hex::decode(&signature).unwrap()).unwrap();
        assert_eq!(signature, signature.to_lowercase());
        assert_eq!(signature.len(), 64);
    }

    #[test]
    fn a_token_matches_the_one_vercel_blob_prints_for_the_same_options() {
        let types = vec!["image/png".to_owned()];
        let token = client_token(
            &config(),
            &ClientTokenRequest {
                pathname: "a/b.png",
                allowed_content_types: &types,
                maximum_size_in_bytes: 10,
                valid_until: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            },
        );
        let (_, _, encoded, _) = open(&token);
        let json = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"allowedContentTypes":["image/png"],"maximumSizeInBytes":10,"validUntil":1700000000123,"addRandomSuffix":false,"pathname":"a/b.png"}"#
        );
        // The same options given to `generateClientTokenFromReadWriteToken`
        // from @vercel/blob 2.8.0, in that key order, print this token.
        assert_eq!(
            token,
            "vercel_blob_client_AbC123xyz_YzkzODVkOGJkODU2ZWU0MDVhZTM4N2EwOTlkOWY5OTU2OWY0Yzg2OGZhOThkYTY2YjljM2U4OGU5NjA1MWE1NC5leUpoYkd4dmQyVmtRMjl1ZEdWdWRGUjVjR1Z6SWpwYkltbHRZV2RsTDNCdVp5SmRMQ0p0WVhocGJYVnRVMmw2WlVsdVFubDBaWE1pT2pFd0xDSjJZV3hwWkZWdWRHbHNJam94TnpBd01EQXdNREF3TVRJekxDSmhaR1JTWVc1a2IyMVRkV1ptYVhnaU9tWmhiSE5sTENKd1lYUm9ibUZ0WlNJNkltRXZZaTV3Ym1jaWZRPT0="
        );
    }

    #[test]
    fn a_different_read_write_token_gives_a_different_signature() {
        let other = config_from(Some("vercel_blob_rw_AbC123xyz_other"))
            .unwrap()
            .unwrap();
        let request = ClientTokenRequest {
            pathname: "a.png",
            allowed_content_types: &[],
            maximum_size_in_bytes: 1,
            valid_until: Utc.timestamp_millis_opt(0).unwrap(),
        };
        let (_, ours, _, _) = open(&client_token(&config(), &request));
        let (_, theirs, _, _) = open(&client_token(&other, &request));
        assert_ne!(ours, theirs);
    }
}
