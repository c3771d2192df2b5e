"""`runstream server` and `runstream demo`: their flags, and starting them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from runstream import extras
from runstream.cli.common import Subparsers, add_url
from runstream.server.runtime.config import Settings, default_data_dir


def _size(text: str) -> int:
    """Bytes from '123', '500MiB', '100GiB', '1TiB' (or MB, GB, TB: powers of 1000)."""
    units = {"": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    units["tb"] = 10**12
    number = text.rstrip("bBiIkKmMgGtT")
    unit = text[len(number) :].lower()
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give bytes or a number with KiB, MiB, GiB or TiB")
    return int(number) * units[unit]


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("server", help="run the tracking server (embedded PostgreSQL and Redis by default)")
    d = Settings()
    p.add_argument(
        "--host",
        default=os.environ.get("RUNSTREAM_HOST", d.host),
        help="address to listen on (RUNSTREAM_HOST); off loopback it needs --auth or --insecure",
    )
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("RUNSTREAM_PORT", d.port)), help="gRPC port (RUNSTREAM_PORT)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("RUNSTREAM_DATA_DIR", default_data_dir())),
        help="where the embedded PostgreSQL and Redis keep their data",
    )
    p.add_argument("--postgres-url", default=None, help="external PostgreSQL (env RUNSTREAM_POSTGRES_URL)")
    p.add_argument("--redis-url", default=None, help="external Redis (env RUNSTREAM_REDIS_URL)")
    p.add_argument(
        "--artifacts", default=None, help="artifact store: file:///dir or s3://bucket/prefix (env RUNSTREAM_ARTIFACTS)"
    )
    p.add_argument(
        "--s3-endpoint-url", default=None, help="S3 API endpoint (MinIO, Ceph; env RUNSTREAM_S3_ENDPOINT_URL)"
    )
    p.add_argument(
        "--s3-public-endpoint-url", default=None, help="endpoint in signed URLs, when clients reach S3 elsewhere"
    )
    p.add_argument("--s3-region", default=None, help="S3 region (default: AWS_REGION, the profile, or us-east-1)")
    p.add_argument(
        "--s3-addressing-style",
        choices=["auto", "path", "virtual"],
        default=d.s3_addressing_style,
        help="bucket in the path or in the host name (MinIO usually wants path)",
    )
    p.add_argument("--http-port", type=int, default=None, help="serves the local store's signed URLs (default: port+1)")
    p.add_argument("--public-http-url", default=None, help="how clients reach --http-port (default http://HOST:PORT)")
    p.add_argument(
        "--artifact-url-expiry", type=int, default=d.artifact_url_expiry_s, help="seconds a signed URL lives"
    )
    p.add_argument(
        "--artifact-part-size", type=int, default=d.artifact_part_size, help="bytes per part of multipart uploads"
    )
    p.add_argument(
        "--max-upload-size",
        type=_size,
        default=d.max_upload_bytes,
        help="largest artifact file, e.g. 100GiB (default); above it CreateUpload is RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--max-run-artifacts-size",
        type=_size,
        default=d.max_run_artifact_bytes,
        help="all artifacts of one run, stored and under way, e.g. 1TiB (default)",
    )
    p.add_argument(
        "--max-request-body",
        type=_size,
        default=d.max_request_body,
        help="largest JSON request on the HTTP port (/api/v1, MLflow's REST API, /login), e.g. 8MiB (default); "
        "larger is refused with 413 before it is read",
    )
    p.add_argument(
        "--http-request-timeout",
        type=float,
        default=d.http_request_timeout_s,
        help="seconds an HTTP client has to send a request's headers and JSON body (an upload: each block); "
        "an idle keep-alive connection is closed after it too",
    )
    p.add_argument(
        "--role",
        choices=["all", "ingest", "query", "load"],
        default=d.role,
        help="all: everything; ingest: tracking + artifacts; query: queries, registry, artifacts; load: a loader",
    )
    p.add_argument("--loaders", type=int, default=d.loaders, help="loader processes (role all)")
    p.add_argument("--shards", type=int, default=d.shards, help="metric stream shards")
    p.add_argument("--redis-prefix", default=d.redis_prefix, help="prefix of every Redis key")
    p.add_argument("--read-count", type=int, default=d.read_count, help="stream entries per loader read")
    p.add_argument(
        "--claim-idle-ms", type=int, default=d.claim_idle_ms, help="claim entries a loader left pending this long"
    )
    p.add_argument(
        "--max-backlog", type=int, default=d.max_backlog, help="stream entries per shard above which ingest pushes back"
    )
    p.add_argument(
        "--redis-wait-replicas",
        type=int,
        default=d.redis_wait_replicas,
        help="acknowledge a batch only once this many Redis replicas have it (WAIT); default 0",
    )
    p.add_argument(
        "--redis-wait-timeout-ms",
        type=int,
        default=d.redis_wait_timeout_ms,
        help="how long an ack waits for the replicas before the batch is UNAVAILABLE (and resent)",
    )
    p.add_argument(
        "--max-keys-per-run",
        type=int,
        default=d.max_keys_per_run,
        help="metric keys one run may have; a batch that adds more is refused (FAILED_PRECONDITION)",
    )
    p.add_argument(
        "--max-tails",
        type=_positive,
        default=d.max_tails,
        help="live tails (TailMetrics, the UI's /api/v1/tail) open at once; beyond, RESOURCE_EXHAUSTED (HTTP 429)",
    )
    p.add_argument(
        "--max-tails-per-token",
        type=_positive,
        default=d.max_tails_per_token,
        help="live tails one token may have open (one client address while auth is off)",
    )
    p.add_argument(
        "--tail-connections",
        type=_positive,
        default=d.tail_connections,
        help=f"PostgreSQL connections live tails may use at once, of the {d.pool_size} of the pool",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=d.drain_timeout_s,
        help="seconds loaders may drain at shutdown; what is left stays in Redis for the next start",
    )
    p.add_argument(
        "--crash-after",
        type=float,
        default=float(os.environ.get("RUNSTREAM_CRASH_AFTER", d.crash_after_s)),
        help="seconds without a heartbeat from any writer after which a RUNNING run is CRASHED; 0: never "
        "(env RUNSTREAM_CRASH_AFTER)",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        default=os.environ.get("RUNSTREAM_AUTH", "").lower() in ("1", "true", "yes", "on"),
        help="every RPC needs a token; the first start writes an admin token to <data-dir>/admin-token",
    )
    p.add_argument("--insecure", action="store_true", help="allow serving off loopback without --auth")
    p.add_argument("--tls-cert", type=Path, help="serve gRPC and HTTP over TLS: PEM certificate chain")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca", type=Path, default=None, help="require gRPC client certificates signed by this CA (mTLS)"
    )
    p.add_argument("--no-reflection", action="store_true", help="do not serve gRPC reflection")
    p.add_argument(
        "--log-level", default=os.environ.get("RUNSTREAM_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING or ERROR"
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("RUNSTREAM_LOG_FORMAT", "text"),
        help="json: one object per line with request ids, for log collectors",
    )
    p.set_defaults(handler=serve)
    demo = sub.add_parser("demo", help="start a server if none runs, train models and compare the runs")
    add_url(demo)
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("RUNSTREAM_DATA_DIR", default_data_dir())),
        help="where an embedded server keeps its data (RUNSTREAM_DATA_DIR)",
    )
    demo.add_argument("--epochs", type=int, default=300, help="training epochs of every run")
    demo.set_defaults(handler=run_demo)


def serve(args: argparse.Namespace) -> int:
    extras.require("server", "server")
    from runstream.server import main as server
    from runstream.server.runtime.logs import configure

    configure(args.log_level, args.log_format)
    settings = Settings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        artifacts=args.artifacts,
        s3_endpoint_url=args.s3_endpoint_url,
        s3_public_endpoint_url=args.s3_public_endpoint_url,
        s3_region=args.s3_region,
        s3_addressing_style=args.s3_addressing_style,
        http_port=args.http_port,
        public_http_url=args.public_http_url,
        artifact_url_expiry_s=args.artifact_url_expiry,
        artifact_part_size=args.artifact_part_size,
        max_upload_bytes=args.max_upload_size,
        max_run_artifact_bytes=args.max_run_artifacts_size,
        max_request_body=args.max_request_body,
        http_request_timeout_s=args.http_request_timeout,
        role=args.role,
        loaders=args.loaders,
        shards=args.shards,
        redis_prefix=args.redis_prefix,
        read_count=args.read_count,
        claim_idle_ms=args.claim_idle_ms,
        max_backlog=args.max_backlog,
        drain_timeout_s=args.drain_timeout,
        crash_after_s=args.crash_after,
        max_keys_per_run=args.max_keys_per_run,
        max_tails=args.max_tails,
        max_tails_per_token=args.max_tails_per_token,
        tail_connections=args.tail_connections,
        redis_wait_replicas=args.redis_wait_replicas,
        redis_wait_timeout_ms=args.redis_wait_timeout_ms,
        auth=args.auth,
        insecure=args.insecure,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        reflection=not args.no_reflection,
    )
    return server.run(settings)


def run_demo(args: argparse.Namespace) -> int:
    extras.require("demo", "demo")
    from runstream import demo

    return demo.main(args.url, args.data_dir, args.epochs)
