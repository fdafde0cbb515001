#!lua flags=allow-key-locking,no-writes
-- analytics.lua: everything a GET /api/analytics needs from Redis, in one
-- read-only round trip: authenticate the secret key from the key cache,
-- then read the view's cached Postgres part and the key's live counters
-- together, or, on a miss, hand back the counters that the sync has not
-- moved into Postgres yet.
--
-- A cached Postgres part lives under `an:c:<key id>:<view and params>`
-- (field `part`) with the version it was computed under (field `v`). The
-- version (`an:ver:<key id>`) is bumped by snapshot.lua whenever it takes a
-- key's counters into a sync batch, so a sync retires every cached view of
-- the key at once without a list of keys to delete. While the version
-- holds, the live counters read here are exactly what the cached part
-- lacks (see analytics/mod.rs), so a hit is exact to the last request.
--
-- KEYS[1]  the key cache entry of the presented key (JSON, see apikeys.rs)
-- KEYS[2]  an:ver:<key id>
-- KEYS[3]  an:c:<key id>:<view and params>
-- KEYS[4]  mx:<key id>        the key's live (unsynced) counters
-- KEYS[5]  mx:pend:<key id>   its counters in sync batches not yet confirmed
-- ARGV[1]  the key id the keys were named after
-- ARGV[2]  "1" when the view adds unsynced counters, "0" when it does not
-- ARGV[3]  milliseconds added to Redis's clock (tests move it; 0 otherwise)
-- ARGV[4]  the time to use instead of Redis's clock, or empty (tests)
--
-- Returns one of:
--   {"miss_key"}                       the key cache has no entry
--   {"invalid_key"} | {"revoked_key"} | {"expired_key"} | {"wrong_kind"}
--   {"rekey", key_id}                  the entry is another key id's
--   {"hit", key_id, version, part, live}
--   {"miss", key_id, version, time_zone, live, pending, created_ms}
-- where live is HGETALL of mx:<key id> (`<day>|<counter>`, value) and
-- pending HGETALL of mx:pend:<key id> (`<batch id>|<day>|<counter>`, value),
-- both empty when ARGV[2] is "0".

local cached = redis.call('GET', KEYS[1])
if not cached then return {'miss_key'} end
local key = cjson.decode(cached)
if key.status == 'unknown' then return {'invalid_key'} end
if key.id ~= ARGV[1] then return {'rekey', key.id or ''} end
if key.status ~= 'active' then return {'revoked_key'} end
-- Expiry by Redis's clock, as admit.lua judges it.
if key.expires_ms then
  local now = tonumber(ARGV[4] or '')
  if not now then
    local time = redis.call('TIME')
    now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + (tonumber(ARGV[3]) or 0)
  end
  if now >= key.expires_ms then return {'expired_key'} end
end
if key.kind ~= 'sk' then return {'wrong_kind'} end
local id = key.id
local counters = ARGV[2] == '1'

local version = redis.call('GET', KEYS[2]) or '0'
local entry = redis.call('HMGET', KEYS[3], 'v', 'part')
local live = {}
if counters then live = redis.call('HGETALL', KEYS[4]) end
if entry[1] == version and entry[2] then return {'hit', id, version, entry[2], live} end

local pending = {}
if counters then pending = redis.call('HGETALL', KEYS[5]) end
return {'miss', id, version, key.timezone or 'UTC', live, pending, tostring(key.created_ms or '')}
