//! Key and ban management: what `tollgate keys …` and `tollgate bans …` do.
//!
//! Every change is made in two steps. Postgres, the record, is changed first
//! and the function returns a [`Changed`] holding the change's result and a
//! [`RedisSync`]: the Redis commands that make the change take effect at once
//! (deleting key cache entries, setting or deleting ban markers). The caller
//! applies it with [`RedisSync::apply`] when it can reach Upstash. When it
//! cannot, the change still holds: cached keys expire within
//! [`apikeys::CACHE_TTL`], and the CLI says what was skipped. Splitting the
//! steps this way keeps an Upstash outage, or a machine without Upstash
//! credentials, from blocking a change to the record.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use sqlx::{postgres::PgRow, Row};
use uuid::Uuid;

use crate::{
    apikeys::{self, KeyStatus, NewKey, Tier},
    db::Db,
    events::rollup,
    limits::{Limits, Overrides},
    redis_keys::{RedisKeys, Subject},
    upstash::{Command, Upstash, UpstashError},
};

/// What a key or ban change can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The key id matches no key.
    #[error("no key with id {0}")]
    NoSuchKey(Uuid),
    /// A revoked key cannot be rotated: its new halves would not work either.
    #[error("key {0} is revoked; create a new key instead of rotating it")]
    KeyRevoked(Uuid),
    /// A name, limit or duration is out of range; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// Another ban on the same subject was added between our two statements.
    #[error("another ban on {0} was added at the same moment; run the command again")]
    ConcurrentBan(BanSubject),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A Postgres change, done, and the Redis commands that make it take effect
/// at once.
#[derive(Debug)]
#[must_use = "apply `redis` to Upstash, or tell the operator it was skipped"]
pub struct Changed<T> {
    pub value: T,
    pub redis: RedisSync,
}

/// Redis commands that bring the caches and ban markers in line with a
/// change already made in Postgres. Applying them twice is harmless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisSync {
    commands: Vec<Command>,
}

impl RedisSync {
    /// The commands, in the order they run.
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// Runs the commands in one pipeline (one round trip); fails if any fails.
    pub async fn apply(&self, upstash: &Upstash) -> Result<(), UpstashError> {
        if self.commands.is_empty() {
            return Ok(());
        }
        for reply in upstash.pipeline(&self.commands).await? {
            reply?;
        }
        Ok(())
    }

    /// Bumps the generation of the key cache entries of both halves of a
    /// key, then deletes them: a refill that looked the key up before this
    /// change cannot write its stale answer back (see `fill_key.lua`).
    fn forget_key(keys: &RedisKeys, halves: &StoredHalves) -> Self {
        let hashes = [
            hex::encode(&halves.secret_hash),
            hex::encode(apikeys::hash_secret(&halves.publishable_key)),
        ];
        let mut commands = Vec::new();
        for hash in &hashes {
            let generation = keys.key_generation(hash);
            commands.push(Command::new("INCR").arg(&generation));
            commands.push(
                Command::new("EXPIRE")
                    .arg(&generation)
                    .arg(KEY_GENERATION_TTL.as_secs()),
            );
        }
        commands.push(Command::new("DEL").args(hashes.iter().map(|hash| keys.key_cache(hash))));
        Self { commands }
    }
}

/// How long a key's cache generation outlives its last change: far longer
/// than any refill takes. One that expires reads as a change, which only
/// makes a refill look again.
const KEY_GENERATION_TTL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// A browser origin a publishable key may be used from: `scheme://host[:port]`
/// in the form browsers send in the `Origin` header (lowercase host, no
/// default port, no path), because the check is a plain string comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Origin(String);

/// Why a string is not an [`Origin`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{origin}` is not an origin: {reason}; write scheme://host[:port], e.g. https://shop.example.com")]
pub struct InvalidOrigin {
    pub origin: String,
    pub reason: &'static str,
}

