-- Writer sessions: every process that logs into a run under a writer id gets the next epoch,
-- so a restarted rank counting seq from 1 again is not taken for its own resends.
CREATE TABLE writer_epochs (
    run_id    uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    writer_id text NOT NULL,
    epoch     bigint NOT NULL,
    PRIMARY KEY (run_id, writer_id)
);

-- A batch is (run, writer, epoch, seq); its digest tells a resend (same bytes) from a seq
-- reused with other points. Rows from before have epoch 0 and no digest.
ALTER TABLE ingested_batches ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE ingested_batches ADD COLUMN digest bytea;
ALTER TABLE ingested_batches DROP CONSTRAINT ingested_batches_pkey;
ALTER TABLE ingested_batches ADD PRIMARY KEY (run_id, writer_id, epoch, seq);
