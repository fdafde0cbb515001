-- snapshot.lua: take the dirty metrics into a sync batch, atomically.
--
-- Each admitted or refused request increments the hash `mx:<key id>:<day>`
-- and adds `<key id>:<day>` to the set `mx:dirty`. This script moves up to
-- ARGV[3] dirty hashes into one batch hash (`mx:batch:<id>`, fields
-- `<key id>:<day>|<counter>`) and deletes them, so increments that arrive
-- afterwards start fresh hashes and are never lost or counted twice. It
-- also takes the day out of the key's `mx:days:<key id>` set and bumps the
-- key's analytics version `an:ver:<key id>` (see analytics.lua). The
-- batch is recorded in `mx:pending` until its Postgres commit is confirmed;
-- a batch still pending (its run died) is returned again instead of a new one.
--
-- ARGV[1]  key prefix
-- ARGV[2]  id for a new batch
-- ARGV[3]  most dirty hashes per batch
--
-- Returns {batch_id, fields} with fields as HGETALL gives them, or {"", {}}
-- when there is nothing to sync.

local p = ARGV[1]
local pending_key = p .. 'mx:pending'
local batch_id = redis.call('SRANDMEMBER', pending_key)
if not batch_id then
  local members = redis.call('SPOP', p .. 'mx:dirty', ARGV[3])
  if #members == 0 then return {'', {}} end
  batch_id = ARGV[2]
  local batch_key = p .. 'mx:batch:' .. batch_id
  for _, member in ipairs(members) do
    local source = p .. 'mx:' .. member
    local fields = redis.call('HGETALL', source)
    for i = 1, #fields, 2 do
      redis.call('HSET', batch_key, member .. '|' .. fields[i], fields[i + 1])
    end
    redis.call('DEL', source)
    local id, day = string.match(member, '^(.*):([^:]+)$')
    redis.call('SREM', p .. 'mx:days:' .. id, day)
    -- Cached analytics of the key were computed from counters that just
    -- moved; a new version retires them (see analytics.lua).
    local version = p .. 'an:ver:' .. id
    redis.call('INCR', version)
    redis.call('EXPIRE', version, 604800)
  end
  redis.call('SADD', pending_key, batch_id)
end
return {batch_id, redis.call('HGETALL', p .. 'mx:batch:' .. batch_id)}
