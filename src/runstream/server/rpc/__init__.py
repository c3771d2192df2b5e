"""What every RPC shares, whichever door it comes in by (gRPC, the JSON API, MLflow's API):
handlers and statuses, page tokens, messages, value checks."""
