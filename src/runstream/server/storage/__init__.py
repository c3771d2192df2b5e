"""PostgreSQL: every SQL statement, by domain, and what the data looks like stored.

db.py (the connection type, the clock, the NOTIFY channel), migrate.py (migrations/*.sql) and
schema.py (schema.sql, the schema they make); the queries: experiments.py, runs.py (with
params, tags, inputs, summaries and run search), metrics.py (series, batch records, chunks,
histories, tails), artifacts.py, registry.py, tokens.py, logged_models.py, installation.py (the
deployment id and secrets). Besides them: the chunk format (chunks.py), downsampled histories
(history.py), the filter language of search (search.py), what a failure means (failures.py).
"""
