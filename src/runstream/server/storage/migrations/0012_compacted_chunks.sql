-- Compacted chunks (storage/codec.py): the compactor merges a series' small ingest chunks into
-- large ones whose columns are encoded with pcodec and which carry a sketch (per sub-range of
-- `sketch_scale` steps: count, first/last step and value, min, max, last timestamp), so that
-- histories fold sketches instead of decoding points. `codec` says how a chunk's columns are
-- encoded (0: raw little-endian 8-byte columns, as loaders write them; 1: pcodec), so old
-- chunks stay readable. `loaded_at` lets the compactor leave freshly loaded chunks alone for
-- a while; `last_timestamp` (the timestamp of the chunk's last point in step order) lets a
-- history with times use a whole chunk without decoding it.
ALTER TABLE metric_chunks ADD COLUMN codec smallint NOT NULL DEFAULT 0;
ALTER TABLE metric_chunks ADD COLUMN loaded_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE metric_chunks ADD COLUMN last_timestamp bigint;
ALTER TABLE metric_chunks ADD COLUMN sketch_scale bigint;
ALTER TABLE metric_chunks ADD COLUMN sketch bytea;
ALTER TABLE metric_chunks ALTER COLUMN sketch SET STORAGE EXTERNAL;
-- The compactor's backlog: a series' ingest chunks, oldest first.
CREATE INDEX metric_chunks_raw ON metric_chunks (series_id, loaded_at) WHERE codec = 0;
