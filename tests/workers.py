"""Functions run in child processes by the tests (importable under the spawn start method)."""

from __future__ import annotations

import numpy as np

import runstream

KEYS = [f"k{i}" for i in range(10)]


def expected_values(rank: int, steps: int, key_index: int) -> np.ndarray:
    """What rank `rank` logs for key `key_index` at steps 0..steps-1."""
    return rank * 1000.0 + np.arange(steps) * 0.001 + key_index


def log_points(target: str, run_id: str, rank: int, steps: int) -> None:
    """One rank: `steps` calls of log_metrics with 10 keys, then flush and close."""
    client = runstream.Client(target)
    run = client.attach(run_id, writer_id=f"rank{rank}")
    columns = [expected_values(rank, steps, k).tolist() for k in range(len(KEYS))]
    for step in range(steps):
        run.log_metrics({key: columns[k][step] for k, key in enumerate(KEYS)}, step=step)
    run.end(timeout=120)
    client.close()


def log_with_module_api(steps: int) -> None:
    """A rank joining the run named by RUNSTREAM_RUN_ID through the module-level API."""
    run = runstream.start_run(writer_id="module-rank")
    for step in range(steps):
        runstream.log_metric("m", float(step), step=step)
    assert run.owner is False
    runstream.end_run()