impl Origin {
    /// Parses an origin, normalising it to the browser's serialisation.
    pub fn parse(value: &str) -> Result<Self, InvalidOrigin> {
        let invalid = |reason| InvalidOrigin {
            origin: value.to_owned(),
            reason,
        };
        let url = url::Url::parse(value.trim()).map_err(|_| invalid("it is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("it carries a user name or password"));
        }
        // The parser turns `https://a.com` into the path `/`; anything longer
        // was a path the browser never sends in `Origin`.
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("it has a path, query or fragment"));
        }
        if value.trim().ends_with('/') {
            return Err(invalid("it ends with `/`"));
        }
        Ok(Self(url.origin().ascii_serialization()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Origin {
    type Err = InvalidOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `create_key` stores besides the generated halves.
#[derive(Debug, Clone)]
pub struct CreateKey {
    pub name: String,
    pub owner: Option<String>,
    pub tier: Tier,
    /// Overrides of the tier's limits; `None` takes the tier's.
    pub rate_limit: Option<u32>,
    pub daily: Option<u64>,
    pub monthly: Option<u64>,
    /// Origins allowed to use the publishable key; empty means any.
    pub origins: Vec<Origin>,
    /// The IANA time zone of the key's quota days and months; `None` is UTC.
    pub timezone: Option<String>,
}

/// Creates a key and returns both halves: the only time the secret exists
/// outside its holder, since Postgres keeps only its SHA-256.
pub async fn create_key(db: &Db, request: CreateKey) -> Result<NewKey, AdminError> {
    check_name(&request.name)?;
    let timezone = request
        .timezone
        .as_deref()
        .map(check_timezone)
        .transpose()?
        .unwrap_or("UTC");
    let rate_limit = request.rate_limit.map(rate_limit_column).transpose()?;
    let daily = request
        .daily
        .map(|n| quota_column("daily", n))
        .transpose()?;
    let monthly = request
        .monthly
        .map(|n| quota_column("monthly", n))
        .transpose()?;
    let origins: Vec<&str> = request.origins.iter().map(Origin::as_str).collect();
    let key = NewKey::generate();
    db.query(
        "INSERT INTO api_keys (id, name, owner, secret_hash, publishable_key, tier,
                               rate_limit_per_minute, daily_quota, monthly_quota, allowed_origins,
                               timezone)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(key.id)
    .bind(&request.name)
    .bind(request.owner.as_deref().filter(|o| !o.is_empty()))
    .bind(apikeys::hash_secret(key.secret.expose()).as_slice())
    .bind(&key.publishable)
    .bind(request.tier.as_str())
    .bind(rate_limit)
    .bind(daily)
    .bind(monthly)
    .bind(&origins)
    .bind(timezone)
    .execute(db.executor())
    .await
    .context("inserting the key")?;
    Ok(key)
}

/// A key as `keys list` shows it: never any secret, not even its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeySummary {
    pub id: Uuid,
    pub name: String,
    pub owner: Option<String>,
    #[serde(serialize_with = "tier_name")]
    pub tier: Tier,
    pub status: KeyStatus,
    /// The limits in force: the tier's, with the key's overrides applied.
    pub limits: Limits,
    /// The key's own values (`None` takes the tier's).
    #[serde(serialize_with = "overrides_as_limits")]
    pub overrides: Overrides,
    /// Origins allowed to use the publishable key; empty means any.
    pub origins: Vec<String>,
    /// The IANA time zone of its quota days and months.
    pub timezone: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub total_requests: i64,
}

const SUMMARY_COLUMNS: &str = "id, name, owner, tier, status, rate_limit_per_minute, daily_quota,
     monthly_quota, allowed_origins, timezone, created_at, last_used_at, total_requests";

/// Every key, oldest first.
pub async fn list_keys(db: &Db) -> Result<Vec<KeySummary>, AdminError> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM api_keys ORDER BY created_at, id");
    let rows = db
        .query(&sql)
        .fetch_all(db.executor())
        .await
        .context("listing keys")?;
    Ok(rows
        .iter()
        .map(summary_from_row)
        .collect::<anyhow::Result<_>>()?)
}

/// One key.
pub async fn get_key(db: &Db, id: Uuid) -> Result<KeySummary, AdminError> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM api_keys WHERE id = $1");
    let row = db
        .query(&sql)
        .bind(id)
        .fetch_optional(db.executor())
        .await
        .context("reading the key")?
        .ok_or(AdminError::NoSuchKey(id))?;
    Ok(summary_from_row(&row)?)
}

/// Revokes a key; applying the returned sync deletes both cache entries, so
/// the next request with either half is refused with `revoked_key`.
pub async fn revoke_key(db: &Db, keys: &RedisKeys, id: Uuid) -> Result<Changed<()>, AdminError> {
    // A second revoke keeps the first revocation time.
    let row = db
        .query(
            "UPDATE api_keys
                SET status = 'revoked', revoked_at = coalesce(revoked_at, now()), updated_at = now()
              WHERE id = $1
          RETURNING secret_hash, publishable_key",
        )
        .bind(id)
        .fetch_optional(db.executor())
        .await
        .context("revoking the key")?
        .ok_or(AdminError::NoSuchKey(id))?;
    Ok(Changed {
        value: (),
        redis: RedisSync::forget_key(keys, &StoredHalves::from_row(&row)?),
    })
}

/// Gives a key new secret and publishable halves under the same id, so its
/// usage history and limits stay. Applying the returned sync deletes the old
/// halves' cache entries, so they stop working at once.
pub async fn rotate_key(
    db: &Db,
    keys: &RedisKeys,
    id: Uuid,
) -> Result<Changed<NewKey>, AdminError> {
    let mut new = NewKey::generate();
    new.id = id;
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    let old = db
        .query("SELECT secret_hash, publishable_key, status FROM api_keys WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .context("reading the key")?
        .ok_or(AdminError::NoSuchKey(id))?;
    if old
        .try_get::<String, _>("status")
        .context("reading status")?
        != "active"
    {
        return Err(AdminError::KeyRevoked(id));
    }
    let old = StoredHalves::from_row(&old)?;
    db.query(
        "UPDATE api_keys SET secret_hash = $2, publishable_key = $3, updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(apikeys::hash_secret(new.secret.expose()).as_slice())
    .bind(&new.publishable)
    .execute(&mut *tx)
    .await
    .context("storing the new halves")?;
    tx.commit().await.context("committing the rotation")?;
    Ok(Changed {
        value: new,
        redis: RedisSync::forget_key(keys, &old),
    })
}

/// A new value for one of a key's own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override<T> {
    /// Back to the tier's default.
    Default,
    Value(T),
}

impl<T: FromStr> FromStr for Override<T> {
    type Err = String;

    /// `default`, or a number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "default" {
            return Ok(Override::Default);
        }
        s.parse().map(Override::Value).map_err(|_| {
            format!("expected a whole number, or `default` for the tier's value; got `{s}`")
        })
    }
}

