-- An event id is unique per key, not across the deployment: an id another
-- tenant used first must not make this tenant's event a silent duplicate.
-- event_ids gains the key, and every uniqueness that named the id alone
-- now names the key and the id: event_ids' primary key, events' primary key
-- (which must also hold its partition key, occurred_at), and dead letters'.

ALTER TABLE event_ids ADD COLUMN api_key_id uuid;
UPDATE event_ids i SET api_key_id = e.api_key_id
  FROM events e WHERE e.id = i.id AND e.occurred_at = i.occurred_at;
-- An id whose event is gone (none should be) claims nothing any more.
DELETE FROM event_ids WHERE api_key_id IS NULL;
ALTER TABLE event_ids ALTER COLUMN api_key_id SET NOT NULL;
ALTER TABLE event_ids DROP CONSTRAINT event_ids_pkey;
ALTER TABLE event_ids ADD PRIMARY KEY (api_key_id, id);

ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (api_key_id, id, occurred_at);

DROP INDEX dead_letter_events_event_id;
CREATE UNIQUE INDEX dead_letter_events_key_event_id ON dead_letter_events (api_key_id, event_id)
    WHERE event_id IS NOT NULL;

-- Retention removes a dropped partition's ids by the new key.
CREATE OR REPLACE FUNCTION drop_event_partitions_before(cutoff date)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    partition_name text;
    month_start date;
BEGIN
    FOR partition_name IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_\d{4}_\d{2}$'
        ORDER BY c.relname
    LOOP
        month_start := to_date(substring(partition_name FROM 8), 'YYYY_MM');
        IF (month_start + interval '1 month')::date <= cutoff THEN
            EXECUTE format(
                'DELETE FROM event_ids e USING %I p WHERE e.api_key_id = p.api_key_id AND e.id = p.id',
                partition_name);
            EXECUTE format('DROP TABLE %I', partition_name);
            RETURN NEXT partition_name;
        END IF;
    END LOOP;
END;
$$;
