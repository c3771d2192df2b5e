"""System metrics: each writer samples its process and host into `system/...` keys on their
own step (milliseconds since the writer started), without moving the training step."""

from __future__ import annotations

import time
from typing import Any

import runstream
from tests.conftest import Server


def test_a_writer_records_plausible_system_metrics(server: Server, monkeypatch: Any) -> None:
    monkeypatch.setenv("RUNSTREAM_SYSTEM_METRICS", "1")
    monkeypatch.setenv("RUNSTREAM_SYSTEM_METRICS_S", "0.2")
    with runstream.Client(server.target) as client:
        run = client.start_run("system", record_source=False)
        for _ in range(3):
            run.log_metric("loss", 0.5)  # steps 0, 1, 2 by the writer's counter
            time.sleep(0.5)
        run.end()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with runstream.Client(server.target) as client:
            summaries = {m.key: m for m in client.get_run(run.run_id).metrics}
        if "system/process_rss_bytes" in summaries and summaries["loss"].count == 3:
            break
        time.sleep(0.2)
    assert summaries["loss"].last_step == 2  # system samples did not move the training step
    rss = summaries["system/process_rss_bytes"]
    assert rss.count >= 4 and 10e6 < rss.last_value < 64e9
    assert 0 < summaries["system/memory_percent"].last_value <= 100
    assert 0 <= summaries["system/cpu_percent"].max_value <= 100
    assert summaries["system/process_threads"].last_value >= 3  # ours: batcher, stream, heartbeat
    for key in ("system/disk_read_bytes_per_s", "system/network_sent_bytes_per_s"):
        assert summaries[key].min_value >= 0
    assert 100 <= rss.last_step <= 5000  # milliseconds since the writer started