/// What `set_limits` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct LimitsChange {
    pub rate_limit: Option<Override<u32>>,
    pub daily: Option<Override<u64>>,
    pub monthly: Option<Override<u64>>,
    /// The allowed origins, replaced whole; an empty list allows any.
    pub origins: Option<Vec<Origin>>,
    pub tier: Option<Tier>,
    /// An IANA time zone name, e.g. `Europe/Berlin`.
    pub timezone: Option<String>,
}

/// Changes a key's tier, limit overrides or origins and returns the key as
/// it now is. Applying the returned sync deletes the key's cache entries, so
/// the next request loads the new values.
///
/// A new time zone moves the key's days, so its event rollups are rebuilt
/// in the same transaction, under the key's rollup lock: the drain then
/// counts in the new zone from the first batch after the change, and no
/// view ever mixes the two zones' days (see `events::rollup::rebuild`).
pub async fn set_limits(
    db: &Db,
    keys: &RedisKeys,
    id: Uuid,
    change: LimitsChange,
) -> Result<Changed<KeySummary>, AdminError> {
    let rate_limit = change
        .rate_limit
        .map(|o| over(o, rate_limit_column))
        .transpose()?;
    let daily = change
        .daily
        .map(|o| over(o, |n| quota_column("daily", n)))
        .transpose()?;
    let monthly = change
        .monthly
        .map(|o| over(o, |n| quota_column("monthly", n)))
        .transpose()?;
    let timezone = change.timezone.as_deref().map(check_timezone).transpose()?;
    let origins: Option<Vec<&str>> = change
        .origins
        .as_ref()
        .map(|list| list.iter().map(Origin::as_str).collect());
    // Each override is a flag ("change it?") and a value, so that NULL can
    // mean "back to the tier's default" rather than "leave it".
    let sql = format!(
        "UPDATE api_keys SET
            rate_limit_per_minute = CASE WHEN $2 THEN $3 ELSE rate_limit_per_minute END,
            daily_quota           = CASE WHEN $4 THEN $5 ELSE daily_quota END,
            monthly_quota         = CASE WHEN $6 THEN $7 ELSE monthly_quota END,
            allowed_origins       = coalesce($8, allowed_origins),
            tier                  = coalesce($9, tier),
            timezone              = coalesce($10, timezone),
            updated_at            = now()
          WHERE id = $1
      RETURNING {SUMMARY_COLUMNS}, secret_hash, publishable_key"
    );
    let mut transaction = db.pool().begin().await.context("starting a transaction")?;
    let old_timezone = match timezone {
        Some(_) => {
            rollup::lock_keys(db, &mut transaction, &[id])
                .await
                .context("locking the key's rollups")?;
            db.query("SELECT timezone FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *transaction)
                .await
                .context("reading the key's time zone")?
                .map(|row| row.try_get::<String, _>("timezone"))
                .transpose()
                .context("reading the key's time zone")?
        }
        None => None,
    };
    let row = db
        .query(&sql)
        .bind(id)
        .bind(rate_limit.is_some())
        .bind(rate_limit.flatten())
        .bind(daily.is_some())
        .bind(daily.flatten())
        .bind(monthly.is_some())
        .bind(monthly.flatten())
        .bind(origins)
        .bind(change.tier.map(Tier::as_str))
        .bind(timezone)
        .fetch_optional(&mut *transaction)
        .await
        .context("updating the key's limits")?
        .ok_or(AdminError::NoSuchKey(id))?;
    if timezone.is_some_and(|new| old_timezone.as_deref() != Some(new)) {
        rollup::rebuild_in(db, &mut transaction, id)
            .await
            .context("rebuilding the key's rollups in its new time zone")?;
    }
    transaction
        .commit()
        .await
        .context("committing the key's limits")?;
    Ok(Changed {
        value: summary_from_row(&row)?,
        redis: RedisSync::forget_key(keys, &StoredHalves::from_row(&row)?),
    })
}

/// Who a ban is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum BanSubject {
    /// An API key, by id: both its halves.
    Key(Uuid),
    /// A client IP, in its canonical text form.
    Ip(IpAddr),
}

