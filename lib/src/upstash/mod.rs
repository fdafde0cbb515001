//! A client for the Upstash Redis REST API.
//!
//! Each call is one HTTPS request: a command as a JSON array to `POST /`, a
//! list of them to `POST /pipeline`, or a transaction to `POST /multi-exec`.
//! The client keeps a keep-alive connection pool, bounds every call with a
//! timeout, asks for base64 replies so values are binary-safe, echoes the
//! `upstash-sync-token` for read-your-writes, and counts its round trips so
//! tests can hold the hot path to one.
//!
//! Retries differ from the official client on purpose: it retries any failed
//! `fetch`, but a request whose response was lost may already have run, and a
//! rerun script would count twice. This client retries only when the
//! connection could not be made, so the request was certainly never sent.

mod reply;
mod script;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

pub use reply::{FromReply, Reply};
pub use script::Script;

use crate::config::UpstashConfig;

const SYNC_TOKEN: &str = "upstash-sync-token";
const ENCODING: &str = "upstash-encoding";

/// What can go wrong talking to Upstash.
#[derive(Debug, thiserror::Error)]
pub enum UpstashError {
    /// Redis ran the command and refused it (`WRONGTYPE`, `NOSCRIPT`, ...).
    #[error("redis error: {0}")]
    Redis(String),
    /// The token was missing or wrong (HTTP 401).
    #[error("Upstash rejected the token")]
    Unauthorized,
    /// No connection could be made, even after retrying.
    #[error("could not connect to Upstash after {attempts} attempts")]
    Unreachable {
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// The call did not finish within the configured timeout.
    #[error("Upstash did not answer within {0:?}")]
    Timeout(Duration),
    /// The request was sent but failed on the way (connection reset, bad body).
    #[error("the Upstash request failed in flight")]
    Transport(#[source] reqwest::Error),
    /// Upstash answered with an unexpected HTTP status.
    #[error("Upstash answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// The reply did not have the expected shape.
    #[error("unexpected reply from Upstash: {0}")]
    Protocol(String),
}

impl UpstashError {
    /// Whether Redis answered `NOSCRIPT`, i.e. the script cache lacks a script.
    pub fn is_noscript(&self) -> bool {
        matches!(self, UpstashError::Redis(message) if message.starts_with("NOSCRIPT"))
    }
}

/// One Redis command: a name and its arguments, all sent as JSON strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command(Vec<String>);

impl Command {
    /// Starts a command, e.g. `Command::new("SET").arg(key).arg(value)`.
    pub fn new(name: &str) -> Self {
        Self(vec![name.to_owned()])
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl ToString) -> Self {
        self.0.push(arg.to_string());
        self
    }

    /// Appends several arguments.
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: ToString,
    {
        self.0.extend(args.into_iter().map(|a| a.to_string()));
        self
    }

    /// The command and its arguments.
    pub fn parts(&self) -> &[String] {
        &self.0
    }
}

/// How many times, and how far apart, to retry a refused connection.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retries: u32,
    /// The wait before retry `n` (from 0) is `base * e^n`, as in the official client.
    pub base: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 3,
            base: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        self.base.mul_f64(f64::from(attempt).exp())
    }
}

/// A pooled, counted client for one Upstash database.
#[derive(Debug)]
pub struct Upstash {
    http: reqwest::Client,
    /// The endpoints, parsed once: `/`, `/pipeline` and `/multi-exec`.
    command_url: Url,
    pipeline_url: Url,
    transaction_url: Url,
    timeout: Duration,
    retry: RetryPolicy,
    sync_token: Mutex<Option<HeaderValue>>,
    round_trips: AtomicU64,
    /// Bytes of request bodies and paths sent, for the benchmarks.
    bytes_sent: AtomicU64,
}

#[derive(Deserialize)]
struct Envelope {
    result: Option<Value>,
    error: Option<String>,
}

impl Upstash {
    /// Builds a client; no connection is made until the first call.
    pub fn new(config: &UpstashConfig) -> Result<Self, UpstashError> {
        Self::with_retry(config, RetryPolicy::default())
    }

    /// Builds a client with its own retry policy.
    pub fn with_retry(config: &UpstashConfig, retry: RetryPolicy) -> Result<Self, UpstashError> {
        let mut auth =
            HeaderValue::try_from(format!("Bearer {}", config.token.expose())).map_err(|_| {
                UpstashError::Protocol("the token has characters a header cannot carry".to_owned())
            })?;
        // Keeps the token out of reqwest's own Debug output and logs.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ENCODING, HeaderValue::from_static("base64"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(UpstashError::Transport)?;
        let mut base = config.url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let endpoint = |path: &str| base.join(path).map_err(protocol);
        Ok(Self {
            http,
            command_url: endpoint("")?,
            pipeline_url: endpoint("pipeline")?,
            transaction_url: endpoint("multi-exec")?,
            timeout: config.timeout,
            retry,
            sync_token: Mutex::new(None),
            round_trips: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        })
    }

