"""The check every RPC passes before its handler runs (rpc/grpc.py calls it): the caller's token is
read from `authorization: Bearer <token>`, looked up by its public id, compared by hash in
constant time, and held against the scope the method needs (policy.py) and, for a token
limited to some experiments, against the experiments the request names.

A token's row is cached for CACHE_S, so a revocation takes effect at once in the process that
revoked it and within CACHE_S in the others; a stream is checked when it opens, and each of
its batches only against the token's experiments (a dictionary lookup once a run is known).
"""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import asyncpg

from runstream.errors import PermissionDenied, Unauthenticated
from runstream.server.auth import credentials
from runstream.server.auth.policy import ANY_TOKEN, BATCH_METHODS, LIMITED, SCOPES, WRITE, scope_of
from runstream.server.storage import artifacts, experiments, logged_models, registry, runs, tokens

CACHE_S = 5.0
MAX_CACHED_RUNS = 100_000
AUTHORIZATION = "authorization"
USER_METADATA = "runstream-user"  # who acts while auth is off (the SDK sends the login name)
DEFAULT_EXPERIMENT = "Default"
# Messages whose `name` (or `experiment_name`) field is an experiment's name.
OWNED_BY_A_RUN = (
    ("upload_id", artifacts.run_of_upload, "upload"),
    ("model_id", logged_models.run_of_logged_model, "logged model"),
)
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)")  # what names the model in models:/NAME/... or @ALIAS
EXPERIMENT_NAME_FIELDS = {
    "CreateExperimentRequest": "name",
    "GetExperimentRequest": "name",
    "CreateRunRequest": "experiment_name",
    "UpdateExperimentRequest": "new_name",
}


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]
    experiments: str | None = None  # a glob of experiment names limiting read and write
    token_id: str = ""

    def may_use(self, experiment: str) -> bool:
        return self.experiments is None or fnmatchcase(experiment, self.experiments)


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))  # every caller while auth is off
CURRENT: ContextVar[Principal] = ContextVar("principal", default=ANONYMOUS)


def acting_user(ctx: Any) -> str:
    """Who acts in this call: the token's name with auth on, else what the caller says."""
    principal = CURRENT.get()
    if principal is not ANONYMOUS:
        return principal.name
    for key, value in ctx.invocation_metadata() or ():
        if key == USER_METADATA and value:
            return str(value)[:255]
    return "anonymous"


