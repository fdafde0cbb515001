//! Every Redis key tollgate uses, in one place. All start with the configured
//! prefix (`tg:` by default) so that environments can share one database.
//!
//! | key | type | TTL | what |
//! |---|---|---|---|
//! | `key:<sha256 hex>` | string (JSON) | 5 min, 1 min if unknown | API key cache, by the hash of the presented key |
//! | `events:queue` | stream, group `drain` | none | queued collect requests; pending entries are the in-flight batches |
//! | `events:stats` | hash | none | last drain, bots dropped: what queue-status reports |
//! | `events:drain-lock` | string | the drain budget | keeps overlapping drain runs apart (correctness does not depend on it) |
//! | `salt:<yyyy-mm-dd>` | string | 2 days | the random daily salt of visitor ids |
//! | `ban:key:<key id>`, `ban:ip:<ip>` | string (reason) | the ban's length; none if permanent | bans in force; permanent ones mirror Postgres `bans` |
//! | `bans:loaded` | string | 1 day | set once the permanent bans of Postgres are in Redis; missing after a flush |
//! | `viol:key:<key id>`, `viol:ip:<ip>` | sorted set | 10 min | recent limit violations, for ban escalation |
//! | `banlevel:key:<key id>`, `banlevel:ip:<ip>` | string | 30 days | how many bans the subject has had: 5 min, then 1 day, then permanent |
//! | `rl:key:<key id>`, `rl:ip:<ip>` | string | until the limiter is full again | GCRA state: the theoretical arrival time, ms |
//! | `q:d:<key id>:<yyyy-mm-dd>`, `q:m:<key id>:<yyyy-mm>` | string | 2 days, 32 days | quota use in the key's day and month (its time zone) |
//! | `mx:<key id>:<yyyy-mm-dd>` | hash | none (moved by the sync) | write-behind usage counters: `req`, `ok`, `fail`, `files`, `bytes`, `last`, `p:<provider>:n`, `:b`, `:last`, `ft:<content type>` |
//! | `adm:<request id>` | string (JSON) | the admission timeout plus `TOLLGATE_ADMISSION_RESOLVE` plus about 7 s | the verdict admit.lua counted, or `late` once a caller asking again settled the request as not run |
//! | `mx:dirty` | set | none | `<key id>:<day>` of the counter hashes changed since the last sync |
//! | `mx:days:<key id>` | set | none (emptied by the sync) | the days of the key's unsynced counter hashes, for analytics |
//! | `an:ver:<key id>` | string (integer) | 7 days | the key's analytics version, bumped by the sync's snapshot |
//! | `an:c:<key id>:<version>:<view and params>` | string (JSON) | 60 s | a cached analytics result |
//! | `mx:batch:<batch id>`, `mx:pending` | hash, set | none | a sync batch taken from the counters, until its Postgres commit is confirmed |
//!
//! The admission, sync and analytics scripts build the `rl:`, `q:`, `mx:`,
//! `an:`, `adm:`, `ban:`, `viol:` and `banlevel:` names themselves, from the prefix and the key id
//! they read from the key cache; the table above is their contract too.

use chrono::NaiveDate;

/// The consumer group through which drains read the event queue.
pub const DRAIN_GROUP: &str = "drain";

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The cached API key whose presented value hashes to `hash_hex`.
    pub fn key_cache(&self, hash_hex: &str) -> String {
        format!("{}key:{hash_hex}", self.prefix)
    }

    /// The stream of queued collect requests.
    pub fn event_queue(&self) -> String {
        format!("{}events:queue", self.prefix)
    }

    /// Drain statistics and fallback counters.
    pub fn event_stats(&self) -> String {
        format!("{}events:stats", self.prefix)
    }

    /// The lock that keeps overlapping drain runs apart.
    pub fn drain_lock(&self) -> String {
        format!("{}events:drain-lock", self.prefix)
    }

    /// The visitor-id salt of one UTC day.
    pub fn visitor_salt(&self, day: NaiveDate) -> String {
        format!("{}salt:{}", self.prefix, day.format("%Y-%m-%d"))
    }
}

impl RedisKeys {
    /// A ban of an API key, by key id.
    pub fn key_ban(&self, key_id: &str) -> String {
        format!("{}ban:key:{key_id}", self.prefix)
    }

    /// A ban of a client IP.
    pub fn ip_ban(&self, ip: &str) -> String {
        format!("{}ban:ip:{ip}", self.prefix)
    }

    /// Recent violations of a subject (`key:<id>` or `ip:<ip>`).
    pub fn violations(&self, subject: &str) -> String {
        format!("{}viol:{subject}", self.prefix)
    }

    /// The ban escalation level of a subject (`key:<id>` or `ip:<ip>`).
    pub fn ban_level(&self, subject: &str) -> String {
        format!("{}banlevel:{subject}", self.prefix)
    }

    /// Present while Redis holds Postgres's permanent bans.
    pub fn bans_loaded(&self) -> String {
        format!("{}bans:loaded", self.prefix)
    }

    /// The configured prefix, for scripts that build key names themselves.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}
