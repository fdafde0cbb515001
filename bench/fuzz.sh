#!/usr/bin/env bash
# Builds and runs the fuzz targets in fuzz/ with cargo fuzz, each for a
# bounded time, and prints one JSON line with what each run did.
#
#   bench/fuzz.sh --build        build every target (bench/run.sh does this
#                                first, so a broken target fails early)
#   bench/fuzz.sh SECONDS        run every target for SECONDS (building first
#                                if needed)
#
# cargo fuzz wants a nightly compiler for AddressSanitizer (`-Zsanitizer`);
# RUSTC_BOOTSTRAP=1 lets the machine's stable one take that flag, with the
# sanitizer runtime that its rust-std already ships. The rest of what cargo
# fuzz passes (sanitizer coverage, `--cfg fuzzing`) is stable.
# FUZZ_SANITIZER=none builds without ASan, and needs no RUSTC_BOOTSTRAP;
# our code has no `unsafe`, so ASan watches only the dependencies' (gzip,
# JSON, URLs).
#
# Each run starts from the seeds in fuzz/corpus/<target>/ and the inputs
# earlier runs kept in .tollgate/fuzz/corpus/<target>/, where it adds its
# own; a crash's input goes to fuzz/artifacts/<target>/. Exits 0 when the
# runs finished, whatever they found: the JSON says, and bench/run.sh fails
# after writing its report.
set -euo pipefail
cd "$(dirname "$0")/.."

sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
# target:dictionary
targets=(decode_body:collect parse_batch:collect upload_request:upload analytics_query:analytics)

build() {
  (cd fuzz && nice -n 10 cargo fuzz build --sanitizer "$sanitizer" >&2)
}

case "${1:-}" in
  --build)
    build
    exit 0
    ;;
  '' | *[!0-9]*)
    echo "usage: $0 --build | SECONDS" >&2
    exit 2
    ;;
esac
seconds=$1
build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=()
for entry in "${targets[@]}"; do
  target=${entry%%:*}
  dict=${entry#*:}
  corpus=.tollgate/fuzz/corpus/$target
  mkdir -p "$corpus"
  echo "    fuzz $target for ${seconds}s" >&2
  # libFuzzer adds new inputs to the first corpus directory only, so the
  # seeds in the repository stay as they are; cargo fuzz points crashes at
  # fuzz/artifacts/<target>/. -timeout: an input that takes over 10 s is a
  # hang, and a finding.
  status=0
  (cd fuzz && cargo fuzz run --sanitizer "$sanitizer" "$target" "../$corpus" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -dict="dict/$dict.dict" -print_final_stats=1) \
    >"$work/$target.log" 2>&1 || status=$?
  results+=("$(python3 - "$target" "$seconds" "$status" "$work/$target.log" <<'PY'
import json, os, re, sys
target, seconds, status, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
text = open(log, errors="replace").read()
stat = lambda name: int(m.group(1)) if (m := re.search(rf"^stat::{name}:\s*(\d+)", text, re.M)) else None
# The last status line: "#123456 DONE cov: 1234 ft: 5678 corp: 90/12Kb ...".
lines = re.findall(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text, re.M)
last, cov, ft, corp = (int(x) for x in lines[-1]) if lines else (None, None, None, None)
done = re.search(r"^Done (\d+) runs in (\d+) second", text, re.M)
crash = re.search(r"^artifact_prefix=.*; Test unit written to (\S+)", text, re.M)
# A run that ended neither with "Done" nor with a crash's input (a build
# failure, a killed process) is not a measurement.
if not done and not crash:
    sys.stderr.write(text[-4000:])
    sys.exit(f"fuzz: {target} ended with status {status} and no result")
print(json.dumps({
    "target": target,
    "seconds": int(done.group(2)) if done else None,
    "limit_seconds": seconds,
    # A crash ends the run before its statistics: the last status line then.
    "runs": stat("number_of_executed_units") or last,
    "execs_per_sec": stat("average_exec_per_sec"),
    "coverage": cov, "features": ft, "corpus": corp,
    "peak_rss_mb": stat("peak_rss_mb"),
    "crashes": 0 if done and status == 0 else 1,
    "artifact": os.path.relpath(crash.group(1)) if crash else None,
}))
PY
)")
done
(IFS=,; echo "[${results[*]}]")
