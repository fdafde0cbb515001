#!/usr/bin/env bash
# Runs schemathesis (the OpenAPI fuzzer of tests/openapi.rs) with the given
# arguments, installing it first when it is missing.
#
#   scripts/schemathesis.sh run openapi.yaml --url http://127.0.0.1:3000 ...
#
# It lives in a virtualenv under .tollgate/venv (ignored by git), pinned to
# one version so that runs are reproducible. Idempotent: pip runs only when
# the venv lacks that version. On Debian, `python3 -m venv` needs the
# python3-venv package; it is installed with apt-get (sudo when not root),
# as scripts/bootstrap.sh does for the other tools.
set -euo pipefail

version=4.32.5
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tollgate/venv"
bin="$venv/bin/schemathesis"
stamp="$venv/.schemathesis-$version"

installed() { [ -x "$bin" ] && [ -f "$stamp" ]; }

install() {
  if ! command -v python3 >/dev/null 2>&1; then
    echo "schemathesis.sh: python3 is missing; install Python 3.9 or later" >&2
    exit 1
  fi
  # Debian's python3 lacks ensurepip, which venv needs to put pip in; both
  # come with python3-venv.
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "schemathesis.sh: python3 cannot create a virtualenv; install its venv module" >&2
      exit 1
    fi
    local as_root=()
    if [ "$(id -u)" -ne 0 ]; then
      if ! command -v sudo >/dev/null 2>&1; then
        echo "schemathesis.sh: need root to install python3-venv, and sudo is not available" >&2
        exit 1
      fi
      as_root=(sudo)
    fi
    # `env` rather than `sudo VAR=value`, which sudoers policies may refuse.
    local apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    "${apt[@]}" update -qq >/dev/null
    "${apt[@]}" install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  # A venv left without pip by an interrupted run is made again.
  if [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  echo "schemathesis.sh: installing schemathesis $version into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
  rm -f "$venv"/.schemathesis-*
  touch "$stamp"
}

if ! installed; then
  mkdir -p "$root/.tollgate"
  # Several runs may start at once on a fresh clone: one installs, the
  # others wait for it (flock is in util-linux; without it, no lock).
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$root/.tollgate/schemathesis.lock"
    flock 9
  fi
  installed || install
  if command -v flock >/dev/null 2>&1; then
    flock -u 9
    exec 9>&-
  fi
fi

exec "$bin" "$@"
