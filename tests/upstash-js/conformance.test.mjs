// Runs the official @upstash/redis client against tollgate's local Upstash REST
// server (`cli/src/upstash_local.rs`), so the server is held to what the real
// client expects, base64 response encoding included.
//
// Env: UPSTASH_REDIS_REST_URL, UPSTASH_REDIS_REST_TOKEN, and TEST_PREFIX, a key
// prefix so that parallel runs against one Redis don't collide.
// Run: npm install && node --test

import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Redis } from "@upstash/redis";

const url = process.env.UPSTASH_REDIS_REST_URL;
const token = process.env.UPSTASH_REDIS_REST_TOKEN;
const prefix = process.env.TEST_PREFIX;
if (!url || !token || !prefix) {
  throw new Error(
    "set UPSTASH_REDIS_REST_URL, UPSTASH_REDIS_REST_TOKEN and TEST_PREFIX",
  );
}

// The default client asks for base64-encoded responses; the second one doesn't,
// so both encodings are covered.
const redis = new Redis({ url, token });
const plainRedis = new Redis({ url, token, responseEncoding: false });

const usedKeys = new Set();
function key(name) {
  const full = `${prefix}${name}`;
  usedKeys.add(full);
  return full;
}

after(async () => {
  if (usedKeys.size > 0) {
    await redis.del(...usedKeys);
  }
});

describe("strings", () => {
  test("set and get a plain value", async () => {
    assert.equal(await redis.set(key("s:plain"), "hello"), "OK");
    assert.equal(await redis.get(key("s:plain")), "hello");
    assert.equal(await redis.get(key("s:missing")), null);
  });

  test("incr counts from nothing", async () => {
    assert.equal(await redis.incr(key("s:counter")), 1);
    assert.equal(await redis.incr(key("s:counter")), 2);
    assert.equal(await redis.incrby(key("s:counter"), 40), 42);
  });

  test("mset and mget", async () => {
    assert.equal(
      await redis.mset({ [key("s:m1")]: "one", [key("s:m2")]: "two" }),
      "OK",
    );
    assert.deepEqual(
      await redis.mget(key("s:m1"), key("s:m2"), key("s:m-missing")),
      ["one", "two", null],
    );
  });

  test("expire and ttl", async () => {
    await redis.set(key("s:ttl"), "soon gone");
    assert.equal(await redis.ttl(key("s:ttl")), -1);
    assert.equal(await redis.expire(key("s:ttl"), 100), 1);
    const ttl = await redis.ttl(key("s:ttl"));
    assert.ok(ttl > 90 && ttl <= 100, `ttl was ${ttl}`);
    await redis.set(key("s:ex"), "v", { ex: 50 });
    const exTtl = await redis.ttl(key("s:ex"));
    assert.ok(exTtl > 40 && exTtl <= 50, `ttl was ${exTtl}`);
  });

  test("unicode survives both response encodings", async () => {
    const value = "héllo wörld ✓ 日本語 🚀";
    await redis.set(key("s:unicode"), value);
    assert.equal(await redis.get(key("s:unicode")), value);
    assert.equal(await plainRedis.get(key("s:unicode")), value);
    assert.equal(await redis.strlen(key("s:unicode")), Buffer.byteLength(value));
  });

  test("a stored value of OK is not mistaken for the OK status", async () => {
    await redis.set(key("s:ok"), "OK");
    assert.equal(await redis.get(key("s:ok")), "OK");
    assert.deepEqual(await redis.mget(key("s:ok"), key("s:ok")), ["OK", "OK"]);
  });

  test("objects are serialized to JSON and back", async () => {
    const value = { name: "ada", tags: ["a", "b"], nested: { n: 1.5, ok: true } };
    await redis.set(key("s:json"), value);
    assert.deepEqual(await redis.get(key("s:json")), value);
    assert.deepEqual(await plainRedis.get(key("s:json")), value);
    // What Redis holds is the JSON text.
    assert.equal(await redis.strlen(key("s:json")), JSON.stringify(value).length);
  });
});

describe("hashes", () => {
  test("hset, hget, hgetall and hincrby", async () => {
    assert.equal(await redis.hset(key("h"), { name: "ada", visits: 1 }), 2);
    assert.equal(await redis.hget(key("h"), "name"), "ada");
    assert.equal(await redis.hget(key("h"), "nope"), null);
    assert.deepEqual(await redis.hgetall(key("h")), { name: "ada", visits: 1 });
    assert.equal(await redis.hincrby(key("h"), "visits", 5), 6);
    assert.equal(await redis.hget(key("h"), "visits"), 6);
    assert.equal(await redis.hgetall(key("h:missing")), null);
  });
});

