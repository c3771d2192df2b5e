"""What rewinds and forks do to a loader transaction's batches (storage/lineage.py).

`route`: which points a rewind superseded before they arrived. A batch of an earlier writer
session than a rewind recorded (a dead job's spool, synced after the job resumed and rewound)
goes to the rewind's branch for its steps above the rewind's step. The first rewind that
supersedes a point takes it, as it would have had the point been stored before it. Epoch 0
(senders without writer sessions, MLflow's REST API) is never taken for earlier: what they
stored before is moved by the rewind itself.

`shared`: the points its forks read (up to their fork steps, down the forks of forks), to count
in their summaries, as they would have been had the points been stored before the fork.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from runstream.server.storage.lineage import Descendant, Supersedes
from runstream.wire.batch import Batch

T = TypeVar("T")


def route(
    batches: Sequence[tuple[Batch, T]], rewinds: Sequence[Supersedes]
) -> tuple[list[tuple[Batch, T]], dict[int, list[tuple[Batch, T]]]]:
    """The batches (each with its companion) as they stand, and by branch what rewinds took:
    a batch some of whose points were taken is split, each part keeping its keys."""
    by_run: dict[str, list[Supersedes]] = {}
    for r in rewinds:
        by_run.setdefault(r.run_id, []).append(r)
    current: list[tuple[Batch, T]] = []
    taken: dict[int, list[tuple[Batch, T]]] = {}
    for b, extra in batches:
        earlier = [r for r in by_run.get(b.run_id, ()) if 0 < b.epoch <= r.epochs.get(b.writer_id, 0)]
        steps = b.step if len(b.step) else np.full(b.points, b.seq, dtype=np.int64)
        branch = np.zeros(b.points, dtype=np.int32)
        for r in earlier:  # in rewind order: the first that supersedes a point takes it
            branch[(branch == 0) & (steps > r.step)] = r.number
        if not branch.any():
            current.append((b, extra))
            continue
        for number in np.unique(branch).tolist():
            (current if number == 0 else taken.setdefault(number, [])).append((_part(b, branch == number), extra))
    return current, taken


def shared(batches: Sequence[tuple[Batch, T]], forks: Sequence[Descendant]) -> list[tuple[Batch, T]]:
    """The batches' points that forks of their runs read, as batches of those forks."""
    by_run: dict[str, list[Descendant]] = {}
    for f in forks:
        by_run.setdefault(f.run_id, []).append(f)
    out = []
    for b, extra in batches:
        steps = b.step if len(b.step) else np.full(b.points, b.seq, dtype=np.int64)
        for f in by_run.get(b.run_id, ()):
            keep = steps <= f.upto
            if keep.any():
                out.append((replace(_part(b, keep), run_id=f.fork_id), extra))
    return out


def _part(b: Batch, keep: npt.NDArray[np.bool_]) -> Batch:
    return replace(
        b,
        key_index=b.key_index[keep],
        step=b.step[keep] if len(b.step) else b.step,
        timestamp_ms=b.timestamp_ms[keep] if len(b.timestamp_ms) else b.timestamp_ms,
        value=b.value[keep],
    )
