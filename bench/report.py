"""Writes BENCHMARKS.md from one run of bench/run.sh (stdout)."""

import argparse
import json
import os
import platform
import subprocess
from datetime import datetime, timezone


def machine():
    cores = os.cpu_count()
    with open("/proc/meminfo") as meminfo:
        kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cores} cores ({cpu}), {kib / 1024 / 1024:.1f} GiB memory, {platform.system()} {platform.release()}"


# The unknown-key figures of the main table: case, figure, target (None: none set).
KEY_ROWS = [
    ("unknown_repeated", "collect, one unknown `sk_` key again and again (req/s)", "≥ 1×"),
    ("random_few_ips", "collect, a fresh unknown `sk_` key per request from 4 IPs past the failed-auth limit (req/s)",
     "≥ 1×"),
    ("random_fresh_ips", "collect, a fresh unknown `sk_` key per request, each from an IP of its own (req/s)", None),
]

KEY_CASES = [
    ("valid", "a valid key"),
    ("unknown_repeated", "one unknown key, again and again"),
    ("random_few_ips", "a fresh unknown key each time, from 4 IPs past the limit"),
    ("random_fresh_ips", "a fresh unknown key each time, each from an IP of its own"),
]


def unknown_keys_section(keys, unknown):
    """What a request with an unknown key costs, against one with a valid key."""
    valid = keys["valid"]["rps"]
    out = ["## Unknown keys\n"]
    out.append("The same collect request (one event, a secret key in `Authorization`) with a valid key and with "
               "well-formed `sk_` keys that no one has, on a dev server of its own that reads the client IP from a "
               "header wrk sets, as a proxy in front of a deployment would (`TOLLGATE_CLIENT_IP_HEADER`), with the "
               f"default failed-authentication limit of {unknown['failed_auth_limit']} per IP and minute "
               "(`TOLLGATE_FAILED_AUTH_LIMIT`). wrk counts the answers and the run fails on any it did not expect. "
               "Upstash round trips and request bytes (paths and bodies) and Postgres statements are counted by "
               f"the app's own clients over {unknown['requests']:,} requests per case through the collect handler "
               f"in one process, after each case's warm-up; the body is {unknown['body_bytes']} bytes.\n")
    out.append("| key | req/s | ratio to valid | answers | Upstash round trips per request | Upstash bytes per request "
               "| Postgres statements per request |")
    out.append("|---|---:|---:|---|---:|---:|---:|")
    for case, label in KEY_CASES:
        rps, statuses, cost = keys[case]["rps"], keys[case]["statuses"], unknown[case]
        answers = ", ".join(f"{n:,} × {status}" for status, n in statuses.items() if n and status != "other")
        out.append(f"| {label} | {rps:,.0f} | {rps / valid:.2f}× | {answers} | {cost['upstash_round_trips']:.2f} | "
                   f"{cost['upstash_bytes']:,.0f} | {cost['postgres_statements']:.2f} |")
    out.append("")
    out.append("- One unknown key again and again is answered from the instance's memory of unknown keys (for a "
               "minute, as long as Redis's cache entry): no round trip at all, and (since 0462c30, after this "
               "figure's run at 016f683) no decoding of its body either.")
    out.append(f"- A fresh key from a client IP past the limit is refused on admission's first round trip (a pipeline of reads), before "
               f"any lookup, with a 429 until the IP's minute is over. Before that, each IP's first "
               f"{unknown['failed_auth_limit']} failures were looked up; the 401s above are those, plus what 32 "
               "connections had in flight while the last of them were counted (the run fails past "
               "4 × limit + 32).")
    out.append("- A fresh key from an IP of its own, as a guesser spread over many addresses would send, never meets "
               "the per-IP limit: each costs the key cache lookup, the Postgres lookup and the write of the "
               "\"unknown\" cache entry (`fill_key.lua`), which also counts the IP's failure. This is the "
               "most an unknown key can cost.")
    out.append("")
    return out


