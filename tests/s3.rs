//! Presigned S3 uploads, end to end: a URL from `POST /api/signed-url` is
//! used against a real S3-compatible server that checks SigV4 signatures,
//! as S3 and R2 do. The server is s3s-fs, which `scripts/bootstrap.sh s3`
//! builds into `.tollgate/s3s-fs`; for a presigned URL it recomputes the
//! signature from the signed headers the upload carries and refuses an
//! expired one.
//!
//! The URL binds the declared size and type: an upload of exactly those
//! lands, and one byte more (or less, or a chunked body without a length),
//! another content type, an expired URL or an edited query is refused, so
//! nothing is stored that was not paid for.

use std::{path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tollgate::clock::FixedClock;
use url::Url;
use uuid::Uuid;

use crate::helpers::{repo_root, sign, spawn_app_with, TestApp, TestOptions};

// --- s3_server: s3s-fs, run by each test ------------------------------------

const ACCESS_KEY_ID: &str = "tollgate-test-access-key";
const SECRET_ACCESS_KEY: &str = "tollgate-test-secret-key-0123456789";
const REGION: &str = "us-east-1";
const BUCKET: &str = "uploads";

/// An s3s-fs server on a free port, storing into a fresh directory with one
/// bucket; stopped, and its directory removed, when dropped.
struct S3Server {
    endpoint: String,
    root: PathBuf,
    _server: tokio::process::Child,
}

impl S3Server {
    async fn start() -> Self {
        let binary = repo_root().join(".tollgate/s3s-fs/bin/s3s-fs");
        assert!(
            binary.exists(),
            "{} is missing: run scripts/bootstrap.sh s3",
            binary.display()
        );
        let root = std::env::temp_dir().join(format!("tollgate-s3-{}", Uuid::new_v4().simple()));
        // s3s-fs keeps each bucket as a directory under its root.
        std::fs::create_dir_all(root.join(BUCKET)).expect("making the bucket directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let server = tokio::process::Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                ACCESS_KEY_ID,
                "--secret-key",
                SECRET_ACCESS_KEY,
            ])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting s3s-fs");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    root,
                    _server: server,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("s3s-fs on port {port} did not start");
    }

    /// The app's S3 settings for this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("S3_ENDPOINT", self.endpoint.clone()),
            ("S3_REGION", REGION.to_owned()),
            ("S3_BUCKET", BUCKET.to_owned()),
            ("S3_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("S3_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("S3_FORCE_PATH_STYLE", "true".to_owned()),
        ]
    }

    /// `GET`s the object that `upload_url` (a presigned `PUT`) names, signed
    /// with this server's credentials by `aws-sigv4`, as any reader would.
    async fn get(&self, upload_url: &str) -> reqwest::Response {
        use aws_sigv4::http_request::{
            sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
            SigningSettings, UriPathNormalizationMode,
        };

        let mut object_url = Url::parse(upload_url).expect("a URL");
        object_url.set_query(None);
        let identity = aws_credential_types::Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "tests",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(60));
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name("s3")
            .time(std::time::SystemTime::now())
            .settings(settings)
            .build()
            .expect("signing parameters")
            .into();
        let signable = SignableRequest::new(
            "GET",
            object_url.as_str(),
            std::iter::empty(),
            SignableBody::UnsignedPayload,
        )
        .expect("a signable request");
        let (instructions, _) = sign(signable, &params)
            .expect("signing the GET")
            .into_parts();
        let mut request = http::Request::get(object_url.as_str())
            .body(())
            .expect("a request");
        instructions.apply_to_request_http1x(&mut request);
        reqwest::Client::new()
            .get(request.uri().to_string())
            .send()
            .await
            .expect("GET from s3s-fs")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// --- tests -----------------------------------------------------------------

