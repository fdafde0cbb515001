//! API keys: create, list, read, update, revoke and rotate them.

use std::{fmt, str::FromStr, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};
use sqlx::{postgres::PgRow, Row};
use uuid::Uuid;

use super::{audit, Actor, AdminError, Changed, RedisSync};
use crate::{
    apikeys::{self, KeyStatus, NewKey, Tier},
    db::Db,
    events::rollup,
    limits::{Limits, Overrides},
    redis_keys::RedisKeys,
};

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

/// A key's `metadata`: a JSON object the product that hands out the key
/// keeps with it (a plan, a customer reference), at most
/// [`Metadata::MAX_BYTES`] as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Metadata(Map<String, Value>);

impl Metadata {
    /// The largest metadata object, in bytes of compact JSON.
    pub const MAX_BYTES: usize = 4096;

    /// Accepts a JSON object of at most [`Self::MAX_BYTES`].
    pub fn parse(value: Value) -> Result<Self, AdminError> {
        let Value::Object(object) = value else {
            return Err(AdminError::Invalid(
                "metadata must be a JSON object".to_owned(),
            ));
        };
        if object
            .iter()
            .any(|(name, value)| name.contains('\0') || holds_nul(value))
        {
            return Err(AdminError::Invalid(
                "metadata may not hold U+0000 in its names or strings (Postgres's jsonb refuses it)"
                    .to_owned(),
            ));
        }
        let size = serde_json::to_vec(&object).map_or(usize::MAX, |json| json.len());
        if size > Self::MAX_BYTES {
            return Err(AdminError::Invalid(format!(
                "metadata must be at most {} bytes of JSON, got {size}",
                Self::MAX_BYTES
            )));
        }
        Ok(Self(object))
    }

    fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }
}

impl FromStr for Metadata {
    type Err = AdminError;

    /// Reads a JSON object, as the CLI's `--metadata` takes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = serde_json::from_str(s)
            .map_err(|e| AdminError::Invalid(format!("metadata is not JSON: {e}")))?;
        Self::parse(value)
    }
}

/// An owner id (`owner_id`): the product's own name for the customer a key
/// belongs to, by which keys are listed and alerts routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OwnerId(String);