impl BanSubject {
    /// The `bans.subject_type` value.
    pub fn kind(&self) -> &'static str {
        match self {
            BanSubject::Key(_) => "key",
            BanSubject::Ip(_) => "ip",
        }
    }

    /// The `bans.subject` value.
    pub fn value(&self) -> String {
        match self {
            BanSubject::Key(id) => id.to_string(),
            BanSubject::Ip(ip) => ip.to_canonical().to_string(),
        }
    }

    /// The Redis key of the subject's ban marker.
    pub fn marker(&self, keys: &RedisKeys) -> String {
        self.redis_keys(keys)[0].clone()
    }

    /// The subject's ban marker, ban level and violations, in Redis.
    fn redis_keys(&self, keys: &RedisKeys) -> [String; 3] {
        // The form the limiter names them in (`auth::canonical_ip`), however
        // the operator wrote the address.
        let ip = match self {
            BanSubject::Ip(_) => self.value(),
            BanSubject::Key(_) => String::new(),
        };
        let subject = match self {
            BanSubject::Key(id) => Subject::Key(*id),
            BanSubject::Ip(_) => Subject::Ip(&ip),
        };
        [
            keys.ban(&subject),
            keys.ban_level(&subject),
            keys.violations(&subject),
        ]
    }

    fn from_columns(kind: &str, value: &str) -> anyhow::Result<Self> {
        match kind {
            "key" => Ok(BanSubject::Key(value.parse().with_context(|| {
                format!("ban subject `{value}` is not a key id")
            })?)),
            "ip" => Ok(BanSubject::Ip(value.parse().with_context(|| {
                format!("ban subject `{value}` is not an IP address")
            })?)),
            other => anyhow::bail!("unknown ban subject type `{other}`"),
        }
    }
}

/// `key:<id>` or `ip:<ip>`: the form the escalation keys use.
impl fmt::Display for BanSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.value())
    }
}

/// Where a ban stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BanStatus {
    /// In force.
    Active,
    /// A temporary ban whose time is up.
    Expired,
    /// Lifted by an operator, or replaced by a newer ban.
    Lifted,
}