/// The app, configured for `server`, with its clock at `clock` if given.
async fn spawn(server: &S3Server, clock: Option<Arc<FixedClock>>) -> TestApp {
    spawn_app_with(TestOptions {
        env: server.env(),
        clock: clock.map(|clock| clock as Arc<dyn tollgate::clock::Clock>),
        ..TestOptions::default()
    })
    .await
}

/// Signs an upload through the route and returns its JSON answer.
async fn signed_upload(app: &TestApp, body: Value) -> Value {
    let key = app.create_key().await;
    let (status, signed) = sign(app, Some(key.secret.expose()), &body.to_string()).await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["provider"], "s3", "{signed}");
    assert_eq!(signed["method"], "PUT", "{signed}");
    signed
}

fn url_of(signed: &Value) -> &str {
    signed["url"].as_str().expect("an S3 answer has a url")
}

/// `PUT`s `body` with this content type; the client sets `Content-Length`
/// from the body, as every HTTP client does.
async fn put(url: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .put(url)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .expect("PUT to s3s-fs")
}

/// `PUT`s `body` in one chunk with `Transfer-Encoding: chunked` and no
/// `Content-Length`, as a client streaming a body of unknown size does;
/// reqwest can't, so this writes HTTP/1.1 itself. Answers the status.
async fn put_chunked(url: &str, content_type: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let url = Url::parse(url).expect("a URL");
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut stream = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connecting to s3s-fs");
    let head = format!(
        "PUT {}?{} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        url.path(),
        url.query().unwrap_or_default(),
        body.len()
    );
    // The server may refuse (and close) as soon as it has read the head, so
    // writing the rest can fail; its answer is what counts.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.write_all(b"\r\n0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

/// Asserts an S3 refusal: 403 with this error code in the XML body.
async fn assert_refused(response: reqwest::Response, code: &str, why: &str) {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 403, "{why}: {body}");
    assert!(
        body.contains(&format!("<Code>{code}</Code>")),
        "{why}: {body}"
    );
}

async fn assert_nothing_stored(server: &S3Server, url: &str) {
    let response = server.get(url).await;
    assert_eq!(response.status(), 404, "an object was stored at {url}");
}

#[tokio::test]
async fn an_upload_of_the_declared_size_and_type_lands() {
    let server = S3Server::start().await;
    let app = spawn(&server, None).await;
    let content: Vec<u8> = (0..52_000u32).map(|i| (i % 251) as u8).collect();
    let signed = signed_upload(
        &app,
        json!({"filename": "Résumé 2026 (v2).pdf", "content_type": "application/pdf", "size": content.len()}),
    )
    .await;
    let url = url_of(&signed);
    assert!(
        url.contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"),
        "{url}"
    );
    // The answer names every header the upload must carry, exactly.
    assert_eq!(
        signed["headers"],
        json!({"Content-Length": "52000", "Content-Type": "application/pdf"})
    );

    let mut upload = reqwest::Client::new().put(url).body(content.clone());
    for (name, value) in signed["headers"].as_object().unwrap() {
        upload = upload.header(name, value.as_str().unwrap());
    }
    let response = upload.send().await.expect("PUT to s3s-fs");
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());

    let stored = server.get(url).await;
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.bytes().await.unwrap().as_ref(), content.as_slice());
}

#[tokio::test]
async fn an_upload_of_another_length_than_declared_is_refused() {
    let server = S3Server::start().await;
    let app = spawn(&server, None).await;
    let size = 1000;
    let signed = signed_upload(
        &app,
        json!({"filename": "a.png", "content_type": "image/png", "size": size}),
    )
    .await;
    let url = url_of(&signed);

    for (length, why) in [
        (size + 1, "one byte more than paid for"),
        (100 * size, "a hundred times what was paid for"),
        (size - 1, "one byte less"),
        (0, "an empty body"),
    ] {
        let response = put(url, "image/png", vec![7; length]).await;
        assert_refused(response, "SignatureDoesNotMatch", why).await;
    }
    // Without Content-Length the signed length can't match either.
    for length in [size, size + 1] {
        let status = put_chunked(url, "image/png", &vec![7; length]).await;
        assert_eq!(status, 403, "{length} bytes, chunked");
    }
    assert_nothing_stored(&server, url).await;
}

