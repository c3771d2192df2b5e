"""Artifacts: paths, object stores (local directory, S3) and the ArtifactService."""
