-- wrk script: GETs /api/analytics with `Authorization: Bearer $TOKEN`.
-- MODE=hit asks for the same view every time, so all but the first answer
-- come from the cache; MODE=miss asks for a daily series with different
-- parameters every time, so every answer is computed. It reports error
-- responses and the X-Cache header of every answer, so that a run that did
-- not measure what it claims fails in bench/run.sh.
local mode = os.getenv("MODE")
local token = os.getenv("TOKEN")
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  hits, misses, n = 0, 0, 0
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  n = n + 1
  if mode == "hit" then
    return wrk.format("GET", "/api/analytics?view=overview")
  end
  -- Distinct parameters over the seeded month: an end in the last 30
  -- days, a start 90 to 359 days before it, a limit from 60 to 90 (about
  -- 250,000 distinct queries, every one of them reading 60 to 90 days).
  local k = n + id * 100000
  local now = os.time()
  local ends = now - (k % 30) * 86400
  local starts = ends - (90 + math.floor(k / 30) % 270) * 86400
  return wrk.format("GET", string.format("/api/analytics?view=daily&start=%s&end=%s&limit=%d",
    os.date("!%Y-%m-%d", starts), os.date("!%Y-%m-%d", ends), 60 + math.floor(k / 8100) % 31))
end

function response(status, headers, body)
  local cache = headers["x-cache"] or headers["X-Cache"]
  if cache == "hit" then hits = hits + 1 elseif cache == "miss" then misses = misses + 1 end
end

function done(summary, latency, requests)
  local h, m = 0, 0
  for _, thread in ipairs(threads) do
    h = h + thread:get("hits")
    m = m + thread:get("misses")
  end
  io.write(string.format("error_responses: %d\n", summary.errors.status))
  io.write(string.format("cache_hits: %d\ncache_misses: %d\n", h, m))
  io.write(string.format("latency_p50_ms: %.2f\n", latency:percentile(50) / 1000))
end
