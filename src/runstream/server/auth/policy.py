"""The scope every RPC needs, in one table. A method missing here cannot be served: the
server refuses to start (and tests/integration/test_auth.py fails), so a new RPC needs a decision.

Health and reflection need no token, by decision: health tells only whether a service is up
(load balancers and probes call it), and reflection describes the API, which is public in
the package's .proto files anyway; `--no-reflection` turns it off.
"""

from __future__ import annotations

READ, WRITE, REGISTRY, ADMIN = "read", "write", "registry", "admin"
SCOPES = (READ, WRITE, REGISTRY, ADMIN)
ANY_TOKEN = "any valid token"
# Scopes that a token's experiment pattern limits. For the registry it binds models: a limited
# token touches a model only when every version of it comes from a run of its experiments.
LIMITED = (READ, WRITE, REGISTRY)
# Methods whose requests are metric batches: their runs are checked batch by batch.
BATCH_METHODS = {"TrackingService/StreamMetrics", "TrackingService/LogMetrics"}
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")

_BY_SCOPE: dict[str, tuple[str, ...]] = {
    READ: (
        "TrackingService/GetExperiment",
        "TrackingService/ListExperiments",
        "TrackingService/GetRun",
        "TrackingService/ListRunMetrics",
        "TrackingService/GetLoggedModel",
        "TrackingService/SearchLoggedModels",
        "QueryService/GetMetricHistory",
        "QueryService/SearchRuns",
        "QueryService/CompareRuns",
        "QueryService/TailMetrics",
        "QueryService/ReadMetrics",
        "QueryService/ListExperiments",
        "ArtifactService/ListArtifacts",
        "ArtifactService/GetDownloadUrl",
        "RegistryService/GetRegisteredModel",
        "RegistryService/SearchRegisteredModels",
        "RegistryService/GetModelVersion",
        "RegistryService/ResolveModelUri",
        "RegistryService/ListModelVersions",
        "RegistryService/ListTransitionRequests",
        "RegistryService/GetModelVersionHistory",
        "RegistryService/GetModelVersionLineage",
    ),
    WRITE: (
        "TrackingService/CreateExperiment",
        "TrackingService/CreateRun",
        "TrackingService/UpdateRun",
        "TrackingService/RewindRun",
        "TrackingService/LogParams",
        "TrackingService/SetTags",
        "TrackingService/DeleteTag",
        "TrackingService/LogInputs",
        "TrackingService/UpdateExperiment",
        "TrackingService/CreateLoggedModel",
        "TrackingService/UpdateLoggedModel",
        "TrackingService/OpenWriter",
        "TrackingService/StreamMetrics",
        "TrackingService/LogMetrics",
        "TrackingService/WaitCommitted",
        "TrackingService/Heartbeat",
        "ArtifactService/CreateUpload",
        "ArtifactService/SignParts",
        "ArtifactService/CompleteUpload",
        "ArtifactService/AbortUpload",
    ),
    REGISTRY: (
        "RegistryService/CreateRegisteredModel",
        "RegistryService/RenameRegisteredModel",
        "RegistryService/UpdateRegisteredModel",
        "RegistryService/CreateModelVersion",
        "RegistryService/UpdateModelVersion",
        "RegistryService/TransitionStage",
        "RegistryService/SetAlias",
        "RegistryService/DeleteAlias",
        "RegistryService/CreateComment",
        "RegistryService/CreateTransitionRequest",
        "RegistryService/ApproveTransitionRequest",
        "RegistryService/RejectTransitionRequest",
    ),
    ADMIN: (
        "TrackingService/DeleteRun",
        "TrackingService/RestoreRun",
        "TrackingService/DeleteExperiment",
        "TrackingService/RestoreExperiment",
        "TrackingService/DeleteLoggedModel",
        "ArtifactService/DeleteArtifact",
        "RegistryService/DeleteRegisteredModel",
        "RegistryService/DeleteModelVersion",
        "AdminService/ListDeadLetters",
        "AdminService/RetryDeadLetters",
        "AdminService/CreateToken",
        "AdminService/ListTokens",
        "AdminService/RevokeToken",
        "AdminService/GetStorage",
        "AdminService/PurgeRuns",
    ),
    ANY_TOKEN: ("AdminService/WhoAmI",),
}
RULES: dict[str, str] = {method: scope for scope, methods in _BY_SCOPE.items() for method in methods}


def scope_of(service: str, method: str) -> str:
    """The scope `service`/`method` needs (service without its package); KeyError when none."""
    return RULES[f"{service}/{method}"]
