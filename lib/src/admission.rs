//! Admission: the one decision every metered route asks of Redis before it
//! does its work, made by one script (`scripts/admit.lua`) in one round trip.
//!
//! It authenticates the key from the key cache, checks the origin and the
//! bans, applies the per-minute rate limits and the daily and monthly
//! quotas, escalates bans on repeated violations, counts the request in the
//! write-behind metrics, and enqueues the request log and the route's own
//! payload. The rate limiter is GCRA: its state is one timestamp per key, it
//! admits exactly `limit` requests in a burst (so a concurrent burst can
//! never exceed it, the script being atomic), and it refills smoothly
//! instead of at minute boundaries; a sliding-window log would need memory
//! per request. Time comes from Redis (`TIME`), never from the caller.
//!
//! Every key the script touches is named here before the call (Upstash's
//! key locking), after the key's id: this instance remembers which id each
//! presented key belongs to, and learns it once, from the key cache or
//! Postgres. Redis is a cache: when the script finds the key's cache entry
//! or a quota period missing, this module fills it from Postgres (the bans
//! first, after a flush) and asks again, an extra round trip once per key
//! per period (or per flush).

use std::time::Duration;

use anyhow::Context;
use http::{HeaderMap, HeaderValue};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    apikeys::{self, PresentedKey},
    auth::{self, KeyRejection},
    error::ApiError,
    redis_keys::{RedisKeys, Subject},
    state::AppState,
    upstash::{Command, Reply, Script, UpstashError},
};

pub static ADMIT: Script = Script::new("admit", include_str!("scripts/admit.lua"));

/// How long Redis keeps the permanent bans it loaded before reloading them.
const BANS_LOADED_TTL: Duration = Duration::from_secs(86_400);

/// A request asking to be admitted.
#[derive(Debug)]
pub struct Request<'a> {
    /// The route's name, for the request log (`collect`, `signed-url`).
    pub route: &'static str,
    pub key: &'a PresentedKey,
    pub origin: &'a str,
    /// The client address; rate-limited and banned on public routes only.
    pub ip: &'a str,
    /// Whether the request passed the route's validation. Invalid requests
    /// are rate limited and counted as failed, but use no quota.
    pub valid: bool,
    /// Whether the request is usage: counted in the usage metrics and the
    /// quotas. Analytics reads are not; they are limited and logged only.
    pub metered: bool,
    pub success_status: u16,
    pub invalid_status: u16,
    pub events: Option<EventsPayload<'a>>,
    pub upload: Option<UploadCheck<'a>>,
    /// Time spent on the request so far, for the request log.
    pub latency: Duration,
}

/// An upload to check against the key's own policy (which only the script
/// knows), to count, and to log.
#[derive(Debug, Clone, Serialize)]
pub struct UploadCheck<'a> {
    /// The upload's id (also in its object key).
    pub id: Uuid,
    pub filename: &'a str,
    pub content_type: &'a str,
    pub size: u64,
    /// The provider asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
    /// The first configured provider, when neither the request nor the key names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'static str>,
    /// Which providers are configured, by name.
    pub configured: std::collections::BTreeMap<&'static str, bool>,
    /// Whether the content type is in the default list, for keys without their own.
    pub default_type_ok: bool,
    pub default_max: u64,
    /// The object key after `<key id>/`: `<yyyy>/<mm>/<id>-<filename>`.
    pub suffix: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Events to enqueue for an admitted collect request.
#[derive(Debug, Clone, Serialize)]
pub struct EventsPayload<'a> {
    /// How many events `json` holds.
    pub n: usize,
    /// The events in their queued form (`events::queued`), a JSON array:
    /// sent after the request, not in it.
    #[serde(skip)]
    pub json: String,
    /// What the events share, queued once with them.
    pub shared: String,
    /// Events dropped as bot traffic (counted, not enqueued).
    pub bots: usize,
    /// The user agent and today's (UTC) date, for the visitor id.
    pub ua: &'a str,
    pub day: chrono::NaiveDate,
    /// A fresh salt, used if today has none yet.
    pub salt: String,
}