/// A row of the `bans` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ban {
    pub id: i64,
    pub subject: BanSubject,
    pub reason: String,
    pub status: BanStatus,
    pub created_at: DateTime<Utc>,
    /// `None`: permanent.
    pub expires_at: Option<DateTime<Utc>>,
    pub lifted_at: Option<DateTime<Utc>>,
}

/// What `add_ban` records.
#[derive(Debug, Clone)]
pub struct NewBan {
    pub subject: BanSubject,
    pub reason: String,
    /// How long the ban lasts; `None` is permanent.
    pub duration: Option<Duration>,
}

/// The JSON of a ban marker in Redis, which the admission script reads.
#[derive(Debug, Serialize)]
struct Marker<'a> {
    reason: &'a str,
    /// When the ban ends, in Unix milliseconds; `None` is permanent.
    until: Option<i64>,
}

// The status is computed by Postgres so that "expired" uses its clock, the
// same one that set `expires_at`.
const BAN_COLUMNS: &str = "id, subject_type, subject, reason, created_at, expires_at, lifted_at,
     CASE WHEN lifted_at IS NOT NULL THEN 'lifted'
          WHEN expires_at <= now() THEN 'expired'
          ELSE 'active' END AS status";

/// Bans a key or an IP. A ban already in force on the subject is lifted and
/// replaced, in one transaction. Applying the returned sync sets the Redis
/// marker, with the ban's length as its TTL, or none for a permanent ban.
pub async fn add_ban(db: &Db, keys: &RedisKeys, ban: NewBan) -> Result<Changed<Ban>, AdminError> {
    if ban.reason.trim().is_empty() {
        return Err(AdminError::Invalid("a ban needs a reason".to_owned()));
    }
    let millis = match ban.duration {
        None => None,
        Some(d) if d.as_millis() == 0 => {
            return Err(AdminError::Invalid(
                "a temporary ban must last at least 1ms; omit the duration for a permanent ban"
                    .to_owned(),
            ))
        }
        Some(d) => Some(i64::try_from(d.as_millis()).map_err(|_| {
            AdminError::Invalid("the ban is too long; omit the duration for a permanent ban".into())
        })?),
    };
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    if let BanSubject::Key(id) = ban.subject {
        db.query("SELECT 1 FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .context("looking the key up")?
            .ok_or(AdminError::NoSuchKey(id))?;
    }
    db.query(
        "UPDATE bans SET lifted_at = now()
          WHERE subject_type = $1 AND subject = $2 AND lifted_at IS NULL",
    )
    .bind(ban.subject.kind())
    .bind(ban.subject.value())
    .execute(&mut *tx)
    .await
    .context("lifting the previous ban")?;
    let sql = format!(
        "INSERT INTO bans (subject_type, subject, reason, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8 / 1000))
      RETURNING {BAN_COLUMNS}"
    );
    let row = db
        .query(&sql)
        .bind(ban.subject.kind())
        .bind(ban.subject.value())
        .bind(&ban.reason)
        .bind(millis.map(|ms| ms as f64))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint() == Some("bans_one_active_per_subject") => {
                AdminError::ConcurrentBan(ban.subject)
            }
            _ => AdminError::Unexpected(anyhow::Error::new(e).context("inserting the ban")),
        })?;
    tx.commit().await.context("committing the ban")?;
    let stored = ban_from_row(&row)?;

    let marker = serde_json::to_string(&Marker {
        reason: &stored.reason,
        until: stored.expires_at.map(|t| t.timestamp_millis()),
    })
    .context("encoding the ban marker")?;
    // A plain SET also clears the TTL of a temporary marker it replaces.
    let mut set = Command::new("SET")
        .arg(ban.subject.marker(keys))
        .arg(marker);
    if let Some(ms) = millis {
        set = set.arg("PX").arg(ms);
    }
    Ok(Changed {
        value: stored,
        redis: RedisSync {
            commands: vec![set],
        },
    })
}

