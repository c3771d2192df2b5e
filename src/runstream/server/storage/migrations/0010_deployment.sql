-- Which deployment this database is. The Redis keyspace (URL and prefix) its loaders read is
-- bound to this id at first start (server/deployment.py), and every stream entry carries it,
-- so two deployments on one Redis and prefix are refused rather than load each other's batches.
CREATE TABLE deployment (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    deployment_id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO deployment DEFAULT VALUES;
