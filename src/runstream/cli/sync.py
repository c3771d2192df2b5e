"""`runstream sync [DIR]`: send what a spool holds (offline runs, batches of processes that died
or ended with the server away) to the server, each batch exactly once. What it cannot send
(batches the server refuses, unreadable bytes of a damaged spool) is kept in the spool and named
one line each on stderr, with exit status 1, at every sync until a person removes it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runstream.cli.common import Subparsers, add_format, add_url
from runstream.client import spool
from runstream.client.sync import RunSync, sync
from runstream.client.tracking import Client
from runstream.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from runstream.report import Cell, RunId, render

PROGRESS_S = 1.0


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("sync", help="send a spool's offline runs and unsent batches to the server, each once")
    p.add_argument("dir", nargs="?", help="the spool (default: RUNSTREAM_SPOOL_DIR or ~/.cache/runstream/spool)")
    p.add_argument("--run", default=None, help="only this run (its full id)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to keep trying while the server is unreachable")
    add_url(p)
    add_format(p)
    p.set_defaults(handler=run_sync)


def run_sync(args: argparse.Namespace) -> int:
    root = Path(args.dir).expanduser() if args.dir else spool.default_dir()
    if not root.is_dir():
        print(f"runstream: nothing to sync: {root} does not exist", file=sys.stderr)
        return 0
    started = time.monotonic()
    shown = [started]

    def progress(points: int) -> None:
        now = time.monotonic()
        if now - shown[0] >= PROGRESS_S:
            shown[0] = now
            rate = points / max(now - started, 1e-9)
            print(f"sync: {points:,} points sent ({rate:,.0f} points/s)", file=sys.stderr, flush=True)

    deadline = started + args.wait
    with Client(args.url) as client:
        while True:
            try:
                results = sync(client, root, args.run, progress)
                break
            except (Unavailable, DeadlineExceeded, ResourceExhausted) as exc:
                if time.monotonic() >= deadline:
                    raise
                print(f"sync: {exc}; trying again", file=sys.stderr)
                time.sleep(min(5.0, max(0.5, deadline - time.monotonic())))
    seconds = time.monotonic() - started
    print(sync_table(results, args.format))
    points = sum(r.points for r in results)
    if args.format == "table":
        print(f"{points:,} points in {seconds:.1f} s ({points / max(seconds, 1e-9):,.0f} points/s)")
    problems = [line for r in results for line in r.problems]
    for line in problems:
        print(f"runstream: {line}", file=sys.stderr)
    return 1 if problems else 0


def sync_table(results: list[RunSync], format: str) -> str:
    rows: list[list[Cell]] = []
    for r in results:
        run: list[Cell] = [RunId(r.run_id), "yes" if r.created else "", r.entries]
        if not r.writers:
            rows.append([*run, "", "", 0, 0, 0, 0, 0, r.state])
        for w in r.writers:
            writer = f"{w.writer_id[:24]} (refused before)" if w.retried else w.writer_id[:32]
            counts: list[Cell] = [w.batches, w.points, w.refused, w.unreadable, w.dropped]
            rows.append([*run, writer, w.epoch, *counts, "live" if w.live else r.state])
    header = [
        "run", "created", "entries", "writer", "epoch", "batches", "points", "refused", "unreadable", "dropped", "state"
    ]  # fmt: skip
    return render(header, rows, format)
