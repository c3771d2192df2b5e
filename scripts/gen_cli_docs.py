"""docs/reference/cli.md from the `runstream` command's parser (python scripts/gen_cli_docs.py [--check]).

Walks `runstream.cli.parser()` and its subcommands: for each, its usage, what it does (its help),
and a table of its arguments with their defaults, choices and help. Rendered here rather than by
argparse's formatter, whose layout changes between Python versions and terminal widths. Defaults
that come from the environment (RUNSTREAM_*, the home directory) are shown as a fresh shell
sees them: the generator runs without RUNSTREAM_* variables, and the home directory is `~`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from docgen import DOCS, emit, escape, notice

SCRIPT = "gen_cli_docs.py"
PAGE = DOCS / "reference" / "cli.md"


def _fresh_environment() -> None:
    for name in list(os.environ):
        if name.startswith(("RUNSTREAM_", "XDG_")):
            del os.environ[name]
    os.environ["XDG_DATA_HOME"] = "~/.local/share"
    os.environ["XDG_CACHE_HOME"] = "~/.cache"


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, helps.get(name, ""), sub


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS
    ]


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _shape(action: argparse.Action) -> str:
    """How the argument is written: `--name VALUE`, `RUN [RUN ...]`, `--flag`."""
    name = _metavar(action)
    nargs = action.nargs
    if nargs is None:
        value = name
    elif nargs == "?":
        value = f"[{name}]"
    elif nargs == "*":
        value = f"[{name} ...]"
    elif nargs == "+":
        value = f"{name} [{name} ...]"
    elif isinstance(nargs, int):
        value = " ".join([name] * nargs)
    else:
        value = name
    if not action.option_strings:
        return value
    if not _takes_value(action):
        return ", ".join(action.option_strings)
    return ", ".join(f"{o} {value}" for o in action.option_strings)


def _usage(prog: str, parser: argparse.ArgumentParser, width: int = 100) -> str:
    """As argparse puts it: options, then positionals, then the subcommand; wrapped at `width`."""
    parts = []
    for a in _arguments(parser):
        if a.option_strings:
            shape = _shape(a).split(", ")[-1]
            parts.append(shape if a.required else f"[{shape}]")
    parts += [_shape(a) for a in _arguments(parser) if not a.option_strings]
    if any(True for _ in _subcommands(parser)):
        parts.append("COMMAND ...")
    lines, line = [], prog
    for part in parts:
        if len(line) + 1 + len(part) > width and line.strip():
            lines.append(line)
            line = " " * len(prog)
        line += " " + part
    return "\n".join([*lines, line])


def _default(action: argparse.Action) -> str:
    default: Any = action.default
    if not _takes_value(action) or default is None or default == argparse.SUPPRESS or default == []:
        return ""
    if isinstance(default, Path):
        default = str(default)
    return f"`{default}`" if default != "" else '`""`'


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = prog
        text = text % params
    if action.required and action.option_strings:
        text = f"required; {text}" if text else "required"
    return escape(text)


def _command(prog: str, summary: str, parser: argparse.ArgumentParser, depth: int) -> str:
    out = [f"\n{'#' * min(depth, 4)} `{prog}`\n\n"]
    if summary:
        out.append(f"{escape(summary)}\n\n")
    out.append(f"```text\n{_usage(prog, parser)}\n```\n")
    arguments = _arguments(parser)
    if arguments:
        out.append("\n| argument | default | |\n|---|---|---|\n")
        for a in arguments:
            out.append(f"| `{_shape(a)}` | {_default(a)} | {_help(a, prog)} |\n")
    for name, help_text, sub in _subcommands(parser):
        out.append(_command(f"{prog} {name}", help_text, sub, depth + 1))
    return "".join(out)


def render() -> str:
    _fresh_environment()
    from runstream.cli import parser

    root = parser()
    intro = (
        "# Command line\n\n"
        "Every command of `runstream`, from its parser (`runstream.cli.parser()`); `runstream COMMAND --help`\n"
        "says the same in a terminal. Defaults shown are those of a shell without `RUNSTREAM_*` variables:\n"
        "where an argument names a variable, the variable sets its default. Run ids are whole ids or any\n"
        "unique prefix of 6 or more characters; every listing takes `--format table|json|csv`.\n"
    )
    body = _command("runstream", " ".join((root.description or "").split()), root, 2)
    return notice(SCRIPT) + intro + body.replace(str(Path.home()), "~")


if __name__ == "__main__":
    sys.exit(emit(PAGE, render(), SCRIPT))