impl OwnerId {
    /// 1 to 200 characters, none of them a control character.
    pub fn parse(value: &str) -> Result<Self, AdminError> {
        let length = value.chars().count();
        if !(1..=200).contains(&length) || value.chars().any(char::is_control) {
            return Err(AdminError::Invalid(format!(
                "an owner id must be 1 to 200 characters without control characters, got {length}"
            )));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OwnerId {
    type Err = AdminError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `create_key` stores besides the generated halves.
#[derive(Debug, Clone)]
pub struct CreateKey {
    pub name: String,
    pub owner: Option<OwnerId>,
    pub tier: Tier,
    /// Overrides of the tier's limits; `None` takes the tier's.
    pub rate_limit: Option<u32>,
    pub daily: Option<u64>,
    pub monthly: Option<u64>,
    /// Origins allowed to use the publishable key; empty means any.
    pub origins: Vec<Origin>,
    /// The IANA time zone of the key's quota days and months; `None` is UTC.
    pub timezone: Option<String>,
    /// When the key stops working; `None` is never. Must be in the future.
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Metadata,
}

/// Creates a key and returns both halves: the only time the secret exists
/// outside its holder, since Postgres keeps only its SHA-256.
pub async fn create_key(db: &Db, actor: &Actor, request: CreateKey) -> Result<NewKey, AdminError> {
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
    if let Some(at) = request.expires_at {
        check_expiry(at)?;
    }
    let origins: Vec<&str> = request.origins.iter().map(Origin::as_str).collect();
    let key = NewKey::generate();
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    db.query(
        "INSERT INTO api_keys (id, name, owner, secret_hash, publishable_key, tier,
                               rate_limit_per_minute, daily_quota, monthly_quota, allowed_origins,
                               timezone, expires_at, metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(key.id)
    .bind(&request.name)
    .bind(request.owner.as_ref().map(OwnerId::as_str))
    .bind(apikeys::hash_secret(key.secret.expose()).as_slice())
    .bind(&key.publishable)
    .bind(request.tier.as_str())
    .bind(rate_limit)
    .bind(daily)
    .bind(monthly)
    .bind(&origins)
    .bind(timezone)
    .bind(request.expires_at)
    .bind(request.metadata.to_value())
    .execute(&mut *tx)
    .await
    .context("inserting the key")?;
    let detail = json!({
        "name": request.name,
        "owner_id": request.owner,
        "tier": request.tier.as_str(),
        "rate_limit": rate_limit,
        "daily": daily,
        "monthly": monthly,
        "origins": origins,
        "timezone": timezone,
        "expires_at": request.expires_at,
    });
    audit::record(db, &mut tx, actor, "key.create", Some(key.id), detail).await?;
    tx.commit().await.context("committing the key")?;
    Ok(key)
}

/// A key as `keys list` and the API show it: never any secret, not even
/// its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeySummary {
    pub id: Uuid,
    pub name: String,
    #[serde(rename = "owner_id")]
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
    pub metadata: Value,
    /// When the key stops working; `None` is never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Until when the halves it had before its last rotation still work.
    pub previous_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub total_requests: i64,
}

const SUMMARY_COLUMNS: &str = "id, name, owner, tier, status, rate_limit_per_minute, daily_quota,
     monthly_quota, allowed_origins, timezone, metadata, expires_at,
     CASE WHEN previous_expires_at > now() THEN previous_expires_at END AS previous_expires_at,
     created_at, last_used_at, total_requests";

/// Which keys `list_keys` returns.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Only this owner's keys.
    pub owner: Option<OwnerId>,
    /// Only keys after this one (the previous page's `next_cursor`).
    pub after: Option<Uuid>,
    /// At most this many; `None` is every key.
    pub limit: Option<u32>,
}

/// A page of keys, oldest first (ids are UUIDv7, so in order of
/// creation), and the cursor of the next page if there may be one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyPage {
    pub keys: Vec<KeySummary>,
    pub next_cursor: Option<Uuid>,
}

/// Keys in order of creation, filtered and paged.
pub async fn list_keys(db: &Db, filter: &KeyFilter) -> Result<KeyPage, AdminError> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM api_keys
          WHERE ($1::text IS NULL OR owner = $1) AND ($2::uuid IS NULL OR id > $2)
          ORDER BY id LIMIT $3"
    );
    let rows = db
        .query(&sql)
        .bind(filter.owner.as_ref().map(OwnerId::as_str))
        .bind(filter.after)
        .bind(filter.limit.map(i64::from))
        .fetch_all(db.executor())
        .await
        .context("listing keys")?;
    let keys: Vec<KeySummary> = rows
        .iter()
        .map(summary_from_row)
        .collect::<anyhow::Result<_>>()?;
    let full = filter
        .limit
        .is_some_and(|limit| keys.len() == limit as usize);
    let next_cursor = full.then(|| keys.last().map(|key| key.id)).flatten();
    Ok(KeyPage { keys, next_cursor })
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

/// Revokes a key; applying the returned sync deletes the cache entries of
/// its halves (and of the halves a rotation's overlap keeps alive), so the
/// next request with any of them is refused with `revoked_key`.
pub async fn revoke_key(
    db: &Db,
    keys: &RedisKeys,
    actor: &Actor,
    id: Uuid,
) -> Result<Changed<()>, AdminError> {
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    // A second revoke keeps the first revocation time.
    let row = db
        .query(
            "UPDATE api_keys
                SET status = 'revoked', revoked_at = coalesce(revoked_at, now()), updated_at = now()
              WHERE id = $1
          RETURNING secret_hash, publishable_key, previous_secret_hash, previous_publishable_key",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .context("revoking the key")?
        .ok_or(AdminError::NoSuchKey(id))?;
    audit::record(db, &mut tx, actor, "key.revoke", Some(id), json!({})).await?;
    tx.commit().await.context("committing the revocation")?;
    Ok(Changed {
        value: (),
        redis: RedisSync::forget_key(keys, &StoredHalves::from_row(&row)?),
    })
}

/// The longest a rotation may keep the old halves working.
pub const MAX_ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// A rotated key: its new halves, and until when the old ones still work.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub key: NewKey,
    pub previous_expires_at: Option<DateTime<Utc>>,
}

/// Gives a key new secret and publishable halves under the same id, so its
/// usage history and limits stay. Without an overlap the old halves stop
/// working at once; with one (at most [`MAX_ROTATION_OVERLAP`]) they keep
/// working until it ends, and are then refused as `expired_key`, so a
/// product can roll the new secret out first. Halves kept by an earlier
/// rotation's overlap stop at once. Applying the returned sync deletes the
/// cache entries of every old half, so the next request reloads them.
pub async fn rotate_key(
    db: &Db,
    keys: &RedisKeys,
    actor: &Actor,
    id: Uuid,
    overlap: Option<Duration>,
) -> Result<Changed<Rotated>, AdminError> {
    let overlap = match overlap {
        Some(overlap) if overlap > MAX_ROTATION_OVERLAP => {
            return Err(AdminError::Invalid(format!(
                "the overlap must be at most 24h ({} seconds), got {} seconds",
                MAX_ROTATION_OVERLAP.as_secs(),
                overlap.as_secs()
            )))
        }
        Some(overlap) if overlap.is_zero() => None,
        overlap => overlap,
    };
    let mut new = NewKey::generate();
    new.id = id;
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    let old = db
        .query(
            "SELECT secret_hash, publishable_key, previous_secret_hash, previous_publishable_key,
                    status
               FROM api_keys WHERE id = $1 FOR UPDATE",
        )
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
    let overlap_ms = overlap.map(|d| d.as_millis() as f64);
    let previous_expires_at: Option<DateTime<Utc>> = db
        .query(
            "UPDATE api_keys SET
                previous_secret_hash     = CASE WHEN $4::float8 IS NULL THEN NULL ELSE secret_hash END,
                previous_publishable_key = CASE WHEN $4::float8 IS NULL THEN NULL ELSE publishable_key END,
                previous_expires_at      = now() + make_interval(secs => $4::float8 / 1000),
                secret_hash = $2, publishable_key = $3, updated_at = now()
              WHERE id = $1
          RETURNING previous_expires_at",
        )
        .bind(id)
        .bind(apikeys::hash_secret(new.secret.expose()).as_slice())
        .bind(&new.publishable)
        .bind(overlap_ms)
        .fetch_one(&mut *tx)
        .await
        .context("storing the new halves")?
        .try_get("previous_expires_at")
        .context("reading the overlap's end")?;
    let detail = json!({ "overlap_seconds": overlap.map(|d| d.as_secs()) });
    audit::record(db, &mut tx, actor, "key.rotate", Some(id), detail).await?;
    tx.commit().await.context("committing the rotation")?;
    Ok(Changed {
        value: Rotated {
            key: new,
            previous_expires_at,
        },
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

/// What `update_key` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyChange {
    pub rate_limit: Option<Override<u32>>,
    pub daily: Option<Override<u64>>,
    pub monthly: Option<Override<u64>>,
    /// The allowed origins, replaced whole; an empty list allows any.
    pub origins: Option<Vec<Origin>>,
    pub tier: Option<Tier>,
    /// An IANA time zone name, e.g. `Europe/Berlin`.
    pub timezone: Option<String>,
    /// Replaces the metadata whole.
    pub metadata: Option<Metadata>,
    /// A new expiry (in the future), or `Some(None)` for none.
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

impl KeyChange {
    /// The change as the audit log records it: what was sent.
    fn detail(&self) -> Value {
        let over = |o: Option<Override<u64>>| match o {
            None => Value::Null,
            Some(Override::Default) => json!("default"),
            Some(Override::Value(n)) => json!(n),
        };
        let mut detail = Map::new();
        let mut put = |name: &str, value: Value, sent: bool| {
            if sent {
                detail.insert(name.to_owned(), value);
            }
        };
        put(
            "rate_limit",
            over(self.rate_limit.map(|o| match o {
                Override::Default => Override::Default,
                Override::Value(n) => Override::Value(u64::from(n)),
            })),
            self.rate_limit.is_some(),
        );
        put("daily", over(self.daily), self.daily.is_some());
        put("monthly", over(self.monthly), self.monthly.is_some());
        put("origins", json!(self.origins), self.origins.is_some());
        put(
            "tier",
            json!(self.tier.map(Tier::as_str)),
            self.tier.is_some(),
        );
        put("timezone", json!(self.timezone), self.timezone.is_some());
        put("metadata", json!(self.metadata), self.metadata.is_some());
        put(
            "expires_at",
            json!(self.expires_at.flatten()),
            self.expires_at.is_some(),
        );
        Value::Object(detail)
    }
}

/// Changes a key's tier, limit overrides, origins, time zone, metadata or
/// expiry, and returns the key as it now is. Applying the returned sync
/// deletes the key's cache entries, so the next request loads the new
/// values.
///
/// A new time zone moves the key's days, so its event rollups are rebuilt
/// in the same transaction, under the key's rollup lock: the drain then
/// counts in the new zone from the first batch after the change, and no
/// view ever mixes the two zones' days (see `events::rollup::rebuild`).
pub async fn update_key(
    db: &Db,
    keys: &RedisKeys,
    actor: &Actor,
    id: Uuid,
    change: KeyChange,
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
    if let Some(Some(at)) = change.expires_at {
        check_expiry(at)?;
    }
    let origins: Option<Vec<&str>> = change
        .origins
        .as_ref()
        .map(|list| list.iter().map(Origin::as_str).collect());
    // Each override is a flag ("change it?") and a value, so that NULL can
    // mean "back to the tier's default" (or "no expiry") rather than "leave it".
    let sql = format!(
        "UPDATE api_keys SET
            rate_limit_per_minute = CASE WHEN $2 THEN $3 ELSE rate_limit_per_minute END,
            daily_quota           = CASE WHEN $4 THEN $5 ELSE daily_quota END,
            monthly_quota         = CASE WHEN $6 THEN $7 ELSE monthly_quota END,
            allowed_origins       = coalesce($8, allowed_origins),
            tier                  = coalesce($9, tier),
            timezone              = coalesce($10, timezone),
            metadata              = coalesce($11, metadata),
            expires_at            = CASE WHEN $12 THEN $13 ELSE expires_at END,
            updated_at            = now()
          WHERE id = $1
      RETURNING {SUMMARY_COLUMNS}, secret_hash, publishable_key, previous_secret_hash,
                previous_publishable_key"
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
        .bind(change.metadata.as_ref().map(Metadata::to_value))
        .bind(change.expires_at.is_some())
        .bind(change.expires_at.flatten())
        .fetch_optional(&mut *transaction)
        .await
        .context("updating the key")?
        .ok_or(AdminError::NoSuchKey(id))?;
    if timezone.is_some_and(|new| old_timezone.as_deref() != Some(new)) {
        rollup::rebuild_in(db, &mut transaction, id)
            .await
            .context("rebuilding the key's rollups in its new time zone")?;
    }
    audit::record(
        db,
        &mut transaction,
        actor,
        "key.update",
        Some(id),
        change.detail(),
    )
    .await?;
    transaction
        .commit()
        .await
        .context("committing the key's change")?;
    Ok(Changed {
        value: summary_from_row(&row)?,
        redis: RedisSync::forget_key(keys, &StoredHalves::from_row(&row)?),
    })
}

/// The stored halves of a key, current and (during a rotation's overlap)
/// previous, enough to name their cache entries.
pub(crate) struct StoredHalves {
    secret_hash: Vec<u8>,
    publishable_key: String,
    previous_secret_hash: Option<Vec<u8>>,
    previous_publishable_key: Option<String>,
}

impl StoredHalves {
    fn from_row(row: &PgRow) -> anyhow::Result<Self> {
        Ok(Self {
            secret_hash: row.try_get("secret_hash")?,
            publishable_key: row.try_get("publishable_key")?,
            previous_secret_hash: row.try_get("previous_secret_hash")?,
            previous_publishable_key: row.try_get("previous_publishable_key")?,
        })
    }

    /// The key cache ids (hex SHA-256) of every half.
    pub(crate) fn cache_ids(&self) -> Vec<String> {
        let mut ids = vec![
            hex::encode(&self.secret_hash),
            hex::encode(apikeys::hash_secret(&self.publishable_key)),
        ];
        ids.extend(self.previous_secret_hash.as_ref().map(hex::encode));
        ids.extend(
            self.previous_publishable_key
                .as_ref()
                .map(|pk| hex::encode(apikeys::hash_secret(pk))),
        );
        ids
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
        metadata: row.try_get("metadata")?,
        expires_at: row.try_get("expires_at")?,
        previous_expires_at: row.try_get("previous_expires_at")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        total_requests: row.try_get("total_requests")?,
    })
}

/// An expiry must be ahead: a key made or set to be already expired is a
/// mistake, and `revoke` says so plainly.
fn check_expiry(at: DateTime<Utc>) -> Result<(), AdminError> {
    if at <= Utc::now() {
        return Err(AdminError::Invalid(format!(
            "expires_at must be in the future, got {}; revoke the key to stop it now",
            at.to_rfc3339()
        )));
    }
    Ok(())
}

/// Whether a JSON value holds U+0000 anywhere.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map
            .iter()
            .any(|(name, value)| name.contains('\0') || holds_nul(value)),
        _ => false,
    }
}

fn check_name(name: &str) -> Result<(), AdminError> {
    if name.contains('\0') {
        return Err(AdminError::Invalid(
            "a key's name may not hold U+0000".to_owned(),
        ));
    }
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
}