/// The script's input, as JSON.
#[derive(Serialize)]
struct ScriptRequest<'a> {
    /// The key id the script's keys are named after; the script checks the
    /// cache entry agrees.
    key_id: Uuid,
    route: &'static str,
    origin: &'a str,
    ip: &'a str,
    ip_limit: u32,
    /// Refusals in a minute, as a multiple of the limit, that make it a violation.
    violation_ratio: f64,
    /// Bytes of events the drawn shard may hold.
    queue_capacity: u64,
    offset_ms: i64,
    /// Set by tests that froze the script's clock: the time to use.
    #[serde(skip_serializing_if = "Option::is_none")]
    now_ms: Option<i64>,
    valid: bool,
    metered: bool,
    success_status: u16,
    invalid_status: u16,
    request_id: Uuid,
    /// Wall-clock milliseconds (plus `offset_ms`) after which the script
    /// must not act: by then the caller has given up and taken its fallback.
    deadline_ms: i64,
    /// Set when the caller asks again after a lost reply: the script then
    /// only reports a remembered verdict, or marks the request as not run.
    settle: bool,
    /// How long the script remembers the verdict it counted, for the caller
    /// to ask again under the same `request_id`.
    memo_ms: u64,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a EventsPayload<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upload: Option<&'a UploadCheck<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reseed: Option<Reseed>,
    /// The percentages of a quota whose crossing records an alert.
    alert_pcts: &'a [u8],
}

#[derive(Serialize, Clone, Copy)]
struct Reseed {
    day: i64,
    month: i64,
}

/// The per-minute limit as the response headers report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Zero when the key has no per-minute limit.
    pub limit: u64,
    pub remaining: u64,
    /// Until the limiter is full again.
    pub reset: Duration,
}

impl RateLimit {
    /// Adds the `X-RateLimit-*` headers and the IETF `RateLimit` and
    /// `RateLimit-Policy` headers.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if self.limit == 0 {
            return;
        }
        let reset = self.reset.as_secs_f64().ceil() as u64;
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put("x-ratelimit-limit", self.limit.to_string());
        put("x-ratelimit-remaining", self.remaining.to_string());
        put("x-ratelimit-reset", reset.to_string());
        put(
            "ratelimit",
            format!(
                "limit={}, remaining={}, reset={reset}",
                self.limit, self.remaining
            ),
        );
        put("ratelimit-policy", format!("{};w=60", self.limit));
    }
}

/// The outcome of an admission.
#[derive(Debug)]
pub enum Decision {
    /// Admitted; `provider` is the storage provider of an admitted upload.
    Admitted {
        key_id: Uuid,
        rate: RateLimit,
        provider: Option<String>,
    },
    /// Refused, with the error to answer and the limit headers to send.
    Refused { error: ApiError, rate: RateLimit },
    /// Not run: the queue holds its capacity of events. Nothing was
    /// counted; the caller stores the events itself.
    QueueFull,
}

/// Why admission could not be decided: Upstash or Postgres failed.
#[derive(Debug, thiserror::Error)]
#[error("admission could not be decided")]
pub struct Undecided {
    #[source]
    pub error: anyhow::Error,
    /// Whether the script may have run and counted the request: its reply
    /// was lost and asking again never got an answer. A fallback must not
    /// count the request again then.
    pub may_have_run: bool,
}

impl From<anyhow::Error> for Undecided {
    fn from(error: anyhow::Error) -> Self {
        Self {
            error,
            may_have_run: false,
        }
    }
}

