"""The Redis streams between ingest and the loaders: key names and layout, and the deployment a keyspace serves."""
