"""The server's settings, each declared once (runstream/settings.py): `runstream server`'s flags,
their RUNSTREAM_* environment variables and the settings reference are made from this class."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runstream.server.streams.keys import DEFAULT_PREFIX, DEFAULT_SHARDS
from runstream.settings import count, integer, positive, seconds, setting, size

ROLES = ("all", "ingest", "query", "load", "compact")


def min_max(value: float, low: float, high: float, flag: str) -> float:
    if not low <= value <= high:
        raise ValueError(f"{flag} must be between {low:g} and {high:g}")
    return value


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "runstream"


@dataclass
class Settings:
    # -- where it listens and what it runs
    host: str = setting(
        "127.0.0.1", help="address to listen on; off loopback it needs --auth or --insecure", group="Serving"
    )
    port: int = setting(50051, help="gRPC port", shown_default="50051", group="Serving")
    http_port: int | None = setting(
        None,
        help="HTTP port: the web UI, the JSON and MLflow APIs, /metrics, the local store's signed URLs",
        parse=integer,
        shown_default="gRPC port + 1",
        group="Serving",
    )
    public_http_url: str | None = setting(
        None, help="how clients reach the HTTP port", shown_default="http://HOST:HTTP_PORT", group="Serving"
    )
    role: str = setting(
        "all",
        help="all: everything; ingest: tracking and artifacts; query: queries, registry, artifacts; load: a loader; "
        "compact: a compactor",
        choices=ROLES,
        group="Serving",
    )
    loaders: int = setting(
        1, help="loader processes started by role all (0: none, another process loads)", parse=count, group="Serving"
    )
    compactors: int = setting(
        1,
        help="compactor processes started by role all (0: none, another process compacts)",
        parse=count,
        group="Serving",
    )
    data_dir: Path = setting(
        help="where the embedded PostgreSQL and Redis, the local artifact store and the admin token live",
        parse=Path,
        default_factory=default_data_dir,
        shown_default="$XDG_DATA_HOME/runstream (~/.local/share/runstream)",
        group="Serving",
    )
    reflection: bool = setting(True, help="serve gRPC reflection", group="Serving")
    grace_s: float = setting(
        10.0, help="seconds RPCs in flight get to finish at shutdown", flag="--grace", group="Serving"
    )
    drain_timeout_s: float = setting(
        60.0,
        help="seconds loaders may drain the streams at shutdown; what is left stays in Redis for the next start",
        flag="--drain-timeout",
        group="Serving",
    )
    log_level: str = setting(
        "INFO", help="log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), parse=str.upper, group="Serving"
    )
    log_format: str = setting(
        "text", help="json: one object per line with request ids, for log collectors", choices=("text", "json"),
        group="Serving",
    )  # fmt: skip
    # -- PostgreSQL and Redis
    postgres_url: str | None = setting(
        None, help="external PostgreSQL", shown_default="the embedded one in --data-dir", group="PostgreSQL and Redis"
    )
    redis_url: str | None = setting(
        None,
        help="external Redis (redis://, rediss://, unix://) or Redis Cluster "
        "(redis+cluster://host:port[,host:port...], rediss+cluster:// with TLS)",
        shown_default="the embedded one in --data-dir",
        group="PostgreSQL and Redis",
    )
    postgres_read_url: tuple[str, ...] = setting(
        (),
        help="PostgreSQL streaming replicas for the reads that may lag (QueryService: histories, search, compare), "
        "separated by spaces; a read that must see a recent write waits --replica-wait for a replica to replay "
        "it, else reads the primary. Give it to every process: ingest tells clients what to wait for",
        parse=lambda text: tuple(text.split()),
        shown_default="none: every read on the primary",
        group="PostgreSQL and Redis",
    )
    replica_wait_s: float = setting(
        1.0,
        help="seconds a read waits for a replica to replay the writes it must see before it reads the primary "
        "(at most 60)",
        parse=lambda text: min_max(seconds(text), 0, 60, "--replica-wait"),
        flag="--replica-wait",
        group="PostgreSQL and Redis",
    )
    database_moved: str = setting(
        "",
        help="the database was copied or moved (pg_dump, pg_upgrade) since its deployment was made: adopt: it "
        "replaces the original (same deployment, same Redis keyspace); new: it is a copy, with a deployment of "
        "its own",
        choices=("adopt", "new"),
        shown_default="refuse to start on a copied or moved database",
        group="PostgreSQL and Redis",
    )
    pool_size: int = setting(
        8, help="PostgreSQL connections per server process", parse=positive, group="PostgreSQL and Redis"
    )
    redis_prefix: str = setting(
        DEFAULT_PREFIX, help="prefix of every Redis key: one per deployment", group="PostgreSQL and Redis"
    )
    shards: int = setting(
        DEFAULT_SHARDS,
        help="metric stream shards (on a Redis Cluster, at least two per master spreads them)",
        parse=positive,
        group="PostgreSQL and Redis",
    )
    redis_wait_replicas: int = setting(
        0,
        help="acknowledge a batch only once this many Redis replicas have it (WAIT)",
        group="PostgreSQL and Redis",
    )
    redis_wait_timeout_ms: int = setting(
        1_000,
        help="how long an ack waits for the replicas before the batch is UNAVAILABLE (and resent)",
        group="PostgreSQL and Redis",
    )
    # -- ingest and loading
    max_backlog: int = setting(
        20_000, help="stream entries per shard above which ingest pushes back (RESOURCE_EXHAUSTED)", group="Ingest"
    )
    max_keys_per_run: int = setting(
        100_000,
        help="metric keys one run may have; a batch that adds more is refused (FAILED_PRECONDITION)",
        group="Ingest",
    )
    read_count: int = setting(200, help="stream entries a loader takes per read", parse=positive, group="Ingest")
    claim_idle_ms: int = setting(
        30_000, help="entries another loader left pending this long are claimed", group="Ingest"
    )
    crash_after_s: float = setting(
        300.0,
        help="seconds without a heartbeat from any writer after which a RUNNING run is CRASHED; 0: never",
        flag="--crash-after",
        group="Ingest",
    )
    compact_delay_s: float = setting(
        60.0,
        help="seconds loaded points stay in ingest chunks before the compactor may merge them into compressed "
        "ones (a run that ended: its points, then; a running one: once a series has 16,384 or waited 10 min)",
        parse=seconds,
        flag="--compact-delay",
        group="Ingest",
    )
    cold_after_s: float = setting(
        7 * 86_400.0,
        help="seconds after a run ended before its points move out of PostgreSQL into one object in the "
        "artifact store (the cold tier; reads serve them from there); 0: never",
        parse=seconds,
        flag="--cold-after",
        group="Ingest",
    )
    # -- artifacts
    artifacts: str | None = setting(
        None,
        help="artifact store: file:///dir or s3://bucket/prefix",
        shown_default="the local store in --data-dir/artifacts",
        group="Artifacts",
    )
    s3_endpoint_url: str | None = setting(None, help="S3 API endpoint (MinIO, Ceph)", group="Artifacts")
    s3_public_endpoint_url: str | None = setting(
        None, help="the S3 endpoint in signed URLs, when clients reach S3 elsewhere", group="Artifacts"
    )
    s3_region: str | None = setting(
        None, help="S3 region", shown_default="AWS_REGION, the profile, or us-east-1", group="Artifacts"
    )
    s3_addressing_style: str = setting(
        "auto",
        help="bucket in the path or in the host name (MinIO usually wants path)",
        choices=("auto", "path", "virtual"),
        group="Artifacts",
    )
    artifact_url_expiry_s: int = setting(
        15 * 60, help="seconds a signed URL lives", flag="--artifact-url-expiry", group="Artifacts"
    )
    artifact_part_size: int = setting(
        64 * 2**20, help="uploads above this go in parts, one signed URL each", parse=size, group="Artifacts"
    )
    max_upload_bytes: int = setting(
        100 * 2**30,
        help="largest artifact file; above it CreateUpload is RESOURCE_EXHAUSTED",
        parse=size,
        flag="--max-upload-size",
        group="Artifacts",
    )
    max_run_artifact_bytes: int = setting(
        2**40,
        help="all artifacts of one run, stored and under way",
        parse=size,
        flag="--max-run-artifacts-size",
        group="Artifacts",
    )
    # -- the HTTP port and live tails
    max_request_body: int = setting(
        8 * 2**20,
        help="largest JSON request on the HTTP port (/api/v1, MLflow's REST API, /login); larger is refused "
        "with 413 before it is read",
        parse=size,
        group="HTTP and live tails",
    )
    http_request_timeout_s: float = setting(
        30.0,
        help="seconds an HTTP client has to send a request's headers and JSON body (an upload: each block); an "
        "idle keep-alive connection is closed after it too",
        flag="--http-request-timeout",
        group="HTTP and live tails",
    )
    max_tails: int = setting(
        1_000,
        help="live tails (TailMetrics, the UI's /api/v1/tail) open at once; beyond, RESOURCE_EXHAUSTED (HTTP 429)",
        parse=positive,
        group="HTTP and live tails",
    )
    max_tails_per_token: int = setting(
        100,
        help="live tails one token may have open (one client address while auth is off)",
        parse=positive,
        group="HTTP and live tails",
    )
    tail_connections: int = setting(
        2,
        help="PostgreSQL connections all live tails together may use at once (of --pool-size)",
        parse=positive,
        group="HTTP and live tails",
    )
    # -- security
    auth: bool = setting(
        False,
        help="every call needs a token; the first start writes an admin token to <data-dir>/admin-token",
        group="Security",
    )
    insecure: bool = setting(False, help="allow serving off loopback without --auth", group="Security")
    tls_cert: Path | None = setting(
        None, help="serve gRPC and HTTP over TLS: PEM certificate chain", parse=Path, group="Security"
    )
    tls_key: Path | None = setting(None, help="PEM private key of --tls-cert", parse=Path, group="Security")
    admin_token: str = setting(
        "",
        help="the first admin token (e.g. from a secret; `runstream tokens generate` makes one) instead of one made "
        "at the first start and written to <data-dir>/admin-token",
        flag=False,
        secret=True,
        group="Security",
    )
    tls_client_ca: Path | None = setting(
        None, help="require gRPC client certificates signed by this CA (mTLS)", parse=Path, group="Security"
    )

    def __post_init__(self) -> None:
        if self.http_port is None:
            self.http_port = self.port + 1

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
