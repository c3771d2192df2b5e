"""The wire format both sides share: the generated protobuf code (proto/), the MetricBatch codec
(batch), packed columns (packed) and query results as numpy views (points)."""
