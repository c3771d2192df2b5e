"""`runstream runs ...`, `experiments ls` and `metrics`: finding runs, looking at them,
changing their state, and reading or following their metrics."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from runstream.cli.common import Subparsers, add_format, add_url, resolve_experiment, resolve_run
from runstream.client.query import QueryClient
from runstream.client.tracking import Client
from runstream.errors import NotFound
from runstream.extras import require
from runstream.report import (
    comparison_table,
    experiments_table,
    plot_comparison,
    run_details,
    runs_table,
    write_history,
    write_parquet,
    write_points,
)
from runstream.wire.points import SeriesPoints
from runstream.wire.status import RUN_STATUS_VALUES

END_STATUSES = ["FINISHED", "FAILED", "KILLED"]
RUNNING = RUN_STATUS_VALUES["RUNNING"]


def add_parsers(sub: Subparsers) -> None:
    runs = sub.add_parser("runs", help="find, show, compare, end, delete, restore and follow runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    ls = runs_sub.add_parser("ls", help="runs matching a filter, newest first")
    ls.add_argument(
        "--experiment", action="append", default=[], help="experiment name or id (repeatable; default: all)"
    )
    ls.add_argument("--filter", default="", help="e.g. \"metrics.acc > 0.9 and params.lr = '0.01'\"")
    ls.add_argument("--order-by", action="append", default=[], help="e.g. 'metrics.acc DESC' (repeatable)")
    ls.add_argument("--columns", default=None, help="e.g. metrics.loss,params.lr,tags.team (default: 3 metrics)")
    ls.add_argument("--max-results", type=int, default=50, help="runs to list (at most 1,000)")
    ls.add_argument("--deleted", action="store_true", help="include deleted runs")
    ls.set_defaults(handler=runs_ls)
    show = runs_sub.add_parser("show", help="everything about runs: attributes, params, tags, metrics")
    show.add_argument("run_ids", nargs="+", help="run ids or unique prefixes (at least 6 characters)")
    show.set_defaults(handler=runs_show)
    cmp = runs_sub.add_parser("compare", help="runs side by side: params that differ, best run per metric")
    cmp.add_argument("run_ids", nargs="+", help="run ids or unique prefixes")
    cmp.add_argument("--key", action="append", default=[], help="metric keys to compare (default: all)")
    cmp.add_argument("--plot", type=Path, help="also draw each key's curves into this PNG (needs matplotlib)")
    cmp.set_defaults(handler=runs_compare)
    end = runs_sub.add_parser("end", help="mark a run as ended")
    end.add_argument("run_id", help="run id or unique prefix")
    end.add_argument("--status", choices=END_STATUSES, default="FINISHED", help="how it ended (default FINISHED)")
    end.set_defaults(handler=runs_end)
    delete = runs_sub.add_parser("delete", help="soft-delete runs (hidden, no new metrics; restore undoes it)")
    delete.add_argument("run_ids", nargs="+", help="run ids or unique prefixes")
    delete.set_defaults(handler=runs_delete)
    restore = runs_sub.add_parser("restore", help="restore deleted runs")
    restore.add_argument("run_ids", nargs="+", help="run ids or unique prefixes")
    restore.set_defaults(handler=runs_restore)
    tail = runs_sub.add_parser("tail", help="print a run's points as they are stored, until it ends or Ctrl-C")
    tail.add_argument("run_id", help="run id or unique prefix")
    tail.add_argument("keys", nargs="*", help="metric keys (default: all)")
    tail.add_argument("--from-step", type=int, default=None, help="also print stored points from this step")
    tail.set_defaults(handler=runs_tail)
    export = runs_sub.add_parser(
        "export", help="every point of a run's metrics to a file (Parquet for pandas, polars or DuckDB; or CSV)"
    )
    export.add_argument("run_id", help="run id or unique prefix")
    export.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="file format")
    export.add_argument("--output", "-o", type=Path, help="file to write (default: RUN_ID.parquet or .csv)")
    export.add_argument("--key", action="append", default=[], help="metric keys to export (default: all)")
    add_url(export)
    export.set_defaults(handler=runs_export)
    logs = runs_sub.add_parser("logs", help="what a run's processes printed (stdout and stderr, per writer)")
    logs.add_argument("run_id", help="run id or unique prefix")
    logs.add_argument("--writer", help="whose output (default: the only writer's)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing what comes, until the run ends")
    logs.set_defaults(handler=runs_logs)
    tags = runs_sub.add_parser("tags", help="a run's tags; --set and --delete change them")
    tags.add_argument("run_id", help="run id or unique prefix")
    tags.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set a tag (repeatable)")
    tags.add_argument("--delete", action="append", default=[], metavar="KEY", help="delete a tag (repeatable)")
    tags.set_defaults(handler=runs_tags)
    for p in (ls, show, cmp, end, delete, restore, tail, logs, tags):
        add_url(p)
    for p in (ls, cmp, tags):
        add_format(p)

    experiments = sub.add_parser("experiments", help="experiments with their run counts")
    experiments_sub = experiments.add_subparsers(dest="experiments_command", required=True)
    els = experiments_sub.add_parser("ls", help="experiments with run counts by status, latest activity first")
    els.add_argument("--name", default="", help="SQL LIKE pattern on the name, e.g. 'vision-%%'")
    els.add_argument("--deleted", action="store_true", help="include deleted experiments")
    els.add_argument("--max-results", type=int, default=100, help="experiments to list")
    add_url(els)
    add_format(els)
    els.set_defaults(handler=experiments_ls)

    metrics = sub.add_parser("metrics", help="a run's metric history as CSV or JSON on stdout")
    add_url(metrics)
    metrics.add_argument("run_id", help="run id or unique prefix")
    metrics.add_argument("key", help="metric key")
    metrics.add_argument("--max-points", type=int, default=1000, help="above this, buckets of first/last/min/max")
    metrics.add_argument("--min-step", type=int, help="first step of the window")
    metrics.add_argument("--max-step", type=int, help="last step of the window")
    metrics.add_argument("--writer", help="only this writer's points (e.g. rank3)")
    metrics.add_argument("--aggregate", choices=["mean", "min", "max"], help="one value per step across writers")
    metrics.add_argument(
        "--branch", type=int, default=0, help="the points rewind N superseded (see `runs show`), not the run's own"
    )
    metrics.add_argument("--format", choices=["csv", "json"], default="csv", help="output format")
    metrics.add_argument("--all", action="store_true", help="stream every point as CSV, writer by writer")
    metrics.set_defaults(handler=metrics_history)


def runs_ls(args: argparse.Namespace) -> int:
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    with Client(args.url) as client, QueryClient(args.url) as query:
        experiments = [resolve_experiment(client, e) for e in args.experiment]
        page = query.search_runs(
            experiments, args.filter, args.order_by, args.max_results, include_deleted=args.deleted, count_total=True
        )
    print(runs_table(page.runs, columns, args.format))
    if args.format == "table":
        print(f"{len(page.runs):,} of {page.total_count:,} matching runs")
    return 0


def runs_show(args: argparse.Namespace) -> int:
    with Client(args.url) as client, QueryClient(args.url) as query:
        runs = [client.get_run(resolve_run(query, r)) for r in args.run_ids]
    print("\n\n".join(run_details(run) for run in runs))
    return 0


def runs_compare(args: argparse.Namespace) -> int:
    with QueryClient(args.url) as query:
        comparison = query.compare_runs([resolve_run(query, r) for r in args.run_ids], args.key or None)
    print(comparison_table(comparison, args.format))
    if args.plot:
        plot_comparison(comparison, args.plot)
        print(f"curves drawn to {args.plot}", file=sys.stderr)
    return 0


def runs_end(args: argparse.Namespace) -> int:
    with Client(args.url) as client, QueryClient(args.url) as query:
        run = client.update_run(resolve_run(query, args.run_id), status=args.status)
    print(f"run {run.run_id} ended: {args.status}")
    return 0


def runs_delete(args: argparse.Namespace) -> int:
    with Client(args.url) as client, QueryClient(args.url) as query:
        for text in args.run_ids:
            print(f"deleted run {client.delete_run(resolve_run(query, text)).run_id}")
    return 0


def runs_restore(args: argparse.Namespace) -> int:
    with Client(args.url) as client, QueryClient(args.url) as query:
        for text in args.run_ids:
            print(f"restored run {client.restore_run(resolve_run(query, text)).run_id}")
    return 0


def runs_tail(args: argparse.Namespace) -> int:
    with QueryClient(args.url) as query:
        run_id = resolve_run(query, args.run_id)
        print("step\tkey\twriter\tvalue", flush=True)
        try:
            for part in query.tail_metrics([run_id], args.keys or None, args.from_step):
                lines = [f"{s}\t{part.key}\t{part.writer}\t{v!r}" for s, v in zip(part.step, part.value, strict=True)]
                print("\n".join(lines), flush=True)
        except KeyboardInterrupt:
            return 130
    print(f"run {run_id} ended", file=sys.stderr)
    return 0


FOLLOW_S = 2.0


def runs_export(args: argparse.Namespace) -> int:
    if args.format == "parquet":
        require("parquet", "runs export --format parquet")
    with Client(args.url) as client, QueryClient(args.url) as query:
        run_id = resolve_run(query, args.run_id)
        logged = sorted({m.key for m in client.get_run(run_id).metrics})
        if unknown := [k for k in args.key if k not in logged]:
            shown = ", ".join(logged[:5]) + (", ..." if len(logged) > 5 else "")
            raise ValueError(f"run {run_id} has no metric {unknown[0]!r} (it has {len(logged)}: {shown or 'none'})")
        keys = args.key or logged
        output = args.output or Path(f"{run_id}.{args.format}")
        partial = output.with_name(f".{output.name}.partial-{os.getpid()}")  # renamed once whole

        def parts() -> Iterator[SeriesPoints]:
            for key in keys:
                count = 0
                for part in query.read_metrics(run_id, key):
                    count += len(part)
                    yield part
                print(f"{key}: {count:,} points", file=sys.stderr)  # progress, one line a key

        try:
            if args.format == "parquet":
                total = write_parquet(parts(), partial)
            else:
                with partial.open("w", newline="") as out:
                    total = write_points(parts(), out, with_key=True)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
    print(f"wrote {total:,} points of {len(keys)} metrics to {output}")
    return 0


def runs_logs(args: argparse.Namespace) -> int:
    """The console log (client/console.py) of one writer; with --follow, what it gains, as the
    writer uploads it (every RUNSTREAM_CONSOLE_UPLOAD_S), until the run is no longer RUNNING."""
    with Client(args.url) as client, QueryClient(args.url) as query:
        run_id = resolve_run(query, args.run_id)
        writers = [p[len("logs/") : -len(".txt")] for p in _files(client, run_id, "logs") if p.endswith(".txt")]
        if args.writer is not None and args.writer not in writers:
            raise NotFound(
                f"run {run_id} has no console log of writer {args.writer!r} (it has: {', '.join(writers) or 'none'})"
            )
        if args.writer is None and len(writers) != 1:
            if not writers:
                raise NotFound(f"run {run_id} has no console logs (none captured, or not uploaded yet)")
            raise ValueError(f"run {run_id} has console logs of writers {', '.join(writers)}: pick one with --writer")
        path = f"logs/{args.writer or writers[0]}.txt"
        shown = 0
        try:
            while True:
                with tempfile.TemporaryDirectory() as tmp:
                    data = client.download_artifacts(run_id, path, tmp).read_bytes()
                if len(data) > shown:
                    sys.stdout.write(data[shown:].decode("utf-8", errors="replace"))
                    sys.stdout.flush()
                    shown = len(data)
                if not args.follow or client.get_run(run_id, all_metrics=False).status != RUNNING:
                    return 0
                time.sleep(FOLLOW_S)
        except KeyboardInterrupt:
            return 130


def _files(client: Client, run_id: str, prefix: str) -> list[str]:
    """Every file under `prefix` of the run's artifacts, at any depth."""
    found: list[str] = []
    for a in client.list_artifacts(run_id, prefix):
        found += _files(client, run_id, a.path) if a.is_dir else [a.path]
    return found


