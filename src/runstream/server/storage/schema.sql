-- The schema as runstream's migrations (migrations/*.sql, and schema_migrations, which
-- migrate.py makes) leave it: a snapshot for reading and for review. The server applies the
-- migrations, never this file. Do not edit: regenerate with `python scripts/gen_schema.py`
-- (tests/integration/test_schema.py fails when it is stale). Migration 0010 also inserts the deployment row.

CREATE FUNCTION model_version_events_append_only()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    RAISE EXCEPTION 'model_version_events is append-only';
END $function$;

CREATE TABLE api_tokens (
    token_id text NOT NULL,
    name text NOT NULL,
    secret_hash bytea NOT NULL,
    scopes text[] NOT NULL,
    experiments text,
    created_by text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone,
    revoked_at timestamp with time zone,
    CONSTRAINT api_tokens_pkey PRIMARY KEY (token_id)
);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens USING btree (name) WHERE (revoked_at IS NULL);

CREATE SEQUENCE cold_objects_object_id_seq AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;
CREATE TABLE cold_objects (
    object_id bigint DEFAULT nextval('cold_objects_object_id_seq'::regclass) NOT NULL,
    run_id uuid NOT NULL,
    key text NOT NULL,
    state text NOT NULL,
    size bigint,
    sha256 text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    retired_at timestamp with time zone,
    CONSTRAINT cold_objects_pkey PRIMARY KEY (object_id),
    CONSTRAINT cold_objects_key_key UNIQUE (key),
    CONSTRAINT cold_objects_state_check CHECK ((state = ANY (ARRAY['writing'::text, 'live'::text, 'retired'::text])))
);
ALTER SEQUENCE cold_objects_object_id_seq OWNED BY cold_objects.object_id;
CREATE INDEX cold_objects_run ON cold_objects USING btree (run_id);
CREATE INDEX cold_objects_state ON cold_objects USING btree (state) WHERE (state <> 'live'::text);

CREATE TABLE deployment (
    singleton boolean DEFAULT true NOT NULL,
    deployment_id uuid DEFAULT gen_random_uuid() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    instance text,
    CONSTRAINT deployment_pkey PRIMARY KEY (singleton),
    CONSTRAINT deployment_singleton_check CHECK (singleton)
);

CREATE SEQUENCE experiments_experiment_id_seq AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;
CREATE TABLE experiments (
    experiment_id bigint DEFAULT nextval('experiments_experiment_id_seq'::regclass) NOT NULL,
    name text NOT NULL,
    artifact_location text DEFAULT ''::text NOT NULL,
    lifecycle_stage text DEFAULT 'active'::text NOT NULL,
    creation_time_ms bigint NOT NULL,
    CONSTRAINT experiments_pkey PRIMARY KEY (experiment_id),
    CONSTRAINT experiments_name_key UNIQUE (name)
);
ALTER SEQUENCE experiments_experiment_id_seq OWNED BY experiments.experiment_id;

CREATE TABLE experiment_tags (
    experiment_id bigint NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    CONSTRAINT experiment_tags_pkey PRIMARY KEY (experiment_id, key),
    CONSTRAINT experiment_tags_experiment_id_fkey FOREIGN KEY (experiment_id) REFERENCES experiments(experiment_id) ON DELETE CASCADE
);

CREATE TABLE ingested_batches (
    run_id uuid NOT NULL,
    writer_id text NOT NULL,
    seq bigint NOT NULL,
    points integer NOT NULL,
    epoch bigint DEFAULT 0 NOT NULL,
    digest bytea,
    CONSTRAINT ingested_batches_pkey PRIMARY KEY (run_id, writer_id, epoch, seq)
);

