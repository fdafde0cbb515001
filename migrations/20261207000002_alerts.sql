-- Usage alerts: events that fire exactly once (a quota threshold crossed,
-- a key banned, a key about to expire), delivered to the key owner's
-- endpoint, or the deployment's, as Standard Webhooks.

-- One row per event. The id is the webhook-id (`msg_<uuid>`), the same on
-- every attempt, so that a receiver can drop a repeat. The unique
-- (api_key_id, type, scope, period, threshold) is what makes an event fire
-- once: the metrics sync, a reseed after a Redis flush and the delivery
-- cron all insert with ON CONFLICT DO NOTHING.
CREATE TABLE alerts (
    id              text PRIMARY KEY CHECK (id LIKE 'msg\_%'),
    api_key_id      uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- The key's owner when the alert was made: it picks the endpoint.
    owner           text,
    type            text NOT NULL CHECK (type IN ('quota.threshold', 'key.banned', 'key.expiring')),
    -- `day` or `month` for a quota threshold, `key` otherwise.
    scope           text NOT NULL,
    -- The quota's day (`2026-12-07`) or month (`2026-12`), the ban's start
    -- or the key's expires_at (RFC 3339, UTC, milliseconds).
    period          text NOT NULL,
    -- The percentage of the quota; 0 for the other types.
    threshold       integer NOT NULL DEFAULT 0 CHECK (threshold BETWEEN 0 AND 100),
    -- The webhook's body, as sent.
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    -- pending: to deliver; delivered: a 2xx came back; failed: no 2xx
    -- within 24 hours of created_at; undeliverable: no endpoint was
    -- configured for it within those 24 hours.
    state           text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed', 'undeliverable')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- A delivery run holds the alert until then; past it (the run died)
    -- another run may take it, with the same webhook-id.
    leased_until    timestamptz,
    delivered_at    timestamptz,
    last_error      text,
    CONSTRAINT alerts_once UNIQUE (api_key_id, type, scope, period, threshold)
);
-- The delivery cron's claim: due pending alerts, oldest due first.
CREATE INDEX alerts_due ON alerts (next_attempt_at) WHERE state = 'pending';
CREATE INDEX alerts_failed ON alerts (created_at) WHERE state IN ('failed', 'undeliverable');

-- Every delivery attempt, whatever came of it.
CREATE TABLE alert_attempts (
    alert_id    text NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL,
    url         text NOT NULL,
    -- The HTTP status; NULL when no answer came (refused, timed out).
    status      integer,
    error       text,
    duration_ms integer NOT NULL,
    PRIMARY KEY (alert_id, attempt)
);

-- A key owner's own endpoint; owners without one get the deployment's
-- (TOLLGATE_ALERT_WEBHOOK_URL). The secret signs the webhooks (`whsec_`
-- and base64, as Standard Webhooks writes it); it is shown once, when set.
CREATE TABLE alert_endpoints (
    owner      text PRIMARY KEY,
    url        text NOT NULL CHECK (length(url) <= 2048 AND url ~ '^https?://'),
    secret     text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
