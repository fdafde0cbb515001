#!lua flags=allow-key-locking
-- ack.lua: acknowledge entries of one queue shard whose events are
-- committed to Postgres, and delete them from the stream so that it does
-- not grow.
--
-- KEYS[1]  events:queue:<shard>   the shard's stream
-- KEYS[2]  events:stats:<shard>   its counters (queued_events and
--          queued_bytes go down)
-- ARGV[1]  consumer group
-- ARGV[2..] triples of entry id, its number of events and its events' bytes
--
-- Returns the number of entries acknowledged. An entry acknowledged before
-- (by a run that finished late) is not counted twice.

local queue, group = KEYS[1], ARGV[1]
local acked, events, bytes = 0, 0, 0
local ids = {}
for i = 2, #ARGV, 3 do
  if redis.call('XACK', queue, group, ARGV[i]) == 1 then
    acked = acked + 1
    events = events + tonumber(ARGV[i + 1])
    bytes = bytes + tonumber(ARGV[i + 2])
  end
  ids[#ids + 1] = ARGV[i]
  if #ids == 500 then
    redis.call('XDEL', queue, unpack(ids))
    ids = {}
  end
end
if #ids > 0 then
  redis.call('XDEL', queue, unpack(ids))
end
if events > 0 then
  redis.call('HINCRBY', KEYS[2], 'queued_events', -events)
end
if bytes > 0 then
  redis.call('HINCRBY', KEYS[2], 'queued_bytes', -bytes)
end
return acked
