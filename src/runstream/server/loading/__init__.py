"""The loaders: Redis streams into PostgreSQL exactly once, their processes, commit notifications, dead letters."""
