#!/usr/bin/env bash
# Runs tollgate's benchmarks on loopback and rewrites BENCHMARKS.md.
#
#   bench/run.sh                 the full run (about 11 minutes on 2 cores, 5 of
#                                them unknown keys and fuzzing, plus 10 to 16
#                                for the views at 10 million events; the first
#                                also builds the fuzz targets, about 10 minutes)
#   bench/run.sh --quick         smaller sizes (about 4 minutes after the build)
#   bench/run.sh --out FILE      write the report to FILE, not BENCHMARKS.md
#                                (make test runs --quick --out target/bench/...)
#   bench/run.sh --fuzz          also fuzz in --quick mode (10 s per target);
#                                the full run fuzzes 60 s per target anyway
#   bench/run.sh --no-fuzz       skip the fuzz targets in the full run
#
# Every figure is measured against its baseline in the same run, on the same
# machine, and reported as a ratio: absolute numbers on a shared 2-core box
# say little, ratios say what our code adds. Load comes from wrk on
# 127.0.0.1; every run is bounded in time, every fill in count.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
out=BENCHMARKS.md
fuzz=default
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --fuzz) fuzz=1 ;;
    --no-fuzz) fuzz=0 ;;
    *) echo "usage: $0 [--quick] [--out FILE] [--fuzz | --no-fuzz]" >&2; exit 2 ;;
  esac
  shift
done
if [ $quick = 1 ]; then
  seconds=5; latency_requests=200; drain_events=100000; sync_keys=2000; analytics_keys=1000; analytics_events=100000; mode=quick
  views_events=1000000; views_big_key=100000; views_keys=200; views_samples=20; views_raw_samples=3
  # make test runs --quick: it gets the unknown-key figures in brief, and
  # no fuzzing unless asked (building the targets alone takes minutes).
  keys_seconds=2; keys_requests=40; fuzz_seconds=10
  [ $fuzz != default ] || fuzz=0
else
  seconds=15; latency_requests=1000; drain_events=1000000; sync_keys=10000; analytics_keys=10000; analytics_events=1000000; mode=full
  views_events=10000000; views_big_key=1000000; views_keys=1000; views_samples=40; views_raw_samples=5
  keys_seconds=15; keys_requests=400; fuzz_seconds=60
  [ $fuzz != default ] || fuzz=1
fi
# Failed authentications a client IP may make per minute before it is cut
# off: the default, set here because the unknown-key figures depend on it.
failed_auth_limit=30

scripts/bootstrap.sh redis postgres pgbouncer node wrk python $([ $fuzz = 0 ] || echo fuzz)
# shellcheck source=scripts/env.sh
. scripts/env.sh
cargo build --release --locked -p tollgate-cli -p tollgate-bench
if [ $fuzz = 1 ]; then
  echo "==> building the fuzz targets (fuzz/, its own target directory)"
  fuzz_build_started=$(date +%s)
  bench/fuzz.sh --build
  fuzz_build_seconds=$(($(date +%s) - fuzz_build_started))
fi
tollgate=target/release/tollgate

dir=.tollgate/bench
redis_port=6393
# Below 32768: a port in Linux's ephemeral range can be held by a client
# socket in TIME_WAIT from an earlier run, and Postgres could not bind it.
postgres_port=15493
# PgBouncer in transaction mode in front of it, as Neon's pooled endpoint.
pgbouncer_port=25493
upstash_port=18079
dev_port=13000
dev_upstash_port=18080
token="bench-$(date +%s)-$$"
cron_secret="bench-cron-secret-$$-0123456789"
work=$(mktemp -d)
pids=()

services() {
  "$tollgate" services "$1" --dir "$dir" --redis-port $redis_port --postgres-port $postgres_port \
    --pgbouncer-port $pgbouncer_port
}
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  services stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

services stop >/dev/null 2>&1 || true
rm -rf "$dir"
service_env=$(services start)
eval "$service_env"
export REDIS_URL DATABASE_URL POOLED_DATABASE_URL

