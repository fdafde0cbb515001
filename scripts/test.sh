#!/usr/bin/env bash
# Runs every check and test of tollgate: formatting, clippy, the unit and
# integration tests against private Redis and PostgreSQL instances and a
# PgBouncer in transaction mode in front of that PostgreSQL (started here,
# stopped on exit), including the @upstash/redis conformance suite and
# the @vercel/blob token check and the dashboard and tracker in headless
# Chromium, then the offline Vercel deploy check, the benchmarks at small
# sizes and a one-minute soak test with faults.
#
# `make test` runs this; so does CI (.ci/run). It installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs), then rerun." >&2
  exit 1
fi
# Everything the suite, the deploy check and the quick benchmarks use, up
# front: python for schemathesis and the benchmarks, wrk for the benchmarks.
scripts/bootstrap.sh redis postgres pgbouncer node chromium python wrk s3
# The private Node.js, when the bootstrap installed one, first on PATH for
# npm and for the node tests that cargo runs.
# shellcheck source=scripts/env.sh
. scripts/env.sh

# The private test instances: a fresh data directory each run, so databases
# from earlier runs never pile up, and stopped however this script exits.
dir=.tollgate/test
redis_port=6392
postgres_port=54392
pgbouncer_port=64392
tollgate() { cargo run --quiet -p tollgate-cli --bin tollgate -- "$@"; }
services() {
  tollgate services "$1" --dir "$dir" --redis-port "$redis_port" --postgres-port "$postgres_port" \
    --pgbouncer-port "$pgbouncer_port"
}

echo "==> build"
cargo build --workspace --all-targets --locked
services stop >/dev/null 2>&1 || true
rm -rf "$dir"
trap 'services stop >/dev/null 2>&1 || true' EXIT
# Assigned first so that a failed start stops the script (set -e does not
# see a failure inside `eval "$(...)"`). TEST_REDIS_URL, TEST_DATABASE_URL and
# TEST_POOLED_DATABASE_URL (the same server through PgBouncer).
service_env=$(services start)
eval "$(printf '%s\n' "$service_env" | sed 's/^/export TEST_/')"

echo "==> npm packages for the node-driven tests"
(cd tests/upstash-js && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/blob-js && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/webhook-receiver && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
services stop >/dev/null 2>&1 || true

echo "==> deploy check (vercel build, offline)"
scripts/deploy-check.sh

# The whole stack, twice: every benchmark at small sizes (so the harness
# cannot rot; the report goes to target/, not BENCHMARKS.md), and a minute
# of the soak test with all its faults, on the debug build.
echo "==> benchmarks, quick"
bench/run.sh --quick --out target/bench/BENCHMARKS.quick.md
echo "==> soak test, one minute"
target/debug/tollgate-bench soak --seconds 60 --clients 4 --bin-dir target/debug \
  --dir .tollgate/soak-short --redis-port 6395 --postgres-port 15495 --upstash-port 18095 \
  --app-port 13095 --summary target/soak/short.md
