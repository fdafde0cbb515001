#!lua flags=allow-key-locking,no-writes
-- analytics.lua: everything a GET /api/analytics needs from Redis, in one
-- read-only round trip: authenticate the secret key from the key cache,
-- then answer from the result cache, or, on a miss, hand back the usage
-- counters that the sync has not moved into Postgres yet.
--
-- A cached result lives under `an:c:<key id>:<view and params>` with the
-- version it was computed under. The version (`an:ver:<key id>`) is bumped
-- by snapshot.lua whenever it takes a key's counters into a sync batch, so
-- a sync retires every cached view of the key at once without a list of
-- keys to delete.
--
-- KEYS[1]  the key cache entry of the presented key (JSON, see apikeys.rs)
-- KEYS[2]  an:ver:<key id>
-- KEYS[3]  an:c:<key id>:<view and params>
-- KEYS[4]  mx:<key id>        the key's unsynced counters
-- KEYS[5]  mx:pend:<key id>   its counters in sync batches not yet confirmed
-- ARGV[1]  the key id the keys were named after
-- ARGV[2]  "1" when the view adds unsynced counters, "0" when it does not
--
-- Returns one of:
--   {"miss_key"}                       the key cache has no entry
--   {"invalid_key"} | {"revoked_key"} | {"wrong_kind"}
--   {"rekey", key_id}                  the entry is another key id's
--   {"hit", key_id, version, body}
--   {"miss", key_id, version, time_zone, live, pending, created_ms}
-- where live is HGETALL of mx:<key id> (`<day>|<counter>`, value) and
-- pending HGETALL of mx:pend:<key id> (`<batch id>|<day>|<counter>`, value).

local cached = redis.call('GET', KEYS[1])
if not cached then return {'miss_key'} end
local key = cjson.decode(cached)
if key.status == 'unknown' then return {'invalid_key'} end
if key.id ~= ARGV[1] then return {'rekey', key.id or ''} end
if key.status ~= 'active' then return {'revoked_key'} end
if key.kind ~= 'sk' then return {'wrong_kind'} end
local id = key.id

local version = redis.call('GET', KEYS[2]) or '0'
local entry = redis.call('HMGET', KEYS[3], 'v', 'body')
if entry[1] == version and entry[2] then return {'hit', id, version, entry[2]} end

local live, pending = {}, {}
if ARGV[2] == '1' then
  live = redis.call('HGETALL', KEYS[4])
  pending = redis.call('HGETALL', KEYS[5])
end
return {'miss', id, version, key.timezone or 'UTC', live, pending, tostring(key.created_ms or '')}
