// A webhook receiver for tollgate's alert tests. Every POST is verified with
// the Standard Webhooks reference package (`new Webhook(secret).verify`),
// answered with the next status of a programmable sequence (the last one
// repeats), and remembered; `GET /received` lists what came, in order.
//
//   node receiver.mjs <whsec_ secret> [status,status,...] [port]
//
// Prints `{"port": N}` on one line once it listens (on a free port unless
// one is given).
import http from "node:http";
import { Webhook } from "standardwebhooks";

const [secret, sequence = "200", port = "0"] = process.argv.slice(2);
const statuses = sequence.split(",").map(Number);
const webhook = new Webhook(secret);
const received = [];

const server = http.createServer((request, response) => {
  if (request.method === "GET" && request.url === "/received") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify(received));
    return;
  }
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const entry = { id: request.headers["webhook-id"] ?? null, verified: false, error: null, payload: null };
    try {
      entry.payload = webhook.verify(body, request.headers);
      entry.verified = true;
    } catch (error) {
      entry.error = String(error?.message ?? error);
    }
    const status = statuses[Math.min(received.length, statuses.length - 1)];
    entry.status = status;
    received.push(entry);
    response.writeHead(status, { "content-type": "text/plain" });
    response.end(entry.verified ? "ok" : "unverified");
  });
});

server.listen(Number(port), "127.0.0.1", () => {
  console.log(JSON.stringify({ port: server.address().port }));
});