CREATE TABLE metric_chunks (
    series_id bigint NOT NULL,
    first_step bigint NOT NULL,
    last_step bigint NOT NULL,
    n integer NOT NULL,
    min_value double precision NOT NULL,
    max_value double precision NOT NULL,
    first_value double precision NOT NULL,
    last_value double precision NOT NULL,
    steps bytea,
    timestamps bytea,
    vals bytea,
    codec smallint DEFAULT 0 NOT NULL,
    loaded_at timestamp with time zone DEFAULT now() NOT NULL,
    last_timestamp bigint,
    sketch_scale bigint,
    sketch bytea,
    cold_object bigint,
    cold_offset bigint,
    cold_sizes integer[],
    CONSTRAINT metric_chunks_cold_object_fkey FOREIGN KEY (cold_object) REFERENCES cold_objects(object_id)
);
ALTER TABLE ONLY metric_chunks ALTER COLUMN steps SET STORAGE EXTERNAL;
ALTER TABLE ONLY metric_chunks ALTER COLUMN timestamps SET STORAGE EXTERNAL;
ALTER TABLE ONLY metric_chunks ALTER COLUMN vals SET STORAGE EXTERNAL;
ALTER TABLE ONLY metric_chunks ALTER COLUMN sketch SET STORAGE EXTERNAL;
CREATE INDEX metric_chunks_raw ON metric_chunks USING btree (series_id, loaded_at) WHERE (codec = 0);
CREATE INDEX metric_chunks_series_step ON metric_chunks USING btree (series_id, first_step);

CREATE SEQUENCE model_version_events_event_id_seq AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;
CREATE TABLE model_version_events (
    event_id bigint DEFAULT nextval('model_version_events_event_id_seq'::regclass) NOT NULL,
    model_id bigint NOT NULL,
    model_name text NOT NULL,
    version integer NOT NULL,
    kind text NOT NULL,
    actor text NOT NULL,
    at_ms bigint NOT NULL,
    from_value text DEFAULT ''::text NOT NULL,
    to_value text DEFAULT ''::text NOT NULL,
    comment text DEFAULT ''::text NOT NULL,
    CONSTRAINT model_version_events_pkey PRIMARY KEY (event_id)
);
ALTER SEQUENCE model_version_events_event_id_seq OWNED BY model_version_events.event_id;
CREATE INDEX model_version_events_version ON model_version_events USING btree (model_id, version, event_id);
CREATE TRIGGER model_version_events_append_only BEFORE DELETE OR UPDATE ON model_version_events FOR EACH ROW EXECUTE FUNCTION model_version_events_append_only();

CREATE TABLE purged_runs (
    run_id uuid NOT NULL,
    purged_ms bigint NOT NULL,
    CONSTRAINT purged_runs_pkey PRIMARY KEY (run_id)
);

CREATE SEQUENCE registered_models_model_id_seq AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;
CREATE TABLE registered_models (
    model_id bigint DEFAULT nextval('registered_models_model_id_seq'::regclass) NOT NULL,
    name text NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    last_version integer DEFAULT 0 NOT NULL,
    CONSTRAINT registered_models_pkey PRIMARY KEY (model_id),
    CONSTRAINT registered_models_name_key UNIQUE (name)
);
ALTER SEQUENCE registered_models_model_id_seq OWNED BY registered_models.model_id;

CREATE TABLE registered_model_tags (
    model_id bigint NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    CONSTRAINT registered_model_tags_pkey PRIMARY KEY (model_id, key),
    CONSTRAINT registered_model_tags_model_id_fkey FOREIGN KEY (model_id) REFERENCES registered_models(model_id) ON DELETE CASCADE
);

