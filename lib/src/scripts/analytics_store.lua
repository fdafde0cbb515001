#!lua flags=allow-key-locking
-- analytics_store.lua: cache a computed analytics result, unless a sync
-- took the key's counters into a batch while it was being computed.
--
-- The result adds Postgres to the Redis counters read before it. A sync
-- snapshot in between could have moved counters that Postgres then also
-- shows, so a result is only kept (and only trusted, see analytics.rs) when
-- the key's version is still the one it was computed under.
--
-- KEYS[1]  an:ver:<key id>
-- KEYS[2]  an:c:<key id>:<view and params>
-- ARGV[1]  the version the result was computed under
-- ARGV[2]  the result (JSON)
-- ARGV[3]  time to live, seconds
--
-- Returns 1 when stored, 0 when the version moved on.

local version = redis.call('GET', KEYS[1]) or '0'
if version ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'v', version, 'body', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
