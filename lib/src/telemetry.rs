//! Logging: to stderr (stdout is for what commands print), filtered by
//! `RUST_LOG`, `info` by default; and the span each request is handled in,
//! so that every line a request logs says which request it belongs to.
//!
//! The Vercel adapter ([`crate::vercel::serve`]) and `tollgate dev` both
//! wrap each request in [`request_span`]: its fields are the path, the
//! method, the request id, and the key id once a route knows it
//! ([`record_key_id`]). The request id goes back to the client in the
//! `x-request-id` header, so that a user can name the request whose logs
//! they want.

use std::{future::Future, time::Instant};

use http::{HeaderName, HeaderValue};
use tracing::{field, Instrument, Span, Subscriber};
use tracing_subscriber::{fmt::MakeWriter, util::SubscriberInitExt, EnvFilter};
use uuid::Uuid;

/// The response header that carries a request's id.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request header in which Vercel's edge names each request; its value
/// is what Vercel's own request logs show, so the function's lines use it too.
pub const VERCEL_ID_HEADER: HeaderName = HeaderName::from_static("x-vercel-id");

/// The longest `x-vercel-id` taken as the request id. Vercel's are about
/// 50 bytes (regions, a timestamp and a random part); a longer value did
/// not come from Vercel.
const MAX_VERCEL_ID_LEN: usize = 128;

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = subscriber(filter, std::io::stderr).try_init();
}

/// The subscriber [`init`] installs, writing to `writer`: one line per
/// event, prefixed with the fields of the spans it happened in.
pub fn subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer)
        .finish()
}

/// One request's place in the logs: its id and the span it is handled in.
#[derive(Debug)]
pub struct RequestSpan {
    id: HeaderValue,
    span: Span,
}

/// The span to handle `request` in, with its route (the path), method and
/// request id, and an empty `key_id` for the route to fill in.
///
/// The request id is Vercel's `x-vercel-id` when the request carries a
/// well-formed one, and a fresh UUIDv7 otherwise. The span is at `ERROR`
/// level so that it is on whenever anything is logged: under
/// `RUST_LOG=warn` the warnings still say which request they belong to.
pub fn request_span<B>(request: &http::Request<B>) -> RequestSpan {
    let id = request
        .headers()
        .get(VERCEL_ID_HEADER)
        .filter(|value| is_request_id(value.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&Uuid::now_v7().to_string()).expect("a UUID is a header value")
        });
    let span = tracing::error_span!(
        "request",
        route = %request.uri().path(),
        method = %request.method(),
        request_id = %id.to_str().unwrap_or_default(),
        key_id = field::Empty,
    );
    RequestSpan { id, span }
}

/// Whether a client-supplied id is fit for the logs and a header: short,
/// and of letters, digits and `:-_.` only, so that it can neither forge a
/// log line nor hide one.
fn is_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VERCEL_ID_LEN
        && value
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || b":-_.".contains(byte))
}

impl RequestSpan {
    /// The request id, as logged and as sent in `x-request-id`.
    pub fn id(&self) -> &str {
        self.id.to_str().unwrap_or_default()
    }

    /// The span itself.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Runs `handling` in the span, logs its status and duration at
    /// `DEBUG` there, and sends the request id back in `x-request-id`.
    pub async fn instrument<B>(
        self,
        handling: impl Future<Output = http::Response<B>>,
    ) -> http::Response<B> {
        let started = Instant::now();
        let mut response = handling.instrument(self.span.clone()).await;
        self.span.in_scope(|| {
            tracing::debug!(
                status = response.status().as_u16(),
                elapsed = ?started.elapsed(),
                "request finished"
            );
        });
        response.headers_mut().insert(REQUEST_ID_HEADER, self.id);
        response
    }
}

/// Records the key a request was made with in the request's span, once
/// the route has resolved it. Called outside a request span, it does
/// nothing.
pub fn record_key_id(key_id: Uuid) {
    Span::current().record("key_id", field::display(key_id));
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The lines a subscriber wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn request(vercel_id: Option<&[u8]>) -> http::Request<()> {
        let mut request = http::Request::post("https://app.example/api/collect?x=1");
        if let Some(id) = vercel_id {
            request = request.header(VERCEL_ID_HEADER, HeaderValue::from_bytes(id).unwrap());
        }
        request.body(()).unwrap()
    }

    /// Handles `request` in its span with a handler that logs a line before
    /// and after recording `key`; returns what was written (without
    /// colours) and the response.
    async fn log_in_span(
        request: &http::Request<()>,
        key: Option<Uuid>,
    ) -> (String, http::Response<()>) {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = subscriber(EnvFilter::new("debug"), move || writer.clone());
        // This thread only; the test's runtime runs everything on it.
        let _default = tracing::subscriber::set_default(subscriber);
        let response = request_span(request)
            .instrument(async {
                tracing::info!("before the key is known");
                if let Some(key) = key {
                    record_key_id(key);
                }
                tracing::warn!("after");
                http::Response::new(())
            })
            .await;
        (strip_ansi(&lines.text()), response)
    }

    fn strip_ansi(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // An SGR sequence: ESC [ parameters m.
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[tokio::test]
    async fn every_line_logged_in_a_request_names_its_route_method_and_request_id() {
        let key = Uuid::new_v4();
        let (text, response) = log_in_span(&request(None), Some(key)).await;
        let id = response.headers()[REQUEST_ID_HEADER].to_str().unwrap();
        let id = Uuid::parse_str(id).expect("a generated request id is a UUID");
        assert_eq!(id.get_version_num(), 7);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for line in &lines {
            assert!(line.contains("route=/api/collect "), "{line}");
            assert!(line.contains("method=POST "), "{line}");
            assert!(line.contains(&format!("request_id={id}")), "{line}");
        }
        assert!(!lines[0].contains("key_id"), "{}", lines[0]);
        assert!(lines[1].contains(&format!("key_id={key}")), "{}", lines[1]);
        assert!(lines[2].contains("request finished"), "{}", lines[2]);
        assert!(lines[2].contains("status=200"), "{}", lines[2]);
        assert!(lines[2].contains(&format!("key_id={key}")), "{}", lines[2]);
    }

    #[tokio::test]
    async fn the_request_id_is_vercels_when_vercel_names_the_request() {
        let vercel = "cdg1::iad1::8k5x2-1732000000000-0123456789ab";
        let (text, response) = log_in_span(&request(Some(vercel.as_bytes())), None).await;
        assert_eq!(response.headers()[REQUEST_ID_HEADER], vercel);
        assert!(text.contains(&format!("request_id={vercel}")), "{text}");
    }

    #[test]
    fn an_id_that_could_not_come_from_vercel_is_replaced_with_a_fresh_one() {
        let long = "a".repeat(MAX_VERCEL_ID_LEN + 1);
        for (id, why) in [
            (&b""[..], "empty"),
            (b"abc def", "a space"),
            (b"abc\"} forged=1", "quotes and braces"),
            (b"caf\xc3\xa9", "not ASCII"),
            (long.as_bytes(), "too long"),
        ] {
            let span = request_span(&request(Some(id)));
            assert!(Uuid::parse_str(span.id()).is_ok(), "{why}: {}", span.id());
        }
        let first = request_span(&request(None));
        let second = request_span(&request(None));
        assert_ne!(first.id(), second.id());
    }
}
