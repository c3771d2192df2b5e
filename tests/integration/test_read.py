"""ReadMetrics streams every stored point back, writer by writer in step order; the CLI
writes it as CSV. Checked against the points decoded straight from the chunk table."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import numpy as np
import pytest

import runstream
from runstream.server.query import export
from runstream.wire import batch as wire
from tests.conftest import raw_log

CLI = [sys.executable, "-m", "runstream.cli"]
STEPS = 150_000  # per writer: more than two messages' worth


@pytest.fixture(scope="module")
def logged(make_module_server):  # type: ignore[no-untyped-def]
    server = make_module_server()
    rng = np.random.default_rng(7)
    with runstream.Client(server.target) as client:
        run_id = client.create_run("read").run_id
        seq = {"rank0": 0, "rank1": 0}

        def send(writer: str, steps: np.ndarray) -> None:
            seq[writer] += 1
            data = wire.encode(
                run_id, writer, seq[writer], ["loss"], np.zeros(len(steps)), steps, None, rng.random(len(steps))
            )
            assert raw_log(client, data).code == 0

        for lo in range(0, STEPS, 10_000):
            send("rank0", np.arange(lo, lo + 10_000))
            send("rank1", np.arange(lo, lo + 10_000) * 3)
        # A writer that goes back: rank1 re-logs steps it logged before, so its chunks overlap.
        send("rank1", np.arange(300, 3_300, 3))
        send("rank1", np.array([-5, 1, 2, np.iinfo(np.int64).max]))
        total = 2 * STEPS + 1_000 + 4
        assert server.wait_points(run_id, total) == total
    return server, run_id


def _expected(server, run_id: str, writer: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    steps, values = server.stored(run_id)[("loss", writer)]
    keep = (steps >= lo) & (steps <= hi)
    order = np.argsort(steps[keep], kind="stable")
    return steps[keep][order], values[keep][order]


def test_every_point_comes_back_writer_by_writer_in_step_order(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    with runstream.QueryClient(server.target) as q:
        parts = list(q.read_metrics(run_id, "loss"))
    assert [p.writer for p in parts] == sorted(p.writer for p in parts)  # writers one after another
    assert all(0 < len(p) <= export.MESSAGE_POINTS and p.run_id == run_id and p.key == "loss" for p in parts)
    assert len(parts) >= 6
    for writer in ("rank0", "rank1"):
        mine = [p for p in parts if p.writer == writer]
        steps = np.concatenate([p.step for p in mine])
        values = np.concatenate([p.value for p in mine])
        want_steps, want_values = _expected(server, run_id, writer, -(2**63), 2**63 - 1)
        np.testing.assert_array_equal(steps, want_steps)  # every point once, in step order
        assert np.all(np.diff(steps) >= 0)
        # Equal steps (rank1 re-logged some) may come in either order; their values as a multiset match.
        np.testing.assert_array_equal(np.sort(values), np.sort(want_values))
        assert all(len(p.timestamp_ms) == len(p) and p.timestamp_ms.min() > 1_600_000_000_000 for p in mine)


def test_a_step_range_and_one_writer(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    with runstream.QueryClient(server.target) as q:
        parts = list(q.read_metrics(run_id, "loss", min_step=1_234, max_step=99_999, writer="rank1"))
    assert {p.writer for p in parts} == {"rank1"}
    steps = np.concatenate([p.step for p in parts])
    np.testing.assert_array_equal(steps, _expected(server, run_id, "rank1", 1_234, 99_999)[0])


def test_bad_reads_get_clear_statuses(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    with runstream.QueryClient(server.target) as q:
        with pytest.raises(runstream.NotFound, match="has no metric 'nope'"):
            list(q.read_metrics(run_id, "nope"))
        with pytest.raises(runstream.NotFound, match="writer 'rank7'"):
            list(q.read_metrics(run_id, "loss", writer="rank7"))
        with pytest.raises(runstream.RunNotFound):
            list(q.read_metrics("8a1f7c2e-3b4d-4e5f-9a6b-7c8d9e0f1a2b", "loss"))
        with pytest.raises(runstream.InvalidArgument, match="min_step 9 is above max_step 1"):
            list(q.read_metrics(run_id, "loss", min_step=9, max_step=1))
        assert list(q.read_metrics(run_id, "loss", min_step=10**15, max_step=10**16)) == []


def test_the_cli_writes_every_point_as_csv(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    out = subprocess.run(
        [*CLI, "metrics", run_id, "loss", "--all", "--writer", "rank0", "--max-step", "49999", "--url", server.target],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 50_000 and {r["writer"] for r in rows} == {"rank0"}
    want_steps, want_values = _expected(server, run_id, "rank0", -(2**63), 49_999)
    assert [int(r["step"]) for r in rows] == want_steps.tolist()
    assert [float(r["value"]) for r in rows] == want_values.tolist()  # repr round-trips doubles exactly


def test_points_convert_to_pandas(logged) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("pandas")
    server, run_id = logged
    with runstream.QueryClient(server.target) as q:
        part = next(iter(q.read_metrics(run_id, "loss", writer="rank0")))
    frame = part.to_pandas()
    assert list(frame.columns) == ["step", "value", "timestamp_ms", "writer"] and len(frame) == len(part)
    assert frame["step"].tolist() == part.step.tolist()