/// How long past the script's deadline the caller still waits for its
/// reply: the reply's trip back.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Added to the deadline for the difference between this clock and
/// Redis's, which the deadline compares.
const CLOCK_SKEW: Duration = Duration::from_secs(2);

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Admits or refuses one request.
pub async fn admit(state: &AppState, request: &Request<'_>) -> Result<Decision, Undecided> {
    let config = &state.config.admission;
    let events = request.events.as_ref();
    let client_ip = (!request.ip.is_empty()).then_some(request.ip);
    let mut key_id = match resolve(state, request.key, client_ip).await? {
        Resolved::Id(id) => {
            // Known now, whatever the verdict: a refused request's log lines
            // name the key too.
            crate::telemetry::record_key_id(id);
            id
        }
        Resolved::Refused(error) => {
            return Ok(Decision::Refused {
                error,
                rate: RateLimit::default(),
            })
        }
    };
    // Past the deadline the caller has stopped asking and may have taken
    // its fallback, so a copy of the call that reaches Redis that late
    // (held up in a stalled proxy) must not act.
    let patience = config.timeout + DEADLINE_GRACE + config.resolve + CLOCK_SKEW;
    let ip = (request.key.kind() == apikeys::KeyKind::Pk && !request.ip.is_empty())
        .then_some(request.ip);
    let mut script = ScriptRequest {
        key_id,
        route: request.route,
        origin: request.origin,
        ip: request.ip,
        ip_limit: config.public_ip_limit,
        violation_ratio: config.violation_ratio,
        queue_capacity: state.config.pipeline.queue_max_bytes / u64::from(state.keys.shards()),
        offset_ms: state.redis_time_offset_ms(),
        now_ms: state.redis_time_frozen_ms(),
        valid: request.valid,
        metered: request.metered,
        success_status: request.success_status,
        invalid_status: request.invalid_status,
        request_id: Uuid::now_v7(),
        deadline_ms: 0,
        settle: false,
        memo_ms: (patience + Duration::from_secs(5)).as_millis() as u64,
        latency_ms: request.latency.as_secs_f64() * 1000.0,
        events,
        upload: request.upload.as_ref(),
        reseed: None,
        alert_pcts: &state.config.alerts.thresholds,
    };
    let salt_day = events.map_or_else(|| state.clock.now().date_naive(), |e| e.day);
    let shard = state.keys.any_shard();
    // At most: fill the key cache, correct the key id, reseed the quotas, decide.
    for _ in 0..4 {
        let keys = ScriptKeys {
            cache: &request.key.cache_id(),
            request_id: script.request_id,
            key_id,
            ip,
            salt_day,
            shard,
            metered: request.metered,
        }
        .names(&state.keys);
        script.key_id = key_id;
        script.deadline_ms = wall_clock_ms() + script.offset_ms + patience.as_millis() as i64;
        let reply = call_resolving(state, &keys, &mut script).await?;
        match Verdict::parse(&reply)? {
            Verdict::Late => {
                return Err(anyhow::anyhow!("admit.lua did not run this request").into())
            }
            Verdict::QueueFull => return Ok(Decision::QueueFull),
            Verdict::Partial => {
                return Err(Undecided {
                    error: anyhow::anyhow!("admit.lua failed part-way through this request"),
                    may_have_run: true,
                })
            }
            Verdict::Miss => {
                refill(state, request.key, false, None, client_ip).await?;
            }
            Verdict::Rekey(id) => {
                state.key_ids.remember(&request.key.cache_id(), id);
                crate::telemetry::record_key_id(id);
                key_id = id;
            }
            Verdict::ReseedQuota { day, month } => {
                script.reseed = Some(quota_used(state, key_id, day, month).await?);
            }
            // The script counted this verdict: whatever fails from here on,
            // a fallback must not count the request again.
            Verdict::Decided(decided) => {
                return decided
                    .into_decision(state, request.ip)
                    .await
                    .map_err(|error| Undecided {
                        error,
                        may_have_run: true,
                    })
            }
        }
    }
    Err(anyhow::anyhow!("admission did not settle after refilling its caches").into())
}

/// What the presented key resolves to before admission names its keys.
pub enum Resolved {
    Id(Uuid),
    /// Unknown or revoked: refused without running the script.
    Refused(ApiError),
}

