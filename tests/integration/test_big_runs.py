"""A run with thousands of keys breaks nothing for anyone: GetRun answers with its first 1,000
summaries and a flag, ListRunMetrics pages through the rest (the SDK does it for you), search
and `runs ls` share a summary budget among the runs of a page, and a run past
--max-keys-per-run is refused with a clear status."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

import runstream
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb
from tests.conftest import raw_log

KEYS = 2_500


def _many_keys(run_id: str, first: int, count: int, seq: int) -> bytes:
    keys = [f"layer{i:05d}/grad_norm" for i in range(first, first + count)]
    n = len(keys)
    return wire.encode(run_id, "w", seq, keys, np.arange(n), np.zeros(n), np.zeros(n), np.arange(n, dtype=float))


@pytest.fixture(scope="module")
def big(make_module_server):
    server = make_module_server("--max-keys-per-run", "3000")
    with runstream.Client(server.target) as client:
        run_id = client.create_run("big", "many keys").run_id
        small = client.create_run("big", "few keys").run_id
        assert raw_log(client, _many_keys(run_id, 0, KEYS, 1)).code == 0
        assert raw_log(client, _many_keys(small, 0, 3, 1)).code == 0
    assert server.wait_points(run_id, KEYS) == KEYS
    return server, run_id, small


def test_get_run_answers_with_the_first_summaries_and_the_sdk_pages_the_rest(big) -> None:
    server, run_id, _ = big
    with runstream.Client(server.target) as client:
        raw = client._stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
        assert len(raw.metrics) == 1_000 and raw.metrics_truncated and raw.metric_count == KEYS
        full = client.get_run(run_id)
        assert [m.key for m in full.metrics] == [f"layer{i:05d}/grad_norm" for i in range(KEYS)]
        assert [m.last_value for m in full.metrics] == [float(i) for i in range(KEYS)]
        assert not full.metrics_truncated and full.metric_count == KEYS
        assert len(client.run_metrics(run_id)) == KEYS
        client.attach(run_id, writer_id="late")  # attach does not fetch every summary


def test_search_and_runs_ls_share_a_budget_and_never_fail(big) -> None:
    server, run_id, small = big
    query = runstream.QueryClient(server.target)
    page = query.search_runs([], max_results=100)
    by_id = {r.run_id: r for r in page.runs}
    assert by_id[run_id].metrics_truncated and by_id[run_id].metric_count == KEYS
    assert 10 <= len(by_id[run_id].metrics) < KEYS
    assert len(by_id[small].metrics) == 3 and not by_id[small].metrics_truncated
    listed = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "runs", "ls", "--url", server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "many keys" in listed.stdout and "few keys" in listed.stdout
    compared = query.compare_runs([run_id, small], ["layer02400/grad_norm"])
    assert compared.metrics["layer02400/grad_norm"] == [2400.0, None]  # a key past the first 1,000


def test_a_run_past_its_key_limit_is_refused(big) -> None:
    server, run_id, _ = big
    with runstream.Client(server.target) as client:
        assert raw_log(client, _many_keys(run_id, 0, 100, 2)).code == 0  # known keys: fine
        assert raw_log(client, _many_keys(run_id, KEYS, 500, 3)).code == 0  # up to the limit
        with pytest.raises(grpc.RpcError) as err:
            raw_log(client, _many_keys(run_id, KEYS + 500, 1, 4))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "3,001 metric keys; the limit is 3,000 (--max-keys-per-run)" in err.value.details()
    assert server.wait_points(run_id, KEYS + 600) == KEYS + 600
