//! Configuration, read from the environment once at start.
//!
//! [`Config::from_env`] checks every variable before it fails, so a deploy
//! with three mistakes shows all three at once. `.env.example` documents each
//! variable; keep the two in step.

use std::{fmt, time::Duration};

use url::Url;

use crate::secret::Secret;

/// Everything a tollgate function needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub upstash: UpstashConfig,
    pub database: DatabaseConfig,
    /// The bearer token Vercel cron sends to the cron routes.
    pub cron_secret: Secret,
    /// Prefix of every Redis key, so environments can share one database.
    pub key_prefix: String,
    /// How many shards the event queue has (see `redis_keys.rs`).
    pub redis_shards: u16,
    pub pipeline: PipelineConfig,
    pub admission: AdmissionConfig,
    /// The storage providers signed-url can sign for; none, one or both.
    pub providers: Providers,
    pub alerts: AlertsConfig,
}

/// Usage alerts (`alerts/`): when they fire and where they go by default.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Percentages of a daily or monthly quota whose crossing fires a
    /// `quota.threshold` alert, ascending, each in 1..=100.
    pub thresholds: Vec<u8>,
    /// The deployment's endpoint, for owners without one of their own.
    pub webhook: Option<crate::alerts::Endpoint>,
}

/// Storage providers configured from the environment.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    pub s3: Option<crate::presign::s3::S3Config>,
    pub blob: Option<crate::presign::blob::BlobConfig>,
}

/// How admission runs.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Upper bound on the admission round trip; past it, the route falls
    /// back as configured (collect writes to Postgres directly).
    pub timeout: Duration,
    /// How long a route keeps asking whether an admission whose reply was
    /// lost (a timeout, a dropped connection) took place, before it answers
    /// as if it had not. See `admission.rs`.
    pub resolve: Duration,
    /// Requests per minute one client IP may make with publishable keys.
    pub public_ip_limit: u32,
    /// A minute in which a subject is refused at least this many times its
    /// limit is a violation; three within ten minutes ban it. A burst is
    /// refused without a ban.
    pub violation_ratio: f64,
    /// Routes that admit without limits when admission cannot be decided
    /// (Upstash down or slow); the others refuse with 503. Default: collect,
    /// whose events then go straight to Postgres.
    pub fail_open: Vec<String>,
    /// Where the client's IP address is read from.
    pub client_ip: crate::auth::ClientIpSource,
    /// Failed authentications (unknown or revoked keys) one client IP may
    /// make per minute before its requests are refused unlooked-at.
    pub failed_auth_limit: u32,
}

impl AdmissionConfig {
    /// Whether `route` admits when admission cannot be decided.
    pub fn fails_open(&self, route: &str) -> bool {
        self.fail_open.iter().any(|r| r == route)
    }
}

/// The event pipeline: what collect accepts and how the drain runs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Events older than this are rejected at collect.
    pub event_max_age: Duration,
    /// Monthly partitions of events that ended longer ago than this are
    /// dropped by the drain; `None` (the default) keeps everything.
    pub event_retention: Option<Duration>,
    /// Rows of the request log, the upload log and the refusal counts older
    /// than this are deleted by the drain; `None` (the default) keeps them.
    pub log_retention: Option<Duration>,
    /// How long one drain run may keep claiming batches.
    pub drain_budget: Duration,
    /// How long a claimed batch stays with its drain before another run may
    /// reclaim it. Longer than the longest run, so live batches are not taken.
    pub drain_visibility: Duration,
    /// Queue depth (events) above which queue-status warns, and is critical.
    pub warning_depth: u64,
    pub critical_depth: u64,
    /// Age of the oldest queued event above which queue-status warns, and is critical.
    pub warning_lag: Duration,
    pub critical_lag: Duration,
    /// How many bytes of events the queue may hold, over all its shards.
    /// Past it, collect writes straight to Postgres instead.
    pub queue_max_bytes: u64,
    /// About how many bytes of events one drain batch claims, so that a
    /// batch of large events fits a function's memory.
    pub drain_batch_bytes: u64,
}

/// Where the Upstash REST API is and how to talk to it.
#[derive(Debug, Clone)]
pub struct UpstashConfig {
    pub url: Url,
    pub token: Secret,
    /// Upper bound on one round trip, retries included.
    pub timeout: Duration,
}

