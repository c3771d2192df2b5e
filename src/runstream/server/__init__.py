"""The server (`pip install 'runstream[server]'`): one module or folder per role.

main (process lifecycle and roles), ingest (TrackingService -> Redis streams), loader (Redis ->
PostgreSQL), query/ (QueryService, tails), registry (RegistryService), artifacts/ (ArtifactService
and the object stores), storage/ (every SQL statement, migrations, the chunk format, history and
search), and health, metrics, rpc, logs around them.
"""
