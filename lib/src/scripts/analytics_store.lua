-- analytics_store.lua: cache a computed analytics result, unless a sync
-- took the key's counters into a batch while it was being computed.
--
-- The result adds Postgres to the Redis counters read before it. A sync
-- snapshot in between could have moved counters that Postgres then also
-- shows, so a result is only kept (and only trusted, see analytics.rs) when
-- the key's version is still the one it was computed under.
--
-- ARGV[1]  key prefix
-- ARGV[2]  key id
-- ARGV[3]  the version the result was computed under
-- ARGV[4]  the view and its canonical parameters
-- ARGV[5]  the result (JSON)
-- ARGV[6]  time to live, seconds
--
-- Returns 1 when stored, 0 when the version moved on.

local p, id = ARGV[1], ARGV[2]
local version = redis.call('GET', p .. 'an:ver:' .. id) or '0'
if version ~= ARGV[3] then return 0 end
redis.call('SET', p .. 'an:c:' .. id .. ':' .. version .. ':' .. ARGV[4], ARGV[5], 'EX', ARGV[6])
return 1