FUZZ_TARGETS = {
    "decode_body": "`events::body::decode_body`: gzip by header or magic bytes, size and ratio caps",
    "parse_batch": "`events::parse::parse_batch`, then the queue's form and back (`queued::encode`, `decode`)",
    "upload_request": "`uploads::UploadRequest::parse`: file name, content type, size, provider, expiry",
    "analytics_query": "`analytics::Query::parse`, then `Query::range` for three current days",
}


def fuzz_section(fuzz):
    """The fuzz targets' bounded runs (fuzz/, bench/fuzz.sh)."""
    out = ["## Fuzzing\n"]
    if fuzz is None:
        out.append("Not run in this mode: `bench/run.sh --quick --fuzz` runs every target for 10 s, the full run "
                   "for 60 s.\n")
        return out
    out.append("Each target in `fuzz/` ran for a bounded time under `cargo fuzz` (libFuzzer, coverage-guided, "
               f"sanitizer: {fuzz['sanitizer']}) on the stable toolchain with `RUSTC_BOOTSTRAP=1`, starting from "
               "the seeds in `fuzz/corpus/<target>/` and what earlier runs on this machine kept "
               "(`.tollgate/fuzz/corpus/`). Each asserts that the function never panics and an invariant of what "
               "it accepts (`fuzz/README.md`). Building the targets took "
               f"{fuzz['build_seconds']} s in this run (cargo rebuilds what changed; from scratch, about ten "
               "minutes on 2 cores).\n")
    out.append("| target | what it calls | time (s) | executions | executions/s | coverage (edges) | corpus | crashes |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in fuzz["runs"]:
        crashes = f"**{run['crashes']}** (`{run['artifact']}`)" if run["crashes"] else "0"
        num = lambda v: "–" if v is None else f"{v:,}"
        out.append(f"| {run['target']} | {FUZZ_TARGETS.get(run['target'], '')} | {num(run['seconds'])} | "
                   f"{num(run['runs'])} | {num(run['execs_per_sec'])} | {num(run['coverage'])} | "
                   f"{num(run['corpus'])} | {crashes} |")
    out.append("")
    return out


VIEW_TARGET_MS = 25


def view_rows(views):
    """Main-table rows: each view's p50 against the target, and the events
    view from rollups against the same range aggregated from raw events."""
    label = f"{views['big_key_events']:,} events of {views['events']:,}"
    rows = []
    for view, times in views["views"].items():
        p50 = times["p50_ms"]
        rows.append((f"view `{view}` on a cache miss, key with {label}, p50 (ms)", p50, "target (ms)",
                     VIEW_TARGET_MS, p50 / VIEW_TARGET_MS, f"≤ {VIEW_TARGET_MS} ms", p50 <= VIEW_TARGET_MS))
    events, raw = views["views"]["events"]["p50_ms"], views["raw_events"]["p50_ms"]
    rows.append((f"view `events` from rollups, key with {label}, p50 (ms)", events,
                 "the same range aggregated from the key's raw events, as before rollups, p50 (ms)", raw,
                 events / raw, "none set (for scale)", None))
    return rows


def views_section(views):
    """The views at scale: what was seeded, how, and each view's times."""
    tables = views["tables"]
    mib = lambda name: tables[name]["bytes"] / 2**20
    out = ["## Analytics views at scale\n"]
    out.append(f"`tollgate-bench views` (bench/src/views.rs) seeds a database of its own with {views['events']:,} "
               f"events of {views['keys']:,} keys by binary `COPY` in {views['seed_seconds']:.0f} s "
               f"({views['seed_events_per_second']:,.0f} events/s, with the table's three indexes), written day by "
               f"day in time order across keys, as the drain writes them. One key holds {views['big_key_events']:,} "
               f"of them over {views['days']} days; the others share the rest by a Zipf law (s = 0.7), so a few "
               "are large and most small. Rollups are then built for every key by `rollup::rebuild`, which replays "
               "a key's events through the drain's own rollup code: "
               f"{views['rebuild_seconds']:.0f} s in all ({views['rebuild_events_per_second']:,.0f} events/s, two "
               f"keys at a time), {views['big_key_rebuild_seconds']:.1f} s for the big key alone. "
               "Then `VACUUM ANALYZE`, as autovacuum would have run by the time a dashboard is read.\n")
    out.append("The events' distribution (per key; fixed seed):\n")
    for line in [
        "types: 95 % web, 5 % server (no path, browser, visitor or session);",
        "names: 10; a web event is `pageview` three times in four, the rest Zipf (s = 1) over 9 others "
        "(click, signup, add_to_cart, purchase, …);",
        "paths: 300, Zipf (s = 1.1), so `/` and a few pages take most views;",
        "visitors: each has 1 to 10 events (Zipf, s = 1: a third have one), about a minute apart (exponential "
        "gaps), starting at a uniformly random time of the day; a new visitor id each visit, as the daily salt makes it;",
        "sessions: 90 % of visitors carry a tracker session id on their web events; the rest become visits by "
        "30 idle minutes;",
        "referrers: 55 % of visitors come from a referring site, over 100 sites by Zipf (s = 1.2); the rest are "
        "direct; the referrer is on the visit's first event;",
        "UTM: a quarter of referred visitors (about 14 % of visits) carry utm_source (12 values, Zipf), "
        "utm_medium (5, uniform) and utm_campaign (20, Zipf) on their first event;",
        "countries: 60, Zipf (s = 1.3); browsers: 8, Zipf (s = 1.5); devices: desktop 55 %, smartphone 40 %, "
        "tablet 5 %.",
    ]:
        out.append(f"- {line}")
    out.append("")
    out.append(f"Each view's statement (`views::sql`, bound with the route's parameters for the {views['days']} days) "
               f"for the big key, run {views['samples']} times after one untimed run (the raw baseline "
               f"{views['raw_samples']} times); timed by the client on loopback, so Postgres time plus a local "
               "round trip, which is what a cache miss costs in Postgres. The Redis cache is not involved.\n")
    out.append("| view | p50 (ms) | p95 (ms) | target |")
    out.append("|---|---:|---:|---|")
    for view, times in views["views"].items():
        out.append(f"| {view} | {times['p50_ms']:.2f} | {times['p95_ms']:.2f} | ≤ {VIEW_TARGET_MS} ms |")
    raw = views["raw_events"]
    out.append(f"| events before rollups: the key's raw events of the range, aggregated (baseline) | "
               f"{raw['p50_ms']:.2f} | {raw['p95_ms']:.2f} | – |")
    out.append("")
    out.append(f"Sizes after the run: `events` {tables['events']['rows']:,} rows, {mib('events'):,.0f} MiB with "
               f"indexes ({tables['events']['bytes'] / max(1, tables['events']['rows']):.0f} bytes per event); "
               f"`event_rollup_values` {tables['event_rollup_values']['rows']:,} rows, "
               f"{mib('event_rollup_values'):,.0f} MiB; `event_rollup_daily` "
               f"{tables['event_rollup_daily']['rows']:,} rows, {mib('event_rollup_daily'):,.0f} MiB; "
               f"`event_sessions` {tables['event_sessions']['rows']:,} rows, {mib('event_sessions'):,.0f} MiB.\n")
    return out


def main():
    parser = argparse.ArgumentParser()
    for name in ["mode", "seconds", "lpush", "null", "single", "batch", "drain", "redis", "postgres", "command",
                 "evalsha", "signed", "peer", "sync", "limiter-bytes", "quota-bytes",
                 "analytics", "views", "hit", "miss", "hit-p50", "miss-p50", "latency", "payload",
                 "keys", "unknown", "fuzz"]:
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--keep-soak-from", default=None)
    args = parser.parse_args()
    lpush, null, single, batch = float(args.lpush), float(args.null), float(args.single), float(args.batch)
    drain = json.loads(args.drain)
    pooled = drain["pooled"]
    evalsha, signed = float(args.evalsha), float(args.signed)
    peer, sync = json.loads(args.peer), json.loads(args.sync)
    analytics, hit, miss = json.loads(args.analytics), float(args.hit), float(args.miss)
    views = json.loads(args.views)
    latency, payload = json.loads(args.latency), json.loads(args.payload)
    rtt = latency["rtt"]["p50_ms"]
    keys, unknown, fuzz = json.loads(args.keys), json.loads(args.unknown), json.loads(args.fuzz)
    valid_rps = keys["valid"]["rps"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()

    rows = [
        ("collect, single event (req/s)", single,
         "null route: the same dev server and Upstash client, one EVALSHA of `return 1` (req/s)", null,
         single / null, "≥ 0.7×", single / null >= 0.7),
        ("signed-url (req/s)", signed, "null route (req/s)", null, signed / null, "≥ 0.7×", signed / null >= 0.7),
        ("collect, single event (req/s)", single, "bare LPUSH through the local Upstash server (req/s)", lpush,
         single / lpush, "≥ 0.5×", single / lpush >= 0.5),
        ("collect, batches of 50 (events/s)", batch * 50, "collect, single event (events/s)", single,
         batch * 50 / single, "≥ 20×", batch * 50 / single >= 20),
        ("drain (events/s)", drain["drain_events_per_second"], "COPY of the same rows into the same tables (events/s)",
         drain["copy_events_per_second"], drain["drain_events_per_second"] / drain["copy_events_per_second"], "≥ 0.6×",
         drain["drain_events_per_second"] / drain["copy_events_per_second"] >= 0.6),
        ("drain, absolute (events/s)", drain["drain_events_per_second"], "target", 30000,
         drain["drain_events_per_second"] / 30000, "≥ 30,000 events/s", drain["drain_events_per_second"] >= 30000),
        ("drain through PgBouncer, transaction mode (events/s)", pooled["drain_events_per_second"],
         "the same drain on a direct connection (events/s)", drain["drain_events_per_second"],
         pooled["drain_events_per_second"] / drain["drain_events_per_second"], "none set (for scale)", None),
        ("signed-url through admission (req/s)", signed, "bare EVALSHA of `return 1` through the local Upstash server (req/s)",
         evalsha, signed / evalsha, "≥ 0.5×", signed / evalsha >= 0.5),
        ("collect through admission (req/s)", single, "bare EVALSHA (req/s)", evalsha, single / evalsha, "≥ 0.5×",
         single / evalsha >= 0.5),
        ("analytics, cache hit (req/s)", hit, "bare EVALSHA (req/s): a hit is two Upstash calls side by side (admission and the cache)", evalsha,
         hit / evalsha, "none set (two hops, as collect)", None),
        ("analytics, cache miss (req/s)", miss, "analytics, cache hit (req/s)", hit, miss / hit,
         "none set (for scale)", None),
        (f"sync-metrics, {sync['counters']:,} counters of {sync['keys']:,} keys (s)", sync["seconds"], "target (s)", 10,
         sync["seconds"] / 10, "under 10 s", sync["seconds"] < 10),
    ]
    rows.extend(view_rows(views))
    for case, figure, target in KEY_ROWS:
        ratio = keys[case]["rps"] / valid_rps
        rows.append((figure, keys[case]["rps"], "the same request with a valid `sk_` key (req/s)", valid_rps, ratio,
                     target or "none set (see below)", ratio >= 1 if target else None))
    for route, name in [("collect", "collect"), ("signed", "signed-url")]:
        ours, theirs = latency[route]["p50_ms"], latency[f"peer_{route}"]["p50_ms"]
        rows.append((f"{name} p50 at 1 ms each way (ms)", ours, "one Upstash round trip, p50 of PING (ms) + 1.5 ms",
                     rtt + 1.5, ours / (rtt + 1.5), "≤ RTT + 1.5 ms", ours <= rtt + 1.5))
        rows.append((f"{name} p50 at 1 ms each way (ms)", ours, "the peer (bench/peer/server.mjs), p50 (ms)", theirs,
                     ours / theirs, "≤ 0.5×", ours <= 0.5 * theirs))
    for shape in payload:
        body = shape["body_bytes"]
        rows.append((f"Upstash request bytes, {shape['shape']}", shape["upstash_bytes"], "body bytes", body,
                     shape["upstash_bytes"] / body, "≤ 1.3×", shape["upstash_bytes"] / body <= 1.3))
        rows.append((f"queue entry bytes, {shape['shape']}", shape["stream_bytes"], "body bytes", body,
                     shape["stream_bytes"] / body, "≤ 1.2×", shape["stream_bytes"] / body <= 1.2))
    out = []
    out.append("# Benchmarks\n")
    out.append("Measured by `bench/run.sh`; every figure against a baseline measured in the same run, on the same machine.\n")
    out.append(f"- Reproduce: `{args.command}` (also `make bench`; CI runs `bench/run.sh --quick`)")
    out.append(f"- Run: {args.mode} mode, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, commit {commit}")
    out.append(f"- Machine: {machine()}")
    out.append(f"- Redis {args.redis}, PostgreSQL {args.postgres}; release build; wrk with 1 thread and 32 connections for {args.seconds} s per figure, on 127.0.0.1")
    out.append("")
    out.append("| figure | value | baseline | baseline value | ratio | target | met |")
    out.append("|---|---:|---|---:|---:|---|---|")
    for figure, value, baseline, base_value, ratio, target, met in rows:
        fmt = (lambda v: f"{v:,.2f}") if abs(value) < 100 else (lambda v: f"{v:,.0f}")
        verdict = "–" if met is None else ("yes" if met else "**no**")
        out.append(f"| {figure} | {fmt(value)} | {baseline} | {fmt(base_value)} | {ratio:.2f}× | {target} | {verdict} |")
    out.append("")
    out.append("## Latency at 1 ms each way\n")
    out.append("Sequential requests on one connection, the way one user of a Vercel function waits: "
               "`tollgate upstash-local --latency 1ms` delays each direction of every Upstash request by 1 ms, "
               "and tollgate's dev server and the peer both go through it. The peer (`bench/peer/server.mjs`) is "
               "written the way Upstash's and AWS's documentation suggest: it looks the key up by its hash, calls "
               "`@upstash/ratelimit`'s `limit()`, `INCR`s a daily quota and writes its counters in a pipeline, then "
               "`LPUSH`es the events or presigns with `@aws-sdk/s3-request-presigner`.\n")
    out.append("| route | tollgate p50 (ms) | tollgate p99 (ms) | peer p50 (ms) | peer p99 (ms) |")
    out.append("|---|---:|---:|---:|---:|")
    for route, name in [("collect", "collect"), ("signed", "signed-url")]:
        ours, theirs = latency[route], latency[f"peer_{route}"]
        out.append(f"| {name} | {ours['p50_ms']:.2f} | {ours['p99_ms']:.2f} | {theirs['p50_ms']:.2f} | {theirs['p99_ms']:.2f} |")
    out.append(f"| one Upstash round trip (PING) | {rtt:.2f} | {latency['rtt']['p99_ms']:.2f} | | |")
    out.append("")
    out.extend(unknown_keys_section(keys, unknown))
    out.extend(views_section(views))
    out.append("## Details\n")
    out.append(f"- The drain stored {drain['events']:,} events in {drain['drain_seconds']:.1f} s with "
               f"{drain['drain_batches']} batches and {drain['drain_statements']} Postgres statements "
               "(per batch: the key lock, the id lookup and the rollups' statements; the two COPYs are not "
               "counted); the COPY baseline loaded "
               f"the same rows in {drain['copy_seconds']:.1f} s. Filling the queue took {drain['fill_seconds']:.1f} s.")
    out.append(f"- The same drain through PgBouncer 1.18 in transaction mode (Neon's pooled endpoint; three server "
               f"connections per database, `TOLLGATE_DATABASE_POOLER=transaction`, so every statement unnamed) "
               f"stored the same number of events in {pooled['drain_seconds']:.1f} s with {pooled['drain_batches']} "
               f"batches and {pooled['drain_statements']} statements: claim {pooled['drain_claim_ms']:,} ms, store "
               f"{pooled['drain_store_ms']:,} ms, ack {pooled['drain_ack_ms']:,} ms, against claim "
               f"{drain['drain_claim_ms']:,} ms, store {drain['drain_store_ms']:,} ms, ack {drain['drain_ack_ms']:,} ms "
               "on the direct connection.")
    out.append(f"- sync-metrics moved {sync['counters']:,} counters of {sync['keys']:,} keys in {sync['batches']} batches "
               f"with {sync['statements']} Postgres statements (five per batch: the batch id and one upsert per table).")
    out.append(f"- Analytics on {analytics['events']:,} events and {analytics['keys']:,} keys of usage data (30 days of "
               f"daily and per-provider rows each; the benchmark's key holds {analytics['big_key_events']:,} of the "
               f"events; seeding took {analytics['seeded_seconds']:.0f} s). A hit reads `view=overview` again and again "
               f"(p50 latency {float(args.hit_p50):.2f} ms under 32 connections); a miss asks for a daily series with "
               "different parameters every time, so each is one Upstash round trip to look up, one Postgres "
               "statement, and one to store the result "
               f"(p50 {float(args.miss_p50):.2f} ms). The wrk script counts the `X-Cache` header of every answer and "
               "the run fails if a hit run missed or a miss run hit.")
    out.append("- Postgres time of each view's one statement at that size, p50 over repeated runs (ms), for the key "
               "(this seed writes events but not their rollups, so its events figures are those of empty rollups; "
               "\"Analytics views at scale\" above has the events view at 10,000,000 events) "
               f"with {analytics['big_key_events']:,} events and for typical keys "
               f"(~{(analytics['events'] - analytics['big_key_events']) // max(1, analytics['keys']):,} events each):")
    out.append("")
    out.append("  | view | big key (ms) | typical key (ms) |")
    out.append("  |---|---:|---:|")
    for view, times in analytics["views"].items():
        out.append(f"  | {view} | {times['big_key_p50_ms']:.2f} | {times['typical_key_p50_ms']:.2f} |")
    out.append("")
    out.append(f"- Redis memory per active key: the rate limiter's state is {args.limiter_bytes} bytes (one GCRA timestamp); "
               f"the day and month quota counters add {args.quota_bytes} bytes (`MEMORY USAGE`).")
    out.append(f"- Peer check, 500 concurrent requests against a limit of 100 per minute through the same local Upstash "
               f"server: tollgate's GCRA admits exactly 100 (the integration test "
               f"`a_burst_of_500_concurrent_requests_against_a_limit_of_100_admits_exactly_100` asserts it); "
               f"`@upstash/ratelimit`'s sliding window admitted {peer['admitted']}.")
    out.append("- Collect and LPUSH both go through real HTTP on loopback: collect to `tollgate dev` (which makes one "
               "Upstash round trip per request to its embedded local Upstash server), LPUSH straight to a local "
               "Upstash server in front of the same Redis. Both servers and wrk share the same 2 cores.")
    out.append("")
    out.append("## Gaps and plans\n")
    out.append("- **collect and signed-url against the null route (target ≥ 0.7×).** The null route is the same dev "
               "server and Upstash client making one `EVALSHA` of `return 1`, so the gap is tollgate's own work per "
               "request: parsing and validating the body, classifying the user agent, encoding the queued form, and "
               "admit.lua's two dozen Redis commands. On this machine wrk, the dev server, the local Upstash server "
               "and Redis share two cores, so the figure is CPU per request. Part of the script's share is this "
               "benchmark's own: the strict local server checks every key a flagged script touches with a "
               "`COMMAND GETKEYS` per call, which Upstash does natively. Not yet profiled since the scripts moved "
               "under key locking. Next: a profile of collect and of admit.lua (`perf record` on the dev server, "
               "Redis's `SLOWLOG` and commandstats), fewer commands in admit.lua (one `HSET` of a request's "
               "counters instead of an `HINCRBY` each), and a variant of this figure with the key checks off, "
               "to separate the local server's cost from tollgate's. On Vercel the figure that matters is the "
               "latency table above: each route costs one round trip plus about a millisecond.")
    out.append("- **collect and signed-url against one bare Upstash hop (target ≥ 0.5×).** The baseline is one HTTP hop "
               "(wrk → Upstash server → Redis); a metered route is two (wrk → function → Upstash server → Redis), and in "
               "`tollgate dev` both servers run in one process on the same two cores as wrk and Redis, so even a free "
               "handler would land near 0.5×; the null route measures that directly.")
    if batch * 50 / single < 20:
        out.append("- **Batches of 50 against single events (target ≥ 20×).** The events now travel unescaped and queue "
                   "in a compact form (the byte ratios above), but a batch still carries 50 events through JSON "
                   "parsing, validation and the queued form's encoding, each a copy. Next: encode the queued form "
                   "straight from the parsed values without cloning each event, and parse without the intermediate "
                   "`serde_json::Value`.")
    ratio = drain["drain_events_per_second"] / drain["copy_events_per_second"]
    absolute = "met" if drain["drain_events_per_second"] >= 30000 else \
        f"not met on this host, where COPY itself loads {drain['copy_events_per_second']:,.0f} events/s"
    out.append(f"- **The drain against COPY ({ratio:.2f}×, target ≥ 0.6×; ≥ 30,000 events/s is {absolute}).** Each "
               "batch is one transaction: lock the batch's keys, look up which ids `event_ids` already holds, "
               "`COPY` the new ids and events in binary, and update the key's rollups (daily figures, value "
               "counts, sessions). The claim of the next batch and the acknowledgement of the last run beside it. "
               "What the drain does beyond the baseline's two COPYs is the id lookup, the rollups and the queue "
               f"itself (claim {drain['drain_claim_ms']:,} ms, store {drain['drain_store_ms']:,} ms, ack "
               f"{drain['drain_ack_ms']:,} ms, overlapping).")
    slow = [view for view, times in views["views"].items() if times["p50_ms"] > VIEW_TARGET_MS]
    if slow:
        out.append(f"- **Views over {VIEW_TARGET_MS} ms at {views['events']:,} events: {', '.join(slow)}.** See "
                   "\"Analytics views at scale\" above for the times. Most of the events view's time is its "
                   "rankings: an index-only scan of the range's value rows (about 33,000 for the big key) and their "
                   "aggregate; the rest is counting visitors from the sketches, per day and for the range. Next: a "
                   "weekly level of `event_rollup_values`, so a 30-day range reads about a third of the rows, and "
                   "each day's visitor count stored beside its sketch (a generated column) instead of counted on "
                   "every read.")
    out.append("- **Analytics views read rollups only.** No view reads raw events (the EXPLAIN test in "
               "`tests/analytics.rs` refuses any read of `events` and any table scan), so a view's cost grows with "
               "the days and distinct values of its range, not with its events; the raw aggregation it replaced "
               "is in the views table above, measured in the same run.")
    out.append("")
    out.extend(fuzz_section(fuzz))
    # The soak test's summary (bench/soak.sh) is kept from the existing file.
    try:
        old = open(args.keep_soak_from).read() if args.keep_soak_from else ""
    except FileNotFoundError:
        old = ""
    start, end = old.find("<!-- soak:start -->"), old.find("<!-- soak:end -->")
    if start >= 0 and end > start:
        out.append(old[start:end + len("<!-- soak:end -->")])
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
