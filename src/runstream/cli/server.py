"""`runstream server` and `runstream demo`: their flags, and starting them. The server's flags
are made from its settings' declarations (server/runtime/config.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from runstream import extras, settings
from runstream.cli.common import Subparsers, add_url
from runstream.server.runtime.config import Settings


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser(
        "server",
        help="run the tracking server (embedded PostgreSQL and Redis by default)",
        description="Every flag can also be set by the RUNSTREAM_* environment variable it names; a flag wins.",
    )
    settings.add_arguments(p, Settings)
    p.set_defaults(handler=serve)
    demo = sub.add_parser("demo", help="start a server if none runs, train models and compare the runs")
    add_url(demo)
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,  # the server's setting: RUNSTREAM_DATA_DIR, else its default
        help="where an embedded server keeps its data (default: RUNSTREAM_DATA_DIR, else the server's --data-dir)",
    )
    demo.add_argument("--epochs", type=int, default=300, help="training epochs of every run")
    demo.set_defaults(handler=run_demo)


def serve(args: argparse.Namespace) -> int:
    extras.require("server", "server")
    from runstream.server import main as server
    from runstream.server.runtime.logs import configure

    resolved = settings.from_arguments(Settings, args)
    configure(resolved.log_level, resolved.log_format)
    return server.run(resolved)


def run_demo(args: argparse.Namespace) -> int:
    extras.require("demo", "demo")
    from runstream import demo
    from runstream.client.channel import resolve_target

    data_dir = args.data_dir or settings.from_environ(Settings).data_dir
    return demo.main(resolve_target(args.url), data_dir, args.epochs)
