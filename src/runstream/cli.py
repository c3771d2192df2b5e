"""The `runstream` command: `server`, `demo`, and a look at runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from runstream import extras
from runstream.extras import ExtraMissing
from runstream.server.config import Settings, default_data_dir


def _size(text: str) -> int:
    """Bytes from '123', '500MiB', '100GiB', '1TiB' (or MB, GB, TB: powers of 1000)."""
    units = {"": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    units["tb"] = 10**12
    number = text.rstrip("bBiIkKmMgGtT")
    unit = text[len(number) :].lower()
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give bytes or a number with KiB, MiB, GiB or TiB")
    return int(number) * units[unit]


def _server_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("server", help="run the tracking server (embedded PostgreSQL and Redis by default)")
    d = Settings()
    p.add_argument("--host", default=os.environ.get("RUNSTREAM_HOST", d.host))
    p.add_argument("--port", type=int, default=int(os.environ.get("RUNSTREAM_PORT", d.port)))
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
    p.add_argument("--s3-addressing-style", choices=["auto", "path", "virtual"], default=d.s3_addressing_style)
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
        "--drain-timeout",
        type=float,
        default=d.drain_timeout_s,
        help="seconds loaders may drain at shutdown; what is left stays in Redis for the next start",
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
    p.add_argument("--log-level", default=os.environ.get("RUNSTREAM_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("RUNSTREAM_LOG_FORMAT", "text"),
        help="json: one object per line with request ids, for log collectors",
    )


def _tokens_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = sub.add_parser("tokens", help="API tokens (admin scope): create, list, revoke; whoami")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", help="make a token and print it once (the server keeps a hash)")
    create.add_argument("--name", required=True, help="who acts with it: approvals and history show this name")
    create.add_argument(
        "--scope", action="append", required=True, choices=["read", "write", "registry", "admin"], help="repeatable"
    )
    create.add_argument("--experiments", default="", help="glob of experiment names limiting read and write")
    create.add_argument("--expires", default="", help="e.g. 30d, 12h, 90m (default: never)")
    tls = tokens_sub.add_parser("ls", help="live tokens (--revoked: also revoked ones)")
    tls.add_argument("--revoked", action="store_true")
    revoke = tokens_sub.add_parser("revoke", help="revoke the live token of that name")
    revoke.add_argument("name")
    whoami = tokens_sub.add_parser("whoami", help="the name and scopes of the token in RUNSTREAM_TOKEN")
    tokens_sub.add_parser("generate", help="print a new random token, offline (for RUNSTREAM_ADMIN_TOKEN)")
    for p in (create, tls, revoke, whoami):
        p.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))


def _duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    if not text:
        return 0
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise ValueError(f"--expires {text!r}: give a whole number and a unit, like 30d, 12h, 90m or 45s")
    return int(text[:-1]) * units[text[-1]]


def _tokens(args: argparse.Namespace) -> int:
    from runstream.client.tracking import Client
    from runstream.errors import RunstreamError
    from runstream.report import tokens_table

    if args.tokens_command == "generate":
        from runstream.server.auth.credentials import new_token

        print(new_token()[1])
        return 0
    try:
        expires_s = _duration_s(args.expires) if args.tokens_command == "create" else 0
        with Client(args.url) as client:
            admin = client.admin
            if args.tokens_command == "create":
                made = admin.create_token(args.name, args.scope, experiments=args.experiments, expires_in_s=expires_s)
                print(made.secret)
                print(f"token {made.token.name!r} ({made.token.token_id}): shown once; keep it secret", file=sys.stderr)
            elif args.tokens_command == "ls":
                print(tokens_table(admin.tokens(args.revoked)))
            elif args.tokens_command == "revoke":
                gone = admin.revoke_token(args.name)
                print(f"revoked token {gone.name!r} ({gone.token_id})")
            else:
                me = admin.whoami()
                limit = f", experiments {me.experiments!r}" if me.experiments else ""
                print(f"{me.name}: {', '.join(me.scopes)}{limit}")
    except (RunstreamError, ValueError) as exc:
        print(f"runstream: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _server_parser(sub)
    demo = sub.add_parser("demo", help="start a server if none runs, train models and compare the runs")
    demo.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    demo.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RUNSTREAM_DATA_DIR", default_data_dir())))
    demo.add_argument("--epochs", type=int, default=300)
    runs = sub.add_parser("runs", help="search runs, or show some, with params and last metric values")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    ls = runs_sub.add_parser("ls", help="runs matching a filter, as a table")
    ls.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    ls.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable; default: all)")
    ls.add_argument("--filter", default="", help="e.g. \"metrics.acc > 0.9 and params.lr = '0.01'\"")
    ls.add_argument("--order-by", action="append", default=[], help="e.g. 'metrics.acc DESC' (repeatable)")
    ls.add_argument("--max-results", type=int, default=50)
    cmp = runs_sub.add_parser("compare", help="runs side by side: params that differ, best run per metric")
    cmp.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    cmp.add_argument("run_ids", nargs="+")
    cmp.add_argument("--key", action="append", default=[], help="metric keys to compare (default: all)")
    cmp.add_argument("--plot", type=Path, help="also draw each key's curves into this PNG (needs matplotlib)")
    experiments = sub.add_parser("experiments", help="experiments with their run counts")
    experiments_sub = experiments.add_subparsers(dest="experiments_command", required=True)
    els = experiments_sub.add_parser("ls", help="experiments with run counts by status, latest activity first")
    els.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    els.add_argument("--name", default="", help="SQL LIKE pattern on the name, e.g. 'vision-%%'")
    els.add_argument("--deleted", action="store_true", help="include deleted experiments")
    els.add_argument("--max-results", type=int, default=100)
    show = runs_sub.add_parser("show", help="the given runs, as a table")
    show.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    show.add_argument("run_ids", nargs="+")
    metrics = sub.add_parser("metrics", help="a run's metric history as CSV or JSON on stdout")
    metrics.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    metrics.add_argument("run_id")
    metrics.add_argument("key")
    metrics.add_argument("--max-points", type=int, default=1000, help="above this, buckets of first/last/min/max")
    metrics.add_argument("--min-step", type=int)
    metrics.add_argument("--max-step", type=int)
    metrics.add_argument("--writer", help="only this writer's points (e.g. rank3)")
    metrics.add_argument("--aggregate", choices=["mean", "min", "max"], help="one value per step across writers")
    metrics.add_argument("--format", choices=["csv", "json"], default="csv")
    metrics.add_argument("--all", action="store_true", help="stream every point as CSV, writer by writer")
    arts = sub.add_parser("artifacts", help="a run's artifacts: list, download, upload")
    arts_sub = arts.add_subparsers(dest="artifacts_command", required=True)
    als = arts_sub.add_parser("ls", help="files and directories under a path of the run's artifacts")
    als.add_argument("run_id")
    als.add_argument("path", nargs="?", default="")
    aget = arts_sub.add_parser("get", help="download a file or a whole directory (SHA-256 checked)")
    aget.add_argument("run_id")
    aget.add_argument("path", help="artifact path; a directory comes down with everything under it")
    aget.add_argument("-o", "--output", type=Path, default=Path("."), help="local directory (default: .)")
    aput = arts_sub.add_parser("put", help="upload a file or a directory")
    aput.add_argument("run_id")
    aput.add_argument("local", type=Path, help="a file, or a directory uploaded with its layout")
    aput.add_argument("--path", default=None, help="artifact directory to put it under (default: the top)")
    arm = arts_sub.add_parser("rm", help="delete one artifact file")
    arm.add_argument("run_id")
    arm.add_argument("path")
    for p in (als, aget, aput, arm):
        p.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    models = sub.add_parser("models", help="the model registry: list, versions, register, promote, alias, lineage")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    mls = models_sub.add_parser("ls", help="registered models with their newest version per stage and aliases")
    mls.add_argument("--name", default="", help="SQL LIKE pattern, e.g. 'wine%%'")
    mvs = models_sub.add_parser("versions", help="a model's versions, newest first")
    mvs.add_argument("name")
    mvs.add_argument("--stage", action="append", default=[], help="only these stages (repeatable)")
    mreg = models_sub.add_parser("register", help="register a run's artifact as a new version")
    mreg.add_argument("run_id")
    mreg.add_argument("artifact_path")
    mreg.add_argument("name")
    mpro = models_sub.add_parser("promote", help="move a version to a stage (None, Staging, Production, Archived)")
    mpro.add_argument("name")
    mpro.add_argument("version", type=int)
    mpro.add_argument("stage")
    mpro.add_argument("--archive-existing", action="store_true", help="archive the versions now in that stage")
    mal = models_sub.add_parser("alias", help="point an alias at a version (or --delete it)")
    mal.add_argument("name")
    mal.add_argument("alias")
    mal.add_argument("version", type=int, nargs="?")
    mal.add_argument("--delete", action="store_true")
    mlin = models_sub.add_parser("lineage", help="the run, params, code, data and artifact behind a version")
    mlin.add_argument("uri", help="models:/NAME/VERSION, models:/NAME/STAGE or models:/NAME@ALIAS")
    for p in (mls, mvs, mreg, mpro, mal, mlin):
        p.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    dead = sub.add_parser("dead-letters", help="stream entries the loaders could not store: list, replay")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dls = dead_sub.add_parser("ls", help="every dead letter with its run, writer, seq and reason, oldest first")
    dretry = dead_sub.add_parser("retry", help="put dead letters back for the loaders (a batch that fails returns)")
    dretry.add_argument("ids", nargs="*", help="dead letter ids (from ls)")
    dretry.add_argument("--all", action="store_true", help="every dead letter")
    for p in (dls, dretry):
        p.add_argument("--url", default=os.environ.get("RUNSTREAM_URL", "127.0.0.1:50051"))
    _tokens_parser(sub)
    args = parser.parse_args(argv)

    try:
        return _run(args)
    except ExtraMissing as exc:
        print(f"runstream: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "server":
        extras.require("server", "server")
        from runstream.server import main as server
        from runstream.server.logs import configure

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
            role=args.role,
            loaders=args.loaders,
            shards=args.shards,
            redis_prefix=args.redis_prefix,
            read_count=args.read_count,
            claim_idle_ms=args.claim_idle_ms,
            max_backlog=args.max_backlog,
            drain_timeout_s=args.drain_timeout,
            max_keys_per_run=args.max_keys_per_run,
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
    if args.command == "demo":
        extras.require("demo", "demo")
        from runstream import demo as demo_mod

        return demo_mod.main(args.url, args.data_dir, args.epochs)
    if args.command == "runs":
        return _runs(args)
    if args.command == "experiments":
        return _experiments(args)
    if args.command == "metrics":
        return _metrics(args)
    if args.command == "artifacts":
        return _artifacts(args)
    if args.command == "models":
        return _models(args)
    if args.command == "dead-letters":
        return _dead_letters(args)
    if args.command == "tokens":
        return _tokens(args)
    return 2


def _models(args: argparse.Namespace) -> int:
    from runstream.client.tracking import Client
    from runstream.errors import RunstreamError
    from runstream.report import lineage_text, models_table, versions_table

    try:
        with Client(args.url) as client:
            reg = client.registry
            if args.models_command == "ls":
                print(models_table(reg.search_registered_models(args.name)))
            elif args.models_command == "versions":
                print(versions_table(reg.list_model_versions(args.name, args.stage)))
            elif args.models_command == "register":
                v = reg.register_model(args.run_id, args.artifact_path, args.name)
                print(f"registered {v.name} version {v.version} from runs:/{v.run_id}/{v.artifact_path}")
            elif args.models_command == "promote":
                v = reg.transition_stage(args.name, args.version, args.stage, args.archive_existing)
                print(f"{v.name} version {v.version} is now in {v.stage}")
            elif args.models_command == "alias":
                if args.delete:
                    reg.delete_alias(args.name, args.alias)
                    print(f"deleted alias {args.alias} of {args.name}")
                elif args.version is None:
                    print("runstream: give the version to point the alias at, or --delete", file=sys.stderr)
                    return 2
                else:
                    v = reg.set_alias(args.name, args.alias, args.version)
                    print(f"{args.name}@{args.alias} -> version {v.version}")
            else:
                print(lineage_text(reg.lineage(args.uri)))
    except RunstreamError as exc:
        print(f"runstream: {exc}", file=sys.stderr)
        return 1
    return 0


def _artifacts(args: argparse.Namespace) -> int:
    from runstream.client.tracking import Client
    from runstream.errors import RunstreamError
    from runstream.report import artifacts_table, human_bytes

    try:
        with Client(args.url) as client:
            if args.artifacts_command == "ls":
                listing = client.list_artifacts(args.run_id, args.path)
                if not listing:
                    where = f" under {args.path!r}" if args.path else ""
                    print(f"run {args.run_id} has no artifacts{where}")
                    return 0
                print(artifacts_table(listing))
            elif args.artifacts_command == "get":
                got = client.download_artifacts(args.run_id, args.path, args.output)
                print(f"downloaded to {got}")
            elif args.artifacts_command == "put":
                if args.local.is_dir():
                    done = client.log_artifacts(args.run_id, args.local, args.path)
                elif args.local.is_file():
                    done = [client.log_artifact(args.run_id, args.local, args.path)]
                else:
                    print(f"runstream: {args.local} is neither a file nor a directory", file=sys.stderr)
                    return 2
                for a in done:
                    print(f"uploaded {a.path} ({human_bytes(a.size)})")
            else:
                client.artifacts.delete_artifact(args.run_id, args.path)
                print(f"deleted {args.path}")
    except (RunstreamError, OSError) as exc:
        print(f"runstream: {exc}", file=sys.stderr)
        return 1
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    from runstream.client.tracking import Client
    from runstream.errors import RunstreamError
    from runstream.report import dead_letters_table

    try:
        with Client(args.url) as client:
            if args.dead_command == "ls":
                found = client.admin.dead_letters()
                print(dead_letters_table(found) if found else "no dead letters")
                return 0
            if args.all == bool(args.ids):
                print("runstream: name dead letter ids or give --all", file=sys.stderr)
                return 2
            done = client.admin.retry_dead_letters(args.ids, all=args.all)
            print(f"{done.retried} put back for the loaders")
            if done.not_found:
                print(f"runstream: not dead letters: {', '.join(done.not_found)}", file=sys.stderr)
                return 1
    except RunstreamError as exc:
        print(f"runstream: {exc}", file=sys.stderr)
        return 1
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from runstream.client.query import QueryClient
    from runstream.errors import RunstreamError
    from runstream.report import write_history, write_points

    if args.all and args.format != "csv":
        print("runstream: --all writes CSV; leave out --format json", file=sys.stderr)
        return 2
    try:
        with QueryClient(args.url) as q:
            if args.all:
                parts = q.read_metrics(
                    args.run_id, args.key, min_step=args.min_step, max_step=args.max_step, writer=args.writer
                )
                write_points(parts, sys.stdout)
                return 0
            history = q.get_metric_history(
                args.run_id,
                args.key,
                min_step=args.min_step,
                max_step=args.max_step,
                max_points=args.max_points,
                writer=args.writer,
                aggregate=args.aggregate,
            )
    except RunstreamError as exc:
        print(f"runstream: {exc}", file=sys.stderr)
        return 1
    write_history(history, args.format, sys.stdout)
    return 0


def _experiments(args: argparse.Namespace) -> int:
    from runstream.client.query import QueryClient
    from runstream.errors import RunstreamError
    from runstream.report import experiments_table

    try:
        with QueryClient(args.url) as q:
            page = q.list_experiments(include_deleted=args.deleted, name_like=args.name, max_results=args.max_results)
    except RunstreamError as exc:
        print(f"runstream: {exc}", file=sys.stderr)
        return 1
    print(experiments_table(page.experiments))
    if page.next_page_token:
        print(f"(first {len(page.experiments)}; raise --max-results for more)")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from runstream.client.query import QueryClient
    from runstream.client.tracking import Client
    from runstream.errors import RunstreamError
    from runstream.report import comparison_table, plot_comparison, runs_table

    footer = ""
    try:
        with Client(args.url) as client, QueryClient(args.url) as query:
            if args.runs_command == "compare":
                comparison = query.compare_runs(args.run_ids, args.key or None)
                print(comparison_table(comparison))
                if args.plot:
                    plot_comparison(comparison, args.plot)
                    print(f"curves drawn to {args.plot}")
                return 0
            if args.runs_command == "show":
                runs = [client.get_run(r) for r in args.run_ids]
            else:
                experiments = [client.get_experiment(name=name).experiment_id for name in args.experiment]
                page = query.search_runs(experiments, args.filter, args.order_by, args.max_results, count_total=True)
                runs = page.runs
                footer = f"{len(runs):,} of {page.total_count:,} matching runs"
    except RunstreamError as exc:
        print(f"runstream: {exc}", file=sys.stderr)
        return 1
    print(runs_table(runs))
    if footer:
        print(footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
