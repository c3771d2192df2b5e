"""The TrackingService: runs, params, tags, metric batches appended to the Redis streams, heartbeats, logged models."""
