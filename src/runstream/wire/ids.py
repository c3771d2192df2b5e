"""Ids as they travel: the one spelling of each that the server stores and compares.

A run id is a UUID, accepted as 32 hex digits with or without the four hyphens, in either case,
and always stored and compared as lowercase with hyphens. Any other form (braces, `urn:uuid:`)
is refused, so two spellings of one run can never be taken for two runs, nor one for another.
An experiment id is a decimal number within PostgreSQL's bigint.
"""

from __future__ import annotations

import re
import uuid

from runstream.errors import InvalidArgument

RUN_ID_RULE = "32 hexadecimal digits, with or without hyphens (8-4-4-4-12)"
_RUN_ID = re.compile(r"[0-9a-fA-F]{8}(-?)[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1[0-9a-fA-F]{12}")
MAX_EXPERIMENT_ID = 2**63 - 1
_DECIMAL = re.compile(r"[0-9]{1,19}")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def canonical_run_id(run_id: str, what: str = "run_id") -> str:
    """The stored spelling of a run id; InvalidArgument for anything that is not one."""
    return canonical_uuid(run_id, what, "run id")


def canonical_uuid(text: str, what: str, kind: str) -> str:
    """The stored spelling of a UUID (run and upload ids); InvalidArgument naming `what` otherwise."""
    if len(text) == 36 and text.islower() and _RUN_ID.fullmatch(text):
        return text  # already canonical: the common case costs one regex
    if not _RUN_ID.fullmatch(text):
        raise InvalidArgument(f"{what} {_shown(text)} is not a {kind}: {RUN_ID_RULE}")
    return str(uuid.UUID(text))


def canonical_upload_id(text: str, what: str = "upload_id") -> str:
    return canonical_uuid(text, what, "upload id")


def whole_number(text: str, what: str, limit: int = MAX_EXPERIMENT_ID) -> int:
    """A decimal number in ASCII digits up to `limit` (not `²`, not 2**64); InvalidArgument otherwise."""
    if not _DECIMAL.fullmatch(text) or int(text) > limit:
        raise InvalidArgument(f"{what} {_shown(text)} is not a whole number up to {limit:,}")
    return int(text)


def canonical_experiment_id(text: str, what: str = "experiment_id") -> str:
    """The stored spelling of an experiment id (a decimal bigint); InvalidArgument otherwise."""
    if not _DECIMAL.fullmatch(text) or int(text) > MAX_EXPERIMENT_ID:
        raise InvalidArgument(f"{what} {_shown(text)} is not an experiment id: a whole number up to 2^63-1")
    return str(int(text))