    /// How many HTTP requests this client has sent so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// How many bytes of request paths and bodies it has sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Runs one command and converts its reply.
    pub async fn command<T: FromReply>(&self, command: &Command) -> Result<T, UpstashError> {
        let body = serde_json::to_vec(&command.0).map_err(protocol)?;
        let envelope: Envelope = self.send(&self.command_url, body).await?;
        T::from_reply(envelope_reply(envelope)?)
    }

    /// Runs commands in one round trip, without atomicity. Each command gets
    /// its own result: one failing does not fail the others.
    pub async fn pipeline(
        &self,
        commands: &[Command],
    ) -> Result<Vec<Result<Reply, UpstashError>>, UpstashError> {
        self.batch(&self.pipeline_url, commands).await
    }

    /// Runs commands in one `MULTI`/`EXEC` transaction, in one round trip.
    pub async fn transaction(
        &self,
        commands: &[Command],
    ) -> Result<Vec<Result<Reply, UpstashError>>, UpstashError> {
        self.batch(&self.transaction_url, commands).await
    }

    /// Runs a script by its SHA-1 and sends the source only when Redis lacks
    /// it, which also loads it for the next call.
    pub async fn eval<T: FromReply>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, UpstashError> {
        self.eval_as(("EVALSHA", "EVAL"), script, keys, args).await
    }

    /// Runs a read-only script (flagged `no-writes`) with `EVALSHA_RO`,
    /// which a read replica may answer.
    pub async fn eval_read_only<T: FromReply>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, UpstashError> {
        self.eval_as(("EVALSHA_RO", "EVAL_RO"), script, keys, args)
            .await
    }