# The bare local Upstash server: the baseline of one Upstash hop. Strict,
# as Upstash is: only scripts flagged `allow-key-locking` run, and only on
# the keys they declare (the @upstash/ratelimit peer's scripts are).
"$tollgate" upstash-local --port $upstash_port --token "$token" --redis-url "$REDIS_URL" --strict >"$work/upstash.log" 2>&1 &
pids+=($!)
# The whole app, as `make dev` runs it, without its crons, with an S3
# provider configured (signing is local work; nothing is uploaded).
# No drain runs meanwhile, so its queue may hold all the load sends: the
# figures are of admission, not of the direct path past a full queue. All
# the load comes from one address, which the dev server passes on as the
# client IP (as Vercel's edge does), so its per-IP limit is lifted too.
CRON_SECRET="$cron_secret" UPSTASH_REDIS_REST_TOKEN="$token" RUST_LOG=warn \
  TOLLGATE_QUEUE_MAX_BYTES=16GiB TOLLGATE_PUBLIC_IP_RATE_LIMIT=1000000000 \
  S3_ENDPOINT=http://127.0.0.1:9000 S3_REGION=us-east-1 S3_BUCKET=bench \
  S3_ACCESS_KEY_ID=AKIABENCH S3_SECRET_ACCESS_KEY=bench-secret S3_FORCE_PATH_STYLE=true \
  "$tollgate" dev --port $dev_port --upstash-port $dev_upstash_port --no-crons >"$work/dev.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$dev_port/api/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$dev_port/api/health" >/dev/null || { cat "$work/dev.log"; exit 1; }
# A key whose limits the load cannot reach, so every request is admitted
# (a refusal would count as an error below).
"$tollgate" keys create --name bench --tier enterprise --rate-limit 1000000000 \
  --daily 1000000000000 --monthly 1000000000000 >"$work/key.txt"
sk=$(sed -n 's/^  secret key: *//p' "$work/key.txt")
pk=$(sed -n 's/^  publishable key: *//p' "$work/key.txt")
key_id=$(sed -n 's/^Created key \([^ ]*\) .*/\1/p' "$work/key.txt")

event='{"type":"web","name":"pageview","url":"https://shop.example.com/pricing?utm_source=news","referrer":"https://news.example.org/","title":"Pricing","screen":"1920x1080","language":"en-GB","properties":{"plan":"pro"}}'
printf '%s' "$event" >"$work/single.json"
python3 - "$work" "$event" <<'PY'
import json, sys
work, event = sys.argv[1], json.loads(sys.argv[2])
json.dump([event] * 50, open(f"{work}/batch.json", "w"))
json.dump(["LPUSH", "bench:baseline", json.dumps(event)], open(f"{work}/lpush.json", "w"))
# The trivial script of the baseline, loaded below, flagged as Upstash
# wants every script (and as our strict server requires).
import hashlib
null_script = "#!lua flags=allow-key-locking\nreturn 1"
json.dump(["SCRIPT", "LOAD", null_script], open(f"{work}/load.json", "w"))
json.dump(["EVALSHA", hashlib.sha1(null_script.encode()).hexdigest(), "0"], open(f"{work}/evalsha.json", "w"))
json.dump({"filename": "photo.png", "content_type": "image/png", "size": 48213}, open(f"{work}/upload.json", "w"))
PY
curl -sf "http://127.0.0.1:$upstash_port/" -H "Authorization: Bearer $token" -d @"$work/load.json" >/dev/null

# Requests per second of one wrk run: load_rps NAME URL BODY TOKEN
load_rps() {
  local name=$1 url=$2 body=$3 key=$4 out="$work/$1.wrk"
  BODY_FILE="$body" TOKEN="$key" wrk -t1 -c32 -d"${seconds}s" -s bench/wrk/post.lua "$url" >"$out"
  local errors
  errors=$(sed -n 's/^error_responses: //p' "$out")
  if [ "${errors:-1}" != 0 ]; then
    echo "bench: $name answered $errors error responses" >&2
    cat "$out" >&2
    exit 1
  fi
  sed -n 's/^Requests\/sec: *//p' "$out"
}

echo "==> collect vs bare LPUSH and the null route (${seconds}s each)"
lpush=$(load_rps lpush "http://127.0.0.1:$upstash_port/" "$work/lpush.json" "$token")
# The same dev server through the same Upstash client, making one EVALSHA
# of a script that does nothing: what any route costs before its own work.
null=$(load_rps null "http://127.0.0.1:$dev_port/_bench/null" "$work/single.json" "$pk")
single=$(load_rps single "http://127.0.0.1:$dev_port/api/collect" "$work/single.json" "$pk")
batch=$(load_rps batch "http://127.0.0.1:$dev_port/api/collect" "$work/batch.json" "$pk")
echo "    LPUSH $lpush req/s, null route $null req/s, collect $single req/s, collect x50 $batch req/s"

