// Fires BURST concurrent requests at @upstash/ratelimit's sliding window of
// LIMIT per minute, through the local Upstash server, and prints how many it
// admitted: the peer figure beside tollgate's GCRA in BENCHMARKS.md.
import { Ratelimit } from "@upstash/ratelimit";
import { Redis } from "@upstash/redis";

const limit = Number(process.env.LIMIT ?? 100);
const burst = Number(process.env.BURST ?? 500);
const redis = new Redis({
  url: process.env.UPSTASH_REDIS_REST_URL,
  token: process.env.UPSTASH_REDIS_REST_TOKEN,
  enableAutoPipelining: false,
});
const ratelimit = new Ratelimit({
  redis,
  limiter: Ratelimit.slidingWindow(limit, "60 s"),
  prefix: `peer-${process.pid}-${Date.now()}`,
  ephemeralCache: false,
  analytics: false,
});
const results = await Promise.all(
  Array.from({ length: burst }, () => ratelimit.limit("burst")),
);
console.log(JSON.stringify({ limit, burst, admitted: results.filter((r) => r.success).length }));
