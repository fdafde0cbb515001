//! Every Redis key tollgate uses, in one place. All start with the configured
//! prefix (`tg:` by default) so that environments can share one database.
//!
//! Upstash runs a script flagged `allow-key-locking` under locks of only the
//! keys it declares in KEYS, and refuses any other key the script touches.
//! So every name is built here, in Rust, and handed to the scripts; no script
//! builds a name. A key's Redis state is named after its id (which the
//! presented key resolves to once, see `admission.rs`), and none of it
//! after a day: the day lives in hash fields, so the caller never needs the
//! key's time zone to name what a request touches.
//!
//! | key | type | written by | TTL | what |
//! |---|---|---|---|---|
//! | `key:<sha256 hex>` | string (JSON) | refills (`apikeys.rs`), the CLI | 5 min, 1 min if unknown | API key cache, by the hash of the presented key |
//! | `keygen:<sha256 hex>` | string (integer) | the CLI and the keys API (`admin.rs`) | 1 day | the generation of a key cache entry, bumped by every change to the key; a refill writes only under the generation it read before its lookup (`fill_key.lua`) |
//! | `authfail:ip:<ip>` | string (integer) | fill_key.lua, root_limit.lua | 1 min from the first failure | failed authentications (lookups that found no active key) of a client IP; at `TOLLGATE_FAILED_AUTH_LIMIT` its requests for keys the instance does not know are refused before any lookup |
//! | `adm:<request id>` | string (JSON) | admit.lua | the admission timeout plus `TOLLGATE_ADMISSION_RESOLVE` plus about 7 s | the verdict admit.lua counted, or `late` once a caller asking again settled the request as not run |
//! | `rl:key:<key id>`, `rl:read:<key id>`, `rl:ip:<ip>` | string | admit.lua | until the limiter is full again | GCRA state: the theoretical arrival time, ms (`rl:read:` limits a key's analytics reads apart from its metered requests) |
//! | `rl:root:<sha256 hex>` | string | root_limit.lua | until the limiter is full again | GCRA state of a root key presented to `/api/keys`, by the hash of what was presented |
//! | `q:<key id>` | hash | admit.lua | 32 days | quota use: `d` (the key's day), `du` (used that day), `m` (its month), `mu` |
//! | `mx:<key id>` | hash | admit.lua | none (moved by the sync) | write-behind usage counters, fields `<yyyy-mm-dd>\|<counter>`: `req`, `ok`, `fail`, `files`, `bytes`, `last`, `p:<provider>:n`, `:b`, `:last`, `ft:<content type>`, `rf:<minute>:<route>:<code>`, and the alerts the script recorded, `al:<type>:<scope>:<period>:<threshold>:<limit>:<used>` (see `alerts`) |
//! | `mx:pend:<key id>` | hash | snapshot.lua, batch_done.lua | none | counters taken into a sync batch, fields `<batch id>\|<day>\|<counter>`, until the batch's commit is confirmed |
//! | `ban:key:<key id>`, `ban:ip:<ip>` | string (JSON) | admit.lua, bans loading, the CLI | the ban's length; none if permanent | bans in force; permanent ones mirror Postgres `bans` |
//! | `viols:key:<key id>`, `viols:ip:<ip>` | hash | admit.lua | 10 min | ban escalation: this minute's refusals (`w`, `n`) and the recent violating minutes (`a`, `b`) |
//! | `banlevel:key:<key id>`, `banlevel:ip:<ip>` | string | admit.lua | 30 days | how many bans the subject has had: 5 min, then 1 day, then permanent |
//! | `salt:<key id>:<yyyy-mm-dd>` | string | admit.lua | 2 days | the key's random salt of visitor ids on one UTC day |
//! | `events:queue:<shard>` | stream, group `drain` | admit.lua (appends), claim.lua, ack.lua | none | queued requests: events, request logs, upload logs; pending entries are the in-flight batches |
//! | `events:stats:<shard>` | hash | admit.lua, ack.lua | none | the shard's events queued (less those acknowledged) and bots dropped |
//! | `events:stats` | hash | the drain | none | the last drain's time, events, duration and rate |
//! | `events:drain-lock` | string | the drain | the drain budget | keeps overlapping drain runs apart (correctness does not depend on it) |
//! | `mx:dirty:<shard>` | set | admit.lua, snapshot.lua | none | ids of keys with unsynced counters, in the shard the request drew |
//! | `mx:batch:<batch id>` | set | snapshot.lua, batch_done.lua | none | the key ids of a sync batch, until its commit is confirmed |
//! | `mx:pending` | set | snapshot.lua, batch_done.lua | none | ids of sync batches not yet confirmed |
//! | `bans:loaded` | string | key cache refills | 1 day | set once Postgres's bans are in Redis; missing after a flush, so the first refill loads them |
//! | `an:ver:<key id>` | string (integer) | snapshot.lua | 7 days | the key's analytics version, bumped by the sync's snapshot |
//! | `an:c:<key id>:<view and params>` | hash | analytics_store.lua | 60 s | a view's cached Postgres part (the live counters are added on every read): `v` (the version it was computed under) and `part` |
//!
//! Each request draws one shard at random and writes only that shard's
//! stream, counters and dirty set; everything else it touches belongs to
//! its key, its client IP or itself. Under key locking, requests of
//! different keys therefore wait for each other only when they draw the
//! same shard (one chance in `TOLLGATE_REDIS_SHARDS`), and no key is
//! written by every request. The drain and the sync read every shard.

