#!lua flags=allow-key-locking
-- fill_key.lua: writes a key cache entry looked up in Postgres, unless the
-- key changed since the lookup began. Every change the CLI or the API makes
-- to a key (a revoke above all) bumps the generation of its cache entries
-- and then deletes them; a refill reads the generation before its lookup,
-- and its write lands only if the generation is still the one it read. So
-- a refill that began before a revoke cannot write back an "active" entry
-- after the revoke deleted it.
--
-- A lookup that found no active key is one failed authentication of the
-- client IP, counted here (admission.rs reads the count before any lookup),
-- whether or not the entry lands.
--
-- KEYS[1]  the key cache entry of the presented key
-- KEYS[2]  keygen:<hash>  the generation of the entry
-- KEYS[3]  authfail:ip:<ip>  (when the client IP is known)
-- ARGV[1]  the generation read before the lookup ("" for none)
-- ARGV[2]  the entry, JSON
-- ARGV[3]  its TTL, seconds
-- ARGV[4]  "1" when the lookup found no active key
--
-- Returns 1 if the entry was written, 0 if the key changed meanwhile.

if KEYS[3] and ARGV[4] == '1' then
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], 60000) end
end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
