"""The one way in. Every door (gRPC in grpc.py, the JSON API in web/api.py, MLflow's REST API
in web/mlflow/, the UI's live tail in web/ui.py) finds a method's handler and admits a call
through these functions, so a call is checked the same way whichever door it comes in by:

1. `caller`: the token is valid and has the scope the method needs (auth/policy.py), checked
   before the request is read;
2. `request`: the request's ids are canonicalised (or refused), what it names is held against
   the token's experiments (auth/guard.py), and the handler then sees the caller as
   auth.guard.CURRENT. Each call runs in its own task, so the value never leaks into another.
3. `written`, after the handler: a call that may have written notes the primary's WAL position,
   so later reads served by replicas see it (storage/replicas.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from runstream.server.auth.guard import ANONYMOUS, CURRENT, Guard, Principal
from runstream.server.auth.policy import READ, scope_of
from runstream.server.storage.replicas import Reads
from runstream.wire.ids import canonical_experiment_id, canonical_run_id, canonical_upload_id

# Request fields that carry ids: each is canonicalised (or refused) here, before any handler runs.
ID_FIELDS: dict[str, Callable[[str, str], str]] = {
    "run_id": canonical_run_id,
    "run_ids": canonical_run_id,
    "fork_of": canonical_run_id,
    "experiment_id": canonical_experiment_id,
    "experiment_ids": canonical_experiment_id,
    "upload_id": canonical_upload_id,
}
Canonicalise = Callable[[Any], None]
_CANONICALISERS: dict[Any, Canonicalise] = {}


def handler(servicers: Sequence[Any], method: str) -> Callable[..., Any] | None:
    """The handler of `method` among a service's servicers (the first that has it)."""
    return next((getattr(s, method) for s in servicers if hasattr(s, method)), None)


async def caller(guard: Guard | None, ctx: Any, service: str, method: str) -> Principal:
    """Who calls, once their token is valid and has the scope `service`.`method` needs."""
    return ANONYMOUS if guard is None else await guard.admit(ctx, service, method)


async def request(guard: Guard | None, principal: Principal, service: str, method: str, req: Any) -> None:
    """Admit what the call asks: a decoded message's ids canonicalised, and checked against the
    caller's experiments; serialized batches and request streams are checked batch by batch
    by their handlers (auth/guard.py, check_batch_run)."""
    if hasattr(req, "DESCRIPTOR"):
        canonicaliser(type(req))(req)
    if guard is not None:
        await guard.admit_request(principal, service, method, req)
    CURRENT.set(principal)


async def written(reads: Reads | None, service: str, method: str) -> int:
    """After a call of a method that may write: the primary's WAL position now, which this
    process's later reads wait for (0 when every read goes to the primary anyway)."""
    if reads is None or not reads.tracking or scope_of(service, method) == READ:
        return 0
    return await reads.noted()


def canonicaliser(message_class: Any) -> Canonicalise:
    """Rewrites the id fields of a request of `message_class` into their stored spelling, in
    place; InvalidArgument names the field when one is not an id at all. Made once per class."""
    made = _CANONICALISERS.get(message_class)
    if made is None:
        made = _CANONICALISERS[message_class] = _canonicaliser(message_class)
    return made


def _canonicaliser(message_class: Any) -> Canonicalise:
    fields = []
    for f in message_class.DESCRIPTOR.fields:
        check = ID_FIELDS.get(f.name)
        if check is not None and f.type == f.TYPE_STRING:
            repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
            fields.append((f.name, bool(repeated), check))

    def canonicalise(req: Any) -> None:
        for name, repeated, check in fields:
            if repeated:
                values = getattr(req, name)
                values[:] = [check(v, name) for v in values]
            elif value := getattr(req, name):
                setattr(req, name, check(value, name))

    return canonicalise