use chrono::NaiveDate;
use uuid::Uuid;

/// The consumer group through which drains read the event queue.
pub const DRAIN_GROUP: &str = "drain";

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
    shards: u16,
}

impl RedisKeys {
    pub fn new(prefix: &str, shards: u16) -> Self {
        Self {
            prefix: prefix.to_owned(),
            shards: shards.max(1),
        }
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cached API key whose presented value hashes to `hash_hex`.
    pub fn key_cache(&self, hash_hex: &str) -> String {
        format!("{}key:{hash_hex}", self.prefix)
    }

    /// The verdict an admission counted, for a caller that asks again.
    pub fn admission_memo(&self, request_id: Uuid) -> String {
        format!("{}adm:{request_id}", self.prefix)
    }
}

/// The state of one API key, by its id.
impl RedisKeys {
    /// The key's per-minute limiter.
    pub fn key_rate(&self, key_id: Uuid) -> String {
        format!("{}rl:key:{key_id}", self.prefix)
    }

    /// A key's limiter of analytics reads, apart from its metered traffic's,
    /// so that a dashboard polling its numbers spends none of the budget
    /// the key's product traffic lives on.
    pub fn key_read_rate(&self, key_id: Uuid) -> String {
        format!("{}rl:read:{key_id}", self.prefix)
    }

    /// The key's daily and monthly quota use.
    pub fn quota(&self, key_id: Uuid) -> String {
        format!("{}q:{key_id}", self.prefix)
    }

    /// The key's unsynced usage counters.
    pub fn metrics(&self, key_id: Uuid) -> String {
        format!("{}mx:{key_id}", self.prefix)
    }

    /// The key's counters taken into sync batches not yet confirmed.
    pub fn metrics_pending(&self, key_id: Uuid) -> String {
        format!("{}mx:pend:{key_id}", self.prefix)
    }

    /// The key's visitor-id salt of one UTC day.
    pub fn visitor_salt(&self, key_id: Uuid, day: NaiveDate) -> String {
        format!("{}salt:{key_id}:{}", self.prefix, day.format("%Y-%m-%d"))
    }

    /// The key's analytics version.
    pub fn analytics_version(&self, key_id: Uuid) -> String {
        format!("{}an:ver:{key_id}", self.prefix)
    }

    /// A cached analytics view of the key (its Postgres part).
    pub fn analytics_cache(&self, key_id: Uuid, view: &str) -> String {
        format!("{}an:c:{key_id}:{view}", self.prefix)
    }
}

/// Bans and their escalation, of a key or of a client IP.
impl RedisKeys {
    /// A ban of a subject.
    pub fn ban(&self, subject: &Subject<'_>) -> String {
        format!("{}ban:{subject}", self.prefix)
    }

    /// Recent violations of a subject.
    pub fn violations(&self, subject: &Subject<'_>) -> String {
        format!("{}viols:{subject}", self.prefix)
    }

