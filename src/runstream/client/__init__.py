"""The Python SDK: tracking (Client, Run and the background MetricWriter), queries, the model
registry and artifact transfer. It talks to the server only over gRPC and signed URLs, and never
imports runstream.server."""
