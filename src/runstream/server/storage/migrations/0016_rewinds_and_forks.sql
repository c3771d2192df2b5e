-- Rewinds: a resumed job went back to a checkpoint. The points its writers had logged above the
-- checkpoint's step move to series of branch N (the rewind's number); reads take branch 0.
ALTER TABLE metric_series ADD COLUMN branch integer NOT NULL DEFAULT 0;
ALTER TABLE metric_series DROP CONSTRAINT metric_series_run_id_key_writer_id_key;
ALTER TABLE metric_series ADD CONSTRAINT metric_series_run_key_writer_branch UNIQUE (run_id, key, writer_id, branch);

-- Each writer's latest session (writer_epochs) when the rewind happened: a later batch of an
-- earlier session (a dead job's spool, synced after) goes to the branch too.
CREATE TABLE run_rewinds (
    run_id     uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    number     integer NOT NULL,
    step       bigint NOT NULL,
    rewound_ms bigint NOT NULL,
    writers    text[] NOT NULL,
    epochs     bigint[] NOT NULL,
    superseded bigint NOT NULL,
    PRIMARY KEY (run_id, number)
);

-- Forks: a run that reads its parent's points up to fork_step as its own. A parent with forks
-- cannot be purged (the forks read its chunks); deleting it is fine.
ALTER TABLE runs ADD COLUMN parent_run_id uuid REFERENCES runs (run_id);
ALTER TABLE runs ADD COLUMN fork_step bigint;
CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
