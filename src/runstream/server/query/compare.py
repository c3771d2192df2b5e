"""Comparing runs side by side: which params differ, and which run is best per metric."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from runstream.wire.proto import query_pb2 as qpb

# Keys whose smaller values are better unless the caller says otherwise.
LOWER_IS_BETTER = re.compile(r"loss|err|mse|mae|rmse|perplexity|latency|time|regret|cost", re.I)


def default_direction(key: str) -> str:
    return "min" if LOWER_IS_BETTER.search(key) else "max"


def param_rows(params: Sequence[dict[str, str]]) -> list[qpb.ParamRow]:
    """One row per param key across the runs; `differs` when the runs do not all agree
    (a run without the param counts as a different value)."""
    keys = sorted({k for p in params for k in p})
    rows = []
    for key in keys:
        values = [p.get(key) for p in params]
        rows.append(
            qpb.ParamRow(
                key=key,
                values=[v or "" for v in values],
                present=[v is not None for v in values],
                differs=len(set(values)) > 1,
            )
        )
    return rows


def metric_row(key: str, last: Sequence[float | None], direction: str) -> qpb.MetricRow:
    """The runs' last values of `key`, and the index of the best run (-1 when none has a number)."""
    candidates = [(v, i) for i, v in enumerate(last) if v is not None and not math.isnan(v)]
    best = -1
    if candidates:
        best = (min(candidates) if direction == "min" else max(candidates, key=lambda c: (c[0], -c[1])))[1]
    return qpb.MetricRow(
        key=key,
        last=[math.nan if v is None else v for v in last],
        present=[v is not None for v in last],
        direction=direction,
        best=best,
    )
