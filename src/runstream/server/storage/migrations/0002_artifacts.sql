-- Artifacts live in object storage; these tables hold what was recorded and what is under way.

CREATE TABLE artifact_uploads (
    upload_id        uuid PRIMARY KEY,
    run_id           uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    path             text NOT NULL,
    object_key       text NOT NULL,
    size             bigint NOT NULL,
    sha256           text NOT NULL,
    content_type     text NOT NULL,
    multipart_id     text,            -- the store's multipart upload id; NULL for a single PUT
    part_size        bigint NOT NULL,
    created_ms       bigint NOT NULL
);
CREATE INDEX artifact_uploads_created ON artifact_uploads (created_ms);

CREATE TABLE artifacts (
    run_id       uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    path         text NOT NULL COLLATE "C",  -- byte order, so a prefix is a range
    object_key   text NOT NULL,
    size         bigint NOT NULL,
    sha256       text NOT NULL,
    content_type text NOT NULL,
    created_ms   bigint NOT NULL,
    PRIMARY KEY (run_id, path)
);
