-- The ids of runs purged for good (`runstream admin gc`): a purged id is never made a run again,
-- because ingesters remember recent (run, writer, epoch, seq) and a job resumed under that id
-- (RUNSTREAM_RESUME) would start its writer epochs from 1 again and see its batches taken for
-- the purged run's resends.
CREATE TABLE purged_runs (
    run_id uuid PRIMARY KEY,
    purged_ms bigint NOT NULL
);
