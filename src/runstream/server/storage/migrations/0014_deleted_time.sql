-- When a run was deleted (DeleteRun, or its experiment's deletion), so that runs deleted long
-- enough ago can be purged for good (AdminService.PurgeRuns, `runstream admin gc`), as MLflow's
-- deleted_time and `mlflow gc --older-than` do. Runs deleted before this migration count as
-- deleted now.
ALTER TABLE runs ADD COLUMN deleted_ms bigint;
UPDATE runs SET deleted_ms = (extract(epoch FROM now()) * 1000)::bigint WHERE lifecycle_stage = 'deleted';
CREATE INDEX runs_deleted ON runs (deleted_ms) WHERE lifecycle_stage = 'deleted';
