"""One declaration per setting, for the server and the SDK alike.

A setting is a field of a settings dataclass (the server's `Settings` in
server/runtime/config.py, the SDK's in client/settings.py) declared with `setting(...)`: its
type, default and help, and the environment variable and command-line flag that set it. From
that one declaration come the server's flags (`add_arguments`), the reading of the environment
(`from_environ`, `from_arguments`: a flag wins over its variable, which wins over the default)
and the settings reference of the docs (`reference`, written by scripts/gen_settings_docs.py).
A value that does not parse is a `SettingError` naming the flag or variable, one line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")
PREFIX = "RUNSTREAM_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")

if TYPE_CHECKING:  # argparse (and gettext) only for the server's flags: the SDK imports this module
    import argparse


class SettingError(ValueError):
    """A setting's value does not parse: the message names where it came from."""


@dataclass(frozen=True)
class Spec:
    help: str
    parse: Callable[[str], Any]
    env: str | None  # None: no environment variable
    flag: str | None  # None: no command-line flag (the SDK's settings have none)
    choices: tuple[str, ...] | None
    shown_default: str | None  # how the reference shows a default computed at run time
    group: str


def setting(
    default: Any = MISSING,
    *,
    help: str,
    parse: Callable[[str], Any] | None = None,
    env: bool | str = True,
    flag: bool | str = True,
    choices: tuple[str, ...] | None = None,
    default_factory: Callable[[], Any] | None = None,
    shown_default: str | None = None,
    group: str = "",
    secret: bool = False,
) -> Any:
    """A settings field. `flag` True: named after the field (--max-tails); `env` True: named
    after the flag, or the field without one (RUNSTREAM_MAX_TAILS); a string: that name; False:
    none. `parse` turns text into the value (by
    default from the default's type). `group` heads the field's section in the reference; a
    `secret` is left out of the settings' repr (and should have no flag: ps shows flags)."""
    sample = default_factory() if default_factory is not None else default
    spec = Spec(
        help=help,
        parse=parse or _parser_for(sample),
        env=env if isinstance(env, str) else ("" if env else None),  # "" is filled in by _specs
        flag=flag if isinstance(flag, str) else ("" if flag else None),
        choices=choices,
        shown_default=shown_default,
        group=group,
    )
    if default_factory is not None:
        return field(default_factory=default_factory, repr=not secret, metadata={"setting": spec})
    return field(default=default, repr=not secret, metadata={"setting": spec})


def specs(cls: type) -> Iterator[tuple[Field[Any], Spec]]:
    """Every setting of a settings dataclass, with its variable and flag named."""
    for f in fields(cls):
        spec = f.metadata.get("setting")
        if spec is None:
            continue
        flag = "--" + f.name.replace("_", "-") if spec.flag == "" else spec.flag
        stem = flag[2:] if flag else f.name  # the variable spells the flag, where there is one
        env = PREFIX + stem.upper().replace("-", "_") if spec.env == "" else spec.env
        yield f, Spec(spec.help, spec.parse, env, flag, spec.choices, spec.shown_default, spec.group)


def from_environ(cls: type[T], environ: Mapping[str, str] | None = None, **given: Any) -> T:
    """The settings from the environment (and `given`, which win), else their defaults."""
    environ = os.environ if environ is None else environ
    values = dict(given)
    for f, spec in specs(cls):
        if f.name not in values and spec.env and spec.env in environ:
            values[f.name] = _parse(spec, environ[spec.env], spec.env)
    return cls(**values)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag for every setting that has one; unset flags stay None (the environment and the
    default decide later, in from_arguments)."""
    for f, spec in specs(cls):
        if spec.flag is None:
            continue
        shown = _shown_default(f, spec)
        where = f" (env {spec.env})" if spec.env else ""
        text = f"{spec.help}{where}" + (f"; default {shown}" if shown else "")
        if f.type in ("bool", bool):
            toggle = _argparse().BooleanOptionalAction
            parser.add_argument(spec.flag, dest=f.name, action=toggle, default=None, help=text)
        else:
            metavar = None if spec.choices else spec.flag[2:].upper().replace("-", "_")
            parser.add_argument(
                spec.flag,
                dest=f.name,
                default=None,
                type=_arg_parser(spec),
                choices=spec.choices,
                metavar=metavar,
                help=text,
            )


def from_arguments(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> T:
    """The settings from parsed flags, then the environment, then the defaults."""
    given = {f.name: getattr(args, f.name) for f, spec in specs(cls) if getattr(args, f.name, None) is not None}
    return from_environ(cls, environ, **given)


def reference(cls: type) -> list[dict[str, str]]:
    """What the docs show of every setting: group, flag, variable, default, help."""
    return [
        {
            "group": spec.group,
            "name": f.name,
            "flag": spec.flag or "",
            "env": spec.env or "",
            "default": _shown_default(f, spec),
            "literal": "" if spec.shown_default is not None else "yes",  # a value, not a description of one
            "help": spec.help,
            "choices": ", ".join(spec.choices or ()),
        }
        for f, spec in specs(cls)
    ]


def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("give 1, true, yes or on, or 0, false, no or off")


def size(text: str) -> int:
    """Bytes from '123', '500MiB', '100GiB', '1TiB' (or kB, MB, GB, TB: powers of 1000)."""
    units = {"": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    units["tb"] = 10**12
    number = text.strip().rstrip("bBiIkKmMgGtT")
    unit = text.strip()[len(number) :].lower()
    if not number.isdigit() or unit not in units:
        raise ValueError("give bytes, or a whole number with KiB, MiB, GiB or TiB")
    return int(number) * units[unit]


def positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError("give a whole number of at least 1")
    return int(text)


def count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError("give a whole number of 0 or more")
    return int(text)


def integer(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""))
    except ValueError:
        raise ValueError("give a whole number") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("give a number") from None


def seconds(text: str) -> float:
    """A duration: a finite number of seconds, 0 or more."""
    value = number(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("give a number of seconds, 0 or more")
    return value


def _parser_for(sample: Any) -> Callable[[str], Any]:
    if isinstance(sample, bool):
        return boolean
    if isinstance(sample, int):
        return integer
    if isinstance(sample, float):
        return number
    return str


def _parse(spec: Spec, text: str, source: str) -> Any:
    try:
        value = spec.parse(text)
    except (TypeError, ValueError) as exc:
        detail = str(exc) or "not a valid value"
        raise SettingError(f"{source}={text!r}: {detail}") from None
    if spec.choices and value not in spec.choices:
        raise SettingError(f"{source}={text!r}: give one of {', '.join(spec.choices)}")
    return value


def _arg_parser(spec: Spec) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except (TypeError, ValueError) as exc:
            raise _argparse().ArgumentTypeError(f"{text!r}: {exc or 'not a valid value'}") from None

    parse.__name__ = getattr(spec.parse, "__name__", "value")  # argparse names the type in its errors
    return parse


def _shown_default(f: Field[Any], spec: Spec) -> str:
    if spec.shown_default is not None:
        return spec.shown_default
    if f.default is MISSING or f.default is None or f.default == "":
        return ""
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if isinstance(f.default, int) and spec.parse is size:
        return _bytes(f.default)
    return f"{f.default:,}" if isinstance(f.default, int) else str(f.default)


def _bytes(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _argparse() -> Any:
    """argparse, imported when flags are made or parsed (the server and the CLI), not with the SDK."""
    import argparse

    return argparse