/// The id of the presented key, by which its Redis state is named: from
/// this instance's memory, or else from the key cache (one extra round
/// trip), or else from Postgres (which fills the cache). A presented key's
/// hash belongs to one key id for good, so the memory never goes stale;
/// whether the key is still active is the script's to check, every time.
///
/// Unknown keys are remembered too, briefly, so that a client repeating one
/// costs nothing; a client IP that presented too many unknown or revoked
/// keys in the last minute (counted by `fill_key.lua`) is refused before
/// any lookup.
pub async fn resolve(
    state: &AppState,
    key: &PresentedKey,
    client_ip: Option<&str>,
) -> anyhow::Result<Resolved> {
    let cache_id = key.cache_id();
    if let Some(id) = state.key_ids.get(&cache_id) {
        return Ok(Resolved::Id(id));
    }
    if state.key_ids.is_unknown(&cache_id) {
        return Ok(Resolved::Refused(KeyRejection::Unknown.into()));
    }
    // One round trip of plain reads, no script: the entry, whether the bans
    // are loaded and the entry's generation (for a refill), and the client
    // IP's failed authentications this minute.
    let keys = &state.keys;
    let mut reads = vec![
        Command::new("GET").arg(keys.key_cache(&cache_id)),
        Command::new("EXISTS").arg(keys.bans_loaded()),
        Command::new("GET").arg(keys.key_generation(&cache_id)),
    ];
    if let Some(ip) = client_ip {
        reads.push(Command::new("GET").arg(keys.auth_failures(ip)));
        reads.push(Command::new("PTTL").arg(keys.auth_failures(ip)));
    }
    let mut replies = state
        .upstash
        .pipeline(&reads)
        .await
        .context("reading the key cache")?
        .into_iter();
    let mut next = || {
        replies
            .next()
            .context("the pipeline answered too few replies")?
            .context("reading the key cache")
    };
    let (cached, loaded, generation) = (next()?, next()?, next()?);
    let failures = match client_ip {
        Some(_) => Some((next()?, next()?)),
        None => None,
    };
    let cached = cached
        .as_str()
        .and_then(|json| serde_json::from_str::<apikeys::CachedKey>(json).ok());
    let cached = match cached {
        Some(cached) => cached,
        // Missing (or unreadable): a Postgres lookup, unless the client IP
        // has failed too often this minute. Only lookups are refused so: a
        // key the cache holds is answered whatever its neighbours behind
        // the same address tried.
        None => {
            if let Some((failures, pttl)) = failures {
                let failures: u64 = failures.as_str().and_then(|n| n.parse().ok()).unwrap_or(0);
                if failures >= u64::from(state.config.admission.failed_auth_limit) {
                    let pttl = match pttl {
                        Reply::Int(ms) => ms.max(1_000) as u64,
                        _ => 60_000,
                    };
                    return Ok(Resolved::Refused(
                        KeyRejection::TooManyFailures {
                            retry_after: Duration::from_millis(pttl),
                        }
                        .into(),
                    ));
                }
            }
            let generation = generation.as_str().map(str::to_owned).unwrap_or_default();
            let loaded = matches!(loaded, Reply::Int(1));
            refill(state, key, loaded, Some(generation), client_ip).await?
        }
    };
    Ok(match auth::require_active(&cached, state.clock.now()) {
        Ok(id) => {
            state.key_ids.remember(&cache_id, id);
            Resolved::Id(id)
        }
        Err(rejection) => {
            if rejection == KeyRejection::Unknown {
                state.key_ids.remember_unknown(&cache_id);
            }
            Resolved::Refused(rejection.into())
        }
    })
}

/// Fills the key cache from Postgres. Redis must hold Postgres's bans
/// before any entry of the cache, so that after a flush no request is
/// admitted past a ban; a refill is where a flush first shows. `bans_loaded`
/// says whether the caller has just seen them loaded; `generation` is the
/// entry's generation if the caller has just read it.
pub(crate) async fn refill(
    state: &AppState,
    key: &PresentedKey,
    bans_loaded: bool,
    generation: Option<String>,
    client_ip: Option<&str>,
) -> anyhow::Result<apikeys::CachedKey> {
    let lock = state.key_ids.refill_lock(&key.cache_id());
    let (_one_at_a_time, generation) = match lock.try_lock() {
        Ok(guard) => (guard, generation),
        Err(_) => {
            let guard = lock.lock().await;
            // The refill ahead of this one has most likely filled it.
            if let Some(cached) = apikeys::read_cache(state, key).await? {
                return Ok(cached);
            }
            // The generation read before the wait may have moved since.
            (guard, None)
        }
    };
    let loaded = bans_loaded || {
        let loaded: i64 = state
            .upstash
            .command(&Command::new("EXISTS").arg(state.keys.bans_loaded()))
            .await
            .context("checking that the bans are loaded")?;
        loaded == 1
    };
    if !loaded {
        load_bans(state).await?;
    }
    apikeys::refresh_cache_from(state, key, generation, client_ip).await
}

/// The keys one admission touches, before they are named.
struct ScriptKeys<'a> {
    cache: &'a str,
    request_id: Uuid,
    key_id: Uuid,
    /// The client IP, for publishable keys only.
    ip: Option<&'a str>,
    /// The UTC day of the visitor-id salt.
    salt_day: chrono::NaiveDate,
    /// The queue shard drawn for the request.
    shard: u16,
    /// Whether the request is usage; analytics reads have a limiter of
    /// their own.
    metered: bool,
}

