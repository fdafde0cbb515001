-- Every stored event's id, unique across all partitions. The events table's
-- key must include its partition key (occurred_at), so on its own it only
-- catches a redelivery with the same timestamp; an event resent by a client
-- without a timestamp gets a new occurred_at. The drain inserts each id here
-- and the event only if its id was new, in the same statement.
CREATE TABLE event_ids (
    id          uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL
);
