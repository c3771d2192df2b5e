"""The compactor: a series' small ingest chunks merged into large compressed ones with sketches."""
