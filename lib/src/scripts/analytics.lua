-- analytics.lua: everything a GET /api/analytics needs from Redis, in one
-- round trip: authenticate the secret key from the key cache, then answer
-- from the result cache, or, on a miss, hand back the usage counters that
-- the sync has not moved into Postgres yet.
--
-- Cached results live under `an:c:<key id>:<version>:<view and params>`.
-- The version (`an:ver:<key id>`) is bumped by snapshot.lua whenever it
-- takes a key's counters into a sync batch, so a sync invalidates every
-- cached view of the key at once without a list of keys to delete.
--
-- KEYS[1]  the key cache entry of the presented key (JSON, see apikeys.rs)
-- ARGV[1]  key prefix
-- ARGV[2]  the view and its canonical parameters (part of the cache key)
-- ARGV[3]  "1" when the view adds unsynced counters, "0" when it does not
--
-- Returns one of:
--   {"miss_key"}                       the key cache has no entry
--   {"invalid_key"} | {"revoked_key"} | {"wrong_kind"}
--   {"hit", key_id, version, body}
--   {"miss", key_id, version, time_zone, live, pending}
-- where live holds the key's unsynced counters as `<key id>:<day>|<counter>`,
-- value pairs (the sync batch format), and pending holds, for each sync
-- batch not yet confirmed, its id and the pairs of this key in it.

local p = ARGV[1]
local cached = redis.call('GET', KEYS[1])
if not cached then return {'miss_key'} end
local key = cjson.decode(cached)
if key.status == 'unknown' then return {'invalid_key'} end
if key.status ~= 'active' then return {'revoked_key'} end
if key.kind ~= 'sk' then return {'wrong_kind'} end
local id = key.id

local version = redis.call('GET', p .. 'an:ver:' .. id) or '0'
local body = redis.call('GET', p .. 'an:c:' .. id .. ':' .. version .. ':' .. ARGV[2])
if body then return {'hit', id, version, body} end

local live, pending = {}, {}
if ARGV[3] == '1' then
  for _, day in ipairs(redis.call('SMEMBERS', p .. 'mx:days:' .. id)) do
    local member = id .. ':' .. day
    local fields = redis.call('HGETALL', p .. 'mx:' .. member)
    for i = 1, #fields, 2 do
      live[#live + 1] = member .. '|' .. fields[i]
      live[#live + 1] = fields[i + 1]
    end
  end
  -- Pending batches are rare (a sync in progress, or one that died), so
  -- scanning them for this key's fields is cheap in practice.
  for _, batch_id in ipairs(redis.call('SMEMBERS', p .. 'mx:pending')) do
    local mine = {}
    local cursor = '0'
    repeat
      local page = redis.call('HSCAN', p .. 'mx:batch:' .. batch_id, cursor,
        'MATCH', id .. ':*', 'COUNT', 1000)
      cursor = page[1]
      for _, item in ipairs(page[2]) do mine[#mine + 1] = item end
    until cursor == '0'
    pending[#pending + 1] = batch_id
    pending[#pending + 1] = mine
  end
end
return {'miss', id, version, key.timezone or 'UTC', live, pending}