    async fn eval_as<T: FromReply>(
        &self,
        (by_sha, by_source): (&str, &str),
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, UpstashError> {
        let with = |command: Command| command.arg(keys.len()).args(keys.iter()).args(args.iter());
        match self
            .command(&with(Command::new(by_sha).arg(script.sha1())))
            .await
        {
            Err(err) if err.is_noscript() => {
                tracing::debug!(
                    script = script.name(),
                    "script not cached; sending the source"
                );
                self.command(&with(Command::new(by_source).arg(script.source())))
                    .await
            }
            other => other,
        }
    }

    /// Runs a script by its SHA-1 with its one argument sent as the raw
    /// request body: Upstash appends the body of a `POST` to a path-style
    /// command (`/evalsha/<sha>/<numkeys>/<keys>…`) as its last argument,
    /// so a large payload travels as it is, with no JSON escaping. On
    /// `NOSCRIPT` the script is loaded and the call made once more.
    pub async fn eval_with_body<T: FromReply>(
        &self,
        script: &Script,
        keys: &[&str],
        body: Bytes,
    ) -> Result<T, UpstashError> {
        let mut url = self.command_url.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| protocol("the Upstash URL cannot take a path"))?;
            path.pop_if_empty()
                .push("evalsha")
                .push(script.sha1())
                .push(&keys.len().to_string())
                .extend(keys);
        }
        let call = || async {
            let envelope: Envelope = self.send_bytes(&url, body.clone()).await?;
            T::from_reply(envelope_reply(envelope)?)
        };
        match call().await {
            Err(err) if err.is_noscript() => {
                tracing::debug!(script = script.name(), "script not cached; loading it");
                self.load(script).await?;
                call().await
            }
            other => other,
        }
    }

    /// Loads a script into Redis's script cache (`SCRIPT LOAD`).
    pub async fn load(&self, script: &Script) -> Result<(), UpstashError> {
        let sha: String = self
            .command(&Command::new("SCRIPT").arg("LOAD").arg(script.source()))
            .await?;
        if sha != script.sha1() {
            return Err(UpstashError::Protocol(format!(
                "SCRIPT LOAD of `{}` gave SHA-1 {sha}, expected {}",
                script.name(),
                script.sha1()
            )));
        }
        Ok(())
    }

    async fn batch(
        &self,
        url: &Url,
        commands: &[Command],
    ) -> Result<Vec<Result<Reply, UpstashError>>, UpstashError> {
        let parts: Vec<&Vec<String>> = commands.iter().map(|c| &c.0).collect();
        let body = serde_json::to_vec(&parts).map_err(protocol)?;
        let envelopes: Vec<Envelope> = self.send(url, body).await?;
        if envelopes.len() != commands.len() {
            return Err(UpstashError::Protocol(format!(
                "sent {} commands, got {} results",
                commands.len(),
                envelopes.len()
            )));
        }
        Ok(envelopes.into_iter().map(envelope_reply).collect())
    }

    /// Sends one request, retrying only connections that were never made.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        body: Vec<u8>,
    ) -> Result<T, UpstashError> {
        self.send_bytes(url, Bytes::from(body)).await
    }

    async fn send_bytes<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        body: Bytes,
    ) -> Result<T, UpstashError> {
        let attempts = async {
            let mut attempt = 0;
            loop {
                let mut request = self.http.post(url.clone()).body(body.clone());
                if let Some(token) = self.current_sync_token() {
                    request = request.header(SYNC_TOKEN, token);
                }
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                self.bytes_sent
                    .fetch_add((url.path().len() + body.len()) as u64, Ordering::Relaxed);
                match request.send().await {
                    Ok(response) => return self.read(response).await,
                    Err(err) if err.is_connect() && attempt < self.retry.retries => {
                        tracing::warn!(attempt, error = %err, "Upstash connection failed; retrying");
                        tokio::time::sleep(self.retry.delay(attempt)).await;
                        attempt += 1;
                    }
                    Err(err) if err.is_connect() => {
                        return Err(UpstashError::Unreachable {
                            attempts: attempt + 1,
                            source: err,
                        })
                    }
                    Err(err) if err.is_timeout() => {
                        return Err(UpstashError::Timeout(self.timeout))
                    }
                    Err(err) => return Err(UpstashError::Transport(err)),
                }
            }
        };
        // reqwest bounds each attempt; this bounds the retries as a whole.
        tokio::time::timeout(self.timeout, attempts)
            .await
            .unwrap_or(Err(UpstashError::Timeout(self.timeout)))
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, UpstashError> {
        let status = response.status();
        if let Some(token) = response.headers().get(SYNC_TOKEN) {
            self.remember_sync_token(token.clone());
        }
        let body = response.bytes().await.map_err(|err| {
            if err.is_timeout() {
                UpstashError::Timeout(self.timeout)
            } else {
                UpstashError::Transport(err)
            }
        })?;
        match status.as_u16() {
            200 => serde_json::from_slice(&body).map_err(protocol),
            401 => Err(UpstashError::Unauthorized),
            code => {
                let message = serde_json::from_slice::<Envelope>(&body)
                    .ok()
                    .and_then(|e| e.error)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
                if code == 400 {
                    Err(UpstashError::Redis(message))
                } else {
                    Err(UpstashError::Http {
                        status: code,
                        message,
                    })
                }
            }
        }
    }

    fn current_sync_token(&self) -> Option<HeaderValue> {
        self.sync_token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn remember_sync_token(&self, token: HeaderValue) {
        *self
            .sync_token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(token);
    }
}

fn envelope_reply(envelope: Envelope) -> Result<Reply, UpstashError> {
    match envelope {
        Envelope {
            error: Some(message),
            ..
        } => Err(UpstashError::Redis(message)),
        Envelope { result, .. } => Reply::from_base64_json(result.unwrap_or(Value::Null)),
    }
}

fn protocol(err: impl std::fmt::Display) -> UpstashError {
    UpstashError::Protocol(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_sent_as_string_arrays() {
        let command = Command::new("SET").arg("k").arg(42).args(["EX", "10"]);
        assert_eq!(
            serde_json::to_string(&command.0).unwrap(),
            r#"["SET","k","42","EX","10"]"#
        );
    }

    #[test]
    fn an_error_envelope_becomes_a_redis_error() {
        let envelope: Envelope =
            serde_json::from_str(r#"{"error":"NOSCRIPT No matching script."}"#).unwrap();
        let err = envelope_reply(envelope).unwrap_err();
        assert!(err.is_noscript());
    }

    #[test]
    fn a_null_result_is_nil() {
        let envelope: Envelope = serde_json::from_str(r#"{"result":null}"#).unwrap();
        assert_eq!(envelope_reply(envelope).unwrap(), Reply::Nil);
    }

    #[test]
    fn the_backoff_grows_exponentially() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(0), Duration::from_millis(50));
        assert!(policy.delay(1) > Duration::from_millis(130));
        assert!(policy.delay(2) > Duration::from_millis(360));
    }
}