class Guard:
    def __init__(self, pool: asyncpg.Pool, enabled: bool) -> None:
        self.pool = pool
        self.enabled = enabled
        self._tokens: dict[str, tuple[float, tokens.TokenRow | None]] = {}
        # run id -> (until when, its experiment's name): a run never moves, but its experiment
        # can be renamed, out of a token's glob, in any process
        self._runs: dict[str, tuple[float, str]] = {}

    async def admit(self, ctx: Any, service: str, method: str) -> Principal:
        """The caller, once their token is valid and has the scope `method` needs; raises
        Unauthenticated or PermissionDenied otherwise. The request is checked after it is
        decoded, with `admit_request`."""
        if not self.enabled:
            return ANONYMOUS
        principal = await self.authenticate(ctx)
        scope = scope_of(service, method)
        if scope != ANY_TOKEN and scope not in principal.scopes:
            raise PermissionDenied(
                f"token {principal.name!r} may not call {service}.{method}: that needs the {scope} scope "
                f"(it has {', '.join(sorted(principal.scopes)) or 'none'})"
            )
        return principal

    async def authenticate(self, ctx: Any) -> Principal:
        header = next((str(v) for k, v in ctx.invocation_metadata() or () if k == AUTHORIZATION), None)
        if header is None:
            raise Unauthenticated(
                "this server requires a token: set RUNSTREAM_TOKEN (or token=...) to one made by "
                "`runstream tokens create`"
            )
        scheme, _, text = header.partition(" ")
        parsed = credentials.parse(text.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            raise Unauthenticated("the authorization metadata is not 'Bearer <runstream token>'")
        token_id, presented = parsed
        row = await self._token(token_id)
        if row is None or not credentials.same(row.secret_hash, presented):
            raise Unauthenticated("the token is not valid on this server")
        if row.revoked_ms is not None:
            raise Unauthenticated(f"token {row.name!r} was revoked; ask an admin for a new one")
        if row.expires_ms is not None and row.expires_ms <= time.time() * 1000:
            raise Unauthenticated(f"token {row.name!r} has expired; ask an admin for a new one")
        return Principal(row.name, frozenset(row.scopes), row.experiments, row.token_id)

    async def admit_request(self, principal: Principal, service: str, method: str, req: Any) -> None:
        """For a token limited to some experiments: every run, experiment and upload `req`
        names must be in one of them (and it must name one); a registered model it names must
        have every version from a run of them (a model without versions binds nothing)."""
        scope = scope_of(service, method)
        if principal.experiments is None or scope not in LIMITED or f"{service}/{method}" in BATCH_METHODS:
            return
        named = await self._experiments_named(req)
        models = await self._models_named(req) if service == "RegistryService" else []
        for model, in_experiments in models:  # a model without versions (or none yet) binds nothing
            named += [(f"model {model!r} (a version from experiment {e!r})", e) for e in in_experiments or ()]
        if not named and not models:
            raise PermissionDenied(
                f"token {principal.name!r} is limited to experiments matching {principal.experiments!r}; "
                f"{service}.{method} must name a run, an experiment or a model of those"
            )
        for what, experiment in named:
            if experiment is None or not principal.may_use(experiment):
                raise PermissionDenied(
                    f"token {principal.name!r} is limited to experiments matching {principal.experiments!r}; "
                    f"{what} is not in one"
                )

    async def check_batch_run(self, run_id: str) -> None:
        """A metric batch of `run_id` in the current call: allowed by the caller's token?"""
        principal = CURRENT.get()
        if principal.experiments is None or WRITE not in principal.scopes:
            return
        cached = self._runs.get(run_id)
        if cached is not None and cached[0] > time.monotonic():
            experiment: str | None = cached[1]
        else:
            experiment = (await self._experiments_of_runs([run_id])).get(run_id)
        if experiment is None or not principal.may_use(experiment):
            raise PermissionDenied(
                f"token {principal.name!r} is limited to experiments matching {principal.experiments!r}; "
                f"run {run_id} is not in one"
            )

    def forget(self, token_id: str) -> None:
        """Drop a revoked token from the cache (RevokeToken in this process)."""
        self._tokens.pop(token_id, None)

    async def _token(self, token_id: str) -> tokens.TokenRow | None:
        now = time.monotonic()
        cached = self._tokens.get(token_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.pool.acquire() as conn:
            row = await tokens.token_by_id(conn, token_id)
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[token_id] = (now + CACHE_S, row)
        return row

    async def _experiments_named(self, req: Any) -> list[tuple[str, str | None]]:
        """(what, experiment name or None when unknown) for every run, experiment and upload
        the request names."""
        if req is None:
            return []
        fields = {f.name for f in req.DESCRIPTOR.fields}
        run_ids: list[str] = []
        experiment_ids: list[int] = []
        named: list[tuple[str, str | None]] = []
        for field in ("run_id", "run_ids", "fork_of"):
            # CreateRun's run_id is a new run's client-made id: its experiment field decides.
            if field in fields and (field != "run_id" or req.DESCRIPTOR.name != "CreateRunRequest"):
                value = getattr(req, field)
                run_ids += list(value) if not isinstance(value, str) else [value] if value else []
        for field in ("experiment_id", "experiment_ids"):
            if field in fields:
                value = getattr(req, field)
                values = list(value) if not isinstance(value, str) else [value] if value else []
                experiment_ids += [int(v) for v in values]
        for field, lookup, what in OWNED_BY_A_RUN:  # things that belong to a run: its experiment decides
            value = getattr(req, field) if field in fields else ""
            if not value:
                continue
            async with self.pool.acquire() as conn:
                owner = await lookup(conn, value)
            if owner is None:
                named.append((f"{what} {value}", None))
            else:
                run_ids.append(owner)
        name_field = EXPERIMENT_NAME_FIELDS.get(req.DESCRIPTOR.name)
        if name_field is not None and getattr(req, name_field):
            named.append((f"experiment {getattr(req, name_field)!r}", getattr(req, name_field)))
        elif req.DESCRIPTOR.name == "CreateRunRequest" and not req.experiment_id and not req.fork_of:
            named.append((f"experiment {DEFAULT_EXPERIMENT!r}", DEFAULT_EXPERIMENT))
        if run_ids:
            found = await self._experiments_of_runs(run_ids)
            named += [(f"run {r}", found.get(r)) for r in run_ids]
        if experiment_ids:
            async with self.pool.acquire() as conn:
                names = await experiments.experiment_names(conn, experiment_ids)
            named += [(f"experiment {e}", names.get(e)) for e in experiment_ids]
        return named

    async def _models_named(self, req: Any) -> list[tuple[str, list[str] | None]]:
        """The registered models a registry request names (by name, URI or transition request),
        each with the experiments of its versions' runs (None: no such model yet)."""
        fields = {f.name for f in req.DESCRIPTOR.fields}
        names: list[str] = []
        async with self.pool.acquire() as conn:
            if "request_id" in fields and req.request_id:
                names.append(await registry.model_of_transition_request(conn, req.request_id) or f"#{req.request_id}")
            elif "uri" in fields and (uri := MODEL_URI.match(req.uri)):
                names.append(uri["name"])
            elif "name" in fields and req.name:
                names.append(req.name)
            return [(name, await registry.experiments_of_model(conn, name)) for name in names]

    async def _experiments_of_runs(self, run_ids: list[str]) -> dict[str, str]:
        """The experiment names of the runs that exist; cached for CACHE_S, so a rename takes
        effect at once in the process that renamed it (forget_runs) and within CACHE_S in others."""
        now = time.monotonic()
        missing = [r for r in run_ids if r not in self._runs or self._runs[r][0] <= now]
        if missing:
            async with self.pool.acquire() as conn:
                found = await runs.experiments_of_runs(conn, missing)
            if len(self._runs) + len(found) > MAX_CACHED_RUNS:
                self._runs.clear()
            self._runs.update((run, (now + CACHE_S, name)) for run, name in found.items())
        return {r: self._runs[r][1] for r in run_ids if r in self._runs}

    def forget_runs(self) -> None:
        """An experiment was renamed in this process: its runs' cached names are stale."""
        self._runs.clear()
