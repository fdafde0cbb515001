#!lua flags=allow-key-locking
-- root_limit.lua: the rate limit of /api/keys, decided before the root key
-- is looked up in Postgres, and the count of its failed authentications.
--
-- "admit": applies the presented root key's per-minute limit (GCRA, as in
-- admit.lua: `limit` at once, then one per 60 s / limit) and reads the
-- client IP's failed authentications this minute, so that a client trying
-- keys is refused before it costs a lookup. "fail": counts one failed
-- authentication of the client IP (the window starts at the first).
--
-- KEYS[1]  rl:root:<sha256 hex of the presented key>
-- KEYS[2]  authfail:ip:<ip>   (when the client IP is known)
-- ARGV[1]  "admit" or "fail"
-- ARGV[2]  the limit per minute (admit)
--
-- Returns {allowed (1 or 0), retry_after_ms, failures, failures_ttl_ms};
-- for "fail", {1, 0, failures, failures_ttl_ms}.

local failures_key = KEYS[2]
local function failures()
  if not failures_key then return 0, 0 end
  return tonumber(redis.call('GET', failures_key) or '0'), redis.call('PTTL', failures_key)
end

if ARGV[1] == 'fail' then
  if failures_key then
    local n = redis.call('INCR', failures_key)
    if n == 1 then redis.call('PEXPIRE', failures_key, 60000) end
  end
  local n, ttl = failures()
  return {1, 0, n, ttl}
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local limit = tonumber(ARGV[2])
local interval = 60000 / limit
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local new_tat = tat + interval
local n, ttl = failures()
if new_tat - 60000 > now then
  return {0, math.ceil(new_tat - 60000 - now), n, ttl}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, 0, n, ttl}