echo "==> admission: signed-url vs bare EVALSHA (${seconds}s each)"
evalsha=$(load_rps evalsha "http://127.0.0.1:$upstash_port/" "$work/evalsha.json" "$token")
signed=$(load_rps signed "http://127.0.0.1:$dev_port/api/signed-url" "$work/upload.json" "$sk")
echo "    EVALSHA $evalsha req/s, signed-url $signed req/s"
# The limiter's state for one active key: its GCRA timestamp.
limiter_bytes=$(redis-cli -p $redis_port MEMORY USAGE "tg:rl:key:$key_id")
quota_bytes=$(redis-cli -p $redis_port MEMORY USAGE "tg:q:$key_id")
echo "    limiter state $limiter_bytes bytes, quota counters $quota_bytes bytes per key"

echo "==> unknown keys against a valid one: collect with sk_ keys (${keys_seconds}s each)"
# The same request (one event, a secret key in Authorization) with a valid
# key; with one unknown key over and over (the instance remembers it: no
# round trip); and with a fresh unknown key every time, from an IP of its
# own each (no IP reaches the limit, so every key is looked up, in Redis
# and then Postgres, as a distributed guesser's would be) and from four IPs
# (cut off at the limit, before any lookup). wrk stands in for a proxy in
# front of the deployment that names the client in a header of its own
# (TOLLGATE_CLIENT_IP_HEADER), so that its requests can come from many
# clients over one loopback address; a dev server of its own takes that
# header, since the one above takes the peer's address, as Vercel's edge
# gives it. Each run checks the statuses it got.
keys_dev_port=13002
CRON_SECRET="$cron_secret" UPSTASH_REDIS_REST_TOKEN="$token" RUST_LOG=warn \
  TOLLGATE_QUEUE_MAX_BYTES=16GiB TOLLGATE_CLIENT_IP_HEADER=x-bench-client-ip \
  TOLLGATE_FAILED_AUTH_LIMIT=$failed_auth_limit \
  "$tollgate" dev --port $keys_dev_port --upstash-port 18083 --no-crons >"$work/dev-keys.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$keys_dev_port/api/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$keys_dev_port/api/health" >/dev/null || { cat "$work/dev-keys.log"; exit 1; }
unknown_sk="sk_$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
# Once, so that the dev server's memory of unknown keys holds it, from an
# IP other than the four: a failure of theirs now would open their minute
# early, and it could end in the middle of the cut-off run.
curl -s -o /dev/null -H "Authorization: Bearer $unknown_sk" -H "X-Bench-Client-IP: 198.51.100.1" \
  -d @"$work/single.json" "http://127.0.0.1:$keys_dev_port/api/collect"
# Requests per second and answers by status of one run: load_keys CASE KEY IPS TOKEN
load_keys() {
  local name=$1 out="$work/keys-$1.wrk"
  BODY_FILE="$work/single.json" KEY=$2 IPS=$3 TOKEN=$4 wrk -t1 -c32 -d"${keys_seconds}s" -s bench/wrk/keys.lua \
    "http://127.0.0.1:$keys_dev_port/api/collect" >"$out"
  python3 - "$name" "$out" "$failed_auth_limit" <<'PY' || { cat "$out" >&2; exit 1; }
import json, re, sys
name, text, limit = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3])
get = lambda key: float(re.search(rf"^{key}:\s*([\d.]+)", text, re.M).group(1))
statuses = {s: int(get(f"status_{s}")) for s in ("202", "401", "429", "other")}
assert get("socket_errors") == 0, f"{name}: socket errors"
assert statuses["other"] == 0, f"{name}: {statuses}"
if name == "valid":
    assert statuses["401"] == statuses["429"] == 0, f"{name}: {statuses}"
elif name == "random_few_ips":
    # Before the cut-off: the limit per IP, plus what 32 connections had in
    # flight while the last failures were being counted.
    assert statuses["202"] == 0 and statuses["401"] <= 4 * limit + 32, f"{name}: {statuses}"
else:
    assert statuses["202"] == statuses["429"] == 0, f"{name}: {statuses}"
print(json.dumps({"rps": get("Requests/sec"), "statuses": statuses}))
PY
}
keys_valid=$(load_keys valid fixed few "$sk")
keys_unknown=$(load_keys unknown_repeated fixed few "$unknown_sk")
keys_fresh=$(load_keys random_fresh_ips random fresh "")
keys_few=$(load_keys random_few_ips random few "")
keys_json="{\"valid\": $keys_valid, \"unknown_repeated\": $keys_unknown, \"random_fresh_ips\": $keys_fresh, \"random_few_ips\": $keys_few}"
echo "    $keys_json"
# What each costs the deployment per request, counted by the app's own
# clients in one process (exact, where wrk's figures are rates).
unknown_json=$(UPSTASH_REDIS_REST_URL="http://127.0.0.1:$upstash_port" UPSTASH_REDIS_REST_TOKEN="$token" \
  CRON_SECRET="$cron_secret" target/release/tollgate-bench unknown-keys --requests "$keys_requests" \
  --failed-auth-limit "$failed_auth_limit" --body "$work/single.json")
