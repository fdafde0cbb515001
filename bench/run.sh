#!/usr/bin/env bash
# Runs tollgate's benchmarks on loopback and rewrites BENCHMARKS.md.
#
#   bench/run.sh            the full run (about 5 minutes on 2 cores)
#   bench/run.sh --quick    smaller sizes, for CI (about 2 minutes)
#
# Every figure is measured against its baseline in the same run, on the same
# machine, and reported as a ratio: absolute numbers on a shared 2-core box
# say little, ratios say what our code adds. Load comes from wrk on
# 127.0.0.1; every run is bounded in time, every fill in count.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done
if [ $quick = 1 ]; then
  seconds=5; drain_events=100000; mode=quick
else
  seconds=15; drain_events=1000000; mode=full
fi

scripts/bootstrap.sh redis postgres wrk
cargo build --release --locked -p tollgate-cli -p tollgate-bench
tollgate=target/release/tollgate

dir=.tollgate/bench
redis_port=6393
postgres_port=54393
upstash_port=18079
dev_port=13000
dev_upstash_port=18080
token="bench-$(date +%s)-$$"
cron_secret="bench-cron-secret-$$-0123456789"
work=$(mktemp -d)
pids=()

services() { "$tollgate" services "$1" --dir "$dir" --redis-port $redis_port --postgres-port $postgres_port; }
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  services stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

services stop >/dev/null 2>&1 || true
rm -rf "$dir"
eval "$(services start)"
export REDIS_URL DATABASE_URL

# The bare local Upstash server: the baseline of one Upstash hop.
"$tollgate" upstash-local --port $upstash_port --token "$token" --redis-url "$REDIS_URL" >"$work/upstash.log" 2>&1 &
pids+=($!)
# The whole app, as `make dev` runs it, without its crons.
CRON_SECRET="$cron_secret" UPSTASH_REDIS_REST_TOKEN="$token" RUST_LOG=warn \
  "$tollgate" dev --port $dev_port --upstash-port $dev_upstash_port --no-crons >"$work/dev.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$dev_port/api/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$dev_port/api/health" >/dev/null || { cat "$work/dev.log"; exit 1; }
pk=$(sed -n 's/.*"publishable": *"\([^"]*\)".*/\1/p' .tollgate/dev/demo-key.json)

event='{"type":"web","name":"pageview","url":"https://shop.example.com/pricing?utm_source=news","referrer":"https://news.example.org/","title":"Pricing","screen":"1920x1080","language":"en-GB","properties":{"plan":"pro"}}'
printf '%s' "$event" >"$work/single.json"
python3 - "$work" "$event" <<'PY'
import json, sys
work, event = sys.argv[1], json.loads(sys.argv[2])
json.dump([event] * 50, open(f"{work}/batch.json", "w"))
json.dump(["LPUSH", "bench:baseline", json.dumps(event)], open(f"{work}/lpush.json", "w"))
PY

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

echo "==> collect vs bare LPUSH (${seconds}s each)"
lpush=$(load_rps lpush "http://127.0.0.1:$upstash_port/" "$work/lpush.json" "$token")
single=$(load_rps single "http://127.0.0.1:$dev_port/api/collect" "$work/single.json" "$pk")
batch=$(load_rps batch "http://127.0.0.1:$dev_port/api/collect" "$work/batch.json" "$pk")
echo "    LPUSH $lpush req/s, collect $single req/s, collect x50 $batch req/s"

echo "==> drain vs COPY ($drain_events events)"
drain_json=$(UPSTASH_REDIS_REST_URL="http://127.0.0.1:$upstash_port" UPSTASH_REDIS_REST_TOKEN="$token" \
  CRON_SECRET="$cron_secret" target/release/tollgate-bench drain-vs-copy --events "$drain_events")
echo "    $drain_json"

redis_version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
postgres_version=$(psql "$DATABASE_URL" -Atc 'SHOW server_version' 2>/dev/null || echo unknown)
python3 bench/report.py \
  --mode "$mode" --seconds "$seconds" \
  --lpush "$lpush" --single "$single" --batch "$batch" \
  --drain "$drain_json" \
  --redis "$redis_version" --postgres "$postgres_version" \
  --command "bench/run.sh$([ $quick = 1 ] && echo " --quick")" >BENCHMARKS.md
echo "==> BENCHMARKS.md written"
