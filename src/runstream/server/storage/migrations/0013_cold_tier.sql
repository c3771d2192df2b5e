-- The cold tier (storage/archive.py, compaction/mover.py): the chunks of a run that ended long
-- ago move to one object in the artifact store. A cold chunk's row keeps its summaries and
-- sketch; its columns are NULL and `cold_object`, `cold_offset` and `cold_sizes` (steps,
-- timestamps, values) say which byte range of which object holds them.
-- An object is recorded ('writing') before it is written, so a mover killed at any instant
-- leaves a row saying what to delete; it turns 'live' in the transaction that moves the chunks
-- to it, and 'retired' when a newer object replaces it; it is deleted from the store once no
-- transaction that could still read it (one begun before `retired_at`) is open.
CREATE TABLE cold_objects (
    object_id bigserial PRIMARY KEY,
    run_id uuid NOT NULL,
    key text NOT NULL UNIQUE,
    state text NOT NULL CHECK (state IN ('writing', 'live', 'retired')),
    size bigint,
    sha256 text,
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);
CREATE INDEX cold_objects_run ON cold_objects (run_id);
CREATE INDEX cold_objects_state ON cold_objects (state) WHERE state <> 'live';
ALTER TABLE metric_chunks ALTER COLUMN steps DROP NOT NULL;
ALTER TABLE metric_chunks ALTER COLUMN timestamps DROP NOT NULL;
ALTER TABLE metric_chunks ALTER COLUMN vals DROP NOT NULL;
ALTER TABLE metric_chunks ADD COLUMN cold_object bigint REFERENCES cold_objects (object_id);
ALTER TABLE metric_chunks ADD COLUMN cold_offset bigint;
ALTER TABLE metric_chunks ADD COLUMN cold_sizes integer[];