echo "    $unknown_json"

echo "==> analytics: seeding $analytics_keys keys of usage and $analytics_events events"
analytics_json=$(target/release/tollgate-bench analytics --keys "$analytics_keys" --events "$analytics_events" \
  --key-id "$key_id")
echo "    $analytics_json"
# Requests per second of one wrk run of bench/wrk/analytics.lua: load_get MODE
load_get() {
  local mode=$1 out="$work/analytics-$1.wrk"
  MODE="$mode" TOKEN="$sk" wrk -t1 -c32 -d"${seconds}s" -s bench/wrk/analytics.lua \
    "http://127.0.0.1:$dev_port" >"$out"
  python3 - "$mode" "$out" <<'PY' || { cat "$out" >&2; exit 1; }
import re, sys
mode, text = sys.argv[1], open(sys.argv[2]).read()
get = lambda name: float(re.search(rf"^{name}:\s*([\d.]+)", text, re.M).group(1))
errors, hits, misses = get("error_responses"), get("cache_hits"), get("cache_misses")
assert errors == 0, f"analytics {mode}: {errors:.0f} error responses"
# Connections that start together all miss before the first result is stored.
wrong = misses - 32 if mode == "hit" else hits
assert wrong <= 0, f"analytics {mode}: {hits:.0f} hits and {misses:.0f} misses"
print(f"{get('Requests/sec')} {get('latency_p50_ms')}")
PY
}
# Assigned first so that a failed run stops the script.
hit_line=$(load_get hit)
miss_line=$(load_get miss)
read -r hit_rps hit_p50 <<<"$hit_line"
read -r miss_rps miss_p50 <<<"$miss_line"
echo "    hit $hit_rps req/s (p50 $hit_p50 ms), miss $miss_rps req/s (p50 $miss_p50 ms)"

# Every view's statement for a key with a tenth of the events over 30 days,
# from rollups, against aggregating its raw events as the events view did
# before them; in a database of its own, seeded by binary COPY (views.rs).
echo "==> views: $views_events events by COPY, $views_big_key of them one key's, and their rollups"
views_json=$(target/release/tollgate-bench views --events "$views_events" --big-key-events "$views_big_key" \
  --keys "$views_keys" --samples "$views_samples" --raw-samples "$views_raw_samples")
echo "    $views_json"
echo "==> payload: bytes to Upstash and in the queue for full collect bodies"
payload_json=$(UPSTASH_REDIS_REST_URL="http://127.0.0.1:$upstash_port" UPSTASH_REDIS_REST_TOKEN="$token" \
  CRON_SECRET="$cron_secret" target/release/tollgate-bench payload)
echo "    $payload_json"

echo "==> latency at 1 ms each way: tollgate beside a peer written as the docs suggest"
# A second Upstash server that delays each direction by 1 ms, as a network
# would; a second dev server and the peer both go through it.
lat_upstash_port=18081
lat_dev_port=13001
peer_port=13100
"$tollgate" upstash-local --port $lat_upstash_port --token "$token" --redis-url "$REDIS_URL" \
  --strict --latency 1ms >"$work/upstash-latency.log" 2>&1 &
pids+=($!)
# The queue holds what the throughput figures sent, undrained: no cap here
# either, or collect would be measured on its direct path to Postgres. Its
# requests come from one address too: the full run's 1,000 publishable-key
# requests would meet the per-IP limit of 600 a minute.
CRON_SECRET="$cron_secret" UPSTASH_REDIS_REST_URL="http://127.0.0.1:$lat_upstash_port" \
  UPSTASH_REDIS_REST_TOKEN="$token" RUST_LOG=warn TOLLGATE_QUEUE_MAX_BYTES=16GiB \
  TOLLGATE_PUBLIC_IP_RATE_LIMIT=1000000000 \
  S3_ENDPOINT=http://127.0.0.1:9000 S3_REGION=us-east-1 S3_BUCKET=bench \
  S3_ACCESS_KEY_ID=AKIABENCH S3_SECRET_ACCESS_KEY=bench-secret S3_FORCE_PATH_STYLE=true \
  "$tollgate" dev --port $lat_dev_port --upstash-port 18082 --no-crons >"$work/dev-latency.log" 2>&1 &
