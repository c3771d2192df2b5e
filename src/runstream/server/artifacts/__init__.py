"""Artifacts on the server: path rules, object stores (local directory, S3) and the ArtifactService."""
