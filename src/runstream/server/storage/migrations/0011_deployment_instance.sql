-- The database instance a deployment id was made in (PostgreSQL's system identifier and the
-- database's name): a copy of the database (pg_dump, a staging clone) or a move (pg_upgrade)
-- carries the id elsewhere, and the server then asks whether it replaces the original or is a
-- deployment of its own (--database-moved) instead of loading the original's batches.
ALTER TABLE deployment ADD COLUMN instance text;
