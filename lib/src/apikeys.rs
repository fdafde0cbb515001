//! API keys: generation, hashing and storage.
//!
//! A key has two halves. The secret key (`sk_…`) authenticates servers and
//! SDKs; Postgres keeps only its SHA-256, so it is shown once, at creation.
//! The publishable key (`pk_…`) ships in web pages to authenticate event
//! collection, so it is stored as it is.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{db::Db, secret::Secret};

/// The plan a key is on; its limits come from the tier unless overridden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
}

impl Tier {
    /// The name stored in Postgres and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "free" => Ok(Tier::Free),
            "pro" => Ok(Tier::Pro),
            "enterprise" => Ok(Tier::Enterprise),
            other => Err(format!(
                "unknown tier `{other}`; expected free, pro or enterprise"
            )),
        }
    }
}

/// A freshly generated key pair, before or just after it is stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: Uuid,
    pub secret: Secret,
    pub publishable: String,
}

impl NewKey {
    /// Generates a key pair: 192 random bits for the secret, 96 for the
    /// publishable key, from the thread-local CSPRNG.
    pub fn generate() -> Self {
        Self {
            id: Uuid::now_v7(),
            secret: Secret::new(format!("sk_{}", random_hex(SECRET_BYTES))),
            publishable: format!("pk_{}", random_hex(PUBLISHABLE_BYTES)),
        }
    }
}

/// Random bytes in a secret key, written as hex after `sk_`.
const SECRET_BYTES: usize = 24;
/// Random bytes in a publishable key, written as hex after `pk_`.
const PUBLISHABLE_BYTES: usize = 12;

/// The SHA-256 of a secret key, as stored and as looked up.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `digits` are exactly `length` lowercase hex digits, as
/// [`random_hex`] writes them.
pub(crate) fn is_lower_hex(digits: &str, length: usize) -> bool {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    digits.len() == length && digits.bytes().all(hex)
}