#[tokio::test]
async fn an_upload_with_another_content_type_is_refused() {
    let server = S3Server::start().await;
    let app = spawn(&server, None).await;
    let signed = signed_upload(
        &app,
        json!({"filename": "a.png", "content_type": "image/png", "size": 10}),
    )
    .await;
    let url = url_of(&signed);

    for content_type in ["text/html", "image/jpeg", "image/png; charset=utf-8"] {
        let response = put(url, content_type, vec![1; 10]).await;
        assert_refused(response, "SignatureDoesNotMatch", content_type).await;
    }
    assert_nothing_stored(&server, url).await;
}

#[tokio::test]
async fn an_expired_url_is_refused() {
    let server = S3Server::start().await;
    // Signed an hour ago: a URL valid for a minute has expired, one valid
    // for two hours has not.
    let clock = Arc::new(FixedClock::new(
        chrono::Utc::now() - chrono::TimeDelta::hours(1),
    ));
    let app = spawn(&server, Some(clock)).await;
    let body = |expires_in: u64| json!({"filename": "a.png", "content_type": "image/png", "size": 10, "expires_in": expires_in});

    let expired = signed_upload(&app, body(60)).await;
    let response = put(url_of(&expired), "image/png", vec![1; 10]).await;
    assert_refused(response, "AccessDenied", "signed an hour ago for a minute").await;
    assert_nothing_stored(&server, url_of(&expired)).await;

    let valid = signed_upload(&app, body(7200)).await;
    let response = put(url_of(&valid), "image/png", vec![1; 10]).await;
    assert_eq!(response.status(), 200, "signed an hour ago for two hours");
}

#[tokio::test]
async fn a_tampered_url_is_refused() {
    let server = S3Server::start().await;
    let app = spawn(&server, None).await;
    let signed = signed_upload(
        &app,
        json!({"filename": "a.png", "content_type": "image/png", "size": 10}),
    )
    .await;
    let url = url_of(&signed);
    let signature = Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(name, _)| name == "X-Amz-Signature")
        .map(|(_, value)| value.into_owned())
        .expect("a signature");
    let last = signature.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &signature[..signature.len() - 1],
        if last == '0' { '1' } else { '0' }
    );

    for (tampered, why) in [
        (
            url.replace(&signature, &flipped),
            "one digit of the signature",
        ),
        (
            url.replace("X-Amz-Expires=900", "X-Amz-Expires=604800"),
            "a longer expiry",
        ),
        (
            url.replace(
                "X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost",
                "X-Amz-SignedHeaders=content-type%3Bhost",
            ),
            "the length left out of the signed headers",
        ),
    ] {
        assert_ne!(tampered, url, "{why}: nothing was changed");
        // The declared size, so only the tampering can be refused.
        let response = put(&tampered, "image/png", vec![1; 10]).await;
        assert_refused(response, "SignatureDoesNotMatch", why).await;
    }
    assert_nothing_stored(&server, url).await;
}

#[tokio::test]
async fn the_s3_server_refuses_a_url_signed_with_another_secret() {
    // The stand-in checks signatures at all: the tests above rely on it.
    let server = S3Server::start().await;
    let mut env = server.env();
    env.push(("S3_SECRET_ACCESS_KEY", "not-the-servers-secret".to_owned()));
    let app = spawn_app_with(TestOptions {
        env,
        ..TestOptions::default()
    })
    .await;
    let signed = signed_upload(
        &app,
        json!({"filename": "a.png", "content_type": "image/png", "size": 10}),
    )
    .await;
    let response = put(url_of(&signed), "image/png", vec![1; 10]).await;
    assert_refused(response, "SignatureDoesNotMatch", "another secret").await;
}