impl ScriptKeys<'_> {
    /// The names, in the order admit.lua's header gives.
    fn names(&self, keys: &RedisKeys) -> Vec<String> {
        let key = Subject::Key(self.key_id);
        let mut names = vec![
            keys.key_cache(self.cache),
            keys.admission_memo(self.request_id),
            if self.metered {
                keys.key_rate(self.key_id)
            } else {
                keys.key_read_rate(self.key_id)
            },
            keys.quota(self.key_id),
            keys.metrics(self.key_id),
            keys.ban(&key),
            keys.violations(&key),
            keys.ban_level(&key),
            keys.event_queue(self.shard),
            keys.shard_stats(self.shard),
            keys.metrics_dirty(self.shard),
            keys.visitor_salt(self.key_id, self.salt_day),
        ];
        if let Some(ip) = self.ip {
            let ip = Subject::Ip(ip);
            names.extend([
                keys.rate(&ip),
                keys.ban(&ip),
                keys.violations(&ip),
                keys.ban_level(&ip),
            ]);
        }
        names
    }
}
/// Runs admit.lua once, as far as Redis is concerned.
///
/// Only three outcomes mean the script did not run: `NOSCRIPT` (which the
/// client answers with `EVAL`), a refused connection (nothing was sent),
/// and the script's own clean refusal (`late`). Every other outcome may
/// have run it: a lost reply (the request reached Upstash, which stalled,
/// or Redis ran the script and died before answering), and any error, since
/// Redis does not undo what a script wrote before it failed part-way.
/// Answering such a request as refused (or, for collect, writing it to
/// Postgres and counting it) could count it twice. So the request is asked
/// again under the same id with `settle` set: the script answers with the
/// verdict it remembered if it counted the request, `partial` if it began
/// writing and failed, and otherwise marks the id as not run (`late`), so
/// that the first call, should it still arrive, does nothing. Only when no
/// answer comes for the whole `resolve` time is the outcome unknown.
async fn call_resolving(
    state: &AppState,
    keys: &[String],
    script: &mut ScriptRequest<'_>,
) -> Result<Vec<Reply>, Undecided> {
    let config = &state.config.admission;
    let give_up = tokio::time::Instant::now() + config.resolve;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let events = script.events.map_or("", |events| events.json.as_str());
    script.settle = false;
    loop {
        // The request on one line, then the events as they are (admit.lua).
        let mut body = serde_json::to_vec(&script).context("encoding the admission request")?;
        body.reserve(1 + events.len());
        body.push(b'\n');
        body.extend_from_slice(events.as_bytes());
        let call = state
            .upstash
            .eval_with_body::<Vec<Reply>>(&ADMIT, &keys, body.into());
        let error = match tokio::time::timeout(config.timeout + DEADLINE_GRACE, call).await {
            Ok(Ok(reply)) => return Ok(reply),
            // Nothing reached Upstash, so nothing ran.
            Ok(Err(error @ UpstashError::Unreachable { .. })) if !script.settle => {
                return Err(anyhow::Error::new(error)
                    .context("running admit.lua")
                    .into())
            }
            // Still unreachable while settling: keep asking.
            Ok(Err(error @ UpstashError::Unreachable { .. })) => anyhow::Error::new(error),
            // Any other error, from Redis or on the way back: it may have
            // run, and only asking again can tell.
            Ok(Err(error)) => {
                script.settle = true;
                anyhow::Error::new(error)
            }
            Err(_) => {
                script.settle = true;
                anyhow::anyhow!("admission took over {:?}", config.timeout)
            }
        };
        if tokio::time::Instant::now() >= give_up {
            return Err(Undecided {
                error: error.context(format!(
                    "admission's outcome stayed unknown for {:?}",
                    config.resolve
                )),
                may_have_run: script.settle,
            });
        }
        tracing::warn!(error = ?error, "admission's reply was lost; asking again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// admit.lua's reply, parsed once.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Not run: settled as not run, or past its deadline.
    Late,
    /// Asked again: an earlier call of this request began writing and
    /// failed, so it may have been counted.
    Partial,
    /// Not run: the queue shard holds its capacity of events.
    QueueFull,
    /// The key cache has no entry for the presented key.
    Miss,
    /// The cache entry belongs to this key id, not to the one the keys were
    /// named after; nothing was done.
    Rekey(Uuid),
    /// The quota hash does not hold the key's day or month.
    ReseedQuota {
        day: chrono::NaiveDate,
        /// The first day of the month.
        month: chrono::NaiveDate,
    },
    /// Counted: admitted or refused.
    Decided(Decided),
}

/// A verdict the script counted.
#[derive(Debug, PartialEq)]
struct Decided {
    /// Absent for an unknown key.
    key_id: Option<Uuid>,
    rate: RateLimit,
    retry_after: Duration,
    /// `None` when admitted.
    refusal: Option<Refusal>,
    /// The storage provider of an admitted upload.
    provider: Option<String>,
}

/// Why the script refused a request; the fallbacks refuse with the same
/// answers (`fallback.rs`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    InvalidKey,
    RevokedKey,
    ExpiredKey,
    OriginNotAllowed,
    /// The ban in force, as its marker's JSON.
    Banned(String),
    /// `permanent` names the subject this refusal banned for good.
    RateLimited {
        permanent: Option<BannedFor>,
    },
    DailyQuotaExceeded,
    MonthlyQuotaExceeded,
    ContentTypeNotAllowed,
    /// The key's size limit, in bytes.
    FileTooLarge(String),
    /// The provider asked for, if any.
    ProviderNotConfigured(String),
}

/// Whom a refusal banned permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BannedFor {
    Key,
    Ip,
}

