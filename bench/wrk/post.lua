-- wrk script: POSTs the file named by BODY_FILE with `Authorization: Bearer
-- $TOKEN`, the same request every time, and reports how many answers were
-- errors (status 400 and up), so a run of errors cannot pass for throughput.
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")

function done(summary, latency, requests)
  io.write(string.format("error_responses: %d\n", summary.errors.status))
  io.write(string.format("socket_errors: %d\n",
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
