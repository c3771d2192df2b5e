"""`runstream artifacts ls|get|put|rm`: a run's files, straight to and from the store."""

from __future__ import annotations

import argparse
from pathlib import Path

from runstream.cli.common import Subparsers, add_format, add_url, resolve_run
from runstream.client.query import QueryClient
from runstream.client.tracking import Client
from runstream.report import artifacts_table, human_bytes


def add_parsers(sub: Subparsers) -> None:
    arts = sub.add_parser("artifacts", help="a run's artifacts: list, download, upload, delete")
    arts_sub = arts.add_subparsers(dest="artifacts_command", required=True)
    als = arts_sub.add_parser("ls", help="files and directories under a path of the run's artifacts")
    als.add_argument("run_id", help="run id or unique prefix")
    als.add_argument("path", nargs="?", default="", help="a directory of the run's artifacts (default: the top)")
    add_format(als)
    als.set_defaults(handler=artifacts_ls)
    aget = arts_sub.add_parser("get", help="download a file or a whole directory (SHA-256 checked)")
    aget.add_argument("run_id", help="run id or unique prefix")
    aget.add_argument("path", help="artifact path; a directory comes down with everything under it")
    aget.add_argument("-o", "--output", type=Path, default=Path("."), help="local directory (default: .)")
    aget.set_defaults(handler=artifacts_get)
    aput = arts_sub.add_parser("put", help="upload a file or a directory")
    aput.add_argument("run_id", help="run id or unique prefix")
    aput.add_argument("local", type=Path, help="a file, or a directory uploaded with its layout")
    aput.add_argument("--path", default=None, help="artifact directory to put it under (default: the top)")
    aput.set_defaults(handler=artifacts_put)
    arm = arts_sub.add_parser("rm", help="delete one artifact file")
    arm.add_argument("run_id", help="run id or unique prefix")
    arm.add_argument("path", help="the artifact file")
    arm.set_defaults(handler=artifacts_rm)
    for p in (als, aget, aput, arm):
        add_url(p)


def _run_id(args: argparse.Namespace) -> str:
    with QueryClient(args.url) as query:
        return resolve_run(query, args.run_id)


def artifacts_ls(args: argparse.Namespace) -> int:
    run_id = _run_id(args)
    with Client(args.url) as client:
        listing = client.list_artifacts(run_id, args.path)
    if not listing and args.format == "table":
        where = f" under {args.path!r}" if args.path else ""
        print(f"run {run_id} has no artifacts{where}")
        return 0
    print(artifacts_table(listing, args.format))
    return 0


def artifacts_get(args: argparse.Namespace) -> int:
    run_id = _run_id(args)
    with Client(args.url) as client:
        print(f"downloaded to {client.download_artifacts(run_id, args.path, args.output)}")
    return 0


def artifacts_put(args: argparse.Namespace) -> int:
    run_id = _run_id(args)
    with Client(args.url) as client:
        if args.local.is_dir():
            done = client.log_artifacts(run_id, args.local, args.path)
        elif args.local.is_file():
            done = [client.log_artifact(run_id, args.local, args.path)]
        else:
            raise ValueError(f"{args.local} is neither a file nor a directory")
    for a in done:
        print(f"uploaded {a.path} ({human_bytes(a.size)})")
    return 0


def artifacts_rm(args: argparse.Namespace) -> int:
    run_id = _run_id(args)
    with Client(args.url) as client:
        client.artifacts.delete_artifact(run_id, args.path)
    print(f"deleted {args.path}")
    return 0
