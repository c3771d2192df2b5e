"""Listing experiments with run counts, and counting every run a search matches."""

from __future__ import annotations

import subprocess
import sys

import pytest

import runstream
from tests.conftest import Server

CLI = [sys.executable, "-m", "runstream.cli"]
EVEN = "params.even = 'True'"


def test_experiments_are_listed_with_run_counts(server: Server) -> None:
    with runstream.Client(server.target) as client:
        for status in ("FINISHED", "FINISHED", "FAILED", "KILLED", None):
            run = client.create_run("vision-a", start_time_ms=1_700_000_000_000)
            if status:
                client.update_run(run.run_id, status=status)
        client.delete_run(client.create_run("vision-a").run_id)
        client.create_run("vision-b")  # started now: the latest activity
        gone = client.create_experiment("vision-old").experiment_id
        client.create_run("vision-old")
        client.delete_experiment(gone)
        client.create_experiment("nlp")

    with runstream.QueryClient(server.target) as q:
        page = q.list_experiments(name_like="vision-%")
        by_name = {x.experiment.name: x for x in page.experiments}
        assert [x.experiment.name for x in page.experiments] == ["vision-b", "vision-a"]
        a = by_name["vision-a"]
        assert (a.runs, a.running, a.finished, a.failed, a.killed, a.deleted_runs) == (5, 1, 2, 1, 1, 1)
        assert by_name["vision-b"].runs == 1 and by_name["vision-b"].last_run_start_ms > a.last_run_start_ms

        everything = q.list_experiments(include_deleted=True, name_like="vision-%")
        old = {x.experiment.name: x for x in everything.experiments}["vision-old"]
        assert old.experiment.lifecycle_stage == "deleted" and old.deleted_runs == 1 and old.runs == 0

        first = q.list_experiments(max_results=2)  # pages: nlp, vision-b, vision-a, Default?
        rest = q.list_experiments(max_results=2, page_token=first.next_page_token)
        names = [x.experiment.name for x in first.experiments + rest.experiments]
        assert len(names) == len(set(names)) and {"nlp", "vision-a", "vision-b"} <= set(names)
        with pytest.raises(runstream.InvalidArgument, match="page_token belongs to another search"):
            q.list_experiments(max_results=2, page_token=first.next_page_token, include_deleted=True)
        with pytest.raises(runstream.InvalidArgument, match="max_results is 5,000"):
            q.list_experiments(max_results=5_000)

    out = subprocess.run(
        [*CLI, "experiments", "ls", "--url", server.target, "--name", "vision-%"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].split() == ["id", "name", "runs", "running", "finished", "failed", "killed", "deleted", "last", "run"]
    assert out[3].split()[1:8] == ["vision-a", "5", "1", "2", "1", "1", "1"]


def test_a_search_counts_every_matching_run(server: Server) -> None:
    with runstream.Client(server.target) as client:
        experiment = client.create_experiment("counted").experiment_id
        for i in range(7):
            run = client.create_run("counted", f"r{i}")
            client.log_params(run.run_id, {"even": str(i % 2 == 0)})
    with runstream.QueryClient(server.target) as q:
        page = q.search_runs([experiment], "params.even = 'True'", max_results=2, count_total=True)
        assert len(page.runs) == 2 and page.total_count == 4 and page.next_page_token
        assert q.search_runs([experiment], max_results=2).total_count is None  # not asked, not counted
    out = subprocess.run(
        [*CLI, "runs", "ls", "--url", server.target, "--experiment", "counted", "--filter", EVEN, "--max-results", "3"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[-1] == "3 of 4 matching runs"


def test_search_results_convert_to_pandas(server: Server) -> None:
    pytest.importorskip("pandas")
    with runstream.Client(server.target) as client:
        run = client.create_run("frame", "one")
        client.log_params(run.run_id, {"lr": "0.1"})
        client.set_tags(run.run_id, {"team": "x"})
        experiment = client.get_experiment(name="frame").experiment_id
    with runstream.QueryClient(server.target) as q:
        frame = q.search_runs([experiment]).to_pandas()
    assert frame.loc[0, "run_id"] == run.run_id and frame.loc[0, "status"] == "RUNNING"
    assert frame.loc[0, "params.lr"] == "0.1" and frame.loc[0, "tags.team"] == "x"