/// Where Postgres is and how to pool connections to it.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
    /// Whether a transaction-mode pooler (Neon's pooled endpoint, PgBouncer)
    /// sits in front: then no named prepared statement may outlive a
    /// transaction, because the next one may run on another server connection.
    pub transaction_pooler: bool,
}

/// Every missing or malformed variable, in the order they were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problems):",
            self.problems.len()
        )?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every variable [`Config`] reads; `.env.example` documents each one.
pub const VARIABLES: &[&str] = &[
    "UPSTASH_REDIS_REST_URL",
    "UPSTASH_REDIS_REST_TOKEN",
    "TOLLGATE_UPSTASH_TIMEOUT",
    "DATABASE_URL",
    "TOLLGATE_DATABASE_MAX_CONNECTIONS",
    "TOLLGATE_DATABASE_POOLER",
    "CRON_SECRET",
    "TOLLGATE_KEY_PREFIX",
    "TOLLGATE_REDIS_SHARDS",
    "TOLLGATE_EVENT_MAX_AGE",
    "TOLLGATE_EVENT_RETENTION",
    "TOLLGATE_LOG_RETENTION",
    "TOLLGATE_DRAIN_BUDGET",
    "TOLLGATE_DRAIN_VISIBILITY",
    "TOLLGATE_QUEUE_WARNING_DEPTH",
    "TOLLGATE_QUEUE_CRITICAL_DEPTH",
    "TOLLGATE_QUEUE_WARNING_LAG",
    "TOLLGATE_QUEUE_CRITICAL_LAG",
    "TOLLGATE_QUEUE_MAX_BYTES",
    "TOLLGATE_DRAIN_BATCH_BYTES",
    "TOLLGATE_ADMISSION_TIMEOUT",
    "TOLLGATE_ADMISSION_RESOLVE",
    "TOLLGATE_PUBLIC_IP_RATE_LIMIT",
    "TOLLGATE_VIOLATION_RATIO",
    "TOLLGATE_FAIL_OPEN_ROUTES",
    "TOLLGATE_CLIENT_IP_HEADER",
    "TOLLGATE_FAILED_AUTH_LIMIT",
    "S3_ENDPOINT",
    "S3_REGION",
    "S3_BUCKET",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "S3_FORCE_PATH_STYLE",
    "BLOB_READ_WRITE_TOKEN",
    "TOLLGATE_ALERT_THRESHOLDS",
    "TOLLGATE_ALERT_WEBHOOK_URL",
    "TOLLGATE_ALERT_WEBHOOK_SECRET",
];

