#!lua flags=allow-key-locking,no-writes
-- key_usage.lua: a key's counters that Postgres does not hold yet, read
-- together with the version that says whether a sync moved them since
-- (see admin/usage.rs, and analytics/mod.rs for why the version makes the
-- sum exact).
--
-- KEYS[1]  an:ver:<key id>    bumped by snapshot.lua when it takes counters
-- KEYS[2]  mx:<key id>        the key's live (unsynced) counters
-- KEYS[3]  mx:pend:<key id>   its counters in sync batches not yet confirmed
-- ARGV     none
--
-- Returns {version, live, pending}: live is HGETALL of mx:<key id>
-- (`<day>|<counter>`, value), pending HGETALL of mx:pend:<key id>
-- (`<batch id>|<day>|<counter>`, value).

return {
  redis.call('GET', KEYS[1]) or '0',
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
}