impl Verdict {
    fn parse(reply: &[Reply]) -> anyhow::Result<Self> {
        let text = |i: usize| reply.get(i).and_then(Reply::as_str).unwrap_or("");
        let int = |i: usize| match reply.get(i) {
            Some(Reply::Int(n)) => (*n).max(0) as u64,
            _ => 0,
        };
        anyhow::ensure!(reply.len() == 7, "admit.lua answered {reply:?}");
        let key_id = || Uuid::parse_str(text(1)).context("admit.lua returned a malformed key id");
        let detail = text(6).to_owned();
        let refusal = match text(0) {
            "late" => return Ok(Self::Late),
            "partial" => return Ok(Self::Partial),
            "queue_full" => return Ok(Self::QueueFull),
            "miss" => return Ok(Self::Miss),
            "rekey" => return Ok(Self::Rekey(key_id()?)),
            "reseed_quota" => {
                let (day, month) = detail
                    .split_once('|')
                    .context("admit.lua sent malformed periods")?;
                return Ok(Self::ReseedQuota {
                    day: day.parse().context("the day to reseed")?,
                    month: format!("{month}-01")
                        .parse()
                        .context("the month to reseed")?,
                });
            }
            "ok" => None,
            "invalid_key" => Some(Refusal::InvalidKey),
            "revoked_key" => Some(Refusal::RevokedKey),
            "expired_key" => Some(Refusal::ExpiredKey),
            "origin_not_allowed" => Some(Refusal::OriginNotAllowed),
            "banned" => Some(Refusal::Banned(detail.clone())),
            "rate_limited" => Some(Refusal::RateLimited {
                permanent: match detail.as_str() {
                    "permanent" => Some(BannedFor::Key),
                    "permanent-ip" => Some(BannedFor::Ip),
                    _ => None,
                },
            }),
            "daily_quota_exceeded" => Some(Refusal::DailyQuotaExceeded),
            "monthly_quota_exceeded" => Some(Refusal::MonthlyQuotaExceeded),
            "content_type_not_allowed" => Some(Refusal::ContentTypeNotAllowed),
            "file_too_large" => Some(Refusal::FileTooLarge(detail.clone())),
            "provider_not_configured" => Some(Refusal::ProviderNotConfigured(detail.clone())),
            other => anyhow::bail!("admit.lua answered `{other}`"),
        };
        Ok(Self::Decided(Decided {
            key_id: if text(1).is_empty() {
                None
            } else {
                Some(key_id()?)
            },
            rate: RateLimit {
                limit: int(2),
                remaining: int(3),
                reset: Duration::from_millis(int(4)),
            },
            retry_after: Duration::from_millis(int(5)),
            provider: (refusal.is_none() && !detail.is_empty()).then_some(detail),
            refusal,
        }))
    }
}

impl Decided {
    async fn into_decision(self, state: &AppState, ip: &str) -> anyhow::Result<Decision> {
        let rate = self.rate;
        let Some(refusal) = self.refusal else {
            return Ok(Decision::Admitted {
                key_id: self.key_id.context("admit.lua admitted without a key id")?,
                rate,
                provider: self.provider,
            });
        };
        if let Refusal::RateLimited {
            permanent: Some(whom),
        } = refusal
        {
            // Redis holds the ban already; Postgres gets it at the next
            // reload of bans if this write fails.
            let subject = match (whom, self.key_id) {
                (BannedFor::Ip, _) => Some(("ip", ip.to_owned())),
                (BannedFor::Key, Some(id)) => Some(("key", id.to_string())),
                (BannedFor::Key, None) => None,
            };
            if let Some((kind, subject)) = subject {
                if let Err(error) = record_permanent_ban(state, kind, &subject).await {
                    tracing::error!(error = ?error, "could not record a permanent ban in Postgres");
                }
            }
        }
        let retry_after = match refusal {
            Refusal::MonthlyQuotaExceeded => Duration::from_secs(86_400),
            _ => self.retry_after,
        };
        Ok(Decision::Refused {
            error: refusal.into_error_with(rate.limit, retry_after),
            rate,
        })
    }
}

