-- The system of record. Redis holds the hot path and can be lost at any
-- time; everything here is rebuilt from nothing but these tables.

-- API keys. Only the SHA-256 of the secret key is stored; the publishable key
-- is public by design (it ships in web pages) and is stored as it is.
CREATE TABLE api_keys (
    id                    uuid PRIMARY KEY,
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    owner                 text,
    secret_hash           bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    publishable_key       text NOT NULL UNIQUE,
    tier                  text NOT NULL CHECK (tier IN ('free', 'pro', 'enterprise')),
    -- Per-key overrides of the tier's limits; NULL means "use the tier's".
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    daily_quota           bigint CHECK (daily_quota >= 0),
    monthly_quota         bigint CHECK (monthly_quota >= 0),
    -- Calendar days and months for quotas are counted in this zone.
    timezone              text NOT NULL DEFAULT 'UTC',
    -- Browser origins allowed to use the publishable key; empty means any.
    allowed_origins       text[] NOT NULL DEFAULT '{}',
    -- Upload policy for /api/signed-url.
    default_provider      text,
    allowed_content_types text[],
    max_upload_bytes      bigint CHECK (max_upload_bytes > 0),
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    revoked_at            timestamptz,
    -- Usage totals, moved here from Redis by the metrics sync.
    total_requests        bigint NOT NULL DEFAULT 0,
    successful_requests   bigint NOT NULL DEFAULT 0,
    failed_requests       bigint NOT NULL DEFAULT 0,
    total_files           bigint NOT NULL DEFAULT 0,
    total_bytes           bigint NOT NULL DEFAULT 0,
    last_used_at          timestamptz,
    -- Uploads by file type, e.g. {"image/png": 12, "application/pdf": 3}.
    file_type_counts      jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Usage per key and storage provider, all time.
CREATE TABLE provider_usage (
    api_key_id   uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    provider     text NOT NULL,
    uploads      bigint NOT NULL DEFAULT 0,
    bytes        bigint NOT NULL DEFAULT 0,
    last_used_at timestamptz,
    PRIMARY KEY (api_key_id, provider)
);

-- Usage per key per calendar day (in the key's time zone).
CREATE TABLE api_key_usage_daily (
    api_key_id          uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    day                 date NOT NULL,
    total_requests      bigint NOT NULL DEFAULT 0,
    successful_requests bigint NOT NULL DEFAULT 0,
    failed_requests     bigint NOT NULL DEFAULT 0,
    total_files         bigint NOT NULL DEFAULT 0,
    total_bytes         bigint NOT NULL DEFAULT 0,
    last_used_at        timestamptz,
    PRIMARY KEY (api_key_id, day)
);

-- Usage per key, provider and day.
CREATE TABLE provider_usage_daily (
    api_key_id   uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    provider     text NOT NULL,
    day          date NOT NULL,
    uploads      bigint NOT NULL DEFAULT 0,
    bytes        bigint NOT NULL DEFAULT 0,
    last_used_at timestamptz,
    PRIMARY KEY (api_key_id, provider, day)
);

-- Collected analytics events: one wide table (see ARCHITECTURE.md), with the
-- shared columns first and nullable columns per event type. Partitioned by
-- month on the event time so retention is a DROP, not a DELETE.
--
-- The primary key must contain the partition key. The queue redelivers an
-- event with the timestamp it was accepted with, so (id, occurred_at) is
-- enough to make redelivery a no-op.
CREATE TABLE events (
    id             uuid NOT NULL,
    api_key_id     uuid NOT NULL,
    type           text NOT NULL CHECK (type IN ('web', 'mobile', 'server')),
    name           text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    session_id     text,
    user_id        text,
    -- Hash of IP, user agent and site with a daily salt; the IP is never stored.
    visitor_id     text,
    properties     jsonb,
    -- web
    url            text,
    path           text,
    referrer       text,
    title          text,
    screen         text,
    language       text,
    utm_source     text,
    utm_medium     text,
    utm_campaign   text,
    utm_term       text,
    utm_content    text,
    -- mobile
    app_version    text,
    os_version     text,
    device         text,
    -- server
    service        text,
    environment    text,
    method         text,
    status         integer,
    duration_ms    double precision,
    -- parsed from the user agent (os also comes from mobile events)
    browser        text,
    browser_version text,
    os             text,
    device_type    text,
    -- geo, from Vercel's x-vercel-ip-* headers
    country        text,
    region         text,
    city           text,
    latitude       double precision,
    longitude      double precision,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- The analytics queries filter by key and time, and by key, name and time.
CREATE INDEX events_key_time ON events (api_key_id, occurred_at);
CREATE INDEX events_key_name_time ON events (api_key_id, name, occurred_at);

-- Creates the monthly partitions of `events` covering `months` months from the
-- month of `from_day`. The drain calls it ahead of time; it is idempotent.
CREATE FUNCTION ensure_event_partitions(from_day date, months integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month_start date := date_trunc('month', from_day)::date;
    created integer := 0;
    partition_name text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        partition_name := format('events_%s', to_char(month_start, 'YYYY_MM'));
        IF to_regclass(partition_name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                partition_name, month_start, (month_start + interval '1 month')::date);
            created := created + 1;
        END IF;
        month_start := (month_start + interval '1 month')::date;
    END LOOP;
    RETURN created;
END;
$$;

-- Last month (late events), this month and the next two.
SELECT ensure_event_partitions((now() - interval '1 month')::date, 4);

-- Events that could not be stored, with why, so the rest of a batch goes on.
CREATE TABLE dead_letter_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid,
    api_key_id      uuid,
    payload         text NOT NULL,
    reason          text NOT NULL,
    attempts        integer NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX dead_letter_events_event_id ON dead_letter_events (event_id)
    WHERE event_id IS NOT NULL;

-- Metric sync batches applied, recorded in the same transaction as their
-- increments, so a batch replayed after a crash is recognised and skipped.
CREATE TABLE sync_batches (
    batch_id   text PRIMARY KEY,
    counters   integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Bans of keys and client IPs. Postgres is authoritative for permanent bans;
-- Redis holds temporary ones and a cache of these.
CREATE TABLE bans (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_type text NOT NULL CHECK (subject_type IN ('key', 'ip')),
    subject      text NOT NULL,
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- NULL means permanent.
    expires_at   timestamptz,
    lifted_at    timestamptz
);
-- At most one ban in force per subject.
CREATE UNIQUE INDEX bans_one_active_per_subject ON bans (subject_type, subject)
    WHERE lifted_at IS NULL;

-- Presigned uploads handed out, one row per request, inserted in bulk by the
-- drain from the event queue; the id makes redelivery a no-op.
CREATE TABLE uploads_log (
    id           uuid PRIMARY KEY,
    api_key_id   uuid NOT NULL,
    provider     text NOT NULL,
    object_key   text NOT NULL,
    filename     text NOT NULL,
    content_type text NOT NULL,
    size_bytes   bigint NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX uploads_log_key_time ON uploads_log (api_key_id, created_at);

-- One row per metered API request, batch-inserted by the drain.
CREATE TABLE api_requests_log (
    id         uuid PRIMARY KEY,
    api_key_id uuid,
    route      text NOT NULL,
    outcome    text NOT NULL,
    status     integer NOT NULL,
    latency_ms double precision NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX api_requests_log_key_time ON api_requests_log (api_key_id, created_at);