describe("lists", () => {
  test("lpush, rpush, lrange, llen and lpop", async () => {
    assert.equal(await redis.lpush(key("l"), "a", "b"), 2);
    assert.equal(await redis.rpush(key("l"), "c"), 3);
    assert.deepEqual(await redis.lrange(key("l"), 0, -1), ["b", "a", "c"]);
    assert.equal(await redis.llen(key("l")), 3);
    assert.equal(await redis.lpop(key("l")), "b");
    assert.deepEqual(await redis.lrange(key("l"), 0, -1), ["a", "c"]);
    assert.equal(await redis.lpop(key("l:missing")), null);
  });
});

describe("sorted sets", () => {
  test("zadd, zrange with scores, zscore and zincrby", async () => {
    assert.equal(
      await redis.zadd(
        key("z"),
        { score: 1, member: "one" },
        { score: 2.5, member: "two" },
      ),
      2,
    );
    assert.deepEqual(await redis.zrange(key("z"), 0, -1), ["one", "two"]);
    assert.deepEqual(
      await redis.zrange(key("z"), 0, -1, { withScores: true }),
      ["one", 1, "two", 2.5],
    );
    assert.equal(await redis.zscore(key("z"), "two"), 2.5);
    assert.equal(await redis.zscore(key("z"), "none"), null);
    assert.equal(await redis.zincrby(key("z"), 3, "one"), 4);
    assert.deepEqual(await redis.zrange(key("z"), 0, -1), ["two", "one"]);
  });
});

describe("pipelines", () => {
  test("a pipeline answers every command in order", async () => {
    const result = await redis
      .pipeline()
      .set(key("p:a"), "1")
      .incr(key("p:a"))
      .get(key("p:a"))
      .hset(key("p:h"), { f: "v" })
      .hgetall(key("p:h"))
      .lrange(key("p:missing"), 0, -1)
      .exec();
    assert.deepEqual(result, ["OK", 2, 2, 1, { f: "v" }, []]);
  });

  test("a failing command in a pipeline does not stop the others", async () => {
    await redis.set(key("p:string"), "x");
    const pipeline = () =>
      redis
        .pipeline()
        .set(key("p:b"), "before")
        .lpush(key("p:string"), "boom")
        .get(key("p:b"));
    await assert.rejects(pipeline().exec(), /WRONGTYPE/);
    const entries = await pipeline().exec({ keepErrors: true });
    assert.deepEqual(entries[0], { error: undefined, result: "OK" });
    assert.match(
      entries[1].error,
      /^WRONGTYPE Operation against a key holding the wrong kind of value/,
    );
    assert.deepEqual(entries[2], { error: undefined, result: "before" });
  });

  test("auto-pipelined concurrent commands all get their own answers", async () => {
    const auto = new Redis({ url, token, enableAutoPipelining: true });
    const keys = Array.from({ length: 20 }, (_, i) => key(`p:auto:${i}`));
    await Promise.all(keys.map((k, i) => auto.set(k, `v${i}`)));
    const values = await Promise.all(keys.map((k) => auto.get(k)));
    assert.deepEqual(values, keys.map((_, i) => `v${i}`));
  });
});

describe("transactions", () => {
  test("multi/exec runs the commands and answers each", async () => {
    const result = await redis
      .multi()
      .set(key("t:a"), "v")
      .incr(key("t:n"))
      .incr(key("t:n"))
      .get(key("t:a"))
      .exec();
    assert.deepEqual(result, ["OK", 1, 2, "v"]);
  });

  test("a runtime error inside a transaction is reported for its command only", async () => {
    await redis.set(key("t:string"), "x");
    const entries = await redis
      .multi()
      .set(key("t:b"), "1")
      .lpush(key("t:string"), "boom")
      .incr(key("t:b"))
      .exec({ keepErrors: true });
    assert.equal(entries[0].result, "OK");
    assert.match(entries[1].error, /^WRONGTYPE/);
    assert.equal(entries[2].result, 2);
  });

  test("a transaction Redis aborts is a 400 and applies nothing", async () => {
    // The client can't queue a malformed command, so this speaks the protocol.
    const response = await fetch(`${url}/multi-exec`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
      body: JSON.stringify([
        ["SET", key("t:aborted"), "1"],
        ["INCR", key("t:aborted"), "extra", "args"],
      ]),
    });
    assert.equal(response.status, 400);
    assert.match((await response.json()).error, /^EXECABORT/);
    assert.equal(await redis.get(key("t:aborted")), null);
  });
});

