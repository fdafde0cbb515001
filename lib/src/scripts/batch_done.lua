#!lua flags=allow-key-locking
-- batch_done.lua: forget a sync batch whose Postgres commit is confirmed.
--
-- Deletes the batch's fields from each of its keys' `mx:pend:<key id>`
-- hashes (the fields of other batches stay), the batch's key set, and the
-- batch from `mx:pending`. Running it twice does nothing more.
--
-- KEYS[1]  mx:pending
-- KEYS[2]  mx:batch:<batch id>
-- KEYS[3..] mx:pend:<key id> for each of the batch's keys
-- ARGV[1]  the batch id
--
-- Returns the number of fields deleted.

local prefix = ARGV[1] .. '|'
local deleted = 0
for i = 3, #KEYS do
  local doomed = {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[i])) do
    if string.sub(field, 1, #prefix) == prefix then
      doomed[#doomed + 1] = field
    end
  end
  for j = 1, #doomed, 500 do
    deleted = deleted + redis.call('HDEL', KEYS[i], unpack(doomed, j, math.min(j + 499, #doomed)))
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
return deleted