CREATE TABLE runs (
    run_id uuid NOT NULL,
    experiment_id bigint NOT NULL,
    name text NOT NULL,
    status smallint NOT NULL,
    start_time_ms bigint NOT NULL,
    end_time_ms bigint,
    lifecycle_stage text DEFAULT 'active'::text NOT NULL,
    last_heard_ms bigint,
    deleted_ms bigint,
    parent_run_id uuid,
    fork_step bigint,
    CONSTRAINT runs_pkey PRIMARY KEY (run_id),
    CONSTRAINT runs_experiment_id_fkey FOREIGN KEY (experiment_id) REFERENCES experiments(experiment_id),
    CONSTRAINT runs_parent_run_id_fkey FOREIGN KEY (parent_run_id) REFERENCES runs(run_id)
);
CREATE INDEX runs_deleted ON runs USING btree (deleted_ms) WHERE (lifecycle_stage = 'deleted'::text);
CREATE INDEX runs_experiment_start ON runs USING btree (experiment_id, start_time_ms DESC);
CREATE INDEX runs_parent ON runs USING btree (parent_run_id) WHERE (parent_run_id IS NOT NULL);
CREATE INDEX runs_running_heard ON runs USING btree (last_heard_ms) WHERE (status = 1);

CREATE TABLE artifact_uploads (
    upload_id uuid NOT NULL,
    run_id uuid NOT NULL,
    path text NOT NULL,
    object_key text NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    content_type text NOT NULL,
    multipart_id text,
    part_size bigint NOT NULL,
    created_ms bigint NOT NULL,
    CONSTRAINT artifact_uploads_pkey PRIMARY KEY (upload_id),
    CONSTRAINT artifact_uploads_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);
CREATE INDEX artifact_uploads_created ON artifact_uploads USING btree (created_ms);

CREATE TABLE artifacts (
    run_id uuid NOT NULL,
    path text COLLATE "C" NOT NULL,
    object_key text NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    content_type text NOT NULL,
    created_ms bigint NOT NULL,
    CONSTRAINT artifacts_pkey PRIMARY KEY (run_id, path),
    CONSTRAINT artifacts_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);

CREATE TABLE logged_models (
    model_id text NOT NULL,
    run_id uuid NOT NULL,
    name text NOT NULL,
    model_type text DEFAULT ''::text NOT NULL,
    status smallint NOT NULL,
    status_message text DEFAULT ''::text NOT NULL,
    tags jsonb DEFAULT '{}'::jsonb NOT NULL,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    created_by text NOT NULL,
    lifecycle_stage text DEFAULT 'active'::text NOT NULL,
    CONSTRAINT logged_models_pkey PRIMARY KEY (model_id),
    CONSTRAINT logged_models_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);
CREATE INDEX logged_models_created ON logged_models USING btree (created_ms DESC, model_id);
CREATE INDEX logged_models_run ON logged_models USING btree (run_id);

CREATE SEQUENCE metric_series_series_id_seq AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;
CREATE TABLE metric_series (
    series_id bigint DEFAULT nextval('metric_series_series_id_seq'::regclass) NOT NULL,
    run_id uuid NOT NULL,
    key text NOT NULL,
    writer_id text NOT NULL,
    branch integer DEFAULT 0 NOT NULL,
    CONSTRAINT metric_series_pkey PRIMARY KEY (series_id),
    CONSTRAINT metric_series_run_key_writer_branch UNIQUE (run_id, key, writer_id, branch),
    CONSTRAINT metric_series_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);
ALTER SEQUENCE metric_series_series_id_seq OWNED BY metric_series.series_id;

CREATE TABLE metric_summaries (
    run_id uuid NOT NULL,
    key text NOT NULL,
    last_value double precision NOT NULL,
    last_step bigint NOT NULL,
    last_timestamp_ms bigint NOT NULL,
    min_value double precision NOT NULL,
    max_value double precision NOT NULL,
    count bigint NOT NULL,
    CONSTRAINT metric_summaries_pkey PRIMARY KEY (run_id, key),
    CONSTRAINT metric_summaries_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);
CREATE INDEX metric_summaries_key_value ON metric_summaries USING btree (key, last_value);

