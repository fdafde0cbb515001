//! S3-compatible presigned `PUT` URLs: AWS S3, Cloudflare R2, MinIO, or any
//! other endpoint that speaks SigV4.
//!
//! [`presign_sized_put`] makes the same URL, byte for byte, as botocore's
//! `generate_presigned_url("put_object", Params={Bucket, Key, ContentType,
//! ContentLength})`. The tests compare whole URLs with vectors that boto3
//! generated (`tests/vectors/make_s3_vectors.py`). The signing (canonical
//! request, HMAC-SHA256 key derivation) is done by `aws-sigv4`. This module
//! builds the request it signs the way botocore builds it:
//!
//! - The object key is percent-encoded once, keeping `/`, like botocore's
//!   `quote(key, safe="/~")`. The canonical request uses that path as it is,
//!   because S3 neither double-encodes nor normalizes paths.
//! - `content-length`, `content-type` and `host` are the signed headers, so
//!   the uploader must send exactly the content type that was presigned and
//!   a body of exactly the presigned size. The storage recomputes the
//!   signature from the headers it receives, so a `PUT` of any other length
//!   (or a chunked one, which has no `Content-Length`) is refused with
//!   `403 SignatureDoesNotMatch`. This is how the size is bound on AWS S3
//!   and R2 alike: R2 enforces every signed header, and does not take the
//!   presigned `POST` policies (`content-length-range`) that S3 also offers.
//! - The payload is `UNSIGNED-PAYLOAD`, as in every presigned S3 URL: the
//!   length is bound, the bytes are not.
//! - The query parameters are in botocore's order, not sorted: Algorithm,
//!   Credential, Date, Expires, SignedHeaders, then Signature. Each value is
//!   encoded with `quote(value, safe="-_.~")`.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use chrono::{DateTime, SubsecRound as _, TimeDelta, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::{Host, Url};

use crate::secret::Secret;

/// The expiry when the caller asks for none.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// The shortest expiry S3 accepts in `X-Amz-Expires`.
pub const MIN_EXPIRY: Duration = Duration::from_secs(1);
/// The longest expiry S3 accepts in `X-Amz-Expires`: 7 days.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 86_400);

/// S3 rejects longer object keys.
const MAX_OBJECT_KEY_BYTES: usize = 1024;

/// The largest object one S3 `PUT` may carry: 5 GiB. A URL signed for more
/// could never be used.
pub const MAX_PUT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

const ENDPOINT: &str = "S3_ENDPOINT";
const REGION: &str = "S3_REGION";
const BUCKET: &str = "S3_BUCKET";
const ACCESS_KEY_ID: &str = "S3_ACCESS_KEY_ID";
const SECRET_ACCESS_KEY: &str = "S3_SECRET_ACCESS_KEY";
const FORCE_PATH_STYLE: &str = "S3_FORCE_PATH_STYLE";

/// Every variable [`S3Config::from_lookup`] reads.
pub const VARIABLES: &[&str] = &[
    ENDPOINT,
    REGION,
    BUCKET,
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    FORCE_PATH_STYLE,
];

/// Every byte except RFC 3986's unreserved characters, which is what
/// botocore's `quote(value, safe="-_.~")` escapes in query values.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The same with `/` kept, as botocore encodes object keys: `quote(key, safe="/~")`.
const OBJECT_KEY: &AsciiSet = &QUERY_VALUE.remove(b'/');

/// One S3-compatible bucket that tollgate presigns uploads to.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The S3 API: `scheme://host[:port]`, with no path.
    pub endpoint: Url,
    /// The SigV4 signing region: an AWS region, `auto` for R2, or whatever
    /// a MinIO server was configured with (`us-east-1` by default).
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// `https://endpoint/bucket/key` when true, `https://bucket.endpoint/key`
    /// when false.
    pub force_path_style: bool,
}

