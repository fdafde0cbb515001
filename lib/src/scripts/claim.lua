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
-- ARGV[6]  about how many bytes of events to claim: the entry that crosses
--          it is the last (the first entry is always taken), so that a
--          batch of large events fits in a drain's memory
--
-- Returns {reclaimed, entries}: how many entries were reclaimed, and each
-- entry as {id, fields, deliveries}.

local queue, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local visibility, target, max_entries = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local max_bytes = tonumber(ARGV[6])

-- The group starts at the beginning of the stream, so nothing queued before
-- the first drain is skipped. BUSYGROUP means it exists already.
pcall(redis.call, 'XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')

local entries, events, bytes, reclaimed = {}, 0, 0, 0

-- How many entries to read next: as many as surely fit the bytes left,
-- at most an entry's largest size each (collect's 1 MB body limit, with
-- room to spare), and at least one. Reading more at once could take a
-- run of large entries far past the bound.
local largest_entry = 1200000
local function next_count()
  local room = max_entries - #entries
  return math.max(1, math.min(room, 100, math.floor((max_bytes - bytes) / largest_entry)))
end

local function take(entry, deliveries)
  local fields = entry[2]
  local n = 0
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then
      n = tonumber(fields[i + 1]) or 0
    elseif fields[i] == 'e' then
      bytes = bytes + #fields[i + 1]
    end
  end
  events = events + n
  entries[#entries + 1] = {entry[1], fields, deliveries}
end

-- Expired batches of dead runs first: they are the oldest work.
local cursor = '0-0'
repeat
  local room = max_entries - #entries
  if room <= 0 or events >= target or bytes >= max_bytes then break end
  local claimed = redis.call('XAUTOCLAIM', queue, group, consumer, visibility, cursor, 'COUNT', next_count())
  cursor = claimed[1]
  for _, entry in ipairs(claimed[2]) do
    local info = redis.call('XPENDING', queue, group, entry[1], entry[1], 1)
    local deliveries = (info[1] and info[1][4]) or 2
    reclaimed = reclaimed + 1
    take(entry, deliveries)
  end
until cursor == '0-0'

while events < target and #entries < max_entries and bytes < max_bytes do
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', next_count(), 'STREAMS', queue, '>')
  if not read then break end
  local batch = read[1][2]
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    take(entry, 1)
  end
end

return {reclaimed, entries}
