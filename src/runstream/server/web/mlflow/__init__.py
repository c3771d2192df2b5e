"""MLflow's REST API on the HTTP port (`/api/2.0/mlflow/...`, `/ajax-api/2.0/mlflow/...`,
`/api/2.0/mlflow-artifacts/...`), so `MLFLOW_TRACKING_URI=http://host:HTTP_PORT` points
MLflow's own client at runstream. Each endpoint turns MLflow's JSON into the request of one of
our RPCs and calls the same handler, through the same token check, as gRPC does; metrics go
through the ingest path as a batch, artifacts into the same store as the SDK's. Shapes and
error bodies follow MLflow's service.proto, model_registry.proto and mlflow_artifacts.proto:
`{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}`.
"""

from runstream.server.web.mlflow import artifacts, models, registry, tracking  # noqa: F401  (they register their endpoints)
from runstream.server.web.mlflow.core import ENDPOINTS, add_routes

__all__ = ["ENDPOINTS", "add_routes"]
