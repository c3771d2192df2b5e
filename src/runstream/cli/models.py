"""`runstream models ...`: the model registry from the terminal."""

from __future__ import annotations

import argparse

from runstream.cli.common import Subparsers, add_format, add_url, resolve_run
from runstream.client.query import QueryClient
from runstream.client.tracking import Client
from runstream.report import lineage_text, models_table, versions_table


def add_parsers(sub: Subparsers) -> None:
    models = sub.add_parser("models", help="the model registry: list, versions, register, promote, alias, lineage")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    mls = models_sub.add_parser("ls", help="registered models with their newest version per stage and aliases")
    mls.add_argument("--name", default="", help="SQL LIKE pattern, e.g. 'wine%%'")
    add_format(mls)
    mls.set_defaults(handler=models_ls)
    mvs = models_sub.add_parser("versions", help="a model's versions, newest first")
    mvs.add_argument("name", help="registered model name")
    mvs.add_argument("--stage", action="append", default=[], help="only these stages (repeatable)")
    add_format(mvs)
    mvs.set_defaults(handler=models_versions)
    mreg = models_sub.add_parser("register", help="register a run's artifact as a new version")
    mreg.add_argument("run_id", help="run id or unique prefix")
    mreg.add_argument("artifact_path", help="the file or directory of the run's artifacts")
    mreg.add_argument("name", help="registered model name (created when missing)")
    mreg.set_defaults(handler=models_register)
    mpro = models_sub.add_parser("promote", help="move a version to a stage (None, Staging, Production, Archived)")
    mpro.add_argument("name", help="registered model name")
    mpro.add_argument("version", type=int, help="version number")
    mpro.add_argument("stage", help="None, Staging, Production or Archived")
    mpro.add_argument("--archive-existing", action="store_true", help="archive the versions now in that stage")
    mpro.set_defaults(handler=models_promote)
    mal = models_sub.add_parser("alias", help="point an alias at a version (or --delete it)")
    mal.add_argument("name", help="registered model name")
    mal.add_argument("alias", help="e.g. champion")
    mal.add_argument("version", type=int, nargs="?", help="version number (not with --delete)")
    mal.add_argument("--delete", action="store_true", help="delete the alias")
    mal.set_defaults(handler=models_alias)
    mdel = models_sub.add_parser("delete-version", help="delete one version of a model (admin scope)")
    mdel.add_argument("name", help="registered model name")
    mdel.add_argument("version", type=int, help="version number")
    mdel.set_defaults(handler=models_delete_version)
    mlin = models_sub.add_parser("lineage", help="the run, params, code, data and artifact behind a version")
    mlin.add_argument("uri", help="models:/NAME/VERSION, models:/NAME/STAGE or models:/NAME@ALIAS")
    mlin.set_defaults(handler=models_lineage)
    for p in (mls, mvs, mreg, mpro, mal, mdel, mlin):
        add_url(p)


def models_ls(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        print(models_table(client.registry.search_registered_models(args.name), args.format))
    return 0


def models_versions(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        print(versions_table(client.registry.list_model_versions(args.name, args.stage), args.format))
    return 0


def models_register(args: argparse.Namespace) -> int:
    with Client(args.url) as client, QueryClient(args.url) as query:
        v = client.registry.register_model(resolve_run(query, args.run_id), args.artifact_path, args.name)
    print(f"registered {v.name} version {v.version} from runs:/{v.run_id}/{v.artifact_path}")
    return 0


def models_promote(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        v = client.registry.transition_stage(args.name, args.version, args.stage, args.archive_existing)
    print(f"{v.name} version {v.version} is now in {v.stage}")
    return 0


def models_alias(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        if args.delete:
            client.registry.delete_alias(args.name, args.alias)
            print(f"deleted alias {args.alias} of {args.name}")
            return 0
        if args.version is None:
            raise ValueError("give the version to point the alias at, or --delete")
        v = client.registry.set_alias(args.name, args.alias, args.version)
    print(f"{args.name}@{args.alias} -> version {v.version}")
    return 0


def models_delete_version(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        client.registry.delete_model_version(args.name, args.version)
    print(f"deleted {args.name} version {args.version}")
    return 0


def models_lineage(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        print(lineage_text(client.registry.lineage(args.uri)))
    return 0
