// Runs @upstash/ratelimit 2.2.0 against tollgate's local Upstash REST server in
// strict mode (`cli/src/upstash_local.rs`), the way Upstash would run it.
//
// Its limit and getRemaining scripts start with `#!lua flags=allow-key-locking`
// and pass every key they touch in KEYS, so they run under key locking; the
// bursts check that they stay atomic there. Its reset script, behind
// resetUsedTokens, has no flag and SCANs the keyspace for keys it then deletes,
// so Upstash runs it under the global lock. A strict server refuses such a
// script, so the main server here exempts that one by its SHA-1 (see
// tests/upstash_local.rs), and the second one, strict without exemptions,
// shows the refusal.
//
// Env: UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN (strict, the reset
// script exempted), UPSTASH_STRICT_URL and UPSTASH_STRICT_TOKEN (strict), and
// TEST_PREFIX, a key prefix so that parallel runs against one Redis don't collide.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Ratelimit } from "@upstash/ratelimit";
import { Redis } from "@upstash/redis";

const url = process.env.UPSTASH_REDIS_REST_URL;
const token = process.env.UPSTASH_REDIS_REST_TOKEN;
const strictUrl = process.env.UPSTASH_STRICT_URL;
const strictToken = process.env.UPSTASH_STRICT_TOKEN;
const prefix = process.env.TEST_PREFIX;
if (!url || !token || !strictUrl || !strictToken || !prefix) {
  throw new Error(
    "set UPSTASH_REDIS_REST_URL, UPSTASH_REDIS_REST_TOKEN, UPSTASH_STRICT_URL, UPSTASH_STRICT_TOKEN and TEST_PREFIX",
  );
}

// The default client pipelines concurrent commands automatically, so the
// bursts go through /pipeline as well as through single commands.
const redis = new Redis({ url, token });
const strictRedis = new Redis({ url: strictUrl, token: strictToken });

const HOUR = 60 * 60 * 1000;
const algorithms = {
  "fixed window": (limit) => Ratelimit.fixedWindow(limit, "1 h"),
  "sliding window": (limit) => Ratelimit.slidingWindow(limit, "1 h"),
  // One token back per hour: none comes back during a test.
  "token bucket": (limit) => Ratelimit.tokenBucket(1, "1 h", limit),
};

let limiters = 0;
function limiter(algorithm, limit, options = {}) {
  return new Ratelimit({
    redis,
    limiter: algorithms[algorithm](limit),
    prefix: `${prefix}rl:${limiters++}`,
    // Every verdict comes from the server: no local cache of blocked
    // identifiers, and no "admit on timeout".
    ephemeralCache: false,
    timeout: 0,
    analytics: false,
    ...options,
  });
}

// Fixed and sliding windows start at multiples of their length since the
// epoch. Requests on both sides of that instant may legitimately be admitted
// up to two windows' worth, so a test that counts admissions starts well
// clear of it.
async function clearOfWindowBoundary() {
  const left = HOUR - (Date.now() % HOUR);
  if (left < 10_000) {
    await new Promise((resolve) => setTimeout(resolve, left + 100));
  }
}

async function limitInTurn(ratelimit, identifier, times) {
  const results = [];
  for (let i = 0; i < times; i++) {
    results.push(await ratelimit.limit(identifier));
  }
  return results;
}

for (const algorithm of Object.keys(algorithms)) {
  describe(algorithm, () => {
    test("admits up to the limit, then refuses", async () => {
      await clearOfWindowBoundary();
      const ratelimit = limiter(algorithm, 3);

      const results = await limitInTurn(ratelimit, "user", 4);

      assert.deepEqual(
        results.map((r) => [r.success, r.remaining, r.limit, r.reason]),
        [
          [true, 2, 3, undefined],
          [true, 1, 3, undefined],
          [true, 0, 3, undefined],
          [false, 0, 3, undefined],
        ],
      );
      // Another identifier has its own budget.
      assert.equal((await ratelimit.limit("someone else")).success, true);
    });

    test("getRemaining reports what is left without using it", async () => {
      await clearOfWindowBoundary();
      const ratelimit = limiter(algorithm, 5);
      assert.deepEqual(
        pick(await ratelimit.getRemaining("user")),
        { remaining: 5, limit: 5 },
      );

      await limitInTurn(ratelimit, "user", 2);

      assert.deepEqual(
        pick(await ratelimit.getRemaining("user")),
        { remaining: 3, limit: 5 },
      );
      assert.deepEqual(
        pick(await ratelimit.getRemaining("user")),
        { remaining: 3, limit: 5 },
      );
    });

    test("resetUsedTokens gives the identifier its whole budget back", async () => {
      await clearOfWindowBoundary();
      const ratelimit = limiter(algorithm, 2);
      await limitInTurn(ratelimit, "user", 3);
      await limitInTurn(ratelimit, "neighbour", 1);
      assert.equal((await ratelimit.getRemaining("user")).remaining, 0);

      await ratelimit.resetUsedTokens("user");

      assert.equal((await ratelimit.getRemaining("user")).remaining, 2);
      assert.equal((await ratelimit.limit("user")).success, true);
      // Only that identifier's keys went.
      assert.equal((await ratelimit.getRemaining("neighbour")).remaining, 1);
    });

    test("a burst of 500 concurrent requests against a limit of 100 admits exactly 100", async () => {
      await clearOfWindowBoundary();
      const ratelimit = limiter(algorithm, 100);

      const results = await Promise.all(
        Array.from({ length: 500 }, () => ratelimit.limit("burst")),
      );

      assert.equal(results.filter((r) => r.success).length, 100);
      assert.ok(results.every((r) => r.reason === undefined));
      assert.equal((await ratelimit.getRemaining("burst")).remaining, 0);
    });
  });
}

describe("dynamic limits", () => {
  test("a limit set at run time is read from its own declared key", async () => {
    await clearOfWindowBoundary();
    const ratelimit = limiter("fixed window", 5, { dynamicLimits: true });
    await ratelimit.setDynamicLimit({ limit: 2 });

    const results = await limitInTurn(ratelimit, "user", 3);

    assert.deepEqual(
      results.map((r) => [r.success, r.limit]),
      [
        [true, 2],
        [true, 2],
        [false, 2],
      ],
    );
    // The dynamic limit's key has no TTL.
    await ratelimit.setDynamicLimit({ limit: false });
  });
});

describe("a strict server without exemptions", () => {
  test("refuses resetUsedTokens, whose script would hold Upstash's global lock", async () => {
    const ratelimit = new Ratelimit({
      redis: strictRedis,
      limiter: algorithms["token bucket"](2),
      prefix: `${prefix}rl:strict`,
      ephemeralCache: false,
      timeout: 0,
      analytics: false,
    });
    // Its flagged scripts run there as anywhere.
    assert.equal((await ratelimit.limit("user")).success, true);

    await assert.rejects(
      ratelimit.resetUsedTokens("user"),
      /tollgate upstash-local --strict: this script has no `allow-key-locking` flag/,
    );
  });
});

function pick({ remaining, limit }) {
  return { remaining, limit };
}
