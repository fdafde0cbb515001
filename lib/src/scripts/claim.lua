#!lua flags=allow-key-locking
-- claim.lua: claim a batch of queued requests from one shard of the event
-- queue, for one drain run.
--
-- Each shard is a stream read through one consumer group. Reading an entry
-- moves it into the group's pending list, the in-flight area, where it
-- stays until acknowledged after its Postgres commit. An entry left pending
-- longer than the visibility timeout belongs to a run that died, and is
-- reclaimed.
--
-- KEYS[1]  events:queue:<shard>   the shard's stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (this run)
-- ARGV[3]  visibility timeout, ms
-- ARGV[4]  target number of events
-- ARGV[5]  maximum number of entries
--
-- Returns {reclaimed, entries}: how many entries were reclaimed, and each
-- entry as {id, fields, deliveries}.

local queue, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local visibility, target, max_entries = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])

-- The group starts at the beginning of the stream, so nothing queued before
-- the first drain is skipped. BUSYGROUP means it exists already.
pcall(redis.call, 'XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')

local entries, events, reclaimed = {}, 0, 0

local function take(entry, deliveries)
  local fields = entry[2]
  local n = 0
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then
      n = tonumber(fields[i + 1]) or 0
    end
  end
  events = events + n
  entries[#entries + 1] = {entry[1], fields, deliveries}
end

-- Expired batches of dead runs first: they are the oldest work.
local cursor = '0-0'
repeat
  local room = max_entries - #entries
  if room <= 0 or events >= target then break end
  local claimed = redis.call('XAUTOCLAIM', queue, group, consumer, visibility, cursor, 'COUNT', math.min(room, 100))
  cursor = claimed[1]
  for _, entry in ipairs(claimed[2]) do
    local info = redis.call('XPENDING', queue, group, entry[1], entry[1], 1)
    local deliveries = (info[1] and info[1][4]) or 2
    reclaimed = reclaimed + 1
    take(entry, deliveries)
  end
until cursor == '0-0'

while events < target and #entries < max_entries do
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', math.min(max_entries - #entries, 100), 'STREAMS', queue, '>')
  if not read then break end
  local batch = read[1][2]
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    take(entry, 1)
  end
end

return {reclaimed, entries}