/// The default Redis key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "tg:";
/// The default number of event queue shards.
pub const DEFAULT_SHARDS: u16 = 8;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`, so tests need not touch the process
    /// environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut vars = Vars {
            lookup: &lookup,
            problems: Vec::new(),
        };

        let upstash_url = vars.required("UPSTASH_REDIS_REST_URL", parse_http_url);
        let upstash_token = vars.required("UPSTASH_REDIS_REST_TOKEN", parse_secret);
        let upstash_timeout = vars.optional(
            "TOLLGATE_UPSTASH_TIMEOUT",
            parse_duration,
            Duration::from_secs(5),
        );
        let database_url = vars.required("DATABASE_URL", parse_postgres_url);
        let max_connections =
            vars.optional("TOLLGATE_DATABASE_MAX_CONNECTIONS", parse_pool_size, 2);
        let pooler = vars.optional("TOLLGATE_DATABASE_POOLER", parse_pooler, Pooler::Auto);
        let cron_secret = vars.required("CRON_SECRET", parse_cron_secret);
        let key_prefix = vars.optional(
            "TOLLGATE_KEY_PREFIX",
            parse_key_prefix,
            DEFAULT_KEY_PREFIX.to_owned(),
        );
        let redis_shards = vars.optional("TOLLGATE_REDIS_SHARDS", parse_shards, DEFAULT_SHARDS);
        let pipeline = PipelineConfig {
            event_max_age: vars.optional(
                "TOLLGATE_EVENT_MAX_AGE",
                parse_duration,
                Duration::from_secs(7 * 86_400),
            ),
            event_retention: vars.optional("TOLLGATE_EVENT_RETENTION", parse_retention, None),
            log_retention: vars.optional("TOLLGATE_LOG_RETENTION", parse_log_retention, None),
            // Crons get 60 s (vercel.json maxDuration); stop claiming well before.
            drain_budget: vars.optional(
                "TOLLGATE_DRAIN_BUDGET",
                parse_duration,
                Duration::from_secs(45),
            ),
            drain_visibility: vars.optional(
                "TOLLGATE_DRAIN_VISIBILITY",
                parse_duration,
                Duration::from_secs(90),
            ),
            warning_depth: vars.optional("TOLLGATE_QUEUE_WARNING_DEPTH", parse_count, 1_000),
            critical_depth: vars.optional("TOLLGATE_QUEUE_CRITICAL_DEPTH", parse_count, 10_000),
            warning_lag: vars.optional(
                "TOLLGATE_QUEUE_WARNING_LAG",
                parse_duration,
                Duration::from_secs(120),
            ),
            critical_lag: vars.optional(
                "TOLLGATE_QUEUE_CRITICAL_LAG",
                parse_duration,
                Duration::from_secs(600),
            ),
            // A quarter of Upstash's free tier (256 MB), leaving the rest to
            // the counters, the caches and the crons' batches.
            queue_max_bytes: vars.optional("TOLLGATE_QUEUE_MAX_BYTES", parse_bytes, 64 << 20),
            drain_batch_bytes: vars.optional("TOLLGATE_DRAIN_BATCH_BYTES", parse_bytes, 16 << 20),
        };

        let admission = AdmissionConfig {
            timeout: vars.optional(
                "TOLLGATE_ADMISSION_TIMEOUT",
                parse_duration,
                Duration::from_millis(500),
            ),
            resolve: vars.optional(
                "TOLLGATE_ADMISSION_RESOLVE",
                parse_duration,
                Duration::from_secs(5),
            ),
            public_ip_limit: vars
                .optional("TOLLGATE_PUBLIC_IP_RATE_LIMIT", parse_count, 600)
                .min(u64::from(u32::MAX)) as u32,
            violation_ratio: vars.optional("TOLLGATE_VIOLATION_RATIO", parse_ratio, 1.0),
            fail_open: vars.optional(
                "TOLLGATE_FAIL_OPEN_ROUTES",
                parse_routes,
                vec!["collect".to_owned()],
            ),
            client_ip: vars.optional(
                "TOLLGATE_CLIENT_IP_HEADER",
                crate::auth::ClientIpSource::parse,
                crate::auth::ClientIpSource::Vercel,
            ),
            failed_auth_limit: vars
                .optional("TOLLGATE_FAILED_AUTH_LIMIT", parse_count, 30)
                .clamp(1, u64::from(u32::MAX)) as u32,
        };

        let s3 = crate::presign::s3::S3Config::from_lookup(&lookup).unwrap_or_else(|problems| {
            vars.problems.extend(problems);
            None
        });
        let blob =
            crate::presign::blob::BlobConfig::from_lookup(&lookup).unwrap_or_else(|problem| {
                vars.problems.push(problem);
                None
            });

        let thresholds =
            vars.optional("TOLLGATE_ALERT_THRESHOLDS", parse_thresholds, vec![80, 100]);
        let webhook_url = vars.optional("TOLLGATE_ALERT_WEBHOOK_URL", parse_webhook_url, None);
        let webhook_secret =
            vars.optional("TOLLGATE_ALERT_WEBHOOK_SECRET", parse_webhook_secret, None);
        let webhook = match (webhook_url, webhook_secret) {
            (Some(url), Some(secret)) => Some(crate::alerts::Endpoint { url, secret }),
            (None, None) => None,
            _ => {
                vars.problems.push(
                    "TOLLGATE_ALERT_WEBHOOK_URL and TOLLGATE_ALERT_WEBHOOK_SECRET go together: \
                     set both or neither"
                        .to_owned(),
                );
                None
            }
        };

        if !vars.problems.is_empty() {
            return Err(ConfigError {
                problems: vars.problems,
            });
        }
        // Every `required` value is present once no problem was recorded.
        let (Some(url), Some(token), Some((database_url, database_host)), Some(cron_secret)) =
            (upstash_url, upstash_token, database_url, cron_secret)
        else {
            unreachable!("a missing required variable is recorded as a problem");
        };
        let transaction_pooler = match pooler {
            Pooler::Transaction => true,
            Pooler::None => false,
            // Neon names its pooled endpoints `<endpoint>-pooler.<region>…`.
            Pooler::Auto => database_host.contains("-pooler"),
        };
        Ok(Config {
            upstash: UpstashConfig {
                url,
                token,
                timeout: upstash_timeout,
            },
            database: DatabaseConfig {
                url: database_url,
                max_connections,
                transaction_pooler,
            },
            cron_secret,
            key_prefix,
            redis_shards,
            pipeline,
            admission,
            providers: Providers { s3, blob },
            alerts: AlertsConfig {
                thresholds,
                webhook,
            },
        })
    }
}

/// Collects problems while reading variables, instead of stopping at the first.
struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Vars<'_> {
    fn required<T>(&mut self, name: &str, parse: fn(&str) -> Result<T, String>) -> Option<T> {
        match (self.lookup)(name).filter(|value| !value.trim().is_empty()) {
            None => {
                self.problems.push(format!("{name} is missing"));
                None
            }
            Some(value) => match parse(value.trim()) {
                Ok(parsed) => Some(parsed),
                Err(why) => {
                    self.problems.push(format!("{name} is malformed: {why}"));
                    None
                }
            },
        }
    }

    fn optional<T>(&mut self, name: &str, parse: fn(&str) -> Result<T, String>, default: T) -> T {
        match (self.lookup)(name).filter(|value| !value.trim().is_empty()) {
            None => default,
            Some(value) => parse(value.trim()).unwrap_or_else(|why| {
                self.problems.push(format!("{name} is malformed: {why}"));
                default
            }),
        }
    }
}

enum Pooler {
    Auto,
    Transaction,
    None,
}

fn parse_http_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("not a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "expected an http or https URL, got scheme `{other}`"
        )),
    }
}

fn parse_secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

/// Returns the URL as a secret (it usually carries a password) and its host.
fn parse_postgres_url(value: &str) -> Result<(Secret, String), String> {
    // The error must not echo the URL: it may carry the password.
    let url = Url::parse(value).map_err(|_| "not a URL".to_owned())?;
    match url.scheme() {
        "postgres" | "postgresql" => {
            let host = url.host_str().unwrap_or_default().to_owned();
            Ok((Secret::new(value), host))
        }
        other => Err(format!(
            "expected a postgres:// or postgresql:// URL, got scheme `{other}`"
        )),
    }
}

fn parse_pool_size(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n @ 1..=100) => Ok(n),
        _ => Err(format!(
            "expected a whole number from 1 to 100, got `{value}`"
        )),
    }
}

/// Retention is counted in whole days, and is at least one month, so that no
/// partition still receiving events is dropped.
fn parse_retention(value: &str) -> Result<Option<Duration>, String> {
    if value == "off" {
        return Ok(None);
    }
    let duration = parse_duration(value)?;
    if duration < Duration::from_secs(31 * 86_400) {
        return Err(format!(
            "`{value}` is under 31 days; write e.g. `400d`, or `off`"
        ));
    }
    Ok(Some(duration))
}

/// `off`, or how long logs are kept: at least a day.
fn parse_log_retention(value: &str) -> Result<Option<Duration>, String> {
    if value == "off" {
        return Ok(None);
    }
    let duration = parse_duration(value)?;
    if duration < Duration::from_secs(86_400) {
        return Err(format!(
            "`{value}` is under a day; write e.g. `90d`, or `off`"
        ));
    }
    Ok(Some(duration))
}

/// A comma-separated list of metered routes, or `none`.
fn parse_routes(value: &str) -> Result<Vec<String>, String> {
    if value == "none" {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .map(|route| match route {
            "collect" | "signed-url" => Ok(route.to_owned()),
            other => Err(format!(
                "`{other}` is not a metered route; use collect, signed-url or none"
            )),
        })
        .collect()
}

/// Comma-separated percentages, each from 1 to 100; kept ascending and
/// without repeats.
fn parse_thresholds(value: &str) -> Result<Vec<u8>, String> {
    let mut thresholds = value
        .split(',')
        .map(|part| match part.trim().parse::<u8>() {
            Ok(n @ 1..=100) => Ok(n),
            _ => Err(format!(
                "expected percentages from 1 to 100 separated by commas (e.g. `80,100`), got `{}`",
                part.trim()
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    thresholds.sort_unstable();
    thresholds.dedup();
    Ok(thresholds)
}

fn parse_webhook_url(value: &str) -> Result<Option<crate::alerts::WebhookUrl>, String> {
    crate::alerts::WebhookUrl::parse(value).map(Some)
}

fn parse_webhook_secret(value: &str) -> Result<Option<crate::alerts::WebhookSecret>, String> {
    crate::alerts::WebhookSecret::parse(value).map(Some)
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n <= 1_000.0 => Ok(n),
        _ => Err(format!(
            "expected a positive number up to 1000, got `{value}`"
        )),
    }
}

fn parse_shards(value: &str) -> Result<u16, String> {
    match value.trim().parse::<u16>() {
        Ok(n @ 1..=256) => Ok(n),
        _ => Err(format!(
            "expected a number of shards from 1 to 256, got `{value}`"
        )),
    }
}

/// A size in bytes: a whole number, or one with `KiB`, `MiB` or `GiB`.
fn parse_bytes(value: &str) -> Result<u64, String> {
    let trimmed = value.trim();
    let (digits, unit) = trimmed.split_at(
        trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len()),
    );
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "expected bytes such as `67108864` or `64MiB`, got `{value}`"
            ))
        }
    };
    match digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
    {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "expected bytes such as `67108864` or `64MiB`, got `{value}`"
        )),
    }
}

fn parse_count(value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("expected a whole number, got `{value}`"))
}

fn parse_pooler(value: &str) -> Result<Pooler, String> {
    match value {
        "auto" => Ok(Pooler::Auto),
        "transaction" => Ok(Pooler::Transaction),
        "none" => Ok(Pooler::None),
        other => Err(format!(
            "expected `auto`, `transaction` or `none`, got `{other}`"
        )),
    }
}

/// Vercel asks for a random cron secret of at least 16 characters.
fn parse_cron_secret(value: &str) -> Result<Secret, String> {
    if value.len() < 16 {
        return Err(format!(
            "must be at least 16 characters, got {}",
            value.len()
        ));
    }
    Ok(Secret::new(value))
}

fn parse_key_prefix(value: &str) -> Result<String, String> {
    if value.len() > 64 {
        return Err(format!("must be at most 64 bytes, got {}", value.len()));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    Ok(value.to_owned())
}

/// Parses `250ms`, `5s`, `2m`, `6h` or `7d`; the unit is required so that no
/// one has to guess it.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{value}` has no unit; write e.g. `500ms`, `5s` or `2m`"))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{value}` does not start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3_600)),
        "d" => Ok(Duration::from_secs(number * 86_400)),
        _ => Err(format!("`{value}` has unit `{unit}`; use ms, s, m, h or d")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config_from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    const VALID: &[(&str, &str)] = &[
        ("UPSTASH_REDIS_REST_URL", "https://eu1-example.upstash.io"),
        ("UPSTASH_REDIS_REST_TOKEN", "AXXXtoken"),
        ("DATABASE_URL", "postgres://app:pw@db.example.com/app"),
        ("CRON_SECRET", "0123456789abcdef"),
    ];

    #[test]
    fn a_complete_environment_gives_defaults_for_the_optional_variables() {
        let config = config_from(VALID).expect("valid config");
        assert_eq!(config.key_prefix, "tg:");
        assert_eq!(config.upstash.timeout, Duration::from_secs(5));
        assert_eq!(config.database.max_connections, 2);
        assert!(!config.database.transaction_pooler);
    }

    #[test]
    fn every_missing_variable_is_listed_at_once() {
        let err = config_from(&[]).expect_err("empty environment");
        assert_eq!(
            err.problems,
            vec![
                "UPSTASH_REDIS_REST_URL is missing",
                "UPSTASH_REDIS_REST_TOKEN is missing",
                "DATABASE_URL is missing",
                "CRON_SECRET is missing",
            ]
        );
    }

    #[test]
    fn malformed_variables_are_listed_with_the_reason() {
        let err = config_from(&[
            ("UPSTASH_REDIS_REST_URL", "redis://localhost:6379"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
            ("DATABASE_URL", "mysql://secret-password@host/db"),
            ("CRON_SECRET", "short"),
            ("TOLLGATE_UPSTASH_TIMEOUT", "500"),
            ("TOLLGATE_KEY_PREFIX", "has space"),
            ("TOLLGATE_DATABASE_POOLER", "sometimes"),
            ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "0"),
            ("TOLLGATE_QUEUE_WARNING_DEPTH", "many"),
        ])
        .expect_err("malformed environment");
        let text = err.to_string();
        assert_eq!(err.problems.len(), 8, "{text}");
        for name in [
            "UPSTASH_REDIS_REST_URL",
            "DATABASE_URL",
            "CRON_SECRET",
            "TOLLGATE_UPSTASH_TIMEOUT",
            "TOLLGATE_KEY_PREFIX",
            "TOLLGATE_DATABASE_POOLER",
            "TOLLGATE_DATABASE_MAX_CONNECTIONS",
            "TOLLGATE_QUEUE_WARNING_DEPTH",
        ] {
            assert!(text.contains(&format!("{name} is malformed")), "{text}");
        }
        assert!(!text.contains("secret-password"), "URL leaked: {text}");
    }

    #[test]
    fn secrets_are_redacted_from_debug() {
        let config = config_from(VALID).expect("valid config");
        let debug = format!("{config:?}");
        assert!(!debug.contains("AXXXtoken"), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        assert!(!debug.contains(":pw@"), "{debug}");
    }

    #[test]
    fn a_neon_pooled_host_turns_on_transaction_pooler_mode() {
        let mut pairs = VALID.to_vec();
        pairs[2] = (
            "DATABASE_URL",
            "postgresql://u:p@ep-cool-1234-pooler.eu-central-1.aws.neon.tech/db",
        );
        assert!(config_from(&pairs).unwrap().database.transaction_pooler);
        pairs.push(("TOLLGATE_DATABASE_POOLER", "none"));
        assert!(!config_from(&pairs).unwrap().database.transaction_pooler);
    }

    #[test]
    fn variables_lists_every_variable_read() {
        let asked = std::cell::RefCell::new(Vec::new());
        let _ = Config::from_lookup(|name| {
            asked.borrow_mut().push(name.to_owned());
            None
        });
        assert_eq!(asked.into_inner(), VARIABLES);
    }

    #[test]
    fn env_example_documents_every_variable() {
        let example = include_str!("../../.env.example");
        for name in VARIABLES {
            assert!(
                example
                    .lines()
                    .any(|line| line.starts_with(&format!("{name}="))),
                "{name} is not in .env.example"
            );
        }
    }

    #[test]
    fn alert_settings_are_checked_at_start() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = VALID.to_vec();
            pairs.extend_from_slice(extra);
            config_from(&pairs)
        };
        let config = with(&[]).unwrap();
        assert_eq!(config.alerts.thresholds, vec![80, 100]);
        assert!(config.alerts.webhook.is_none());
        let config = with(&[("TOLLGATE_ALERT_THRESHOLDS", "100, 50,50")]).unwrap();
        assert_eq!(config.alerts.thresholds, vec![50, 100]);
        for bad in ["0", "101", "80,", "eighty"] {
            let err = with(&[("TOLLGATE_ALERT_THRESHOLDS", bad)]).unwrap_err();
            assert!(
                err.problems[0].starts_with("TOLLGATE_ALERT_THRESHOLDS is malformed"),
                "{bad}: {err}"
            );
        }
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let config = with(&[
            (
                "TOLLGATE_ALERT_WEBHOOK_URL",
                "https://hooks.example.com/tollgate",
            ),
            ("TOLLGATE_ALERT_WEBHOOK_SECRET", secret),
        ])
        .unwrap();
        let webhook = config.alerts.webhook.expect("the deployment's endpoint");
        assert_eq!(webhook.url.as_str(), "https://hooks.example.com/tollgate");
        assert!(!format!("{webhook:?}").contains("MfKQ9r8"));
        let err =
            with(&[("TOLLGATE_ALERT_WEBHOOK_URL", "https://hooks.example.com/")]).unwrap_err();
        assert!(err.to_string().contains("set both or neither"), "{err}");
        let err = with(&[
            ("TOLLGATE_ALERT_WEBHOOK_URL", "ftp://hooks.example.com/"),
            ("TOLLGATE_ALERT_WEBHOOK_SECRET", "not-a-secret"),
        ])
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