/// `bytes` random bytes from the thread-local CSPRNG, as hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Stores a key with the given name and tier, unless a key with its id
/// already exists. Returns whether it was inserted.
pub async fn insert(db: &Db, key: &NewKey, name: &str, tier: Tier) -> anyhow::Result<bool> {
    let inserted = db
        .query(
            "INSERT INTO api_keys (id, name, secret_hash, publishable_key, tier)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(key.id)
        .bind(name)
        .bind(hash_secret(key.secret.expose()).as_slice())
        .bind(&key.publishable)
        .bind(tier.as_str())
        .execute(db.executor())
        .await?
        .rows_affected();
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_their_prefixes_and_differ() {
        let a = NewKey::generate();
        let b = NewKey::generate();
        assert!(a.secret.expose().starts_with("sk_"));
        assert_eq!(a.secret.expose().len(), 3 + 48);
        assert!(a.publishable.starts_with("pk_"));
        assert_ne!(a.secret.expose(), b.secret.expose());
        assert_ne!(a.publishable, b.publishable);
    }

    #[test]
    fn the_hash_is_sha256() {
        assert_eq!(
            hex::encode(hash_secret("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tiers_parse_from_their_names() {
        for tier in [Tier::Free, Tier::Pro, Tier::Enterprise] {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
        }
        assert!("gold".parse::<Tier>().is_err());
    }

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    fn day(s: &str) -> chrono::NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn a_keys_day_and_its_start_follow_its_zone_across_dst() {
        let berlin = zone("Europe/Berlin");
        // Clocks go forward at 01:00 UTC on 2031-03-30.
        assert_eq!(
            day_start(day("2031-03-30"), berlin),
            at("2031-03-29T23:00:00Z")
        );
        assert_eq!(
            day_start(day("2031-03-31"), berlin),
            at("2031-03-30T22:00:00Z")
        );
        assert_eq!(
            key_day(at("2031-03-29T22:30:00Z"), berlin),
            day("2031-03-29")
        );
        assert_eq!(
            key_day(at("2031-03-31T22:30:00Z"), berlin),
            day("2031-04-01")
        );
        assert_eq!(
            utc_offset("Europe/Berlin", at("2031-03-29T12:00:00Z")),
            3600
        );
        assert_eq!(
            utc_offset("Europe/Berlin", at("2031-03-31T12:00:00Z")),
            7200
        );
    }

    #[test]
    fn a_day_whose_midnight_a_dst_change_skips_starts_at_its_first_hour() {
        // Chile moves from -04 to -03 at local midnight of 2026-09-06.
        let santiago = zone("America/Santiago");
        assert_eq!(
            day_start(day("2026-09-06"), santiago),
            at("2026-09-06T04:00:00Z")
        );
        assert_eq!(
            key_day(at("2026-09-06T03:59:00Z"), santiago),
            day("2026-09-05")
        );
        assert_eq!(
            key_day(at("2026-09-06T04:00:00Z"), santiago),
            day("2026-09-06")
        );
    }

    #[test]
    fn an_unknown_zone_is_utc() {
        assert_eq!(zone("Mars/Olympus"), chrono_tz::UTC);
        assert_eq!(utc_offset("Mars/Olympus", at("2031-01-01T00:00:00Z")), 0);
    }
}

/// Which half of a key pair was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// `sk_…`: servers and SDKs.
    Sk,
    /// `pk_…`: browsers; may be limited to some origins.
    Pk,
}

/// A key as presented in a request, before it is looked up.
#[derive(Debug, Clone)]
pub struct PresentedKey {
    kind: KeyKind,
    value: Secret,
}

impl PresentedKey {
    /// Recognises a key by its exact shape, as [`NewKey::generate`] makes
    /// it: `sk_` and 48 lowercase hex digits, or `pk_` and 24. Anything else
    /// is not a key, and is refused without a lookup.
    pub fn parse(value: &str) -> Option<Self> {
        let (kind, digits) = if let Some(digits) = value.strip_prefix("sk_") {
            (KeyKind::Sk, digits)
        } else if let Some(digits) = value.strip_prefix("pk_") {
            (KeyKind::Pk, digits)
        } else {
            return None;
        };
        let length = match kind {
            KeyKind::Sk => SECRET_BYTES * 2,
            KeyKind::Pk => PUBLISHABLE_BYTES * 2,
        };
        is_lower_hex(digits, length).then(|| Self {
            kind,
            value: Secret::new(value),
        })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The hex SHA-256 of the key: how Redis caches it, so that the cache
    /// holds no usable secret either.
    pub fn cache_id(&self) -> String {
        hex::encode(hash_secret(self.value.expose()))
    }
}

/// Whether a key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    /// No such key: cached too, briefly, so that bad keys cannot hammer Postgres.
    Unknown,
}

/// What the Redis key cache holds about a presented key; the collect and
/// admission scripts read it (see `scripts/*.lua`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CachedKey {
    /// Absent for an unknown key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    pub kind: KeyKind,
    pub status: KeyStatus,
    /// Browser origins allowed to use a publishable key; empty means any.
    #[serde(default)]
    pub origins: Vec<String>,
    /// The key's effective limits; absent for unknown and revoked keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CachedLimits>,
    /// The key's own upload policy; absent fields take the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<CachedUpload>,
    /// The key's time zone's offset from UTC when the entry was filled, in
    /// seconds, so the admission script can tell the key's calendar day. It
    /// is refreshed with the cache entry (every few minutes), so for that
    /// long after a DST change the script's day may start an hour off.
    #[serde(default)]
    pub tz_offset: i32,
    /// The key's IANA time zone, by which analytics buckets days: a range's
    /// past days take the offset they had then, not today's.
    #[serde(default = "utc_name")]
    pub timezone: String,
    /// When the key was created, in Unix milliseconds: analytics clamps a
    /// range to the key's lifetime. Absent for an unknown key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<i64>,
    /// When the presented key stops working, in Unix milliseconds: the
    /// key's `expires_at`, or for the previous halves of a rotated key the
    /// earlier of that and the end of the rotation's overlap. The admission
    /// script compares it with Redis's clock on every request, so an entry
    /// cached before the moment refuses the key after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

impl CachedKey {
    /// Whether the key has expired at `now`.
    pub fn expired_at(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.expires_ms
            .is_some_and(|expires| now.timestamp_millis() >= expires)
    }
}

fn utc_name() -> String {
    "UTC".to_owned()
}

/// A key's upload policy as the admission script reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct CachedUpload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// Limits as the admission script reads them; an absent field is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<u64>,
}

/// How long a cached key lives: revocations reach the cache at once (the
/// CLI deletes the entry), this only bounds how stale anything else can be.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// How long an unknown key is remembered.
pub const UNKNOWN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Looks a presented key up in Postgres.
/// `now` fixes the time zone's offset (see [`CachedKey::tz_offset`]).
pub async fn lookup(
    db: &Db,
    key: &PresentedKey,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<CachedKey> {
    use sqlx::Row;
    // A rotated key's previous halves are matched too: until the overlap
    // ends they work, and after it they are refused as expired (not as
    // unknown), which tells their holder what happened.
    const COLUMNS: &str = "id, status, allowed_origins, tier, rate_limit_per_minute, daily_quota,
                           monthly_quota, timezone, allowed_content_types, max_upload_bytes,
                           default_provider, created_at, expires_at, previous_expires_at";
    let row = match key.kind {
        KeyKind::Sk => {
            db.query(&format!(
                "SELECT {COLUMNS}, secret_hash = $1 AS is_current FROM api_keys
                 WHERE secret_hash = $1 OR previous_secret_hash = $1
                 ORDER BY secret_hash = $1 DESC LIMIT 1"
            ))
            .bind(hash_secret(key.value.expose()).as_slice())
            .fetch_optional(db.executor())
            .await?
        }
        KeyKind::Pk => {
            db.query(&format!(
                "SELECT {COLUMNS}, publishable_key = $1 AS is_current FROM api_keys
                 WHERE publishable_key = $1 OR previous_publishable_key = $1
                 ORDER BY publishable_key = $1 DESC LIMIT 1"
            ))
            .bind(key.value.expose())
            .fetch_optional(db.executor())
            .await?
        }
    };
    let Some(row) = row else {
        return Ok(CachedKey {
            id: None,
            kind: key.kind,
            status: KeyStatus::Unknown,
            origins: Vec::new(),
            limits: None,
            upload: None,
            tz_offset: 0,
            timezone: utc_name(),
            created_ms: None,
            expires_ms: None,
        });
    };
    let active = row.try_get::<String, _>("status")? == "active";
    let expires_at: Option<chrono::DateTime<chrono::Utc>> = row.try_get("expires_at")?;
    let expires_ms = if row.try_get::<bool, _>("is_current")? {
        expires_at
    } else {
        let overlap_end: Option<chrono::DateTime<chrono::Utc>> =
            row.try_get("previous_expires_at")?;
        // A previous half without an end (which the schema forbids) is
        // treated as already over.
        Some(match (expires_at, overlap_end) {
            (Some(key), Some(overlap)) => key.min(overlap),
            (None, Some(overlap)) => overlap,
            (_, None) => chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        })
    }
    .map(|at| at.timestamp_millis());
    let tier: Tier = row
        .try_get::<String, _>("tier")?
        .parse()
        .map_err(anyhow::Error::msg)?;
    let limits = crate::limits::Limits::for_key(
        tier,
        crate::limits::Overrides {
            per_minute: row
                .try_get::<Option<i32>, _>("rate_limit_per_minute")?
                .map(|n| n as u32),
            per_day: row
                .try_get::<Option<i64>, _>("daily_quota")?
                .map(|n| n as u64),
            per_month: row
                .try_get::<Option<i64>, _>("monthly_quota")?
                .map(|n| n as u64),
        },
    );
    Ok(CachedKey {
        id: Some(row.try_get("id")?),
        kind: key.kind,
        status: if active {
            KeyStatus::Active
        } else {
            KeyStatus::Revoked
        },
        origins: row.try_get("allowed_origins")?,
        limits: active.then_some(CachedLimits {
            minute: limits.per_minute,
            day: limits.per_day,
            month: limits.per_month,
        }),
        upload: Some(CachedUpload {
            types: row.try_get("allowed_content_types")?,
            max_bytes: row
                .try_get::<Option<i64>, _>("max_upload_bytes")?
                .map(|n| n as u64),
            provider: row.try_get("default_provider")?,
        }),
        tz_offset: utc_offset(&row.try_get::<String, _>("timezone")?, now),
        timezone: row.try_get("timezone")?,
        created_ms: Some(
            row.try_get::<chrono::DateTime<chrono::Utc>, _>("created_at")?
                .timestamp_millis(),
        ),
        expires_ms,
    })
}

/// A key's time zone by its IANA name; UTC for a name chrono-tz does not
/// know (the CLI validates names when they are set).
pub fn zone(timezone: &str) -> chrono_tz::Tz {
    timezone.parse().unwrap_or(chrono_tz::UTC)
}

/// The offset from UTC of an IANA time zone at `now`, in seconds.
pub fn utc_offset(timezone: &str, now: chrono::DateTime<chrono::Utc>) -> i32 {
    use chrono::Offset;
    now.with_timezone(&zone(timezone))
        .offset()
        .fix()
        .local_minus_utc()
}

/// The calendar day at `now` in the key's time zone: the key's day, by
/// which usage and quotas are counted.
pub fn key_day(now: chrono::DateTime<chrono::Utc>, zone: chrono_tz::Tz) -> chrono::NaiveDate {
    now.with_timezone(&zone).date_naive()
}

/// The instant a calendar day of the key's time zone starts. Where a DST
/// change skips midnight, the day starts at the first local time it has.
pub fn day_start(day: chrono::NaiveDate, zone: chrono_tz::Tz) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    (0..=24)
        .find_map(|hour| {
            zone.from_local_datetime(&(midnight + chrono::Duration::hours(hour)))
                .earliest()
        })
        .map(|start| start.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| midnight.and_utc())
}

pub static FILL_KEY: crate::upstash::Script =
    crate::upstash::Script::new("fill_key", include_str!("scripts/fill_key.lua"));

/// One refill of a key's cache entry, in three steps: the entry's
/// generation is read first, then the key is looked up in Postgres, then
/// the entry is written only if the generation has not moved (see
/// `fill_key.lua`). A change to the key between the first and the last
/// step (a revoke, say) keeps the lookup's now stale answer out of the
/// cache.
pub struct Refill<'a> {
    state: &'a crate::state::AppState,
    key: &'a PresentedKey,
    generation: String,
}

impl<'a> Refill<'a> {
    /// Starts a refill under a generation the caller has just read.
    pub fn under(
        state: &'a crate::state::AppState,
        key: &'a PresentedKey,
        generation: String,
    ) -> Self {
        Self {
            state,
            key,
            generation,
        }
    }

    /// Reads the generation of the key's cache entry.
    pub async fn begin(
        state: &'a crate::state::AppState,
        key: &'a PresentedKey,
    ) -> anyhow::Result<Self> {
        let generation: Option<String> = state
            .upstash
            .command(
                &crate::upstash::Command::new("GET")
                    .arg(state.keys.key_generation(&key.cache_id())),
            )
            .await
            .map_err(|error| anyhow::Error::new(error).context("reading the key's generation"))?;
        Ok(Self {
            state,
            key,
            generation: generation.unwrap_or_default(),
        })
    }

    /// Looks the key up in Postgres.
    pub async fn lookup(&self) -> anyhow::Result<CachedKey> {
        lookup(&self.state.db, self.key, self.state.clock.now()).await
    }

    /// Writes what [`Self::lookup`] found, unless the key changed since
    /// [`Self::begin`]; a lookup that found no active key counts as a
    /// failed authentication of `client_ip`. Returns whether it was written.
    pub async fn store(&self, cached: &CachedKey, client_ip: Option<&str>) -> anyhow::Result<bool> {
        let keys = &self.state.keys;
        let cache_id = self.key.cache_id();
        let mut names = vec![keys.key_cache(&cache_id), keys.key_generation(&cache_id)];
        names.extend(client_ip.map(|ip| keys.auth_failures(ip)));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let ttl = match cached.status {
            KeyStatus::Unknown => UNKNOWN_CACHE_TTL,
            _ => CACHE_TTL,
        };
        let failed = if cached.status == KeyStatus::Active {
            "0"
        } else {
            "1"
        };
        let stored: i64 = self
            .state
            .upstash
            .eval(
                &FILL_KEY,
                &names,
                &[
                    self.generation.clone(),
                    serde_json::to_string(cached)?,
                    ttl.as_secs().to_string(),
                    failed.to_owned(),
                ],
            )
            .await
            .map_err(|error| anyhow::Error::new(error).context("filling the key cache"))?;
        Ok(stored == 1)
    }
}

/// Looks a key up in Postgres and writes the result to the Redis cache,
/// unless the key changes meanwhile; then it looks again. `client_ip` is
/// charged a failed authentication if no active key matches.
pub async fn refresh_cache(
    state: &crate::state::AppState,
    key: &PresentedKey,
    client_ip: Option<&str>,
) -> anyhow::Result<CachedKey> {
    refresh_cache_from(state, key, None, client_ip).await
}

/// [`refresh_cache`], whose first lookup runs under a generation the caller
/// has just read, if it has one.
pub async fn refresh_cache_from(
    state: &crate::state::AppState,
    key: &PresentedKey,
    mut generation: Option<String>,
    client_ip: Option<&str>,
) -> anyhow::Result<CachedKey> {
    for _ in 0..3 {
        let refill = match generation.take() {
            Some(generation) => Refill::under(state, key, generation),
            None => Refill::begin(state, key).await?,
        };
        let cached = refill.lookup().await?;
        if refill.store(&cached, client_ip).await? {
            return Ok(cached);
        }
    }
    // Changed under three lookups in a row: Postgres's answer stands,
    // uncached.
    lookup(&state.db, key, state.clock.now()).await
}

/// The key's entry in the Redis cache, if it holds one that reads.
pub async fn read_cache(
    state: &crate::state::AppState,
    key: &PresentedKey,
) -> anyhow::Result<Option<CachedKey>> {
    let cached: Option<String> = state
        .upstash
        .command(&crate::upstash::Command::new("GET").arg(state.keys.key_cache(&key.cache_id())))
        .await
        .map_err(|error| anyhow::Error::new(error).context("reading the key cache"))?;
    Ok(cached.and_then(|json| serde_json::from_str::<CachedKey>(&json).ok()))
}

/// Which key id each presented key belongs to, remembered by this instance
/// so that admission can name the key's Redis state before its one call.
/// A presented key's hash maps to one key id for good (rotation makes a new
/// secret for the same id), so an entry never goes stale; whether the key
/// is still active is read from the key cache on every request.
#[derive(Debug, Default)]
pub struct KeyIds {
    ids: std::sync::Mutex<std::collections::HashMap<String, Uuid>>,
    /// Presented keys found unknown, and until when that is believed: a
    /// client repeating one costs no round trip and no lookup meanwhile.
    unknown: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// One refill of a key's cache entry at a time per instance: a burst of
    /// requests for a cold key waits for the first one's Postgres lookup
    /// instead of making one each.
    refills: std::sync::Mutex<
        std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>,
    >,
}

/// Entries past which the memory starts over, bounding an instance's memory
/// against a flood of distinct keys.
const KEY_IDS_MAX: usize = 100_000;
/// The same bound for the memory of unknown keys.
const UNKNOWN_MAX: usize = 10_000;

impl KeyIds {
    /// The key id of a presented key, by its cache id, if remembered.
    pub fn get(&self, cache_id: &str) -> Option<Uuid> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cache_id)
            .copied()
    }

    /// Remembers the key id of a presented key.
    pub fn remember(&self, cache_id: &str, key_id: Uuid) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.len() >= KEY_IDS_MAX {
            ids.clear();
        }
        ids.insert(cache_id.to_owned(), key_id);
    }

    /// Whether a presented key was found unknown within [`UNKNOWN_CACHE_TTL`].
    pub fn is_unknown(&self, cache_id: &str) -> bool {
        let unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        unknown
            .get(cache_id)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// Remembers that no key matches a presented key, for as long as the
    /// Redis cache does.
    pub fn remember_unknown(&self, cache_id: &str) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        if unknown.len() >= UNKNOWN_MAX {
            let now = std::time::Instant::now();
            unknown.retain(|_, until| *until > now);
            if unknown.len() >= UNKNOWN_MAX {
                unknown.clear();
            }
        }
        unknown.insert(
            cache_id.to_owned(),
            std::time::Instant::now() + UNKNOWN_CACHE_TTL,
        );
    }

    /// The lock that keeps refills of one presented key's cache entry apart
    /// in this instance.
    pub fn refill_lock(&self, cache_id: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut refills = self.refills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = refills.get(cache_id).and_then(std::sync::Weak::upgrade) {
            return lock;
        }
        // Forget the locks no refill holds any more.
        refills.retain(|_, lock| lock.strong_count() > 0);
        let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        refills.insert(cache_id.to_owned(), std::sync::Arc::downgrade(&lock));
        lock
    }
}
