#!lua flags=allow-key-locking
-- admit.lua: everything one metered request needs from Redis, in one round
-- trip: authenticate the key from the key cache, check the origin and the
-- bans, apply the rate limits (GCRA) and the daily and monthly quotas,
-- escalate bans on repeated violations, count the request in the
-- write-behind metrics, and enqueue the request log and the route's own
-- payload (collected events, an upload log).
--
-- Every key it touches is in KEYS (Upstash's key locking); the caller names
-- them from the key id it resolved for the presented key, and the script
-- checks that the cache entry agrees before it touches any other key.
--
-- KEYS[1]   the key cache entry of the presented key (JSON, see apikeys.rs)
-- KEYS[2]   adm:<request id>        the remembered verdict
-- KEYS[3]   rl:key:<key id>         the key's limiter (rl:read:<key id>
--                                   for analytics reads, which are not usage)
-- KEYS[4]   q:<key id>              the key's quota use
-- KEYS[5]   mx:<key id>             the key's unsynced counters
-- KEYS[6]   ban:key:<key id>
-- KEYS[7]   viols:key:<key id>
-- KEYS[8]   banlevel:key:<key id>
-- KEYS[9]   events:queue:<shard>    the queue shard drawn for this request
-- KEYS[10]  events:stats:<shard>    its counters: queued_events, queued_bytes, bots_dropped
-- KEYS[11]  mx:dirty:<shard>        its set of keys with unsynced counters
-- KEYS[12]  salt:<key id>:<utc day> the visitor-id salt
-- KEYS[13..16] (publishable keys with a client IP only)
--           rl:ip:<ip>, ban:ip:<ip>, viols:ip:<ip>, banlevel:ip:<ip>
-- ARGV[1]  the request, as one line of JSON (see admission.rs,
--          `ScriptRequest`), then a newline and the collected events as the
--          caller encoded them (nothing for other routes): sent as the raw
--          body of the call, so the events are never escaped on the way and
--          are queued as they came. The request's key_id is the id the
--          caller named the keys after, its deadline_ms bounds when the
--          script may act, a counted verdict is remembered for memo_ms, and
--          `settle` (a call asked again after a lost reply or an error)
--          only reads that verdict or marks the request as not run;
--          `alert_pcts` lists the quota percentages that raise an alert
--
-- Alerts are recorded where the counters are, in mx:<key id>, and the
-- metrics sync inserts them into Postgres, once (alerts.rs): a field
-- `<day>|al:<type>:<scope>:<period>:<threshold>:<limit>:<used>` whose value
-- is the time of the event. `quota.threshold` (scope `day` or `month`) when
-- an admitted request brings the quota's use from below a percentage of
-- its limit to at or above it; `key.banned` (scope `key`, the ban's start
-- as period, its end or 0 as limit) when the escalation bans the key.
--
-- Returns {verdict, key_id, limit, remaining, reset_ms, retry_after_ms, detail}:
--   verdict "ok" | "late" (not run: settled, or past deadline_ms) |
--   "invalid_key" | "revoked_key" | "expired_key" | "origin_not_allowed" |
--   "banned" | "rate_limited" | "daily_quota_exceeded" |
--   "monthly_quota_exceeded" | "miss" | "reseed_quota" | "rekey" |
--   "partial" (asked again: an earlier call began writing and failed, so
--   the request may have been counted) | "queue_full" (not run: the
--   shard's queue holds its capacity of events);
--   limit/remaining/reset_ms describe the per-minute limit;
--   detail is the ban's JSON for "banned", "permanent" or "permanent-ip"
--   when this request made a ban permanent, the day and month to reseed
--   ("2026-11-21|2026-11") for "reseed_quota", the provider of an admitted
--   upload, or the size limit an upload broke; "rekey" (nothing done) means
--   the cache entry belongs to the key id in key_id, not to the one the
--   keys were named after. Uploads may also be refused as
--   "content_type_not_allowed", "file_too_large" or
--   "provider_not_configured" (counted as failed).

local newline = string.find(ARGV[1], '\n', 1, true) or (#ARGV[1] + 1)
local req = cjson.decode(string.sub(ARGV[1], 1, newline - 1))
local events_json = string.sub(ARGV[1], newline + 1)
local cache_key, memo_key, rate_key, quota_key, metrics_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ban_keys = {key = KEYS[6]}
local viol_keys = {key = KEYS[7]}
local level_keys = {key = KEYS[8]}
local queue_key, stats_key, dirty_key, salt_key = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local ip_rate_key
if #KEYS >= 16 then
  ip_rate_key = KEYS[13]
  ban_keys.ip, viol_keys.ip, level_keys.ip = KEYS[14], KEYS[15], KEYS[16]
end

local time = redis.call('TIME')
local now = req.now_ms or (tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + (req.offset_ms or 0))
-- A request asked again because its first reply was lost gets the verdict
-- it was counted under, and is not counted again (admission.rs).
local memo = redis.call('GET', memo_key)
if memo then return cjson.decode(memo) end
-- Asked again and not counted yet: mark the request as not run, so that a
-- first call still on its way does nothing when it arrives.
local late = {'late', '', 0, 0, 0, 0, ''}
if req.settle then
  redis.call('SET', memo_key, cjson.encode(late), 'PX', req.memo_ms)
  return late
end
-- Past its deadline the caller has stopped asking and may have answered
-- from its fallback (admission.rs); acting now could count twice.
if (req.deadline_ms or 0) > 0 and now > req.deadline_ms then
  return late
end
-- Remembers a counted verdict for as long as the caller may ask again.
local function counted(reply)
  redis.call('SET', memo_key, cjson.encode(reply), 'PX', req.memo_ms)
  return reply
end

local cached = redis.call('GET', cache_key)
if not cached then return {'miss', '', 0, 0, 0, 0, ''} end
local key = cjson.decode(cached)
if key.status == 'unknown' then return {'invalid_key', '', 0, 0, 0, 0, ''} end
local id = key.id
-- The other keys were named after the id the caller resolved; a different
-- one means they belong to another key, so nothing may be touched.
if id ~= req.key_id then return {'rekey', id or '', 0, 0, 0, 0, ''} end
if key.status ~= 'active' then return {'revoked_key', id, 0, 0, 0, 0, ''} end
-- Expiry is judged by Redis's clock, so a cached entry needs no TTL of
-- its own to stop at the moment; like a revoked key, not counted.
if key.expires_ms and now >= key.expires_ms then return {'expired_key', id, 0, 0, 0, 0, ''} end

if key.kind == 'pk' and type(key.origins) == 'table' and #key.origins > 0 then
  local allowed = false
  for _, origin in ipairs(key.origins) do
    if origin == req.origin then allowed = true break end
  end
  if not allowed then return {'origin_not_allowed', id, 0, 0, 0, 0, ''} end
end

-- A ban ends at its `until` by the script's clock, as well as by its TTL, so
-- that tests can move through time without waiting.
local function ban_of(ban_key)
  local ban = redis.call('GET', ban_key)
  if ban then
    local untill = cjson.decode(ban)['until']
    if type(untill) == 'number' and untill <= now then return nil end
  end
  return ban
end
local ban = ban_of(ban_keys.key)
if not ban and ban_keys.ip then ban = ban_of(ban_keys.ip) end

-- Calendar day and month in the key's time zone (Hinnant's civil_from_days).
local function civil(ms)
  local days = math.floor(ms / 86400000)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return y, m, d
end
local offset = (key.tz_offset or 0) * 1000
local y, m, d = civil(now + offset)
local day_id = string.format('%04d-%02d-%02d', y, m, d)
local month_id = string.format('%04d-%02d', y, m)

-- Reads of the key's own analytics are limited, banned and logged like
-- any request, but they are not usage: they spend no quota and move no
-- usage counter (`metered` false).
local metered = req.metered ~= false

-- Records an alert in the key's write-behind hash (see the header); the
-- caller's count() or refuse() adds the key to the dirty set.
local function alert(kind, scope, period, threshold, limit, used)
  if type(period) == 'number' then period = string.format('%d', period) end
  redis.call('HSET', metrics_key, day_id .. '|al:' .. kind .. ':' .. scope .. ':' .. period .. ':' ..
    string.format('%d:%d:%d', threshold, limit, used), string.format('%d', now))
end

-- Write-behind metrics: one hash per key, its fields per day, found by the
-- sync through the shard's dirty set, never by scanning.
local function count(ok, provider)
  if not metered then return end
  local f = day_id .. '|'
  redis.call('HINCRBY', metrics_key, f .. 'req', 1)
  redis.call('HINCRBY', metrics_key, f .. (ok and 'ok' or 'fail'), 1)
  local last = tonumber(redis.call('HGET', metrics_key, f .. 'last') or '0')
  if now > last then redis.call('HSET', metrics_key, f .. 'last', now) end
  local upload = req.upload
  if ok and upload and provider then
    redis.call('HINCRBY', metrics_key, f .. 'files', 1)
    redis.call('HINCRBY', metrics_key, f .. 'bytes', upload.size)
    local pp = f .. 'p:' .. provider .. ':'
    redis.call('HINCRBY', metrics_key, pp .. 'n', 1)
    redis.call('HINCRBY', metrics_key, pp .. 'b', upload.size)
    redis.call('HSET', metrics_key, pp .. 'last', now)
    redis.call('HINCRBY', metrics_key, f .. 'ft:' .. upload.content_type, 1)
  end
  redis.call('SADD', dirty_key, id)
end

local function log(outcome, status)
  local entry = cjson.encode({id = req.request_id, route = req.route, outcome = outcome,
    status = status, latency_ms = req.latency_ms, at = now})
  redis.call('XADD', queue_key, '*', 't', 'req', 'k', id, 'n', 0, 'e', entry)
end

-- A refusal (a ban, a limit, a quota) is counted in aggregate, per minute,
-- route and code (`rf:<unix minute>:<route>:<code>`), not logged one entry
-- each: a refused flood costs a counter, not a queue entry and a row.
local function refuse(verdict, limit, remaining, reset, retry, detail, status)
  count(false)
  local field = day_id .. '|rf:' .. math.floor(now / 60000) .. ':' .. req.route .. ':' .. verdict
  redis.call('HINCRBY', metrics_key, field, 1)
  redis.call('SADD', dirty_key, id)
  return counted({verdict, id, limit, remaining, reset, retry, detail})
end

-- Quotas count admitted, valid requests, in the key's day and month. A
-- period the hash does not hold is a new one, or a lost one: the caller
-- reseeds it from Postgres and calls again, and the script adds the
-- unsynced counters. Decided before any write, so that asking again
-- leaves nothing behind.
local day_limit = metered and tonumber(key.limits and key.limits.day) or nil
local month_limit = metered and tonumber(key.limits and key.limits.month) or nil
local quota_ttl = 32 * 86400000
local quota = redis.call('HMGET', quota_key, 'd', 'du', 'm', 'mu')
local used_day, used_month = tonumber(quota[2]), tonumber(quota[4])
local reseeded_day, reseeded_month = false, false
if quota[1] ~= day_id then used_day = nil end
if quota[3] ~= month_id then used_month = nil end
if req.reseed and ((day_limit and not used_day) or (month_limit and not used_month)) then
  local unsynced_day, unsynced_month = 0, 0
  local fields = redis.call('HGETALL', metrics_key)
  for i = 1, #fields, 2 do
    local field_day = string.match(fields[i], '^(%d+%-%d+%-%d+)|ok$')
    if field_day then
      local n = tonumber(fields[i + 1]) or 0
      if field_day == day_id then unsynced_day = unsynced_day + n end
      if string.sub(field_day, 1, 7) == month_id then unsynced_month = unsynced_month + n end
    end
  end
  if day_limit and not used_day then
    used_day, reseeded_day = req.reseed.day + unsynced_day, true
  end
  if month_limit and not used_month then
    used_month, reseeded_month = req.reseed.month + unsynced_month, true
  end
end
if (day_limit and not used_day) or (month_limit and not used_month) then
  return {'reseed_quota', id, 0, 0, 0, 0, day_id .. '|' .. month_id}
end

-- The queue holds at most queue_capacity bytes of events per shard: past
-- it the caller stores the events itself, straight in Postgres. Checked
-- before any write, so that this refusal means "not run".
local events = req.events
if events and events.n > 0 then
  local queued = tonumber(redis.call('HGET', stats_key, 'queued_bytes') or '0')
  if queued + #events_json > req.queue_capacity then
    return {'queue_full', id, 0, 0, 0, 0, ''}
  end
end

-- Everything above only read. Before its first write the script marks the
-- request as begun: Redis does not undo what a script wrote before it
-- failed part-way, so a caller asking again after an error must learn
-- that this request may have been counted ("partial"), not that it never
-- ran. The verdict below replaces the mark.
redis.call('SET', memo_key, cjson.encode({'partial', id, 0, 0, 0, 0, ''}), 'PX', req.memo_ms)
if reseeded_day then redis.call('HSET', quota_key, 'd', day_id, 'du', used_day) end
if reseeded_month then redis.call('HSET', quota_key, 'm', month_id, 'mu', used_month) end
if reseeded_day or reseeded_month then redis.call('PEXPIRE', quota_key, quota_ttl) end
-- Quota alerts: a request crossed a percentage of a limit. The script is
-- atomic, so of a concurrent burst exactly one request crosses. A quota
-- reseeded from Postgres (a new period, or a flushed Redis) counts as
-- having been at 0, so a threshold met before a flush is recorded again,
-- whatever this request's fate: if its first record was lost with the
-- flush, this one is delivered, and if not, Postgres drops the repeat.
local function crossed(scope, period, limit, before, after)
  for _, pct in ipairs(req.alert_pcts or {}) do
    local line = math.max(1, math.ceil(limit * pct / 100))
    if before < line and after >= line then
      alert('quota.threshold', scope, period, pct, limit, after)
    end
  end
end
if reseeded_day then crossed('day', day_id, day_limit, 0, used_day) end
if reseeded_month then crossed('month', month_id, month_limit, 0, used_month) end


if ban then
  return refuse('banned', 0, 0, 0, 0, ban, 403)
end

-- GCRA: the state is one timestamp per limiter (the theoretical arrival
-- time), admitting `limit` at once and then one per period/limit.
local function gcra(state_key, limit, cost)
  local interval = 60000 / limit
  local tat = math.max(tonumber(redis.call('GET', state_key) or '0'), now)
  local new_tat = tat + interval * cost
  local allow_at = new_tat - 60000
  if allow_at > now then
    return false, tat, math.ceil(allow_at - now), 0, math.ceil(tat - now)
  end
  return true, new_tat, 0, math.floor((60000 - (new_tat - now)) / interval), math.ceil(new_tat - now)
end

local limit = tonumber(key.limits and key.limits.minute) or 0
local ok_rate, tat, retry, remaining, reset = true, nil, 0, limit, 0
if limit > 0 then
  ok_rate, tat, retry, remaining, reset = gcra(rate_key, limit, 1)
end
local ip_ok, ip_tat, ip_retry = true, nil, 0
if ip_rate_key and (req.ip_limit or 0) > 0 then
  local ip_remaining, ip_reset
  ip_ok, ip_tat, ip_retry, ip_remaining, ip_reset = gcra(ip_rate_key, req.ip_limit, 1)
end

-- Bans are for abuse, not for bursts. A violation is a limiter window (a
-- minute of the script's clock) in which the subject was refused at least
-- `violation_ratio` times its limit; a burst is refused, but makes at most
-- one. Three violations within ten minutes ban the subject: five minutes,
-- then a day, then for good (Postgres records permanent bans; the caller
-- writes them). The subject's state: `w` (this window), `n` (its refusals)
-- and `a`, `b` (the earlier violating windows).
local function violate(subject, limit)
  local viol = viol_keys[subject]
  if not viol then return '' end
  local window = math.floor(now / 60000)
  local state = redis.call('HMGET', viol, 'w', 'n', 'a', 'b')
  local n = 1
  if tonumber(state[1]) == window then n = (tonumber(state[2]) or 0) + 1 end
  redis.call('HSET', viol, 'w', window, 'n', n)
  redis.call('PEXPIRE', viol, 600000)
  if n ~= math.max(1, math.ceil(limit * req.violation_ratio)) then return '' end
  local earlier = {}
  for i = 3, 4 do
    local v = tonumber(state[i])
    if v and window - v < 10 then earlier[#earlier + 1] = v end
  end
  if #earlier < 2 then
    earlier[#earlier + 1] = window
    redis.call('HSET', viol, 'a', earlier[#earlier - 1] or '', 'b', earlier[#earlier])
    return ''
  end
  redis.call('DEL', viol)
  local level_key = level_keys[subject]
  local level = redis.call('INCR', level_key)
  redis.call('PEXPIRE', level_key, 30 * 86400000)
  local ban_key = ban_keys[subject]
  -- A key's tenant hears of its ban (an IP has no one to tell). The ban's
  -- start is its period, so each ban fires once.
  if subject == 'key' then
    local untill = 0
    if level == 1 then untill = now + 300000 elseif level == 2 then untill = now + 86400000 end
    alert('key.banned', 'key', now, 0, untill, 0)
  end
  if level == 1 then
    redis.call('SET', ban_key, cjson.encode({reason = 'rate limit violations', ['until'] = now + 300000}), 'PX', 300000)
  elseif level == 2 then
    redis.call('SET', ban_key, cjson.encode({reason = 'rate limit violations', ['until'] = now + 86400000}), 'PX', 86400000)
  else
    redis.call('SET', ban_key, cjson.encode({reason = 'rate limit violations'}))
    return 'permanent'
  end
  return ''
end

-- A publishable key ships in web pages, so its traffic escalates against
-- the client IP alone: no visitor can get the tenant's key banned.
if not ok_rate or not ip_ok then
  local detail = ''
  -- Reads of one's own numbers are refused past the limit but never
  -- escalate to a ban: a dashboard polling too often must not get its
  -- tenant's key banned.
  if not metered then
    detail = ''
  elseif key.kind == 'pk' then
    local ip_limit = (not ip_ok) and req.ip_limit or limit
    if violate('ip', ip_limit) ~= '' then detail = 'permanent-ip' end
  else
    detail = violate('key', limit)
  end
  return refuse('rate_limited', limit, 0, reset, math.max(retry, ip_retry), detail, 429)
end

-- An upload is checked against the key's own policy here, where the key is
-- known: its content types (or the default list, judged by the caller), its
-- size limit (or the default), and the provider (asked for, the key's
-- default, or the first configured), which must be configured.
local upload_error, provider = nil, nil
if req.upload then
  local u = req.upload
  local policy = key.upload or {}
  local allowed = u.default_type_ok
  if type(policy.types) == 'table' then
    allowed = false
    for _, t in ipairs(policy.types) do
      if t == u.content_type then allowed = true break end
    end
  end
  local max = tonumber(policy.max_bytes) or u.default_max
  provider = u.provider or policy.provider or u.fallback
  if not allowed then
    upload_error = {'content_type_not_allowed', ''}
  elseif u.size > max then
    upload_error = {'file_too_large', tostring(max), 413}
  elseif not provider or u.configured[provider] ~= true then
    upload_error = {'provider_not_configured', provider or ''}
  end
end
local valid = req.valid and not upload_error
local cost = valid and 1 or 0

if day_limit and used_day + cost > day_limit then
  local day_end = (math.floor((now + offset) / 86400000) + 1) * 86400000 - offset
  return refuse('daily_quota_exceeded', limit, remaining, reset, day_end - now, '', 429)
end
if month_limit and used_month + cost > month_limit then
  return refuse('monthly_quota_exceeded', limit, remaining, reset, 0, '', 429)
end

-- Admitted: commit the limiter state and the quota use.
if tat then redis.call('SET', rate_key, tat, 'PX', math.max(1, math.ceil(tat - now))) end
if ip_tat then redis.call('SET', ip_rate_key, ip_tat, 'PX', math.max(1, math.ceil(ip_tat - now))) end
if cost > 0 and (day_limit or month_limit) then
  if day_limit then redis.call('HINCRBY', quota_key, 'du', cost) end
  if month_limit then redis.call('HINCRBY', quota_key, 'mu', cost) end
  redis.call('PEXPIRE', quota_key, quota_ttl)
end

if cost > 0 then
  if day_limit then crossed('day', day_id, day_limit, used_day, used_day + cost) end
  if month_limit then crossed('month', month_id, month_limit, used_month, used_month + cost) end
end

count(valid, provider)
log(valid and 'admitted' or (upload_error and upload_error[1] or 'invalid'),
  valid and req.success_status or (upload_error and upload_error[3]) or req.invalid_status)
if upload_error then
  return counted({upload_error[1], id, limit, remaining, reset, 0, upload_error[2]})
end

local bots = (events and events.bots) or 0
if valid and events and events.n > 0 then
  redis.call('SET', salt_key, events.salt, 'NX', 'EX', 172800)
  local salt = redis.call('GET', salt_key)
  local visitor = redis.sha1hex(salt .. '|' .. req.ip .. '|' .. events.ua .. '|' .. id)
  redis.call('XADD', queue_key, '*', 't', 'ev', 'k', id, 'v', visitor, 'n', events.n,
    'c', events.shared, 'e', events_json)
  redis.call('HINCRBY', stats_key, 'queued_events', events.n)
  redis.call('HINCRBY', stats_key, 'queued_bytes', #events_json)
end
if bots > 0 then
  redis.call('HINCRBY', stats_key, 'bots_dropped', bots)
end
if valid and req.upload then
  local u = req.upload
  local entry = cjson.encode({id = u.id, provider = provider, object_key = id .. '/' .. u.suffix,
    filename = u.filename, content_type = u.content_type, size_bytes = u.size, created_at = u.created_at})
  redis.call('XADD', queue_key, '*', 't', 'up', 'k', id, 'n', 0, 'e', entry)
end
return counted({'ok', id, limit, remaining, reset, 0, provider or ''})
