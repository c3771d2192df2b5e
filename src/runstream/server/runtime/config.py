"""Server settings: command-line flags with RUNSTREAM_* environment variables as defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from runstream.server.streams.keys import DEFAULT_PREFIX, DEFAULT_SHARDS


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "runstream"


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = field(default_factory=default_data_dir)
    postgres_url: str | None = None  # None: the embedded PostgreSQL in data_dir
    redis_url: str | None = None  # None: the embedded Redis in data_dir
    role: str = "all"  # all | ingest | query | load
    loaders: int = 1  # loader processes started by role all
    shards: int = DEFAULT_SHARDS
    redis_prefix: str = DEFAULT_PREFIX
    read_count: int = 200  # stream entries a loader takes per read (per shard)
    claim_idle_ms: int = 30_000  # pending entries idle this long are claimed by another loader
    max_backlog: int = 20_000  # entries per shard above which ingest answers RESOURCE_EXHAUSTED
    redis_wait_replicas: int = 0  # an ack also waits for this many Redis replicas (WAIT)
    redis_wait_timeout_ms: int = 1_000
    max_keys_per_run: int = 100_000  # metric keys one run may have; a batch beyond is FAILED_PRECONDITION
    artifacts: str | None = None  # file:///dir or s3://bucket/prefix; None: the local store under data_dir
    s3_endpoint_url: str | None = None  # MinIO, Ceph...; None: AWS (or botocore's AWS_ENDPOINT_URL)
    s3_public_endpoint_url: str | None = None  # the endpoint clients reach, when it differs
    s3_region: str | None = None
    s3_addressing_style: str = "auto"
    http_port: int | None = None  # the local store's signed URLs; None: port + 1
    public_http_url: str | None = None  # how clients reach http_port; None: http://host:http_port
    artifact_url_expiry_s: int = 15 * 60
    artifact_part_size: int = 64 * 1024 * 1024  # uploads above this go in parts, one URL each
    max_upload_bytes: int = 100 * 2**30  # one artifact file
    max_run_artifact_bytes: int = 2**40  # all of a run's artifacts, stored and being uploaded
    max_request_body: int = 8 * 2**20  # a JSON request on the HTTP port (above the 4 MiB batch limit); 413 beyond
    http_request_timeout_s: float = 30.0  # an HTTP client's headers (and JSON body) arrive within this
    pool_size: int = 8
    max_tails: int = 1_000  # live tails (TailMetrics, /api/v1/tail) open at once in one server process
    max_tails_per_token: int = 100  # ...and per token (per client address while auth is off)
    tail_connections: int = 2  # of pool_size, what all live tails together may use at once
    grace_s: float = 10.0
    drain_timeout_s: float = 60.0  # at shutdown, how long loaders may drain before they are stopped
    crash_after_s: float = 300.0  # a RUNNING run none of whose writers was heard from this long is CRASHED
    auth: bool = False  # every RPC needs a token (auth/); required off loopback unless insecure
    insecure: bool = False  # serve off loopback without auth, knowingly
    tls_cert: Path | None = None  # serve gRPC and HTTP over TLS with this certificate chain...
    tls_key: Path | None = None  # ...and this key
    tls_client_ca: Path | None = None  # and require client certificates signed by this CA (mTLS)
    reflection: bool = True

    @property
    def artifacts_url(self) -> str:
        return self.artifacts or (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        scheme = "https" if self.tls_cert else "http"
        return self.public_http_url or f"{scheme}://{host}:{self.http_port}"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"

    def env_overrides(self) -> Settings:
        """Fill unset URLs from RUNSTREAM_POSTGRES_URL / RUNSTREAM_REDIS_URL."""
        self.postgres_url = self.postgres_url or os.environ.get("RUNSTREAM_POSTGRES_URL") or None
        self.redis_url = self.redis_url or os.environ.get("RUNSTREAM_REDIS_URL") or None
        self.artifacts = self.artifacts or os.environ.get("RUNSTREAM_ARTIFACTS") or None
        self.s3_endpoint_url = self.s3_endpoint_url or os.environ.get("RUNSTREAM_S3_ENDPOINT_URL") or None
        self.s3_public_endpoint_url = (
            self.s3_public_endpoint_url or os.environ.get("RUNSTREAM_S3_PUBLIC_ENDPOINT_URL") or None
        )
        if self.http_port is None:
            self.http_port = self.port + 1
        return self
