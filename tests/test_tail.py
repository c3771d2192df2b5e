"""TailMetrics: points committed after a tail started arrive in order, without gaps or repeats,
and the tail ends when the run ends."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import runstream
from runstream.wire import batch as wire
from tests.conftest import Server, raw_log


def test_a_tail_delivers_new_points_in_order_then_ends(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("tail").run_id
        old = wire.encode(run_id, "w", 1, ["loss"], np.zeros(100), np.arange(100), None, np.ones(100))
        assert raw_log(client, old).code == 0
        assert server.wait_points(run_id, 100) == 100

        received: list[runstream.SeriesPoints] = []
        with runstream.QueryClient(server.target) as q:
            tail = q.tail_metrics([run_id], ["loss"])
            done = threading.Event()

            def follow() -> None:
                received.extend(tail)
                done.set()

            threading.Thread(target=follow, daemon=True).start()
            time.sleep(0.5)  # the tail is listening
            for seq in range(2, 12):  # ten batches of 100 steps, committed one by one
                lo = seq * 100 - 100
                data = wire.encode(
                    run_id,
                    "w",
                    seq,
                    ["loss", "acc"],
                    np.repeat([0, 1], 100),
                    np.tile(np.arange(lo, lo + 100), 2),
                    None,
                    np.arange(200, dtype=float),
                )
                assert raw_log(client, data).code == 0
                time.sleep(0.05)
            client.update_run(run_id, status="FINISHED")
            assert done.wait(30), "the tail did not end after the run finished"

        steps = np.concatenate([r.step for r in received])
        np.testing.assert_array_equal(steps, np.arange(100, 1100))  # only what came after it started
        assert {(r.key, r.writer) for r in received} == {("loss", "w")}

        with runstream.QueryClient(server.target) as q:  # stored points from a step on, then the end
            again = list(q.tail_metrics([run_id], from_step=1050))
        by_key = {k: np.concatenate([r.step for r in again if r.key == k]) for k in ("loss", "acc")}
        np.testing.assert_array_equal(by_key["loss"], np.arange(1050, 1100))
        np.testing.assert_array_equal(by_key["acc"], np.arange(1050, 1100))


def test_tailing_an_unknown_run_is_not_found(server: Server) -> None:
    with runstream.QueryClient(server.target) as q, pytest.raises(runstream.RunNotFound):
        list(q.tail_metrics(["0e9c6a3b-5f1d-4c2e-9b7a-8d6f5e4c3b2a"]))