/// The bans in force, or with `include_lifted` every ban ever recorded;
/// newest first.
pub async fn list_bans(db: &Db, include_lifted: bool) -> Result<Vec<Ban>, AdminError> {
    let filter = if include_lifted {
        ""
    } else {
        "WHERE lifted_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
    };
    let sql = format!("SELECT {BAN_COLUMNS} FROM bans {filter} ORDER BY created_at DESC, id DESC");
    let rows = db
        .query(&sql)
        .fetch_all(db.executor())
        .await
        .context("listing bans")?;
    Ok(rows
        .iter()
        .map(ban_from_row)
        .collect::<anyhow::Result<_>>()?)
}

/// Lifts the ban on a subject and returns it, or `None` if Postgres had none.
///
/// The returned sync is worth applying either way: it deletes the Redis
/// marker (escalation's temporary bans live only in Redis), and the
/// subject's violation history and ban level, so it starts clean rather than
/// one violation away from a longer ban.
pub async fn lift_ban(
    db: &Db,
    keys: &RedisKeys,
    subject: BanSubject,
) -> Result<Changed<Option<Ban>>, AdminError> {
    let sql = format!(
        "UPDATE bans SET lifted_at = now()
          WHERE subject_type = $1 AND subject = $2 AND lifted_at IS NULL
      RETURNING {BAN_COLUMNS}"
    );
    let row = db
        .query(&sql)
        .bind(subject.kind())
        .bind(subject.value())
        .fetch_optional(db.executor())
        .await
        .context("lifting the ban")?;
    Ok(Changed {
        value: row.as_ref().map(ban_from_row).transpose()?,
        redis: RedisSync {
            commands: vec![Command::new("DEL").args(subject.redis_keys(keys))],
        },
    })
}

/// The stored halves of a key, enough to name its two cache entries.
struct StoredHalves {
    secret_hash: Vec<u8>,
    publishable_key: String,
}

impl StoredHalves {
    fn from_row(row: &PgRow) -> anyhow::Result<Self> {
        Ok(Self {
            secret_hash: row.try_get("secret_hash")?,
            publishable_key: row.try_get("publishable_key")?,
        })
    }
}

fn summary_from_row(row: &PgRow) -> anyhow::Result<KeySummary> {
    let tier: String = row.try_get("tier")?;
    let tier: Tier = tier.parse().map_err(anyhow::Error::msg)?;
    let overrides = Overrides {
        per_minute: row
            .try_get::<Option<i32>, _>("rate_limit_per_minute")?
            .map(u32::try_from)
            .transpose()?,
        per_day: row
            .try_get::<Option<i64>, _>("daily_quota")?
            .map(u64::try_from)
            .transpose()?,
        per_month: row
            .try_get::<Option<i64>, _>("monthly_quota")?
            .map(u64::try_from)
            .transpose()?,
    };
    Ok(KeySummary {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        tier,
        status: match row.try_get::<String, _>("status")?.as_str() {
            "active" => KeyStatus::Active,
            _ => KeyStatus::Revoked,
        },
        limits: Limits::for_key(tier, overrides),
        overrides,
        origins: row.try_get("allowed_origins")?,
        timezone: row.try_get("timezone")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        total_requests: row.try_get("total_requests")?,
    })
}

fn ban_from_row(row: &PgRow) -> anyhow::Result<Ban> {
    let id: i64 = row.try_get("id")?;
    let subject = BanSubject::from_columns(
        &row.try_get::<String, _>("subject_type")?,
        &row.try_get::<String, _>("subject")?,
    )
    .with_context(|| format!("reading ban {id}"))?;
    Ok(Ban {
        id,
        subject,
        reason: row.try_get("reason")?,
        status: match row.try_get::<String, _>("status")?.as_str() {
            "lifted" => BanStatus::Lifted,
            "expired" => BanStatus::Expired,
            _ => BanStatus::Active,
        },
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        lifted_at: row.try_get("lifted_at")?,
    })
}

fn check_name(name: &str) -> Result<(), AdminError> {
    match name.chars().count() {
        1..=200 => Ok(()),
        n => Err(AdminError::Invalid(format!(
            "a key's name must be 1 to 200 characters, got {n}"
        ))),
    }
}

/// Checks an IANA zone name and returns the canonical spelling.
fn check_timezone(name: &str) -> Result<&'static str, AdminError> {
    name.parse::<chrono_tz::Tz>()
        .map(|tz| tz.name())
        .map_err(|_| {
            AdminError::Invalid(format!(
                "unknown time zone `{name}`; use an IANA name such as UTC or Europe/Berlin"
            ))
        })
}

