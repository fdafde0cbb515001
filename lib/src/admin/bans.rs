//! Bans of API keys and client IPs: add, list and lift them.

use std::{fmt, net::IpAddr, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{postgres::PgRow, Row};
use uuid::Uuid;

use super::{audit, Actor, AdminError, Changed, RedisSync};
use crate::{
    db::Db,
    redis_keys::{RedisKeys, Subject},
    upstash::Command,
};

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
/// replaced, in one transaction, which also records the ban in the audit log
/// and, for a key, its `key.banned` alert. Applying the returned sync sets the Redis
/// marker, with the ban's length as its TTL, or none for a permanent ban.
pub async fn add_ban(
    db: &Db,
    keys: &RedisKeys,
    actor: &Actor,
    ban: NewBan,
) -> Result<Changed<Ban>, AdminError> {
    if ban.reason.trim().is_empty() {
        return Err(AdminError::Invalid("a ban needs a reason".to_owned()));
    }
    if ban.reason.contains('\0') {
        return Err(AdminError::Invalid(
            "a ban's reason may not hold U+0000".to_owned(),
        ));
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
    let stored = ban_from_row(&row)?;
    let key_id = match ban.subject {
        BanSubject::Key(id) => Some(id),
        BanSubject::Ip(_) => None,
    };
    let detail = json!({
        "ban_id": stored.id,
        "subject": stored.subject,
        "reason": stored.reason,
        "expires_at": stored.expires_at,
    });
    audit::record(db, &mut tx, actor, "ban.add", key_id, detail).await?;
    // The key's owner hears of it (`key.banned`), once per ban.
    if let Some(id) = key_id {
        crate::alerts::record_ban(
            db,
            &mut *tx,
            id,
            &stored.reason,
            stored.expires_at,
            stored.created_at,
        )
        .await?;
    }
    tx.commit().await.context("committing the ban")?;

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
    actor: &Actor,
    subject: BanSubject,
) -> Result<Changed<Option<Ban>>, AdminError> {
    let sql = format!(
        "UPDATE bans SET lifted_at = now()
          WHERE subject_type = $1 AND subject = $2 AND lifted_at IS NULL
      RETURNING {BAN_COLUMNS}"
    );
    let mut tx = db.pool().begin().await.context("starting a transaction")?;
    let row = db
        .query(&sql)
        .bind(subject.kind())
        .bind(subject.value())
        .fetch_optional(&mut *tx)
        .await
        .context("lifting the ban")?;
    let lifted = row.as_ref().map(ban_from_row).transpose()?;
    let key_id = match subject {
        BanSubject::Key(id) => Some(id),
        BanSubject::Ip(_) => None,
    };
    let detail = json!({ "subject": subject, "ban_id": lifted.as_ref().map(|ban| ban.id) });
    audit::record(db, &mut tx, actor, "ban.lift", key_id, detail).await?;
    tx.commit().await.context("committing the lift")?;
    Ok(Changed {
        value: lifted,
        redis: RedisSync {
            commands: vec![Command::new("DEL").args(subject.redis_keys(keys))],
        },
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

#[cfg(test)]
mod tests {
    use super::*;

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