def runs_tags(args: argparse.Namespace) -> int:
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: give KEY=VALUE")
        changes[key] = value
    with Client(args.url) as client, QueryClient(args.url) as query:
        run_id = resolve_run(query, args.run_id)
        if changes:
            client.set_tags(run_id, changes)
        for key in args.delete:
            client.delete_tag(run_id, key)
        tags = client.get_run(run_id, all_metrics=False).tags
    from runstream.report import render

    print(render(["tag", "value"], sorted(tags.items()), args.format))
    return 0


def experiments_ls(args: argparse.Namespace) -> int:
    with QueryClient(args.url) as q:
        page = q.list_experiments(include_deleted=args.deleted, name_like=args.name, max_results=args.max_results)
    print(experiments_table(page.experiments, args.format))
    if page.next_page_token and args.format == "table":
        print(f"(first {len(page.experiments)}; raise --max-results for more)")
    return 0


def metrics_history(args: argparse.Namespace) -> int:
    if args.all and args.format != "csv":
        raise ValueError("--all writes CSV; leave out --format json")
    if args.all and args.branch:
        raise ValueError("--all streams the run's own points; leave out --branch")
    with QueryClient(args.url) as q:
        run_id = resolve_run(q, args.run_id)
        if args.all:
            write_points(
                q.read_metrics(run_id, args.key, min_step=args.min_step, max_step=args.max_step, writer=args.writer),
                sys.stdout,
            )
            return 0
        history = q.get_metric_history(
            run_id,
            args.key,
            min_step=args.min_step,
            max_step=args.max_step,
            max_points=args.max_points,
            writer=args.writer,
            aggregate=args.aggregate,
            branch=args.branch,
        )
    write_history(history, args.format, sys.stdout)
    return 0
