# shellcheck shell=bash
# Sourced by the project's scripts (scripts/test.sh, bench/run.sh,
# bench/soak.sh, scripts/deploy-check.sh, scripts/bootstrap.sh), never run:
#
#   . scripts/env.sh
#
# When the machine's Node.js is older than the project needs, scripts/bootstrap.sh
# installs a private one under .tollgate/node (see there). This puts its bin
# directory first on PATH, for the script and everything it starts (npm, the
# node tests that cargo runs), so the user's own node and their shell's PATH
# are left alone. Without that directory it changes nothing.
tollgate_node_bin="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tollgate/node/bin"
if [ -x "$tollgate_node_bin/node" ]; then
  case ":$PATH:" in
    *":$tollgate_node_bin:"*) ;;
    *) export PATH="$tollgate_node_bin:$PATH" ;;
  esac
fi
unset tollgate_node_bin
