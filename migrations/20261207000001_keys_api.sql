-- The management API: what a key carries for the product that hands it
-- out, root keys that call the API, and the audit log of what they did.

-- owner (the API's `owner_id`) existed already; metadata is the product's
-- own JSON object. The library holds it to 4 KB as the client wrote it;
-- jsonb's text form spaces it out, so the backstop here is looser.
-- A rotation with an overlap keeps the old halves working until
-- previous_expires_at.
ALTER TABLE api_keys
    ADD COLUMN metadata                 jsonb NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(metadata) = 'object' AND octet_length(metadata::text) <= 8192),
    ADD COLUMN expires_at               timestamptz,
    ADD COLUMN previous_secret_hash     bytea CHECK (length(previous_secret_hash) = 32),
    ADD COLUMN previous_publishable_key text,
    ADD COLUMN previous_expires_at      timestamptz,
    ADD CONSTRAINT api_keys_previous_halves_expire
        CHECK ((previous_secret_hash IS NULL) = (previous_expires_at IS NULL));

CREATE UNIQUE INDEX api_keys_previous_secret_hash ON api_keys (previous_secret_hash)
    WHERE previous_secret_hash IS NOT NULL;
CREATE UNIQUE INDEX api_keys_previous_publishable_key ON api_keys (previous_publishable_key)
    WHERE previous_publishable_key IS NOT NULL;
-- `list` pages by id (a UUIDv7, so in order of creation), optionally
-- within one owner.
CREATE INDEX api_keys_owner_id ON api_keys (owner, id);
-- The alerts cron finds the keys about to expire.
CREATE INDEX api_keys_expires_at ON api_keys (expires_at)
    WHERE expires_at IS NOT NULL AND status = 'active';

-- Root keys (`rk_…`) call /api/keys. Only the SHA-256 of the secret is
-- stored, as for API keys.
CREATE TABLE root_keys (
    id           uuid PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    secret_hash  bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    scopes       text[] NOT NULL CHECK (
        cardinality(scopes) > 0
        AND scopes <@ ARRAY['keys:read', 'keys:write', 'bans:write', 'analytics:read']
    ),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Every management action: who (a root key, or the CLI), what, to which
-- key, and when. No foreign key to api_keys: the log outlives what it
-- names.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    root_key_id uuid REFERENCES root_keys (id),
    -- `root:<id>` or `cli`.
    actor       text NOT NULL,
    action      text NOT NULL,
    api_key_id  uuid,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at, id);
CREATE INDEX audit_log_api_key ON audit_log (api_key_id, at) WHERE api_key_id IS NOT NULL;