    /// The ban escalation level of a subject.
    pub fn ban_level(&self, subject: &Subject<'_>) -> String {
        format!("{}banlevel:{subject}", self.prefix)
    }

    /// A subject's per-minute limiter (client IPs; keys use [`Self::key_rate`]).
    pub fn rate(&self, subject: &Subject<'_>) -> String {
        format!("{}rl:{subject}", self.prefix)
    }

    /// A ban of an API key, by key id.
    pub fn key_ban(&self, key_id: &str) -> String {
        format!("{}ban:key:{key_id}", self.prefix)
    }

    /// A ban of a client IP.
    pub fn ip_ban(&self, ip: &str) -> String {
        format!("{}ban:ip:{ip}", self.prefix)
    }

    /// The generation of a key cache entry, bumped by every change to the
    /// key, so that a refill that began before it does not write back.
    pub fn key_generation(&self, hash_hex: &str) -> String {
        format!("{}keygen:{hash_hex}", self.prefix)
    }

    /// The per-minute limiter of a root key, by the hex SHA-256 of the key
    /// presented (`/api/keys` is limited before the key is looked up).
    pub fn root_rate(&self, hash_hex: &str) -> String {
        format!("{}rl:root:{hash_hex}", self.prefix)
    }

    /// Failed authentications of a client IP in the current minute.
    pub fn auth_failures(&self, ip: &str) -> String {
        format!("{}authfail:ip:{ip}", self.prefix)
    }

    /// Present while Redis holds Postgres's bans.
    pub fn bans_loaded(&self) -> String {
        format!("{}bans:loaded", self.prefix)
    }
}

/// The event queue and the crons' own keys.
impl RedisKeys {
    /// How many shards the event queue has.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// One shard of the event queue.
    pub fn event_queue(&self, shard: u16) -> String {
        format!("{}events:queue:{shard}", self.prefix)
    }

    /// Every shard of the event queue.
    pub fn event_queues(&self) -> Vec<String> {
        (0..self.shards).map(|n| self.event_queue(n)).collect()
    }

    /// A shard drawn at random, for one request.
    pub fn any_shard(&self) -> u16 {
        rand::random_range(0..self.shards)
    }

    /// The counters of one shard: events queued, bots dropped.
    pub fn shard_stats(&self, shard: u16) -> String {
        format!("{}events:stats:{shard}", self.prefix)
    }

    /// The last drain's statistics and the fallback counters.
    pub fn event_stats(&self) -> String {
        format!("{}events:stats", self.prefix)
    }

    /// The lock that keeps overlapping drain runs apart.
    pub fn drain_lock(&self) -> String {
        format!("{}events:drain-lock", self.prefix)
    }

    /// Ids of keys with unsynced counters, written through one shard.
    pub fn metrics_dirty(&self, shard: u16) -> String {
        format!("{}mx:dirty:{shard}", self.prefix)
    }

    /// The key ids of one sync batch.
    pub fn metrics_batch(&self, batch_id: &str) -> String {
        format!("{}mx:batch:{batch_id}", self.prefix)
    }

    /// Ids of the sync batches not yet confirmed.
    pub fn metrics_batches_pending(&self) -> String {
        format!("{}mx:pending", self.prefix)
    }
}

/// Who a limiter, a violation or a ban is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Key(Uuid),
    /// A client IP in canonical form.
    Ip(&'a str),
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(id) => write!(f, "key:{id}"),
            Self::Ip(ip) => write!(f, "ip:{ip}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_carries_the_prefix_and_no_day_but_the_salts() {
        let keys = RedisKeys::new("tg:", 8);
        let id = Uuid::nil();
        assert_eq!(keys.quota(id), format!("tg:q:{id}"));
        assert_eq!(keys.ban(&Subject::Key(id)), keys.key_ban(&id.to_string()));
        assert_eq!(
            keys.ban(&Subject::Ip("203.0.113.7")),
            "tg:ban:ip:203.0.113.7"
        );
        assert_eq!(keys.event_queues().len(), 8);
        assert_eq!(keys.event_queue(7), "tg:events:queue:7");
        for _ in 0..100 {
            assert!(keys.any_shard() < 8);
        }
    }
}
