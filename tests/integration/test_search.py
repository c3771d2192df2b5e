"""SearchRuns over real gRPC: every operator and key kind, quoting, precedence, ordering,
stable pages, and malformed or hostile filters answered with INVALID_ARGUMENT."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import runstream
from runstream.wire import batch as wire
from tests.conftest import raw_log

# name: (lr, team, acc or None, status)
RUNS = {
    "a": ("0.01", "vision", 0.95, "FINISHED"),
    "b": ("0.1", "vision", 0.80, "FAILED"),
    "c": ("0.01", "nlp", 0.91, "FINISHED"),
    "d": ("0.001", "nlp's", None, "RUNNING"),
    "e": ("1.0", "speech", 0.50, "KILLED"),
}


@pytest.fixture(scope="module")
def searchable(make_module_server):  # type: ignore[no-untyped-def]
    server = make_module_server()
    with runstream.Client(server.target) as client:
        ids = {}
        for name, (lr, team, acc, status) in RUNS.items():
            run = client.create_run("search", name, tags={"team": team, "odd key.x": name})
            client.log_params(run.run_id, {"lr": lr, "opt name": "adam" if name < "c" else "sgd"})
            if acc is not None:
                data = wire.encode(run.run_id, "w", 1, ["acc", "val loss"], [0, 1], [5, 5], None, [acc, 1 - acc])
                assert raw_log(client, data).code == 0
                server.wait_points(run.run_id, 2)
            if status != "RUNNING":
                client.update_run(run.run_id, status=status)
            ids[name] = run.run_id
        other = client.create_run("elsewhere", "z").run_id
    experiment = client_experiment(server, "search")
    return server, ids, experiment, other


def client_experiment(server, name: str) -> str:  # type: ignore[no-untyped-def]
    with runstream.Client(server.target) as client:
        return client.get_experiment(name=name).experiment_id


def names(server, experiment: str, filter: str = "", order_by: list[str] | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    with runstream.QueryClient(server.target) as q:
        page = q.search_runs([experiment], filter, order_by or ["attributes.name"], max_results=1000)
    return [r.name for r in page.runs]


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ("", ["a", "b", "c", "d", "e"]),
        ("metrics.acc > 0.9", ["a", "c"]),
        ("metrics.acc >= 0.91", ["a", "c"]),
        ("metrics.acc < 0.8", ["e"]),
        ("metrics.acc <= 0.8", ["b", "e"]),
        ("metrics.acc = 0.5", ["e"]),
        ("metrics.acc != 0.5", ["a", "b", "c"]),
        ("metrics.`val loss` < 0.1", ["a", "c"]),
        ("params.lr = '0.01'", ["a", "c"]),
        ('params.lr = "0.01"', ["a", "c"]),
        ("params.lr != '0.01'", ["b", "d", "e"]),
        ("params.lr IN ('0.1', '1.0')", ["b", "e"]),
        ("params.lr not in ('0.1', '1.0')", ["a", "c", "d"]),
        ("params.`opt name` = 'adam'", ["a", "b"]),
        ("tags.team LIKE 'vis%'", ["a", "b"]),
        ("tags.team ILIKE 'NLP%'", ["c", "d"]),
        ("tags.team = 'nlp''s'", ["d"]),
        ("tags.`odd key.x` = 'e'", ["e"]),
        ("attributes.status = 'FINISHED'", ["a", "c"]),
        ("attributes.status != 'FINISHED'", ["b", "d", "e"]),
        ("attributes.status IN ('FAILED', 'KILLED')", ["b", "e"]),
        ("attributes.name LIKE '_'", ["a", "b", "c", "d", "e"]),
        ("attributes.run_name = 'c'", ["c"]),
        ("attributes.start_time > 0", ["a", "b", "c", "d", "e"]),
        (
            "metrics.acc > 0.9 and params.lr = '0.01' and tags.team != 'x' and attributes.status = 'FINISHED'",
            ["a", "c"],
        ),
        # and binds tighter than or
        ("tags.team = 'speech' or tags.team = 'vision' and metrics.acc > 0.9", ["a", "e"]),
        ("(tags.team = 'speech' or tags.team = 'vision') and metrics.acc > 0.9", ["a"]),
        ("metrics.nope > 0", []),
    ],
)
def test_filters(searchable, filter: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    server, _, experiment, _ = searchable
    assert names(server, experiment, filter) == expected


def test_order_by_metrics_params_and_attributes_with_nulls_last(searchable) -> None:  # type: ignore[no-untyped-def]
    server, _, experiment, _ = searchable
    assert names(server, experiment, order_by=["metrics.acc DESC"]) == ["a", "c", "b", "e", "d"]
    assert names(server, experiment, order_by=["metrics.acc"]) == ["e", "b", "c", "a", "d"]
    assert names(server, experiment, order_by=["params.lr DESC", "attributes.name DESC"]) == ["e", "b", "c", "a", "d"]
    assert names(server, experiment, order_by=["attributes.start_time"]) == ["a", "b", "c", "d", "e"]


def test_pages_are_stable_and_tokens_bound_to_their_query(searchable) -> None:  # type: ignore[no-untyped-def]
    server, ids, experiment, other = searchable
    with runstream.QueryClient(server.target) as q:
        for size in (1, 2, 3, 4):  # pages ending before, at and across the runs without acc (d)
            orders = ((["metrics.acc DESC"], "acbed"), (["params.lr DESC", "attributes.name DESC"], "ebcad"))
            for order, expected in orders:
                seen, token = [], ""
                while True:
                    page = q.search_runs([experiment], order_by=order, max_results=size, page_token=token)
                    seen += [r.name for r in page.runs]
                    token = page.next_page_token
                    if not token:
                        break
                assert "".join(seen) == expected, (size, order)
        first = q.search_runs([experiment], max_results=2)
        with pytest.raises(runstream.InvalidArgument, match="another search"):
            q.search_runs([experiment], "metrics.acc > 0", max_results=2, page_token=first.next_page_token)
        with pytest.raises(runstream.InvalidArgument, match="not one this server gave out"):
            q.search_runs([experiment], page_token="garbage!")
        everywhere = {r.run_id for r in q.search_runs(max_results=1000).runs}
        assert other in everywhere and set(ids.values()) <= everywhere
        found = q.search_runs([experiment], "params.lr = '0.01'", ["attributes.name"]).runs[0]
        assert found.params["lr"] == "0.01" and found.tags["team"] == "vision"
        assert {m.key: m.last_value for m in found.metrics} == {"acc": 0.95, "val loss": pytest.approx(0.05)}


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        ("metrics.acc > 0.9; DROP TABLE runs", "position 17"),
        ("params.lr = '0.01' OR 1=1", "expected a key"),
        ("params.lr = 0.01", "expected a quoted string"),
        ("metrics.acc > '0.9'", "expected a number"),
        ("metrics.acc LIKE 'x'", "numeric comparator"),
        ("params.lr > '0.1'", "string comparator"),
        ("params.lr = 'unbalanced", "unexpected"),
        ("(metrics.acc > 1", "expected ')'"),
        ("metrics.acc > 1)", "'and', 'or' or the end"),
        ("foo.bar = 'x'", "unknown key prefix 'foo'"),
        ("attributes.color = 'red'", "unknown attribute 'color'"),
        ("attributes.status = 'DONE'", "not one of"),
        ("acc > 1", "expected a key"),
        ("metrics.acc >", "expected a number at position 13, found the end"),
        ("params.lr IN '0.1'", "'(' to start a list"),
        ("tags.team = 'a' AND", "expected a key"),
        ("params.`lr = '1'", "unexpected"),
    ],
)
def test_malformed_and_hostile_filters_are_refused(searchable, filter: str, message: str) -> None:  # type: ignore[no-untyped-def]
    server, _, experiment, _ = searchable
    with runstream.QueryClient(server.target) as q, pytest.raises(runstream.InvalidArgument, match=re.escape(message)):
        q.search_runs([experiment], filter)
    assert server.sql("SELECT count(*) AS n FROM runs")[0]["n"] == len(RUNS) + 1  # nothing was executed


@pytest.mark.parametrize(
    ("order_by", "message"),
    [
        (["metrics.acc SIDEWAYS"], "ASC or DESC"),
        (["attributes.color"], "unknown attribute"),
        (["acc"], "expected a key"),
    ],
)
def test_bad_order_by(searchable, order_by: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    server, _, experiment, _ = searchable
    with runstream.QueryClient(server.target) as q, pytest.raises(runstream.InvalidArgument, match=message):
        q.search_runs([experiment], order_by=order_by)


def test_max_results_and_experiment_ids_are_checked(searchable) -> None:  # type: ignore[no-untyped-def]
    server, _, experiment, _ = searchable
    with runstream.QueryClient(server.target) as q:
        with pytest.raises(runstream.InvalidArgument, match="max_results is 20,000"):
            q.search_runs([experiment], max_results=20_000)
        with pytest.raises(runstream.InvalidArgument, match="not an experiment id"):
            q.search_runs(["abc"])


def test_the_cli_lists_runs_matching_a_filter(searchable) -> None:  # type: ignore[no-untyped-def]
    server, _, _, _ = searchable
    cli = [sys.executable, "-m", "runstream.cli", "runs", "ls", "--url", server.target, "--experiment", "search"]
    out = subprocess.run(
        [*cli, "--filter", "metrics.acc > 0.9", "--order-by", "metrics.acc DESC"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].split()[:3] == ["id", "name", "status"] and [line.split()[1] for line in out[2:-1]] == ["a", "c"]
    assert out[-1] == "2 of 2 matching runs"  # counted with the filter alone, ordered by a metric
    bad = subprocess.run([*cli, "--filter", "metrics.acc >"], capture_output=True, text=True)
    assert bad.returncode == 1 and "expected a number" in bad.stderr
