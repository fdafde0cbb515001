-- wrk script: POSTs the file named by BODY_FILE to collect with a secret
-- key in `Authorization: Bearer`, naming the client in `X-Bench-Client-IP`,
-- as a proxy in front of the deployment would (the dev server it loads
-- reads the client IP from that header: TOLLGATE_CLIENT_IP_HEADER), so that
-- failed authentications count per client IP.
--
--   KEY=fixed   every request presents $TOKEN (a valid key, or an unknown
--               one that the negative cache then holds)
--   KEY=random  every request presents a fresh, well-formed `sk_` key that
--               no one has
--   IPS=few     the requests come from four client IPs in turn
--   IPS=fresh   every request comes from an IP of its own, so no IP ever
--               reaches the failed-authentication limit
--
-- It counts the answers by status, so that bench/run.sh can check that a
-- run measured what it claims (all 202, all 401, or 401 then 429).
local body_file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = body_file:read("*a")
body_file:close()
local key_mode = os.getenv("KEY")
local ip_mode = os.getenv("IPS")
local token = os.getenv("TOKEN")
local few = {"203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"}
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  n, accepted, unauthorized, limited, other = 0, 0, 0, 0, 0
  math.randomseed(os.time() * 1000 + id)
end

local function random_key()
  local parts = {}
  for i = 1, 12 do
    parts[i] = string.format("%04x", math.random(0, 0xffff))
  end
  return "sk_" .. table.concat(parts)
end

function request()
  n = n + 1
  local ip
  if ip_mode == "fresh" then
    local k = n + id * 4000000
    ip = string.format("10.%d.%d.%d", math.floor(k / 65536) % 256, math.floor(k / 256) % 256, k % 256)
  else
    ip = few[n % #few + 1]
  end
  local key = key_mode == "random" and random_key() or token
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key,
    ["X-Bench-Client-IP"] = ip,
  }, body)
end

function response(status, headers, body)
  if status == 202 then accepted = accepted + 1
  elseif status == 401 then unauthorized = unauthorized + 1
  elseif status == 429 then limited = limited + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local a, u, l, o = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    a = a + thread:get("accepted")
    u = u + thread:get("unauthorized")
    l = l + thread:get("limited")
    o = o + thread:get("other")
  end
  io.write(string.format("status_202: %d\nstatus_401: %d\nstatus_429: %d\nstatus_other: %d\n", a, u, l, o))
  io.write(string.format("socket_errors: %d\n",
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