pids+=($!)
(cd bench/peer && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
UPSTASH_REDIS_REST_URL="http://127.0.0.1:$lat_upstash_port" UPSTASH_REDIS_REST_TOKEN="$token" \
  PORT=$peer_port node bench/peer/server.mjs >"$work/peer.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$lat_dev_port/api/health" >/dev/null 2>&1 && break
  sleep 0.1
done
for half in "$sk" "$pk"; do
  hash=$(printf '%s' "$half" | sha256sum | cut -d' ' -f1)
  redis-cli -p $redis_port SET "peer:key:$hash" '{"id":"bench","daily":1000000000000}' >/dev/null
done
printf '["PING"]' >"$work/ping.json"
latency() { target/release/tollgate-bench latency --url "$1" --body "$2" --token "$3" --requests "$latency_requests"; }
rtt_json=$(latency "http://127.0.0.1:$lat_upstash_port/" "$work/ping.json" "$token")
lat_collect=$(latency "http://127.0.0.1:$lat_dev_port/api/collect" "$work/single.json" "$pk")
lat_signed=$(latency "http://127.0.0.1:$lat_dev_port/api/signed-url" "$work/upload.json" "$sk")
peer_collect=$(latency "http://127.0.0.1:$peer_port/api/collect" "$work/single.json" "$pk")
peer_signed=$(latency "http://127.0.0.1:$peer_port/api/signed-url" "$work/upload.json" "$sk")
latency_json="{\"rtt\": $rtt_json, \"collect\": $lat_collect, \"signed\": $lat_signed, \"peer_collect\": $peer_collect, \"peer_signed\": $peer_signed}"
echo "    $latency_json"

echo "==> @upstash/ratelimit peer check: 500 concurrent requests, limit 100"
peer=$(UPSTASH_REDIS_REST_URL="http://127.0.0.1:$upstash_port" UPSTASH_REDIS_REST_TOKEN="$token" \
  LIMIT=100 BURST=500 node bench/peer/burst.mjs)
echo "    $peer"

echo "==> drain vs COPY, and through PgBouncer vs direct ($drain_events events each)"
drain_json=$(UPSTASH_REDIS_REST_URL="http://127.0.0.1:$upstash_port" UPSTASH_REDIS_REST_TOKEN="$token" \
  CRON_SECRET="$cron_secret" target/release/tollgate-bench drain-vs-copy --events "$drain_events" \
  --pooled-database-url "$POOLED_DATABASE_URL")
echo "    $drain_json"

echo "==> sync-metrics with $sync_keys keys"
sync_json=$(UPSTASH_REDIS_REST_URL="http://127.0.0.1:$upstash_port" UPSTASH_REDIS_REST_TOKEN="$token" \
  CRON_SECRET="$cron_secret" target/release/tollgate-bench sync --keys "$sync_keys")
echo "    $sync_json"

fuzz_json=null
if [ $fuzz = 1 ]; then
  echo "==> fuzz: every target for ${fuzz_seconds}s"
  fuzz_json=$(bench/fuzz.sh "$fuzz_seconds")
  fuzz_json="{\"build_seconds\": $fuzz_build_seconds, \"sanitizer\": \"${FUZZ_SANITIZER:-address}\", \"runs\": $fuzz_json}"
  echo "    $fuzz_json"
fi

redis_version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
postgres_version=$(psql "$DATABASE_URL" -Atc 'SHOW server_version' 2>/dev/null || echo unknown)
python3 bench/report.py \
  --mode "$mode" --seconds "$seconds" \
  --lpush "$lpush" --null "$null" --single "$single" --batch "$batch" \
  --drain "$drain_json" --latency "$latency_json" --payload "$payload_json" \
  --evalsha "$evalsha" --signed "$signed" --peer "$peer" --sync "$sync_json" \
  --limiter-bytes "$limiter_bytes" --quota-bytes "$quota_bytes" \
  --keys "$keys_json" --unknown "$unknown_json" --fuzz "$fuzz_json" \
  --analytics "$analytics_json" --views "$views_json" --hit "$hit_rps" --miss "$miss_rps" --hit-p50 "$hit_p50" --miss-p50 "$miss_p50" \
  --redis "$redis_version" --postgres "$postgres_version" \
  --command "bench/run.sh$([ $quick = 1 ] && echo " --quick")" \
  --keep-soak-from BENCHMARKS.md >"$work/report.md"
mkdir -p "$(dirname "$out")"
mv "$work/report.md" "$out"
echo "==> $out written"
# A crash a fuzz target found is in the report; the run fails all the same.
if [ "$fuzz_json" != null ] && ! python3 -c 'import json, sys; sys.exit(any(r["crashes"] for r in json.loads(sys.argv[1])["runs"]))' "$fuzz_json"; then
  echo "bench: a fuzz target crashed; see the fuzz section of $out and fuzz/artifacts/" >&2
  exit 1
fi
