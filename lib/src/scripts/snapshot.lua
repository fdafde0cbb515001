#!lua flags=allow-key-locking
-- snapshot.lua: take the unsynced counters of some keys into a new sync
-- batch, atomically.
--
-- Each counted request increments the key's hash `mx:<key id>` (fields
-- `<day>|<counter>`) and adds the key id to its shard's dirty set. This
-- script moves the listed keys' hashes into their `mx:pend:<key id>`
-- hashes under the batch id (fields `<batch id>|<day>|<counter>`), deletes
-- them, and takes the ids out of the dirty set, so increments that arrive
-- afterwards start fresh hashes and are never lost or counted twice. It
-- bumps each key's analytics version `an:ver:<key id>` (see analytics.lua),
-- records the batch's keys in `mx:batch:<batch id>` and the batch in
-- `mx:pending` until its Postgres commit is confirmed (batch_done.lua).
--
-- KEYS[1]  mx:pending
-- KEYS[2]  mx:batch:<batch id>
-- KEYS[3]  mx:dirty:<shard>       the dirty set the ids were read from
-- KEYS[4..] for each key id in ARGV, in order: mx:<key id>,
--          mx:pend:<key id>, an:ver:<key id>
-- ARGV[1]  the batch id
-- ARGV[2..] the key ids
--
-- Returns the batch's counters as a flat list of `<key id>:<day>|<counter>`
-- and value, empty when the keys had none.

local pending_key, batch_key, dirty_key = KEYS[1], KEYS[2], KEYS[3]
local batch_id = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local base = 4 + (i - 2) * 3
  local live_key, pend_key, version_key = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  local fields = redis.call('HGETALL', live_key)
  if #fields > 0 then
    for j = 1, #fields, 2 do
      redis.call('HSET', pend_key, batch_id .. '|' .. fields[j], fields[j + 1])
      out[#out + 1] = id .. ':' .. fields[j]
      out[#out + 1] = fields[j + 1]
    end
    redis.call('DEL', live_key)
    redis.call('SADD', batch_key, id)
    -- Cached analytics of the key were computed from counters that just
    -- moved; a new version retires them (see analytics.lua).
    redis.call('INCR', version_key)
    redis.call('EXPIRE', version_key, 604800)
  end
  redis.call('SREM', dirty_key, id)
end
if #out > 0 then
  redis.call('SADD', pending_key, batch_id)
end
return out
