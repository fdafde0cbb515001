#!/usr/bin/env bash
# The soak test with faults (see bench/src/soak.rs and the README).
#
#   bench/soak.sh          10 minutes, then its summary goes into BENCHMARKS.md
#   bench/soak.sh 60       a minute (the short variant; summary in target/soak/)
#
# It builds release binaries, runs private Redis (append-only, fsync always)
# and Postgres (fsync on) under .tollgate/soak on ports 6394 and 15494, and
# exits 1 if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
scripts/bootstrap.sh redis postgres python
# shellcheck source=scripts/env.sh
. scripts/env.sh
cargo build --release --locked -p tollgate-cli -p tollgate-bench
# The real cron function binaries, which the soak kills in mid-batch.
cargo build --release --locked -p tollgate-functions --bin cron-process-events --bin cron-sync-metrics

summary=target/soak/summary.md
status=0
target/release/tollgate-bench soak --seconds "$seconds" --bin-dir target/release --summary "$summary" || status=$?

if [ "$seconds" -ge 600 ] && [ -f "$summary" ]; then
  python3 - "$summary" "bench/soak.sh $([ "$seconds" = 600 ] || echo "$seconds")" <<'PY'
import re, sys
summary, command = open(sys.argv[1]).read(), sys.argv[2].strip()
section = ("<!-- soak:start -->\n## Soak test with faults\n\n"
           f"Reproduce: `{command}` (also `make soak`).\n\n{summary}<!-- soak:end -->\n")
text = open("BENCHMARKS.md").read()
if "<!-- soak:start -->" in text:
    text = re.sub(r"<!-- soak:start -->.*?<!-- soak:end -->\n?", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section
open("BENCHMARKS.md", "w").write(text)
PY
  echo "==> the soak summary is in BENCHMARKS.md"
fi
exit $status
