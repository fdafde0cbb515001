#!lua flags=allow-key-locking
-- analytics_store.lua: cache a view's computed Postgres part, unless a sync
-- took the key's counters into a batch while it was being computed.
--
-- The part is the view's Postgres document plus the counters of the
-- batches that were pending and not yet applied; the live counters read
-- before it are added on every read, never stored. A sync snapshot between
-- that read and the Postgres statement could have moved live counters that
-- Postgres then also shows, so a part is only kept (and only trusted, see
-- analytics/mod.rs) when the key's version is still the one it was
-- computed under.
--
-- KEYS[1]  an:ver:<key id>
-- KEYS[2]  an:c:<key id>:<view and params>
-- ARGV[1]  the version the part was computed under
-- ARGV[2]  the part (JSON)
-- ARGV[3]  time to live, seconds
--
-- Returns 1 when stored, 0 when the version moved on.

local version = redis.call('GET', KEYS[1]) or '0'
if version ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'v', version, 'part', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
