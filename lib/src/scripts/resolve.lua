#!lua flags=allow-key-locking
-- resolve.lua: what an instance that does not yet know a presented key
-- learns of it, in one round trip, before it names the key's Redis state:
-- its key cache entry, and whether the bans are loaded (for a refill). A
-- client IP that failed to authenticate too often in the last minute is
-- refused here, before any lookup; an entry of an unknown or revoked key
-- counts as one more failure.
--
-- KEYS[1]  the key cache entry of the presented key (JSON, see apikeys.rs)
-- KEYS[2]  bans:loaded
-- KEYS[3]  keygen:<hash>  the generation of the entry, for a refill
-- KEYS[4]  authfail:ip:<ip>  (when the client IP is known)
-- ARGV[1]  failed authentications allowed per IP per minute
--
-- Returns one of:
--   {"too_many_failures", pttl}  the IP is over its limit for pttl ms more
--   {"cached", entry}
--   {"miss", bans_loaded, generation}  no entry: the caller fills it from
--                                Postgres, under that generation (fill_key.lua)

local failures = KEYS[4]
if failures then
  local n = tonumber(redis.call('GET', failures) or '0')
  if n >= tonumber(ARGV[1]) then
    return {'too_many_failures', math.max(redis.call('PTTL', failures), 0)}
  end
end
local cached = redis.call('GET', KEYS[1])
if not cached then
  return {'miss', redis.call('EXISTS', KEYS[2]), redis.call('GET', KEYS[3]) or ''}
end
if failures and cjson.decode(cached).status ~= 'active' then
  if redis.call('INCR', failures) == 1 then redis.call('PEXPIRE', failures, 60000) end
end
return {'cached', cached}