impl S3Config {
    /// Reads S3_ENDPOINT, S3_REGION, S3_BUCKET, S3_ACCESS_KEY_ID,
    /// S3_SECRET_ACCESS_KEY and S3_FORCE_PATH_STYLE through `lookup`.
    ///
    /// Returns `Ok(None)` when none of them is set, so the provider is just
    /// not configured. When some are set, returns every missing or malformed
    /// one in `Err` at once. A blank value counts as unset, as in
    /// [`crate::config`]. S3_ENDPOINT may be left out for an AWS region, which
    /// gets `https://s3.<region>.amazonaws.com`, the same endpoint botocore
    /// uses. R2 (region `auto`), MinIO and other servers must set it.
    /// S3_FORCE_PATH_STYLE is `true` or `false`, and `false` by default.
    /// No problem quotes the secret.
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, Vec<String>> {
        let read = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let endpoint = read(ENDPOINT);
        let region = read(REGION);
        let bucket = read(BUCKET);
        let access_key_id = read(ACCESS_KEY_ID);
        let secret_access_key = read(SECRET_ACCESS_KEY);
        let force_path_style = read(FORCE_PATH_STYLE);
        if endpoint.is_none()
            && region.is_none()
            && bucket.is_none()
            && access_key_id.is_none()
            && secret_access_key.is_none()
            && force_path_style.is_none()
        {
            return Ok(None);
        }

        let mut problems = Vec::new();
        let region = required(REGION, region, parse_region, &mut problems);
        let endpoint = match (endpoint, &region) {
            (Some(value), _) => parse_endpoint(&value)
                .map_err(|why| problems.push(format!("{ENDPOINT} is malformed: {why}")))
                .ok(),
            (None, Some(region)) => match aws_endpoint(region) {
                Some(endpoint) => Some(endpoint),
                None => {
                    problems.push(format!(
                        "{ENDPOINT} is missing: `{region}` is not an AWS region, so the \
                         endpoint must be given (for R2: https://<account id>.r2.cloudflarestorage.com)"
                    ));
                    None
                }
            },
            // The missing region is already a problem.
            (None, None) => None,
        };
        let bucket = required(BUCKET, bucket, parse_bucket, &mut problems);
        let access_key_id = required(
            ACCESS_KEY_ID,
            access_key_id,
            parse_access_key_id,
            &mut problems,
        );
        let secret_access_key = required(
            SECRET_ACCESS_KEY,
            secret_access_key,
            |value| Ok(Secret::new(value)),
            &mut problems,
        );
        let force_path_style = match force_path_style {
            None => Some(false),
            Some(value) => parse_bool(&value)
                .map_err(|why| problems.push(format!("{FORCE_PATH_STYLE} is malformed: {why}")))
                .ok(),
        };

        let (
            Some(endpoint),
            Some(region),
            Some(bucket),
            Some(access_key_id),
            Some(secret_access_key),
            Some(force_path_style),
        ) = (
            endpoint,
            region,
            bucket,
            access_key_id,
            secret_access_key,
            force_path_style,
        )
        else {
            return Err(problems);
        };
        let config = Self {
            endpoint,
            region,
            bucket,
            access_key_id,
            secret_access_key,
            force_path_style,
        };
        // Problems of the combination, such as a virtual-hosted bucket on an
        // IP address, surface here rather than on the first upload.
        if let Err(why) = config.bucket_url() {
            problems.push(why);
        }
        if problems.is_empty() {
            Ok(Some(config))
        } else {
            Err(problems)
        }
    }

    /// The URL of the bucket, without a trailing `/`: `scheme://authority/bucket`
    /// in path style, `scheme://bucket.authority` in virtual-hosted style.
    ///
    /// The authority leaves out a default port, as both botocore's `host`
    /// header and `url::Url` do.
    fn bucket_url(&self) -> Result<String, String> {
        check_endpoint(&self.endpoint)?;
        parse_bucket(&self.bucket).map_err(|why| format!("{BUCKET} is malformed: {why}"))?;
        let scheme = self.endpoint.scheme();
        let host = self.endpoint.host_str().unwrap_or_default();
        let authority = match self.endpoint.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        if self.force_path_style {
            return Ok(format!("{scheme}://{authority}/{}", self.bucket));
        }
        if !matches!(self.endpoint.host(), Some(Host::Domain(_))) {
            return Err(format!(
                "{ENDPOINT} is an IP address, which cannot carry the bucket in its host name: \
                 set {FORCE_PATH_STYLE}=true"
            ));
        }
        Ok(format!("{scheme}://{}.{authority}", self.bucket))
    }
}

/// What to presign: one object, its content type, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct PresignRequest<'a> {
    /// The object key, unencoded (`k_1/2024/05/<uuid>-résumé (1).pdf`).
    pub object_key: &'a str,
    /// Signed: the upload must send exactly this `Content-Type`.
    pub content_type: &'a str,
    /// From [`MIN_EXPIRY`] to [`MAX_EXPIRY`], in whole seconds.
    pub expires_in: Duration,
    /// The signing time. Sub-second digits are dropped, as SigV4 does.
    pub now: DateTime<Utc>,
}

