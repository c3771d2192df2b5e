-- Models a run logged (MLflow 3's logged models). The files are the source run's artifacts
-- under models/<model_id>; this row holds what describes them. A deleted run takes its logged
-- models with it, as its artifacts go.
CREATE TABLE logged_models (
    model_id        text PRIMARY KEY,
    run_id          uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    name            text NOT NULL,
    model_type      text NOT NULL DEFAULT '',
    status          smallint NOT NULL,  -- runstream.v1.LoggedModelStatus
    status_message  text NOT NULL DEFAULT '',
    tags            jsonb NOT NULL DEFAULT '{}',
    params          jsonb NOT NULL DEFAULT '{}',
    created_ms      bigint NOT NULL,
    updated_ms      bigint NOT NULL,
    created_by      text NOT NULL,
    lifecycle_stage text NOT NULL DEFAULT 'active'
);
CREATE INDEX logged_models_run ON logged_models (run_id);
CREATE INDEX logged_models_created ON logged_models (created_ms DESC, model_id);
