-- search_runs ordered by a metric (order_by metrics.acc DESC, the MLflow UI's way to find the
-- best run) walks this index from the top instead of reading every run's summary. last_value
-- changes with each load, so summaries lose HOT updates: one more index entry per series per
-- load, not per point.
CREATE INDEX metric_summaries_key_value ON metric_summaries (key, last_value);
