-- The model registry, and the datasets runs read (the inputs of a model's lineage).

CREATE TABLE run_inputs (
    run_id  uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    name    text NOT NULL,
    digest  text NOT NULL,
    source  text NOT NULL,
    context text NOT NULL,
    logged_ms bigint NOT NULL,
    PRIMARY KEY (run_id, name, digest)
);

CREATE TABLE registered_models (
    model_id     bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    description  text NOT NULL DEFAULT '',
    created_ms   bigint NOT NULL,
    updated_ms   bigint NOT NULL,
    last_version integer NOT NULL DEFAULT 0  -- versions are numbered from this counter, under its row lock
);

CREATE TABLE registered_model_tags (
    model_id bigint NOT NULL REFERENCES registered_models ON DELETE CASCADE,
    key      text NOT NULL,
    value    text NOT NULL,
    PRIMARY KEY (model_id, key)
);

CREATE TABLE model_versions (
    model_id      bigint NOT NULL REFERENCES registered_models ON DELETE CASCADE,
    version       integer NOT NULL,
    run_id        uuid NOT NULL REFERENCES runs,
    artifact_path text NOT NULL,
    source_size   bigint NOT NULL,
    source_digest text NOT NULL,
    source_files  integer NOT NULL,
    stage         text NOT NULL DEFAULT 'None'
                  CHECK (stage IN ('None', 'Staging', 'Production', 'Archived')),
    description   text NOT NULL DEFAULT '',
    created_by    text NOT NULL,
    created_ms    bigint NOT NULL,
    updated_ms    bigint NOT NULL,
    PRIMARY KEY (model_id, version)
);
CREATE INDEX model_versions_run ON model_versions (run_id);

CREATE TABLE model_version_tags (
    model_id bigint NOT NULL,
    version  integer NOT NULL,
    key      text NOT NULL,
    value    text NOT NULL,
    PRIMARY KEY (model_id, version, key),
    FOREIGN KEY (model_id, version) REFERENCES model_versions ON DELETE CASCADE
);

CREATE TABLE model_aliases (
    model_id bigint NOT NULL,
    alias    text NOT NULL,
    version  integer NOT NULL,
    PRIMARY KEY (model_id, alias),
    FOREIGN KEY (model_id, version) REFERENCES model_versions ON DELETE CASCADE
);

CREATE TABLE transition_requests (
    request_id       bigserial PRIMARY KEY,
    model_id         bigint NOT NULL,
    version          integer NOT NULL,
    to_stage         text NOT NULL,
    archive_existing boolean NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    requested_by     text NOT NULL,
    requested_ms     bigint NOT NULL,
    comment          text NOT NULL,
    decided_by       text,
    decided_ms       bigint,
    decision_comment text,
    FOREIGN KEY (model_id, version) REFERENCES model_versions ON DELETE CASCADE
);

-- Every change to a version, kept after the version and even the model are deleted: an audit
-- trail is only one if nobody can edit it, so updates and deletes are refused.
CREATE TABLE model_version_events (
    event_id   bigserial PRIMARY KEY,
    model_id   bigint NOT NULL,
    model_name text NOT NULL,
    version    integer NOT NULL,
    kind       text NOT NULL,
    actor      text NOT NULL,
    at_ms      bigint NOT NULL,
    from_value text NOT NULL DEFAULT '',
    to_value   text NOT NULL DEFAULT '',
    comment    text NOT NULL DEFAULT ''
);
CREATE INDEX model_version_events_version ON model_version_events (model_id, version, event_id);

CREATE FUNCTION model_version_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'model_version_events is append-only';
END $$;
CREATE TRIGGER model_version_events_append_only
    BEFORE UPDATE OR DELETE ON model_version_events
    FOR EACH ROW EXECUTE FUNCTION model_version_events_append_only();