/// A presigned upload: what the client sends, and until when it may.
#[derive(Debug, Clone)]
pub struct Presigned {
    pub url: Url,
    /// Always `PUT`.
    pub method: &'static str,
    /// The headers the client must send as they are: `Content-Length` (from
    /// [`presign_sized_put`]) and `Content-Type`, in that order.
    pub headers: Vec<(String, String)>,
    pub expires_at: DateTime<Utc>,
}

/// Why a URL could not be presigned. No variant carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    #[error(
        "expiry must be a whole number of seconds from 1 s to 7 days (604800 s), got {requested:?}"
    )]
    Expiry { requested: Duration },
    #[error("object key {reason}")]
    ObjectKey { reason: &'static str },
    #[error(
        "content type must be 1 to 255 characters of printable ASCII, with no leading, \
         trailing or repeated spaces"
    )]
    ContentType,
    #[error("content length must be at most 5 GiB ({MAX_PUT_BYTES} bytes), S3's limit for one PUT, got {requested}")]
    ContentLength { requested: u64 },
    /// An [`S3Config`] built by hand that [`S3Config::from_lookup`] would have refused.
    #[error("invalid S3 configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Presigns a `PUT` of exactly `content_length` bytes to
/// `request.object_key` in the configured bucket, in the exact form botocore
/// produces (see the module documentation). The upload must send
/// `Content-Length: <content_length>` and the presigned `Content-Type`;
/// any other length or type fails the signature.
pub fn presign_sized_put(
    config: &S3Config,
    request: &PresignRequest,
    content_length: u64,
) -> Result<Presigned, PresignError> {
    if content_length > MAX_PUT_BYTES {
        return Err(PresignError::ContentLength {
            requested: content_length,
        });
    }
    presign(config, request, Some(content_length))
}

/// Presigns a `PUT` of any length, up to S3's 5 GiB, which no metered
/// upload may have (a client counted for one byte could store 5 GiB): only
/// the tests call it, to compare with botocore's URLs signed without a
/// length.
#[cfg(test)]
fn presign_put(config: &S3Config, request: &PresignRequest) -> Result<Presigned, PresignError> {
    presign(config, request, None)
}

fn presign(
    config: &S3Config,
    request: &PresignRequest,
    content_length: Option<u64>,
) -> Result<Presigned, PresignError> {
    let expires_in = request.expires_in;
    if expires_in.subsec_nanos() != 0 || !(MIN_EXPIRY..=MAX_EXPIRY).contains(&expires_in) {
        return Err(PresignError::Expiry {
            requested: expires_in,
        });
    }
    check_object_key(request.object_key)?;
    check_content_type(request.content_type)?;
    let bucket_url = config.bucket_url().map_err(PresignError::Config)?;
    let object_url = format!(
        "{bucket_url}/{}",
        utf8_percent_encode(request.object_key, OBJECT_KEY)
    );
    let now = request.now.trunc_subsecs(0);

    let identity = Credentials::new(
        config.access_key_id.as_str(),
        config.secret_access_key.expose(),
        None,
        None,
        "tollgate",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires_in);
    // S3 signs the path exactly as sent: encoded once, never normalized.
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&config.region)
        .name("s3")
        .time(now.into())
        .settings(settings)
        .build()
        .context("building the SigV4 signing parameters")?
        .into();
    // Every header given here is signed, so the storage refuses an upload
    // whose own headers differ. The length is sent in decimal, as HTTP does.
    let mut headers = Vec::with_capacity(2);
    if let Some(length) = content_length {
        headers.push(("Content-Length", length.to_string()));
    }
    headers.push(("Content-Type", request.content_type.to_owned()));
    let signable = SignableRequest::new(
        "PUT",
        object_url.as_str(),
        headers.iter().map(|(name, value)| (*name, value.as_str())),
        SignableBody::UnsignedPayload,
    )
    .context("preparing the request to presign")?;
    let (instructions, _signature) = sign(signable, &params)
        .context("presigning the S3 PUT")?
        .into_parts();

    let mut signed_url = object_url;
    for (index, (name, value)) in instructions.params().iter().enumerate() {
        signed_url.push(if index == 0 { '?' } else { '&' });
        signed_url.push_str(name);
        signed_url.push('=');
        signed_url.extend(utf8_percent_encode(value, QUERY_VALUE));
    }
    let url = Url::parse(&signed_url).context("parsing the presigned URL")?;
    // The signature covers the path as built above; a URL that the parser
    // rewrote (dot segments, case) would be refused by the server.
    if url.as_str() != signed_url {
        return Err(anyhow!(
            "the presigned URL changed when parsed, so its signature would not match"
        )
        .into());
    }
    let expires_at = now
        .checked_add_signed(TimeDelta::seconds(expires_in.as_secs() as i64))
        .context("the expiry time is out of range")?;
    Ok(Presigned {
        url,
        method: "PUT",
        headers: headers
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
        expires_at,
    })
}

