-- Per-key rollups of events, so that no analytics view reads raw events.
--
-- The drain maintains them in the same transaction as its insert, from the
-- events that were new (see lib/src/events/rollup.rs); deletion and a change
-- of a key's time zone rebuild a key's rollups from its remaining events.
-- Days are the key's calendar days, in its time zone at the time of the
-- drain (or of the last rebuild).
--
-- Unique visitors are HyperLogLog sketches (the `hll` extension, which Neon
-- supports), at 2^14 registers: a standard error of about 0.8 %, and a
-- union over any range of days is exact to that error. Visitor ids rotate
-- daily (a daily salt), so a visitor seen on two days counts twice over
-- those days, as in Plausible. The extension's estimator (raw HyperLogLog,
-- with linear counting below 2.5 x 2^14 = 40,960) is biased upward by 2 to
-- 3.5 % between about 38,000 and 48,000 distinct visitors, where it
-- switches between the two; elsewhere it is within the standard error.
--
-- A change of a key's time zone rebuilds its rollups from its events
-- (lib/src/admin.rs, `set_limits`); so do deletions on request. Days older
-- than the key's oldest retained event keep their rollups, as counted.
CREATE EXTENSION IF NOT EXISTS hll;

-- One row per key and day.
CREATE TABLE event_rollup_daily (
    api_key_id    uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    day           date NOT NULL,
    events        bigint NOT NULL DEFAULT 0,
    -- web events named `pageview`
    pageviews     bigint NOT NULL DEFAULT 0,
    visitors      hll NOT NULL DEFAULT hll_empty(14, 5),
    -- Visits (sessions) counted on the day they started, with their bounces
    -- (visits of a single event) and their total duration.
    visits        bigint NOT NULL DEFAULT 0,
    bounces       bigint NOT NULL DEFAULT 0,
    visit_seconds bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_id, day)
);

-- Events per key, dimension, day and value. Dimensions: name, path,
-- referrer (the referring site), country, browser, device, utm_source,
-- utm_medium, utm_campaign; and entry and exit, whose counts are visits
-- (by the day the visit started) entering or leaving on that path.
CREATE TABLE event_rollup_values (
    api_key_id uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    dimension  text NOT NULL,
    day        date NOT NULL,
    value      text NOT NULL,
    events     bigint NOT NULL DEFAULT 0,
    -- The counts ride in the key's index (see below).
    PRIMARY KEY (api_key_id, dimension, day, value) INCLUDE (events)
);
-- The events view's rankings read a key's rows of every dimension over the
-- range's days and sum their counts. With the counts in the primary key's
-- index, that is an index-only scan of adjacent entries instead of one heap
-- page per few rows: for a key with 1,000,000 events in 30 days (33,000
-- rows), about 300 pages instead of 2,200, and the view's p50 from 93 ms to
-- 27 ms on the benchmark machine (BENCHMARKS.md, "Analytics views at
-- scale"). It is the table's one index, so the drain writes no second one;
-- the cost is that an upsert changes an indexed column and is never a HOT
-- update.

-- The sessions the rollups' visits come from, kept so that a session that
-- continues in a later batch updates its visit instead of counting again.
-- A session is the tracker's session id (`s:<id>`), or for events without
-- one, a visitor's run of events with no gap over 30 minutes
-- (`v:<visitor id>:<first event, unix ms>`).
CREATE TABLE event_sessions (
    api_key_id  uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    session_key text NOT NULL,
    visitor_id  text,
    started_at  timestamptz NOT NULL,
    last_at     timestamptz NOT NULL,
    -- the day its visit is counted under: started_at in the key's time zone
    day         date NOT NULL,
    events      integer NOT NULL,
    pageviews   integer NOT NULL,
    entry_path  text,
    exit_path   text,
    -- when the entry and exit paths were seen, so that an event arriving
    -- late (out of order) can take their place; ties go to the smaller path
    -- for entry and the larger for exit, so the order events arrive in
    -- never changes the result
    entry_at    timestamptz,
    exit_at     timestamptz,
    PRIMARY KEY (api_key_id, session_key)
);
CREATE INDEX event_sessions_visitor ON event_sessions (api_key_id, visitor_id, last_at)
    WHERE visitor_id IS NOT NULL;
-- The drain prunes sessions no event can continue any more, oldest first.
CREATE INDEX event_sessions_last_at ON event_sessions (last_at);

-- Deletions on request (`tollgate events delete`), one row each. The
-- erased events' ids stay in event_ids, so a queue entry redelivered after
-- the deletion is still a duplicate and is not stored again. A user or
-- visitor id is recorded as its SHA-256 (hex), so the log does not keep the
-- identifier it erased; a date is recorded as given.
CREATE TABLE event_deletions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    api_key_id     uuid NOT NULL,
    -- user_id, visitor or before
    criterion      text NOT NULL,
    subject        text NOT NULL,
    events_removed bigint NOT NULL,
    deleted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_deletions_key ON event_deletions (api_key_id, deleted_at);

-- Unique visitors from a sketch (a union of days' sketches). The extension's
-- hll_cardinality switches from linear counting to the raw HyperLogLog
-- estimate at 2.5 m registers, where the raw estimate still runs high:
-- +2.8 % to +3.5 % at 40,000 visitors with 2^14 registers, measured here.
-- Linear counting over the empty registers (m ln(m / empty)) stays well
-- within 2 % there, so it is used up to 3 m; the extension's estimate
-- everywhere else (an exact set and sparse sketches included).
CREATE FUNCTION visitor_count(sketch hll) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN sketch IS NULL THEN 0
        -- Only where the extension answered with the raw estimate and it
        -- still runs high: print the sketch to count its filled registers.
        WHEN estimate > 2.5 * registers AND estimate <= 3 * registers THEN (
            SELECT CASE WHEN filled IS NOT NULL AND filled < registers
                        THEN round(registers * ln(registers::float8 / (registers - filled)))::bigint
                        ELSE round(estimate)::bigint END
            FROM (SELECT substring(hll_print(sketch)::text FROM ', (\d+) filled')::int AS filled) f)
        ELSE coalesce(round(estimate)::bigint, 0)
    END
    -- hll_print of a full sketch begins `COMPRESSED, <n> filled nregs=…`
    FROM (SELECT hll_cardinality(sketch) AS estimate,
                 (1 << hll_log2m(sketch))::int AS registers) r
$$;
