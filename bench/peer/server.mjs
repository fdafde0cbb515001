// The peer tollgate's latency is measured beside: the same two routes
// written the way Upstash's and AWS's documentation suggest, one call per
// step. Each request looks up its key in Redis by the key's hash, calls
// @upstash/ratelimit's limit(), INCRs a daily quota and writes its usage
// counters in a pipeline; then collect LPUSHes the events and signed-url
// presigns a PUT with @aws-sdk/s3-request-presigner.
//
//   UPSTASH_REDIS_REST_URL=… UPSTASH_REDIS_REST_TOKEN=… PORT=13100 node server.mjs
//
// A key is `peer:key:<sha256 hex of the bearer>` = {"id": "…", "daily": n}.
import { createHash } from "node:crypto";
import http from "node:http";

import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { Ratelimit } from "@upstash/ratelimit";
import { Redis } from "@upstash/redis";

const redis = new Redis({
  url: process.env.UPSTASH_REDIS_REST_URL,
  token: process.env.UPSTASH_REDIS_REST_TOKEN,
  enableAutoPipelining: false,
  automaticDeserialization: false,
});
const ratelimit = new Ratelimit({
  redis,
  limiter: Ratelimit.slidingWindow(1_000_000, "60 s"),
  prefix: "peer:rl",
  ephemeralCache: false,
  analytics: false,
});
const s3 = new S3Client({
  region: "us-east-1",
  endpoint: "http://127.0.0.1:9000",
  forcePathStyle: true,
  credentials: { accessKeyId: "AKIAPEER", secretAccessKey: "peer-secret" },
});

function answer(response, status, body) {
  response.writeHead(status, { "content-type": "application/json" });
  response.end(JSON.stringify(body));
}

async function handle(request, body) {
  const token = (request.headers.authorization ?? "").replace(/^Bearer /, "");
  const hash = createHash("sha256").update(token).digest("hex");
  const stored = await redis.get(`peer:key:${hash}`);
  if (!stored) return [401, { error: "invalid_key" }];
  const key = JSON.parse(stored);
  const { success } = await ratelimit.limit(key.id);
  if (!success) return [429, { error: "rate_limited" }];
  const day = new Date().toISOString().slice(0, 10);
  const used = await redis.incr(`peer:quota:${key.id}:${day}`);
  if (used > key.daily) return [429, { error: "daily_quota_exceeded" }];
  const metrics = redis.pipeline();
  metrics.hincrby(`peer:mx:${key.id}:${day}`, "req", 1);
  metrics.hincrby(`peer:mx:${key.id}:${day}`, "ok", 1);
  if (request.url === "/api/collect") {
    await metrics.exec();
    await redis.lpush("peer:events", body);
    return [202, { accepted: 1 }];
  }
  const upload = JSON.parse(body);
  metrics.hincrby(`peer:mx:${key.id}:${day}`, "files", 1);
  metrics.hincrby(`peer:mx:${key.id}:${day}`, "bytes", upload.size);
  await metrics.exec();
  const objectKey = `${key.id}/${crypto.randomUUID()}-${upload.filename}`;
  const url = await getSignedUrl(
    s3,
    new PutObjectCommand({
      Bucket: "peer",
      Key: objectKey,
      ContentType: upload.content_type,
      ContentLength: upload.size,
    }),
    { expiresIn: 900 },
  );
  return [200, { url, object_key: objectKey }];
}

http
  .createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      handle(request, Buffer.concat(chunks).toString())
        .then(([status, body]) => answer(response, status, body))
        .catch((error) => answer(response, 500, { error: String(error) }));
    });
  })
  .listen(Number(process.env.PORT ?? 13100), "127.0.0.1");
