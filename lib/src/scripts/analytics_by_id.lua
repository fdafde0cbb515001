#!lua flags=allow-key-locking,no-writes
-- analytics_by_id.lua: what a root key's read of a key's analytics needs
-- from Redis, in one read-only round trip. It is analytics.lua without the
-- key cache: a root key names the key by id, and the route has checked it
-- in Postgres (see analytics/by_id.rs).
--
-- KEYS[1]  an:ver:<key id>
-- KEYS[2]  an:c:<key id>:<view and params>
-- KEYS[3]  mx:<key id>        the key's live (unsynced) counters
-- KEYS[4]  mx:pend:<key id>   its counters in sync batches not yet confirmed
-- ARGV[1]  "1" when the view adds unsynced counters, "0" when it does not
--
-- Returns {"hit", version, part, live} or {"miss", version, live, pending},
-- as analytics.lua does.

local counters = ARGV[1] == '1'
local version = redis.call('GET', KEYS[1]) or '0'
local entry = redis.call('HMGET', KEYS[2], 'v', 'part')
local live = {}
if counters then live = redis.call('HGETALL', KEYS[3]) end
if entry[1] == version and entry[2] then return {'hit', version, entry[2], live} end
local pending = {}
if counters then pending = redis.call('HGETALL', KEYS[4]) end
return {'miss', version, live, pending}