/// `rate_limit_per_minute` is a positive `integer`.
fn rate_limit_column(n: u32) -> Result<i32, AdminError> {
    i32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
        AdminError::Invalid(format!(
            "the rate limit must be from 1 to {} per minute, got {n}",
            i32::MAX
        ))
    })
}

/// Quotas are `bigint`; 0 is allowed and admits nothing.
fn quota_column(which: &str, n: u64) -> Result<i64, AdminError> {
    i64::try_from(n).map_err(|_| {
        AdminError::Invalid(format!(
            "the {which} quota must be at most {}, got {n}",
            i64::MAX
        ))
    })
}

/// An override as its column value: `None` (NULL) for the tier's default.
fn over<T, C>(
    change: Override<T>,
    column: impl Fn(T) -> Result<C, AdminError>,
) -> Result<Option<C>, AdminError> {
    match change {
        Override::Default => Ok(None),
        Override::Value(n) => column(n).map(Some),
    }
}

fn tier_name<S: Serializer>(tier: &Tier, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tier.as_str())
}

/// Overrides have the shape of limits, with `null` for "the tier's".
fn overrides_as_limits<S: Serializer>(o: &Overrides, s: S) -> Result<S::Ok, S::Error> {
    Limits {
        per_minute: o.per_minute,
        per_day: o.per_day,
        per_month: o.per_month,
    }
    .serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_to_what_browsers_send() {
        for (input, expected) in [
            ("https://shop.example.com", "https://shop.example.com"),
            ("https://Shop.Example.COM", "https://shop.example.com"),
            ("https://shop.example.com:443", "https://shop.example.com"),
            ("http://localhost:3000", "http://localhost:3000"),
        ] {
            assert_eq!(Origin::parse(input).unwrap().as_str(), expected, "{input}");
        }
    }

    #[test]
    fn anything_but_scheme_host_and_port_is_not_an_origin() {
        for (input, reason) in [
            ("shop.example.com", "no scheme"),
            ("https://shop.example.com/", "a trailing slash"),
            ("https://shop.example.com/app", "a path"),
            ("https://shop.example.com?x=1", "a query"),
            ("https://user@shop.example.com", "a user name"),
            ("ftp://shop.example.com", "another scheme"),
            ("", "nothing"),
        ] {
            let err = Origin::parse(input).expect_err(reason);
            assert!(err.to_string().contains("scheme://host[:port]"), "{err}");
        }
    }

    #[test]
    fn overrides_parse_from_numbers_or_default() {
        assert_eq!("default".parse::<Override<u32>>(), Ok(Override::Default));
        assert_eq!("25".parse::<Override<u32>>(), Ok(Override::Value(25)));
        assert!("-1".parse::<Override<u64>>().is_err());
        assert!("lots".parse::<Override<u64>>().is_err());
    }

    #[test]
    fn the_rate_limit_must_fit_a_positive_integer_column() {
        assert!(rate_limit_column(0).is_err());
        assert!(rate_limit_column(u32::MAX).is_err());
        assert_eq!(rate_limit_column(60).unwrap(), 60);
    }

    #[test]
    fn a_subject_names_its_marker_and_its_escalation_keys() {
        let keys = RedisKeys::new("tg:", 8);
        let subject = BanSubject::Ip("203.0.113.7".parse().unwrap());
        assert_eq!(subject.to_string(), "ip:203.0.113.7");
        assert_eq!(
            subject.marker(&keys),
            keys.ip_ban("203.0.113.7"),
            "the marker is the one redis_keys names"
        );
    }

    #[test]
    fn an_ip_subject_is_named_as_the_limiter_names_it_however_it_is_written() {
        let keys = RedisKeys::new("tg:", 8);
        for (written, canonical) in [
            ("::ffff:198.51.100.4", "198.51.100.4"),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ] {
            let subject = BanSubject::Ip(written.parse().unwrap());
            assert_eq!(subject.value(), canonical);
            assert_eq!(
                Some(subject.value()),
                crate::auth::canonical_ip(written),
                "the limiter's form"
            );
            assert_eq!(subject.marker(&keys), keys.ip_ban(canonical));
        }
    }
}