/// Records `name is missing` or `name is malformed: why`, as [`crate::config`] does.
fn required<T>(
    name: &str,
    value: Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
    problems: &mut Vec<String>,
) -> Option<T> {
    let Some(value) = value else {
        problems.push(format!("{name} is missing"));
        return None;
    };
    parse(&value)
        .map_err(|why| problems.push(format!("{name} is malformed: {why}")))
        .ok()
}

/// The region goes into the credential scope (`<date>/<region>/s3/aws4_request`).
fn parse_region(value: &str) -> Result<String, String> {
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "expected letters, digits, `-` and `_` (e.g. `us-east-1`, or `auto` for R2), got `{value}`"
        ))
    }
}

/// AWS's own endpoint for a region that looks like one (`eu-central-1`,
/// `us-gov-west-1`), the one botocore picks; `None` for `auto` and the like.
fn aws_endpoint(region: &str) -> Option<Url> {
    let parts: Vec<&str> = region.split('-').collect();
    let looks_like_aws = parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    if !looks_like_aws {
        return None;
    }
    let domain = if parts[0] == "cn" {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    Url::parse(&format!("https://s3.{region}.{domain}")).ok()
}

fn parse_endpoint(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("not a URL ({e})"))?;
    check_endpoint(&url)?;
    Ok(url)
}

/// The endpoint names a server and nothing else: the bucket and key make up
/// the whole path, and no credentials ride in the URL.
fn check_endpoint(url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{ENDPOINT} must be an http or https URL, got scheme `{}`",
            url.scheme()
        ));
    }
    if url.host().is_none() {
        return Err(format!("{ENDPOINT} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{ENDPOINT} must not carry credentials; use {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}"
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{ENDPOINT} must be scheme://host[:port] with no path, query or fragment"
        ));
    }
    Ok(())
}

/// S3's bucket naming rules, which R2 and MinIO share: 3 to 63 lowercase
/// letters, digits, `.` and `-`, starting and ending with a letter or digit.
fn parse_bucket(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let valid = (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "expected 3 to 63 lowercase letters, digits, `.` and `-`, starting and ending \
             with a letter or digit, got `{value}`"
        ))
    }
}

/// The key id goes into `X-Amz-Credential`, where `/` separates the scope.
fn parse_access_key_id(value: &str) -> Result<String, String> {
    if value.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        Ok(value.to_owned())
    } else {
        Err("expected printable ASCII with no spaces or `/`".to_owned())
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("expected `true` or `false`, got `{value}`")),
    }
}

/// Keys tollgate makes (`<key id>/<yyyy>/<mm>/<uuid>-<filename>`) always
/// pass. The rules keep out what a URL cannot carry unchanged.
fn check_object_key(key: &str) -> Result<(), PresignError> {
    let reason = if key.is_empty() {
        "is empty"
    } else if key.len() > MAX_OBJECT_KEY_BYTES {
        "is longer than 1024 bytes, S3's limit"
    } else if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        "has an empty, `.` or `..` path segment"
    } else if key.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(PresignError::ObjectKey { reason })
}

