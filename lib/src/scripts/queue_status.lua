#!lua flags=allow-key-locking,no-writes
-- queue_status.lua: everything queue-status reports of one queue shard, in
-- one read-only call (queue.rs adds the shards up).
--
-- KEYS[1]  events:queue:<shard>   the shard's stream
-- KEYS[2]  events:stats:<shard>   its counters
-- ARGV[1]  consumer group
-- ARGV[2]  visibility timeout, ms
--
-- Returns {length, pending, expired, oldest_queued_id, oldest_pending_id, stats}
-- where the ids are "" when there is none and stats is HGETALL's flat list.
-- length counts entries not yet read by a drain.

local queue, group = KEYS[1], ARGV[1]
local total = redis.call('XLEN', queue)
local pending, expired, oldest_pending = 0, 0, ''
local last_delivered = nil

local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', queue)
if ok then
  for _, info in ipairs(groups) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == group then
      pending = fields['pending']
      last_delivered = fields['last-delivered-id']
    end
  end
end

if pending > 0 then
  local summary = redis.call('XPENDING', queue, group)
  oldest_pending = summary[2] or ''
  local stale = redis.call('XPENDING', queue, group, 'IDLE', ARGV[2], '-', '+', 10000)
  expired = #stale
end

local oldest_queued = ''
local first
if last_delivered then
  first = redis.call('XRANGE', queue, '(' .. last_delivered, '+', 'COUNT', 1)
else
  first = redis.call('XRANGE', queue, '-', '+', 'COUNT', 1)
end
if first[1] then oldest_queued = first[1][1] end

return {total - pending, pending, expired, oldest_queued, oldest_pending, redis.call('HGETALL', KEYS[2])}
