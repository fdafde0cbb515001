-- Refused requests (bans, rate limits, quotas), counted in aggregate per
-- key, minute, route and code by the metrics sync, instead of one request
-- log row each: a banned client's flood becomes counters, not writes.
CREATE TABLE api_refusals_minutely (
    api_key_id uuid NOT NULL,
    minute     timestamptz NOT NULL,
    route      text NOT NULL,
    code       text NOT NULL,
    refusals   bigint NOT NULL,
    PRIMARY KEY (api_key_id, minute, route, code)
);

-- Retention of the request and upload logs deletes by time.
CREATE INDEX api_requests_log_time ON api_requests_log (created_at);
CREATE INDEX uploads_log_time ON uploads_log (created_at);
CREATE INDEX api_refusals_minutely_time ON api_refusals_minutely (minute);