impl Refusal {
    /// The refusal as the route answers it, for one with no limit to name.
    pub(crate) fn into_error(self) -> ApiError {
        self.into_error_with(0, Duration::ZERO)
    }

    fn into_error_with(self, limit: u64, retry_after: Duration) -> ApiError {
        match self {
            Self::ContentTypeNotAllowed => ApiError::BadRequest {
                code: "content_type_not_allowed",
                message: "`content_type` is not in this key's list of allowed types".into(),
            },
            Self::FileTooLarge(max) => {
                ApiError::PayloadTooLarge(format!("`size` is over this key's limit of {max} bytes"))
            }
            Self::ProviderNotConfigured(provider) => ApiError::BadRequest {
                code: "provider_not_configured",
                message: if provider.is_empty() {
                    "no storage provider is configured (S3_* or BLOB_READ_WRITE_TOKEN)".into()
                } else {
                    format!("`provider` `{provider}` is not configured on this deployment")
                },
            },
            Self::InvalidKey => KeyRejection::Unknown.into(),
            Self::RevokedKey => KeyRejection::Revoked.into(),
            Self::ExpiredKey => KeyRejection::Expired.into(),
            Self::OriginNotAllowed => ApiError::Forbidden {
                code: "origin_not_allowed",
                message: "this origin is not allowed to use this key".into(),
            },
            Self::Banned(ban) => ApiError::Forbidden {
                code: "banned",
                message: ban_message(&ban),
            },
            Self::RateLimited { .. } => ApiError::TooManyRequests {
                code: "rate_limited",
                message: format!("over the limit of {limit} requests per minute"),
                retry_after,
            },
            Self::DailyQuotaExceeded => ApiError::TooManyRequests {
                code: "daily_quota_exceeded",
                message: "the daily quota of this key is used up".into(),
                retry_after,
            },
            Self::MonthlyQuotaExceeded => ApiError::TooManyRequests {
                code: "monthly_quota_exceeded",
                message: "the monthly quota of this key is used up".into(),
                retry_after,
            },
        }
    }
}

