#!/usr/bin/env bash
# deploy-check.sh — run `vercel build --prod` offline and verify .vercel/output.
#
# Usage: ./deploy-check.sh            (native cargo build, shares target/release)
#        DEPLOY_CHECK_ZIG=1 ./deploy-check.sh   (cargo zigbuild, as a local prebuilt deploy would;
#                                                 needs `zig` or `python3 -m ziglang`, and cargo-zigbuild)
#        DEPLOY_CHECK_CLEAN=1 ./deploy-check.sh (also delete .vercel/output afterwards)
#
# Needs no Vercel login and no network except the npm registry (only if node_modules is missing).
# Leaves behind only .vercel/output and .vercel/rust/ (both under the gitignored .vercel/).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${DEPLOY_CHECK_ROOT:-$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel 2>/dev/null || echo "$SCRIPT_DIR")}"
cd "$ROOT"
[[ -f vercel.json && -f Cargo.toml ]] || { echo "deploy-check: no vercel.json/Cargo.toml in $ROOT" >&2; exit 2; }
# Node.js new enough for the Vercel CLI; a private one goes first on PATH.
"$SCRIPT_DIR/bootstrap.sh" node
# shellcheck source=scripts/env.sh
. "$SCRIPT_DIR/env.sh"

PROJECT_JSON=".vercel/project.json"
BACKUP=""
CREATED_VERCEL_DIR=0
WROTE_PROJECT_JSON=0

cleanup() {
  local rc=$?
  if [[ $WROTE_PROJECT_JSON == 1 ]]; then
    rm -f "$PROJECT_JSON"
    if [[ -n $BACKUP ]]; then mv -f "$BACKUP" "$PROJECT_JSON"; fi
  fi
  if [[ ${DEPLOY_CHECK_CLEAN:-0} == 1 ]]; then
    rm -rf .vercel/output .vercel/rust
    if [[ $CREATED_VERCEL_DIR == 1 ]]; then rm -rf .vercel; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. npm deps (vercel CLI is a devDependency)
if [[ ! -x node_modules/.bin/vercel ]]; then
  echo "==> installing npm deps"
  # Not `npm ci`: the registry here lacks some of vercel's optional per-platform packages
  # (@vercel/vc-native-darwin-*, -win32-*, -linux-arm64), so the lockfile that `npm install`
  # writes omits them and `npm ci` refuses it as "out of sync". `npm install` honours the
  # lockfile and leaves it unchanged.
  npm install --no-audit --no-fund
fi

# 2. temporary, fake project link: `vercel build` needs .vercel/project.json (otherwise it tries
#    to log in / fetch the project), while `vercel dev --local` must NOT have one (it would then
#    try to fetch the project and fail offline). So write it only for the build, then restore.
[[ -d .vercel ]] || CREATED_VERCEL_DIR=1
mkdir -p .vercel
if [[ -f $PROJECT_JSON ]]; then
  BACKUP="$(mktemp .vercel/project.json.bak.XXXXXX)"
  cp "$PROJECT_JSON" "$BACKUP"
fi
WROTE_PROJECT_JSON=1
printf '%s\n' '{"projectId":"prj_local","orgId":"team_local","settings":{"framework":null}}' > "$PROJECT_JSON"

# 3. build
rm -rf .vercel/output
export VERCEL_TELEMETRY_DISABLED=1
start=$(date +%s)
if [[ ${DEPLOY_CHECK_ZIG:-0} == 1 ]]; then
  # @vercel/rust cross-compiles with `cargo zigbuild --target x86_64-unknown-linux-gnu --release`
  # whenever VERCEL_BUILD_IMAGE is unset. Any non-empty value (even "0") counts as set.
  echo "==> vercel build --prod (cargo zigbuild)"
  env -u VERCEL_BUILD_IMAGE node_modules/.bin/vercel build --yes --prod
else
  # VERCEL_BUILD_IMAGE=1 makes @vercel/rust run plain `cargo build --bin NAME --release`,
  # exactly as on Vercel's build image; binaries land in target/release (shared with cargo).
  echo "==> vercel build --prod (native cargo build)"
  VERCEL_BUILD_IMAGE=1 node_modules/.bin/vercel build --yes --prod
fi
echo "==> build took $(( $(date +%s) - start ))s"

# 4. verify .vercel/output
echo "==> checking .vercel/output"
node - <<'NODE'
const fs = require('fs');
const path = require('path');

const OUT = '.vercel/output';
const results = [];
const check = (ok, msg) => results.push({ ok: !!ok, msg });
const readJson = (p) => JSON.parse(fs.readFileSync(p, 'utf8'));
const walk = (dir, base = dir) => {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? [path.relative(base, p) + '/', ...walk(p, base)] : [path.relative(base, p)];
  });
};
// vercel.json `functions` globs: `**` spans directories, `*` does not.
const globToRegex = (g) =>
  new RegExp('^' + g.replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*\*\//g, '\u0000').replace(/\*\*/g, '\u0001').replace(/\*/g, '[^/]*')
    .replace(/\u0000/g, '(?:.*/)?').replace(/\u0001/g, '.*') + '$');

