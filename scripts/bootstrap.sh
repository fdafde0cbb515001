#!/usr/bin/env bash
# Installs the system tools that `make dev` and `make test` need, when missing.
#
#   scripts/bootstrap.sh [redis] [postgres] [node] [chromium] [wrk]
#
# With no arguments, checks all of them. Idempotent, and quick when everything is
# already there: the package index is only refreshed when something must be
# installed. Supports Debian/Ubuntu (apt-get, with sudo when not root) and macOS
# (Homebrew); anywhere else it names what to install and exits 1.
#
# It only installs packages. The private Redis and PostgreSQL instances that tollgate
# runs live under .tollgate/ on their own ports (see cli/src/services.rs), so any
# cluster the Debian postgresql package creates and starts on 5432 belongs to the
# user and is deliberately left running.
set -euo pipefail

usage() {
  echo "usage: $0 [redis] [postgres] [node] [chromium] [wrk]" >&2
  exit 2
}

wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then
  wanted=(redis postgres node chromium wrk)
fi
for tool in "${wanted[@]}"; do
  case "$tool" in
    redis | postgres | node | chromium | wrk) ;;
    *) usage ;;
  esac
done

# --- Is it already there? ------------------------------------------------------

has_redis() { command -v redis-server >/dev/null 2>&1; }

# Debian keeps initdb out of PATH, under /usr/lib/postgresql/<version>/bin;
# Homebrew's postgresql@N is keg-only, under <prefix>/opt/postgresql@N/bin.
has_postgres() {
  command -v initdb >/dev/null 2>&1 && return 0
  local candidate
  for candidate in /usr/lib/postgresql/*/bin/initdb \
    /opt/homebrew/opt/postgresql@*/bin/initdb \
    /usr/local/opt/postgresql@*/bin/initdb; do
    [ -x "$candidate" ] && return 0
  done
  return 1
}

has_wrk() { command -v wrk >/dev/null 2>&1; }

has_node() { command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; }

has_chromium() {
  local candidate
  for candidate in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$candidate" >/dev/null 2>&1 && return 0
  done
  [ -x /usr/bin/chromium ] && return 0
  [ -d "/Applications/Google Chrome.app" ] && return 0
  [ -d "/Applications/Chromium.app" ] && return 0
  return 1
}

missing=()
for tool in "${wanted[@]}"; do
  if ! "has_$tool"; then
    missing+=("$tool")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

# --- Install what is missing ---------------------------------------------------

os="$(uname -s)"

if [ "$os" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      as_root=(sudo)
    else
      echo "bootstrap: need root to install ${missing[*]}, and sudo is not available." >&2
      echo "bootstrap: run this script as root, or install them yourself." >&2
      exit 1
    fi
  fi

  debian_packages() {
    case "$1" in
      redis) echo redis-server ;;
      postgres) echo postgresql ;;
      node) echo nodejs npm ;;
      chromium) echo chromium ;;
      wrk) echo wrk ;;
    esac
  }

  packages=()
  for tool in "${missing[@]}"; do
    # Word splitting is intended: one tool can need several packages.
    # shellcheck disable=SC2207
    packages+=($(debian_packages "$tool"))
  done

  # `env` rather than `sudo VAR=value`, which sudoers policies may refuse.
  apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
  "${apt[@]}" update -qq >/dev/null
  "${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

  for tool in "${missing[@]}"; do
    if ! "has_$tool"; then
      echo "bootstrap: installed $(debian_packages "$tool") but still cannot find $tool" >&2
      exit 1
    fi
    echo "bootstrap: installed $tool ($(debian_packages "$tool"))"
  done
  exit 0
fi

if [ "$os" = "Darwin" ] && command -v brew >/dev/null 2>&1; then
  for tool in "${missing[@]}"; do
    case "$tool" in
      redis) formula=redis ;;
      postgres) formula=postgresql@16 ;;
      node) formula=node ;;
      wrk) formula=wrk ;;
      chromium)
        echo "bootstrap: no Chrome or Chromium found; install Google Chrome, or run: brew install --cask chromium" >&2
        exit 1
        ;;
    esac
    brew install --quiet "$formula" >/dev/null
    echo "bootstrap: installed $tool ($formula)"
  done
  exit 0
fi

{
  echo "bootstrap: cannot install packages automatically on this system ($os)."
  echo "bootstrap: please install these yourself, then re-run:"
  for tool in "${missing[@]}"; do
    case "$tool" in
      redis) echo "  - Redis (redis-server on PATH)" ;;
      postgres) echo "  - PostgreSQL server (initdb and pg_ctl on PATH)" ;;
      node) echo "  - Node.js with npm" ;;
      chromium) echo "  - Chromium or Google Chrome" ;;
      wrk) echo "  - wrk (the HTTP load generator)" ;;
    esac
  done
  if [ "$os" = "Darwin" ]; then
    echo "bootstrap: on macOS the easiest way is Homebrew: https://brew.sh"
  fi
} >&2
exit 1
