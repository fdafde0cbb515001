-- Retention drops whole monthly partitions of `events` that ended before
-- `cutoff`, first removing their ids from event_ids (by primary key, so the
-- cost follows the partition's size, not the table's). Returns the names of
-- the partitions dropped.
CREATE FUNCTION drop_event_partitions_before(cutoff date)
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
            EXECUTE format('DELETE FROM event_ids e USING %I p WHERE e.id = p.id', partition_name);
            EXECUTE format('DROP TABLE %I', partition_name);
            RETURN NEXT partition_name;
        END IF;
    END LOOP;
END;
$$;
