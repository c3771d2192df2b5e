"""What a PostgreSQL failure means, told apart in one place.

The database *away*: down, restarting, read-only for a while, or a connection killed under us
(a failover, a pooler restart, an idle timeout, `pg_terminate_backend`), including the states
asyncpg's client is left in when that happens mid-operation (InternalClientError: "cannot
switch to state ..."). Such a failure passes: the work is retried on a fresh connection and
callers hear UNAVAILABLE.

A *refused value*: PostgreSQL refused what was sent (SQLSTATE class 22, data exceptions, or
23, integrity violations) or asyncpg could not encode it. Only this is the fault of the data.
"""

from __future__ import annotations

import asyncio

import asyncpg

# SQLSTATE classes that come from a value sent: data exceptions (out of range, a NUL in text...)
# and integrity violations (a row for a run that does not exist).
REFUSED_VALUE_CLASSES = ("22", "23")
# SQLSTATE classes of the server going away: 08 connection exception, 57 operator intervention
# (admin shutdown, cannot connect now), 53 insufficient resources, 58 system error.
AWAY_CLASSES = ("08", "57", "53", "58")


def refused_value(exc: BaseException) -> bool:
    """PostgreSQL (or asyncpg's encoder) refused a value that was sent."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate)[:2] in REFUSED_VALUE_CLASSES
    # asyncpg's client-side DataError (an int beyond int64, a str for a bytea) is an InterfaceError
    # and a ValueError; its other InterfaceErrors are about the connection.
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)


def database_away(exc: BaseException) -> bool:
    """PostgreSQL cannot be used right now; the same work succeeds later on a fresh connection."""
    if isinstance(exc, asyncpg.PostgresError):
        return isinstance(exc, asyncpg.PostgresConnectionError) or str(exc.sqlstate)[:2] in AWAY_CLASSES
    if isinstance(exc, asyncpg.InterfaceError):
        return not isinstance(exc, ValueError)
    return isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.exceptions.InternalClientError)