const vercelJson = readJson('vercel.json');
const apiFiles = walk('api').filter((f) => f.endsWith('.rs')).map((f) => 'api/' + f);
check(apiFiles.length > 0, `found ${apiFiles.length} api/**/*.rs file(s)`);

const funcDir = (route) => path.join(OUT, 'functions', route.replace(/^\//, '') + '.func');

// every api/**/*.rs has a function, with a real executable behind it
for (const src of apiFiles) {
  const route = src.replace(/\.rs$/, '');
  const cfgPath = path.join(funcDir(route), '.vc-config.json');
  if (!fs.existsSync(cfgPath)) { check(false, `${src}: missing ${cfgPath}`); continue; }
  const cfg = readJson(cfgPath);
  check(cfg.runtime === 'executable' && cfg.handler === 'executable',
    `${src}: runtime/handler = ${cfg.runtime}/${cfg.handler}`);
  // @vercel/rust does not copy the binary: filePathMap points at it (relative to the repo root).
  const exe = (cfg.filePathMap && cfg.filePathMap.executable) ||
    path.join(funcDir(route), cfg.handler);
  let elf = false;
  try {
    const fd = fs.openSync(exe, 'r'); const b = Buffer.alloc(4);
    fs.readSync(fd, b, 0, 4, 0); fs.closeSync(fd);
    elf = b.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46])) && (fs.statSync(exe).mode & 0o111) !== 0;
  } catch (_) {}
  check(elf, `${src}: executable ${exe} is an ELF binary`);

  // every maxDuration from vercel.json `functions` reaches the function config
  for (const [glob, fcfg] of Object.entries(vercelJson.functions || {})) {
    if (fcfg.maxDuration !== undefined && globToRegex(glob).test(src)) {
      check(cfg.maxDuration === fcfg.maxDuration,
        `${src}: maxDuration ${cfg.maxDuration} (vercel.json "${glob}" wants ${fcfg.maxDuration})`);
    }
  }
}

// crons: carried into config.json unchanged; each points at a function that has maxDuration
const config = readJson(path.join(OUT, 'config.json'));
const wantCrons = vercelJson.crons || [];
check(JSON.stringify(config.crons || []) === JSON.stringify(wantCrons),
  `config.json carries the ${wantCrons.length} cron(s) from vercel.json`);
for (const cron of wantCrons) {
  const route = cron.path.split('?')[0];
  const cfgPath = path.join(funcDir(route), '.vc-config.json');
  if (!fs.existsSync(cfgPath)) {
    check(false, `cron ${cron.path} (${cron.schedule}): no function at ${cfgPath} (no api${route.slice(4)}.rs?)`);
    continue;
  }
  const cfg = readJson(cfgPath);
  check(typeof cfg.maxDuration === 'number',
    `cron ${cron.path} (${cron.schedule}): maxDuration = ${cfg.maxDuration}`);
}

// static output must not leak build inputs
const staticFiles = walk(path.join(OUT, 'static'));
const leaks = staticFiles.filter((f) =>
  /(^|\/)(target|node_modules|api|\.vercel)\//.test(f) ||
  /(^|\/)(Cargo\.toml|Cargo\.lock|vercel\.json|package\.json|package-lock\.json)$/.test(f) ||
  /(^|\/)\.env/.test(f) || /\.rs$/.test(f));
check(staticFiles.length > 0, `static output has ${staticFiles.filter((f) => !f.endsWith('/')).length} file(s)`);
check(leaks.length === 0, leaks.length ? `static output leaks: ${leaks.slice(0, 10).join(', ')}` : 'static output has no target/, Cargo.toml, Cargo.lock, .rs, .env');

let failed = 0;
for (const r of results) { console.log(`${r.ok ? 'PASS' : 'FAIL'}  ${r.msg}`); if (!r.ok) failed++; }
console.log(`\ndeploy-check: ${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
NODE