/// The value is signed as it is, and the client must send it unchanged, so
/// it must be one that HTTP clients and S3 do not rewrite: SigV4 trims header
/// values and collapses runs of spaces before signing.
fn check_content_type(content_type: &str) -> Result<(), PresignError> {
    let valid = (1..=255).contains(&content_type.len())
        && content_type
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_graphic())
        && !content_type.starts_with(' ')
        && !content_type.ends_with(' ')
        && !content_type.contains("  ");
    if valid {
        Ok(())
    } else {
        Err(PresignError::ContentType)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;

    /// Made by boto3 with `tests/vectors/make_s3_vectors.py`; see there.
    const VECTORS: &str = include_str!("../../../tests/vectors/s3_presign.json");

    #[derive(Deserialize)]
    struct Vectors {
        botocore_version: String,
        access_key_id: String,
        secret_access_key: String,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        region: String,
        endpoint: Option<String>,
        bucket: String,
        force_path_style: bool,
        key: String,
        content_type: String,
        content_length: u64,
        expires_in: u64,
        now: DateTime<Utc>,
        /// botocore's URL with `ContentLength`: `presign_sized_put`'s.
        sized_url: String,
        /// botocore's URL without it: the unsized `presign_put`'s.
        url: String,
    }

    fn config_from(vars: &[(&str, &str)]) -> Result<Option<S3Config>, Vec<String>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        S3Config::from_lookup(&|name| vars.get(name).cloned())
    }

    fn r2_config() -> S3Config {
        config_from(&[
            (
                ENDPOINT,
                "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",
            ),
            (REGION, "auto"),
            (BUCKET, "tollgate"),
            (ACCESS_KEY_ID, "AKIAIOSFODNN7EXAMPLE"),
            (
                SECRET_ACCESS_KEY,
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            (FORCE_PATH_STYLE, "true"),
        ])
        .expect("valid")
        .expect("configured")
    }

    fn request(expires_in: Duration) -> PresignRequest<'static> {
        PresignRequest {
            object_key: "k_1/2024/05/photo.png",
            content_type: "image/png",
            expires_in,
            now: "2024-05-17T12:34:56Z".parse().unwrap(),
        }
    }

    #[test]
    fn presigned_urls_are_exactly_the_ones_botocore_makes() {
        let vectors: Vectors = serde_json::from_str(VECTORS).expect("the vectors parse");
        assert!(
            vectors.cases.len() >= 10,
            "vectors from botocore {}",
            vectors.botocore_version
        );
        for case in &vectors.cases {
            let path_style = case.force_path_style.to_string();
            let mut vars = vec![
                (REGION, case.region.as_str()),
                (BUCKET, case.bucket.as_str()),
                (ACCESS_KEY_ID, vectors.access_key_id.as_str()),
                (SECRET_ACCESS_KEY, vectors.secret_access_key.as_str()),
                (FORCE_PATH_STYLE, path_style.as_str()),
            ];
            // No endpoint: the default must be the one botocore picked.
            if let Some(endpoint) = &case.endpoint {
                vars.push((ENDPOINT, endpoint));
            }
            let config = config_from(&vars)
                .unwrap_or_else(|problems| panic!("{}: {problems:?}", case.name))
                .expect("configured");

            let request = PresignRequest {
                object_key: &case.key,
                content_type: &case.content_type,
                expires_in: Duration::from_secs(case.expires_in),
                now: case.now,
            };

            let sized = presign_sized_put(&config, &request, case.content_length)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(sized.url.as_str(), case.sized_url, "{}", case.name);
            assert!(
                case.sized_url
                    .contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"),
                "{}",
                case.name
            );
            assert_eq!(sized.method, "PUT");
            assert_eq!(
                sized.headers,
                vec![
                    ("Content-Length".to_owned(), case.content_length.to_string()),
                    ("Content-Type".to_owned(), case.content_type.clone()),
                ]
            );
            assert_eq!(
                sized.expires_at,
                case.now + TimeDelta::seconds(case.expires_in as i64),
                "{}",
                case.name
            );

            let unsized_put =
                presign_put(&config, &request).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(unsized_put.url.as_str(), case.url, "{}", case.name);
            assert_eq!(
                unsized_put.headers,
                vec![("Content-Type".to_owned(), case.content_type.clone())]
            );
        }
    }

    #[test]
    fn the_length_is_signed_so_each_size_gets_its_own_signature() {
        let config = r2_config();
        let request = request(DEFAULT_EXPIRY);
        let signature = |length| {
            let url = presign_sized_put(&config, &request, length).unwrap().url;
            url.query_pairs()
                .find(|(name, _)| name == "X-Amz-Signature")
                .map(|(_, value)| value.into_owned())
                .unwrap()
        };
        assert_ne!(signature(1), signature(2));
        assert_eq!(signature(1), signature(1));
    }

    #[test]
    fn lengths_up_to_five_gib_are_signed_and_longer_ones_refused() {
        let config = r2_config();
        for length in [0, 1, MAX_PUT_BYTES] {
            let presigned = presign_sized_put(&config, &request(DEFAULT_EXPIRY), length).unwrap();
            assert_eq!(presigned.headers[0].1, length.to_string());
        }
        for length in [MAX_PUT_BYTES + 1, u64::MAX] {
            let error = presign_sized_put(&config, &request(DEFAULT_EXPIRY), length).unwrap_err();
            assert!(
                matches!(error, PresignError::ContentLength { requested } if requested == length),
                "{length}: {error:?}"
            );
            assert!(error.to_string().contains("5 GiB"), "{error}");
        }
    }

    #[test]
    fn sub_second_signing_times_sign_as_the_whole_second() {
        let config = r2_config();
        let whole = presign_put(&config, &request(DEFAULT_EXPIRY)).unwrap();
        let mut later = request(DEFAULT_EXPIRY);
        later.now += TimeDelta::milliseconds(999);
        let fraction = presign_put(&config, &later).unwrap();
        assert_eq!(whole.url, fraction.url);
        assert_eq!(whole.expires_at, fraction.expires_at);
    }

    #[test]
    fn expiry_from_one_second_to_seven_days_is_accepted() {
        let config = r2_config();
        for expires_in in [MIN_EXPIRY, DEFAULT_EXPIRY, MAX_EXPIRY] {
            let presigned = presign_put(&config, &request(expires_in)).unwrap();
            let expected = format!("X-Amz-Expires={}&", expires_in.as_secs());
            assert!(presigned.url.as_str().contains(&expected), "{expires_in:?}");
        }
    }

    #[test]
    fn expiry_outside_one_second_to_seven_days_is_refused_naming_the_limit() {
        let config = r2_config();
        for expires_in in [
            Duration::ZERO,
            Duration::from_millis(999),
            Duration::from_millis(1_500),
            MAX_EXPIRY + Duration::from_secs(1),
            Duration::from_secs(u64::MAX),
        ] {
            let error = presign_put(&config, &request(expires_in)).unwrap_err();
            assert!(
                matches!(error, PresignError::Expiry { requested } if requested == expires_in),
                "{expires_in:?}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains("1 s to 7 days (604800 s)"), "{message}");
        }
    }

    #[test]
    fn object_keys_a_url_cannot_carry_unchanged_are_refused() {
        let config = r2_config();
        let long = "a".repeat(MAX_OBJECT_KEY_BYTES + 1);
        for key in [
            "",
            "/leading",
            "trailing/",
            "a//b",
            "a/./b",
            "a/../b",
            "..",
            "tab\there",
            long.as_str(),
        ] {
            let mut request = request(DEFAULT_EXPIRY);
            request.object_key = key;
            let error = presign_put(&config, &request).unwrap_err();
            assert!(
                matches!(error, PresignError::ObjectKey { .. }),
                "{key:?}: {error:?}"
            );
        }
    }

    #[test]
    fn content_types_that_would_be_rewritten_before_signing_are_refused() {
        let config = r2_config();
        let long = format!("application/{}", "x".repeat(250));
        for content_type in [
            "",
            " image/png",
            "image/png ",
            "text/plain;  charset=utf-8",
            "image/pngé",
            "a\tb",
            long.as_str(),
        ] {
            let mut request = request(DEFAULT_EXPIRY);
            request.content_type = content_type;
            let error = presign_put(&config, &request).unwrap_err();
            assert!(
                matches!(error, PresignError::ContentType),
                "{content_type:?}: {error:?}"
            );
        }
    }

    #[test]
    fn no_variable_set_means_s3_is_not_configured() {
        assert!(config_from(&[]).unwrap().is_none());
        // Blank counts as unset, as in the main configuration.
        assert!(config_from(&[(REGION, "  "), (FORCE_PATH_STYLE, "")])
            .unwrap()
            .is_none());
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let problems = config_from(&[
            (REGION, "auto"),
            (BUCKET, "Not_A_Bucket"),
            (FORCE_PATH_STYLE, "yes"),
        ])
        .unwrap_err();
        assert_eq!(
            problems,
            vec![
                "S3_ENDPOINT is missing: `auto` is not an AWS region, so the endpoint must be \
                 given (for R2: https://<account id>.r2.cloudflarestorage.com)"
                    .to_owned(),
                "S3_BUCKET is malformed: expected 3 to 63 lowercase letters, digits, `.` and `-`, \
                 starting and ending with a letter or digit, got `Not_A_Bucket`"
                    .to_owned(),
                "S3_ACCESS_KEY_ID is missing".to_owned(),
                "S3_SECRET_ACCESS_KEY is missing".to_owned(),
                "S3_FORCE_PATH_STYLE is malformed: expected `true` or `false`, got `yes`"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn a_missing_region_and_a_malformed_endpoint_are_both_listed() {
        let problems = config_from(&[
            (ENDPOINT, "ftp://files.example.com"),
            (BUCKET, "tollgate"),
            (ACCESS_KEY_ID, "AKID"),
            (SECRET_ACCESS_KEY, "s3cr3t-value"),
        ])
        .unwrap_err();
        assert_eq!(
            problems,
            vec![
                "S3_REGION is missing".to_owned(),
                "S3_ENDPOINT is malformed: S3_ENDPOINT must be an http or https URL, got scheme `ftp`"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn endpoints_with_a_path_or_credentials_are_refused() {
        for endpoint in [
            "https://s3.example.com/prefix",
            "https://s3.example.com/?x=1",
            "https://user:pass@s3.example.com",
            "not a url",
        ] {
            let problems = config_from(&[
                (ENDPOINT, endpoint),
                (REGION, "us-east-1"),
                (BUCKET, "tollgate"),
                (ACCESS_KEY_ID, "AKID"),
                (SECRET_ACCESS_KEY, "s3cr3t-value"),
            ])
            .unwrap_err();
            assert_eq!(problems.len(), 1, "{endpoint}: {problems:?}");
            assert!(
                problems[0].starts_with("S3_ENDPOINT is malformed"),
                "{problems:?}"
            );
            assert!(!problems[0].contains("pass@"), "{problems:?}");
        }
    }

    #[test]
    fn an_ip_endpoint_needs_path_style() {
        let vars = [
            (ENDPOINT, "http://127.0.0.1:9000"),
            (REGION, "us-east-1"),
            (BUCKET, "tollgate"),
            (ACCESS_KEY_ID, "minioadmin"),
            (SECRET_ACCESS_KEY, "minioadmin"),
        ];
        let problems = config_from(&vars).unwrap_err();
        assert_eq!(
            problems,
            vec![
                "S3_ENDPOINT is an IP address, which cannot carry the bucket in its host name: \
                 set S3_FORCE_PATH_STYLE=true"
                    .to_owned()
            ]
        );
        let mut vars = vars.to_vec();
        vars.push((FORCE_PATH_STYLE, "TRUE"));
        let config = config_from(&vars).unwrap().unwrap();
        assert!(config.force_path_style);
    }

    #[test]
    fn aws_regions_default_to_the_endpoint_botocore_uses() {
        for (region, endpoint) in [
            ("us-east-1", "https://s3.us-east-1.amazonaws.com/"),
            ("eu-central-1", "https://s3.eu-central-1.amazonaws.com/"),
            ("us-gov-west-1", "https://s3.us-gov-west-1.amazonaws.com/"),
            ("cn-north-1", "https://s3.cn-north-1.amazonaws.com.cn/"),
        ] {
            let config = config_from(&[
                (REGION, region),
                (BUCKET, "tollgate"),
                (ACCESS_KEY_ID, "AKID"),
                (SECRET_ACCESS_KEY, "s3cr3t-value"),
            ])
            .unwrap()
            .unwrap();
            assert_eq!(config.endpoint.as_str(), endpoint);
            assert!(!config.force_path_style);
        }
    }

    #[test]
    fn the_secret_never_shows_in_debug_output_or_problems() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let config = r2_config();
        assert!(!format!("{config:?}").contains(secret));

        let problems = config_from(&[(SECRET_ACCESS_KEY, secret), (BUCKET, "x")]).unwrap_err();
        assert!(!format!("{problems:?}").contains(secret), "{problems:?}");

        let mut broken = config.clone();
        broken.endpoint = Url::parse("https://s3.example.com/path").unwrap();
        let error = presign_put(&broken, &request(DEFAULT_EXPIRY)).unwrap_err();
        assert!(matches!(error, PresignError::Config(_)), "{error:?}");
        assert!(!format!("{error:?} {error}").contains(secret));
    }
}