/// "banned until 2026-11-21T12:00:00Z (rate limit violations)", or "for good".
fn ban_message(detail: &str) -> String {
    let ban: serde_json::Value = serde_json::from_str(detail).unwrap_or_default();
    let reason = ban["reason"].as_str().unwrap_or("banned");
    match ban["until"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
    {
        Some(until) => format!("banned until {} ({reason})", until.to_rfc3339()),
        None => format!("banned permanently ({reason})"),
    }
}

/// Writes a permanent ban the script just issued to Postgres, which is
/// authoritative for them.
async fn record_permanent_ban(state: &AppState, kind: &str, subject: &str) -> anyhow::Result<()> {
    state
        .db
        .query(
            "INSERT INTO bans (subject_type, subject, reason) VALUES ($1, $2, 'rate limit violations')
             ON CONFLICT (subject_type, subject) WHERE lifted_at IS NULL
             DO UPDATE SET expires_at = NULL, reason = EXCLUDED.reason",
        )
        .bind(kind)
        .bind(subject)
        .execute(state.db.executor())
        .await
        .context("recording a permanent ban")?;
    Ok(())
}

/// Loads Postgres's bans in force into Redis, then marks them loaded.
async fn load_bans(state: &AppState) -> anyhow::Result<()> {
    use sqlx::Row;
    let rows = state
        .db
        .query(
            "SELECT subject_type, subject, reason,
                    (extract(epoch FROM expires_at) * 1000)::bigint AS until_ms
             FROM bans
             WHERE lifted_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
        )
        .fetch_all(state.db.executor())
        .await
        .context("reading the bans in force")?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut commands = Vec::with_capacity(rows.len() + 1);
    for row in rows {
        let kind: String = row.try_get("subject_type")?;
        let subject: String = row.try_get("subject")?;
        let until: Option<i64> = row.try_get("until_ms")?;
        let key = if kind == "key" {
            state.keys.key_ban(&subject)
        } else {
            state.keys.ip_ban(&subject)
        };
        let value =
            serde_json::json!({"reason": row.try_get::<String, _>("reason")?, "until": until});
        let mut command = Command::new("SET").arg(key).arg(value.to_string());
        if let Some(until) = until {
            command = command.arg("PX").arg((until - now_ms).max(1));
        }
        commands.push(command);
    }
    commands.push(
        Command::new("SET")
            .arg(state.keys.bans_loaded())
            .arg(1)
            .arg("EX")
            .arg(BANS_LOADED_TTL.as_secs()),
    );
    for result in state.upstash.pipeline(&commands).await? {
        result.context("loading a ban into Redis")?;
    }
    Ok(())
}

/// What Postgres knows of a key's use on a day and in the month that
/// starts on `month_start`.
async fn quota_used(
    state: &AppState,
    key_id: Uuid,
    day: chrono::NaiveDate,
    month_start: chrono::NaiveDate,
) -> anyhow::Result<Reseed> {
    use sqlx::Row;
    let row = state
        .db
        .query(
            "SELECT coalesce(sum(successful_requests) FILTER (WHERE day = $2), 0)::bigint AS day,
                    coalesce(sum(successful_requests), 0)::bigint AS month
             FROM api_key_usage_daily
             WHERE api_key_id = $1 AND day >= $3 AND day < ($3 + interval '1 month')",
        )
        .bind(key_id)
        .bind(day)
        .bind(month_start)
        .fetch_one(state.db.executor())
        .await
        .context("reading the key's usage to reseed its quotas")?;
    Ok(Reseed {
        day: row.try_get("day")?,
        month: row.try_get("month")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: &str, key_id: &str, detail: &str) -> Vec<Reply> {
        let text = |s: &str| Reply::Bulk(s.to_owned().into());
        vec![
            text(code),
            text(key_id),
            Reply::Int(100),
            Reply::Int(99),
            Reply::Int(600),
            Reply::Int(1500),
            text(detail),
        ]
    }

    const ID: &str = "0192f0c4-7d2e-7c1a-9a55-3f1d2b6e8a10";

    #[test]
    fn an_admission_carries_its_key_id_limits_and_provider() {
        let Verdict::Decided(decided) = Verdict::parse(&reply("ok", ID, "s3")).unwrap() else {
            panic!("not decided");
        };
        assert_eq!(decided.key_id, Some(ID.parse().unwrap()));
        assert_eq!(decided.refusal, None);
        assert_eq!(decided.provider.as_deref(), Some("s3"));
        assert_eq!(
            decided.rate,
            RateLimit {
                limit: 100,
                remaining: 99,
                reset: Duration::from_millis(600)
            }
        );
    }

    #[test]
    fn each_detail_has_one_meaning_per_verdict() {
        let refusal = |code: &str, detail: &str| match Verdict::parse(&reply(code, ID, detail)) {
            Ok(Verdict::Decided(decided)) => (decided.refusal, decided.provider),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refusal("rate_limited", "permanent-ip"),
            (
                Some(Refusal::RateLimited {
                    permanent: Some(BannedFor::Ip)
                }),
                None
            )
        );
        assert_eq!(
            refusal("rate_limited", ""),
            (Some(Refusal::RateLimited { permanent: None }), None)
        );
        assert_eq!(
            refusal("expired_key", ""),
            (Some(Refusal::ExpiredKey), None)
        );
        assert_eq!(
            refusal("file_too_large", "1024"),
            (Some(Refusal::FileTooLarge("1024".into())), None)
        );
        assert_eq!(
            refusal("banned", r#"{"reason":"x"}"#),
            (Some(Refusal::Banned(r#"{"reason":"x"}"#.into())), None)
        );
    }

    #[test]
    fn the_cases_that_ask_again_are_told_apart() {
        assert_eq!(
            Verdict::parse(&reply("late", "", "")).unwrap(),
            Verdict::Late
        );
        assert_eq!(
            Verdict::parse(&reply("miss", "", "")).unwrap(),
            Verdict::Miss
        );
        assert_eq!(
            Verdict::parse(&reply("rekey", ID, "")).unwrap(),
            Verdict::Rekey(ID.parse().unwrap())
        );
        assert_eq!(
            Verdict::parse(&reply("reseed_quota", ID, "2031-01-31|2031-01")).unwrap(),
            Verdict::ReseedQuota {
                day: "2031-01-31".parse().unwrap(),
                month: "2031-01-01".parse().unwrap()
            }
        );
        assert!(Verdict::parse(&reply("reseed_quota", ID, "2031-01-31")).is_err());
        assert!(Verdict::parse(&reply("maybe", ID, "")).is_err());
        assert!(Verdict::parse(&reply("ok", "not-a-uuid", "")).is_err());
        assert!(Verdict::parse(&[]).is_err());
    }
}
