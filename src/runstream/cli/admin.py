"""`runstream tokens ...`, `runstream dead-letters ...` and `runstream admin ...`: looking after a server."""

from __future__ import annotations

import argparse
import sys

from runstream.cli.common import Subparsers, add_format, add_url
from runstream.client.tracking import Client
from runstream.report import dead_letters_table, storage_table, tokens_table

SCOPES = ["read", "write", "registry", "admin"]
LIMIT_BINDS = (
    "its reads and writes name only runs, experiments and uploads of those, its registry calls only models "
    "whose every version comes from a run of those (or that have no version yet); calls spanning all are refused"
)


def add_parsers(sub: Subparsers) -> None:
    tokens = sub.add_parser("tokens", help="API tokens (admin scope): create, list, revoke; whoami; generate")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", help="make a token and print it once (the server keeps a hash)")
    create.add_argument("--name", required=True, help="who acts with it: approvals and history show this name")
    create.add_argument("--scope", action="append", required=True, choices=SCOPES, help="a scope (repeatable)")
    create.add_argument(
        "--experiments",
        default=None,
        help="glob of experiment names (e.g. 'vision/*') limiting read, write and registry to the runs, experiments "
        "and uploads in them, and to models all of whose versions come from their runs (not with admin)",
    )
    create.add_argument("--expires", default="", help="e.g. 30d, 12h, 90m (default: never)")
    create.set_defaults(handler=tokens_create)
    tls = tokens_sub.add_parser("ls", help="live tokens (--revoked: also revoked ones)")
    tls.add_argument("--revoked", action="store_true", help="also list revoked tokens")
    add_format(tls)
    tls.set_defaults(handler=tokens_ls)
    revoke = tokens_sub.add_parser("revoke", help="revoke the live token of that name")
    revoke.add_argument("name", help="the token's name")
    revoke.set_defaults(handler=tokens_revoke)
    whoami = tokens_sub.add_parser("whoami", help="the name and scopes of the token in RUNSTREAM_TOKEN")
    whoami.set_defaults(handler=tokens_whoami)
    generate = tokens_sub.add_parser("generate", help="print a new random token, offline (for RUNSTREAM_ADMIN_TOKEN)")
    generate.set_defaults(handler=tokens_generate)
    for p in (create, tls, revoke, whoami):
        add_url(p)

    dead = sub.add_parser("dead-letters", help="stream entries the loaders could not store: list, replay")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dls = dead_sub.add_parser("ls", help="every dead letter with its run, writer, seq and reason, oldest first")
    add_format(dls)
    dls.set_defaults(handler=dead_letters_ls)
    dretry = dead_sub.add_parser("retry", help="put dead letters back for the loaders (a batch that fails returns)")
    dretry.add_argument("ids", nargs="*", help="dead letter ids (from ls)")
    dretry.add_argument("--all", action="store_true", help="every dead letter")
    dretry.set_defaults(handler=dead_letters_retry)
    for p in (dls, dretry):
        add_url(p)

    admin = sub.add_parser("admin", help="the server's storage, and purging deleted runs (admin scope)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    storage = admin_sub.add_parser(
        "storage", help="metric points stored, bytes on disk and per point, the compactor's backlog"
    )
    add_format(storage)
    add_url(storage)
    storage.set_defaults(handler=admin_storage)
    gc = admin_sub.add_parser(
        "gc", help="delete for good runs deleted at least --older-than ago, as mlflow gc: rows, metrics, artifacts"
    )
    gc.add_argument("--older-than", default="", help="like 30d, 12h, 90m or 45s (default: every deleted run)")
    gc.add_argument("--run", action="append", default=[], help="only this run id (repeatable; each must be deleted)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be purged; change nothing")
    add_url(gc)
    gc.set_defaults(handler=admin_gc)


def duration_s(text: str, flag: str = "--expires") -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    if not text:
        return 0
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise ValueError(f"{flag} {text!r}: give a whole number and a unit, like 30d, 12h, 90m or 45s")
    if int(text[:-1]) * units[text[-1]] > 10**11:  # ~3,000 years: beyond, milliseconds overflow
        raise ValueError(f"{flag} {text!r} is longer than 3,000 years")
    return int(text[:-1]) * units[text[-1]]


def admin_gc(args: argparse.Namespace) -> int:
    older_than_ms = duration_s(args.older_than, "--older-than") * 1000
    purged = artifacts = 0
    with Client(args.url) as client:
        while True:
            done = client.admin.purge_runs(older_than_ms=older_than_ms, run_ids=args.run, dry_run=args.dry_run)
            for run_id in done.purged:
                print(f"{'would purge' if args.dry_run else 'purged'} run {run_id}")
            for s in done.skipped:
                print(f"kept run {s.run_id}: {s.reason}", file=sys.stderr)
            for key in done.artifacts_left:
                print(f"left in the artifact store (it was unavailable): {key}", file=sys.stderr)
            purged += len(done.purged)
            artifacts += done.artifacts_deleted
            if not done.more or args.dry_run or not done.purged:
                break
    runs = f"{purged:,} run{'' if purged == 1 else 's'}"
    if args.dry_run:
        print(f"would purge {runs}" + (" (and more: run it again)" if done.more else ""))
    else:
        print(f"purged {runs}; {artifacts:,} artifact{'' if artifacts == 1 else 's'} deleted")
    return 0


def tokens_create(args: argparse.Namespace) -> int:
    if args.experiments is not None and not args.experiments.strip():
        # `--experiments "$UNSET"` must not make a token of every experiment by accident
        raise ValueError("--experiments is empty: give a glob, or leave it out for a token of every experiment")
    expires_s = duration_s(args.expires)
    with Client(args.url) as client:
        made = client.admin.create_token(
            args.name, args.scope, experiments=args.experiments or "", expires_in_s=expires_s
        )
    print(made.secret)
    print(f"token {made.token.name!r} ({made.token.token_id}): shown once; keep it secret", file=sys.stderr)
    if made.token.experiments:
        print(f"limited to experiments matching {made.token.experiments!r}: {LIMIT_BINDS}", file=sys.stderr)
    return 0


def tokens_ls(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        print(tokens_table(client.admin.tokens(args.revoked), args.format))
    return 0


def tokens_revoke(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        gone = client.admin.revoke_token(args.name)
    print(f"revoked token {gone.name!r} ({gone.token_id})")
    return 0


def tokens_whoami(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        me = client.admin.whoami()
    limit = f", experiments {me.experiments!r}" if me.experiments else ""
    print(f"{me.name}: {', '.join(me.scopes)}{limit}")
    return 0


def tokens_generate(args: argparse.Namespace) -> int:
    from runstream.server.auth.credentials import new_token  # standard library only

    print(new_token()[1])
    return 0


def dead_letters_ls(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        found = client.admin.dead_letters()
    print(dead_letters_table(found, args.format) if found or args.format != "table" else "no dead letters")
    return 0


def dead_letters_retry(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise ValueError("name dead letter ids or give --all")
    with Client(args.url) as client:
        done = client.admin.retry_dead_letters(args.ids, all=args.all)
    print(f"{done.retried} put back for the loaders")
    if done.not_found:
        raise ValueError(f"not dead letters: {', '.join(done.not_found)}")
    return 0


def admin_storage(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        print(storage_table(client.admin.storage(), args.format))
    return 0
