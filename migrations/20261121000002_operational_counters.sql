-- Counters of fallbacks that happen while Redis is unreachable (so they
-- cannot be counted there), reported by /api/cron/queue-status.
CREATE TABLE operational_counters (
    name       text PRIMARY KEY,
    value      bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