CREATE TABLE model_versions (
    model_id bigint NOT NULL,
    version integer NOT NULL,
    run_id uuid NOT NULL,
    artifact_path text NOT NULL,
    source_size bigint NOT NULL,
    source_digest text NOT NULL,
    source_files integer NOT NULL,
    stage text DEFAULT 'None'::text NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    created_by text NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    CONSTRAINT model_versions_pkey PRIMARY KEY (model_id, version),
    CONSTRAINT model_versions_stage_check CHECK ((stage = ANY (ARRAY['None'::text, 'Staging'::text, 'Production'::text, 'Archived'::text]))),
    CONSTRAINT model_versions_model_id_fkey FOREIGN KEY (model_id) REFERENCES registered_models(model_id) ON DELETE CASCADE,
    CONSTRAINT model_versions_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id)
);
CREATE INDEX model_versions_run ON model_versions USING btree (run_id);

CREATE TABLE model_aliases (
    model_id bigint NOT NULL,
    alias text NOT NULL,
    version integer NOT NULL,
    CONSTRAINT model_aliases_pkey PRIMARY KEY (model_id, alias),
    CONSTRAINT model_aliases_model_id_version_fkey FOREIGN KEY (model_id, version) REFERENCES model_versions(model_id, version) ON DELETE CASCADE
);

CREATE TABLE model_version_tags (
    model_id bigint NOT NULL,
    version integer NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    CONSTRAINT model_version_tags_pkey PRIMARY KEY (model_id, version, key),
    CONSTRAINT model_version_tags_model_id_version_fkey FOREIGN KEY (model_id, version) REFERENCES model_versions(model_id, version) ON DELETE CASCADE
);

CREATE TABLE params (
    run_id uuid NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    CONSTRAINT params_pkey PRIMARY KEY (run_id, key),
    CONSTRAINT params_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);

CREATE TABLE run_inputs (
    run_id uuid NOT NULL,
    name text NOT NULL,
    digest text NOT NULL,
    source text NOT NULL,
    context text NOT NULL,
    logged_ms bigint NOT NULL,
    CONSTRAINT run_inputs_pkey PRIMARY KEY (run_id, name, digest),
    CONSTRAINT run_inputs_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);

CREATE TABLE run_rewinds (
    run_id uuid NOT NULL,
    number integer NOT NULL,
    step bigint NOT NULL,
    rewound_ms bigint NOT NULL,
    writers text[] NOT NULL,
    epochs bigint[] NOT NULL,
    superseded bigint NOT NULL,
    CONSTRAINT run_rewinds_pkey PRIMARY KEY (run_id, number),
    CONSTRAINT run_rewinds_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);

CREATE TABLE schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
);

CREATE TABLE server_secrets (
    name text NOT NULL,
    secret bytea NOT NULL,
    CONSTRAINT server_secrets_pkey PRIMARY KEY (name)
);

CREATE TABLE tags (
    run_id uuid NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    CONSTRAINT tags_pkey PRIMARY KEY (run_id, key),
    CONSTRAINT tags_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);

CREATE SEQUENCE transition_requests_request_id_seq AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;
CREATE TABLE transition_requests (
    request_id bigint DEFAULT nextval('transition_requests_request_id_seq'::regclass) NOT NULL,
    model_id bigint NOT NULL,
    version integer NOT NULL,
    to_stage text NOT NULL,
    archive_existing boolean NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    requested_by text NOT NULL,
    requested_ms bigint NOT NULL,
    comment text NOT NULL,
    decided_by text,
    decided_ms bigint,
    decision_comment text,
    CONSTRAINT transition_requests_pkey PRIMARY KEY (request_id),
    CONSTRAINT transition_requests_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'approved'::text, 'rejected'::text]))),
    CONSTRAINT transition_requests_model_id_version_fkey FOREIGN KEY (model_id, version) REFERENCES model_versions(model_id, version) ON DELETE CASCADE
);
ALTER SEQUENCE transition_requests_request_id_seq OWNED BY transition_requests.request_id;

CREATE TABLE writer_epochs (
    run_id uuid NOT NULL,
    writer_id text NOT NULL,
    epoch bigint NOT NULL,
    CONSTRAINT writer_epochs_pkey PRIMARY KEY (run_id, writer_id),
    CONSTRAINT writer_epochs_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(run_id) ON DELETE CASCADE
);
