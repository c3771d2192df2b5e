-- Crashed runs: writers send heartbeats; a RUNNING run (status 1) not heard from for the
-- server's --crash-after becomes CRASHED (status 5). NULL: never heard (runs made through
-- MLflow's API or before this migration), never marked.
ALTER TABLE runs ADD COLUMN last_heard_ms bigint;
CREATE INDEX runs_running_heard ON runs (last_heard_ms) WHERE status = 1;
