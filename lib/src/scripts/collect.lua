-- collect.lua: authenticate a collect request from the key cache and enqueue
-- its events, in one round trip.
--
-- KEYS[1]  key cache entry of the presented key (JSON, see apikeys.rs)
-- KEYS[2]  event queue (stream)
-- KEYS[3]  event stats (hash)
-- KEYS[4]  today's visitor salt
-- ARGV[1]  request Origin, or "" when none was sent
-- ARGV[2]  events as a JSON array, or "" when none was accepted
-- ARGV[3]  number of events in ARGV[2]
-- ARGV[4]  number of events dropped as bot traffic
-- ARGV[5]  client IP (hashed here into the visitor id, never stored)
-- ARGV[6]  user agent
-- ARGV[7]  a fresh random salt, used if today has none yet
-- ARGV[8]  salt TTL in seconds
--
-- Returns {"ok", key_id} | {"miss"} | {"invalid"} | {"revoked"} | {"origin"}.
-- On "miss" nothing was written: the caller fills the cache and retries.

local cached = redis.call('GET', KEYS[1])
if not cached then
  return {'miss'}
end
local key = cjson.decode(cached)
if key.status == 'unknown' then
  return {'invalid'}
end
if key.status ~= 'active' then
  return {'revoked'}
end

-- A publishable key may be limited to some browser origins.
local origins = key.origins
if key.kind == 'pk' and type(origins) == 'table' and #origins > 0 then
  local allowed = false
  for _, origin in ipairs(origins) do
    if origin == ARGV[1] then
      allowed = true
      break
    end
  end
  if not allowed then
    return {'origin'}
  end
end

local bots = tonumber(ARGV[4])
if bots > 0 then
  redis.call('HINCRBY', KEYS[3], 'bots_dropped', bots)
end

local count = tonumber(ARGV[3])
if count > 0 then
  redis.call('SET', KEYS[4], ARGV[7], 'NX', 'EX', ARGV[8])
  local salt = redis.call('GET', KEYS[4])
  local visitor = redis.sha1hex(salt .. '|' .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. key.id)
  redis.call('XADD', KEYS[2], '*', 'k', key.id, 'v', visitor, 'n', count, 'e', ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'queued_events', count)
end
return {'ok', key.id}