describe("scripts", () => {
  // Returns a status reply inside an array (SET's OK), which Upstash must
  // encode there, unlike a top-level OK, and a nested array.
  // The comment makes the script (and its SHA) this run's own, so Redis cannot
  // have it cached yet: the first EVALSHA must miss. No SCRIPT FLUSH, which
  // would make other tests sharing this Redis miss their cached scripts.
  const source = `-- ${prefix} ${process.pid} ${Date.now()}
    local status = redis.call("SET", KEYS[1], ARGV[1])
    return {status, redis.call("GET", KEYS[1]), tonumber(ARGV[2]), {ARGV[1], status}}`;
  const sha1 = createHash("sha1").update(source).digest("hex");

  test("exec falls back to EVAL for an uncached script, then EVALSHA succeeds", async () => {
    const script = redis.createScript(source);
    assert.deepEqual(await redis.scriptExists(sha1), [0]);

    // EVALSHA alone fails with Redis's NOSCRIPT error, which is what makes
    // exec() fall back to EVAL.
    await assert.rejects(
      script.evalsha([key("sc")], ["héllo", "7"]),
      /NOSCRIPT No matching script/,
    );
    assert.deepEqual(
      await script.exec([key("sc")], ["héllo", "7"]),
      ["OK", "héllo", 7, ["héllo", "OK"]],
    );

    // EVAL cached the script, so EVALSHA now succeeds on its own.
    assert.deepEqual(await redis.scriptExists(sha1), [1]);
    assert.deepEqual(
      await script.evalsha([key("sc")], ["again", "8"]),
      ["OK", "again", 8, ["again", "OK"]],
    );
    assert.deepEqual(
      await script.exec([key("sc")], ["third", "9"]),
      ["OK", "third", 9, ["third", "OK"]],
    );
    assert.equal(await redis.get(key("sc")), "third");
  });
});

describe("errors", () => {
  test("a wrong token is refused", async () => {
    const stranger = new Redis({ url, token: `${token}-wrong` });
    await assert.rejects(
      stranger.get(key("e:any")),
      /WRONGPASS invalid or missing auth token/,
    );
  });

  test("a WRONGTYPE command rejects with the Redis message", async () => {
    await redis.set(key("e:string"), "x");
    await assert.rejects(
      redis.hget(key("e:string"), "field"),
      /WRONGTYPE Operation against a key holding the wrong kind of value/,
    );
    await assert.rejects(
      plainRedis.lpush(key("e:string"), "y"),
      /WRONGTYPE Operation against a key holding the wrong kind of value/,
    );
  });
});

describe("protocol details the client relies on", () => {
  test("401s carry the exact Upstash error body", async () => {
    const response = await fetch(url, {
      method: "POST",
      body: JSON.stringify(["GET", key("raw:any")]),
    });
    assert.equal(response.status, 401);
    assert.deepEqual(await response.json(), {
      error: "WRONGPASS invalid or missing auth token",
    });
  });

  test("path-style commands, query tokens and the sync token header", async () => {
    const first = await fetch(
      `${url}/set/${encodeURIComponent(key("raw:path"))}?EX=100&_token=${encodeURIComponent(token)}`,
      { method: "POST", body: "a value/with ✓" },
    );
    assert.equal(first.status, 200);
    assert.deepEqual(await first.json(), { result: "OK" });
    const second = await fetch(
      `${url}/get/${encodeURIComponent(key("raw:path"))}`,
      { headers: { Authorization: `Bearer ${token}` } },
    );
    assert.deepEqual(await second.json(), { result: "a value/with ✓" });
    const [firstSync, secondSync] = [first, second].map((r) =>
      r.headers.get("upstash-sync-token")
    );
    assert.ok(firstSync && secondSync, "upstash-sync-token is missing");
    assert.notEqual(firstSync, secondSync);
    const ttl = await redis.ttl(key("raw:path"));
    assert.ok(ttl > 90 && ttl <= 100, `ttl was ${ttl}`);
  });
});
