-- The tracking schema: experiments, runs, params, tags, and metrics stored as
-- per-series chunks of packed points with per-key summaries kept by the loaders.

CREATE TABLE experiments (
    experiment_id     bigserial PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    artifact_location text NOT NULL DEFAULT '',
    lifecycle_stage   text NOT NULL DEFAULT 'active',
    creation_time_ms  bigint NOT NULL
);

CREATE TABLE experiment_tags (
    experiment_id bigint NOT NULL REFERENCES experiments ON DELETE CASCADE,
    key           text NOT NULL,
    value         text NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

CREATE TABLE runs (
    run_id          uuid PRIMARY KEY,
    experiment_id   bigint NOT NULL REFERENCES experiments,
    name            text NOT NULL,
    status          smallint NOT NULL,          -- runstream.v1.RunStatus
    start_time_ms   bigint NOT NULL,
    end_time_ms     bigint,
    lifecycle_stage text NOT NULL DEFAULT 'active'
);
CREATE INDEX runs_experiment_start ON runs (experiment_id, start_time_ms DESC);

CREATE TABLE params (
    run_id uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    key    text NOT NULL,
    value  text NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE tags (
    run_id uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    key    text NOT NULL,
    value  text NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- A series is run x key x writer: every point keeps which rank sent it.
CREATE TABLE metric_series (
    series_id bigserial PRIMARY KEY,
    run_id    uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    key       text NOT NULL,
    writer_id text NOT NULL,
    UNIQUE (run_id, key, writer_id)
);

-- One row per series per loader transaction (at most 1,000 points): steps, timestamps
-- and values as little-endian int64/int64/float64 arrays, stored uncompressed.
CREATE TABLE metric_chunks (
    series_id   bigint NOT NULL,
    first_step  bigint NOT NULL,
    last_step   bigint NOT NULL,
    n           integer NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL,
    first_value double precision NOT NULL,
    last_value  double precision NOT NULL,
    steps       bytea NOT NULL,
    timestamps  bytea NOT NULL,
    vals        bytea NOT NULL
);
ALTER TABLE metric_chunks ALTER COLUMN steps SET STORAGE EXTERNAL;
ALTER TABLE metric_chunks ALTER COLUMN timestamps SET STORAGE EXTERNAL;
ALTER TABLE metric_chunks ALTER COLUMN vals SET STORAGE EXTERNAL;
CREATE INDEX metric_chunks_series_step ON metric_chunks (series_id, first_step);

-- The latest value, range and count of each run's key across all its writers.
CREATE TABLE metric_summaries (
    run_id            uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    key               text NOT NULL,
    last_value        double precision NOT NULL,
    last_step         bigint NOT NULL,
    last_timestamp_ms bigint NOT NULL,
    min_value         double precision NOT NULL,
    max_value         double precision NOT NULL,
    count             bigint NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- Every batch a loader committed: the key that makes a resent batch a no-op.
CREATE TABLE ingested_batches (
    run_id    uuid NOT NULL,
    writer_id text NOT NULL,
    seq       bigint NOT NULL,
    points    integer NOT NULL,
    PRIMARY KEY (run_id, writer_id, seq)
);
