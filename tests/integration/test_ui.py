"""The web UI in a real browser (Debian's chromium through selenium and chromium-driver): data
seeded through the SDK, then read back from the pages: experiment counts, a filtered runs
table, one chart per key with a line per writer that holds the seeded spike, a zoom that asks
for a narrower window and gets raw points, a chart that grows while a writer logs, an artifact
downloaded byte-exact, compare marking exactly the params that differ, hostile names shown as
text, the model registry's pages, and no console error anywhere. Each page is saved as a
screenshot under test-artifacts/ui/."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.wire.proto import artifacts_pb2
from tests.conftest import ROOT, Server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

SHOTS = ROOT / "test-artifacts" / "ui"
XSS = "<script>alert(1)</script>"
SPIKE_STEP, SPIKE = 12_345, 1000.0


def _chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromium-driver are not installed")
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def site(make_module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A server with two experiments, a spiky two-writer run, a hostile run and a model."""
    server: Server = make_module_server()
    files = tmp_path_factory.mktemp("ui-artifacts")
    (files / "notes.txt").write_text("hello from the ui test\n")
    (files / "config.json").write_text('{"lr": 0.1, "layers": [1, 2]}')
    seeded: dict[str, Any] = {"server": server}
    with runstream.Client(server.target) as client:
        vision = []
        for i, (lr, status) in enumerate([("0.1", "FINISHED"), ("0.01", "FINISHED"), ("0.1", "FAILED")]):
            run = client.start_run("ui-vision", f"vision-{i}", params={"lr": lr, "batch": 32}, record_source=False)
            for step in range(100):
                run.log_metrics({"loss": 1 / (step + 1) + i, "acc": step / 100}, step=step)
            run.end(status)
            vision.append(run.run_id)
            time.sleep(0.01)  # distinct start times: the table's default order is newest first
        nlp = client.start_run("ui-nlp", "nlp-0", record_source=False)
        nlp.end()
        spiky = client.start_run("ui-vision", "spiky", params={"lr": "0.5"}, record_source=False)
        for rank in range(2):
            writer = client.attach(spiky.run_id, writer_id=f"rank{rank}")
            for step in range(20_000):
                value = SPIKE if (rank == 1 and step == SPIKE_STEP) else 1 / (step + 1) + rank
                writer.log_metrics({"loss": value, "lr_sched": 0.1 * rank}, step=step)
            writer.flush(visible=True)  # committed before the pages read it
            writer.end()
        spiky.log_input("wine", source="s3://data/wine.csv", digest="abc123", context="training")
        spiky.log_artifact(files / "notes.txt")
        spiky.log_artifact(files / "config.json", "configs")
        spiky.flush(visible=True)
        spiky.end()
        hostile = client.start_run("ui-nlp", XSS, params={"html": "<b>bold</b>"}, record_source=False)
        hostile.end()
        client.register_model(spiky.run_id, "configs", "ui-model")
        seeded.update(vision=vision, spiky=spiky.run_id, hostile=hostile.run_id, nlp=nlp.run_id, files=files)
        seeded["experiments"] = {e.name: e.experiment_id for e in client.list_experiments()}
    return seeded


def _open(browser: Any, server: Server, page: str, shot: str, charts: bool = False) -> None:
    """Load `#page`, wait until it is drawn (and its charts), screenshot it, and require a
    clean console."""
    # A new hash on the same page is no reload: forget the last page's "drawn" marks first.
    browser.execute_script(
        "if (document.body) { delete document.body.dataset.ready; delete document.body.dataset.charts }"
    )
    browser.get(f"http://127.0.0.1:{server.http_port}/#{page}")
    _wait(browser, "return document.body.dataset.ready")
    if charts:
        _wait(browser, "return document.body.dataset.charts")
    browser.save_screenshot(str(SHOTS / f"{shot}.png"))
    _no_console_errors(browser)


def _wait(browser: Any, script: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _no_console_errors(browser: Any) -> None:
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_experiments_page_lists_the_experiments_with_their_counts(browser: Any, site: dict[str, Any]) -> None:
    _open(browser, site["server"], "/", "experiments")
    rows = {
        r.find_element(By.CSS_SELECTOR, "td a").text: (
            r.find_element(By.CSS_SELECTOR, ".runs").text,
            r.find_element(By.CSS_SELECTOR, ".finished").text,
            r.find_element(By.CSS_SELECTOR, ".failed").text,
        )
        for r in browser.find_elements(By.CSS_SELECTOR, "#experiments-table tbody tr")
    }
    assert rows["ui-vision"] == ("4", "3", "1") and rows["ui-nlp"] == ("2", "2", "0")
    _open(browser, site["server"], "/?q=nlp", "experiments-filtered")
    assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#experiments-table tbody td a")] == ["ui-nlp"]


def test_a_filter_in_the_runs_table_returns_exactly_the_expected_runs_in_order(
    browser: Any, site: dict[str, Any]
) -> None:
    vision = site["experiments"]["ui-vision"]
    _open(browser, site["server"], f"/runs?e={vision}&q=params.lr%20%3D%20'0.1'", "runs-filtered")
    shown = [r.get_attribute("data-run-id") for r in browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")]
    assert shown == [site["vision"][2], site["vision"][0]]  # newest first
    _open(browser, site["server"], f"/runs?e={vision}&o=metrics.%60loss%60%20ASC&c=metrics.loss,params.lr", "runs")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    losses = [float(r.find_elements(By.CSS_SELECTOR, "td.num")[-1].text) for r in rows]
    assert len(losses) == 4 and losses == sorted(losses)  # by the last loss, lowest first
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#runs-table th")]
    assert "metrics.loss ▲" in headers and "params.lr" in headers
    browser.get(f"http://127.0.0.1:{site['server'].http_port}/#/runs?e={vision}&q=metrics.loss%20%3C%3C%201")
    error = _wait(browser, "const e = document.getElementById('filter-error'); return e && e.textContent")
    assert error.startswith("INVALID_ARGUMENT") and "position 14" in error
    caret = browser.find_element(By.ID, "filter-caret").text.split("\n")
    assert caret == ["metrics.loss << 1", " " * 14 + "^"]  # under the second "<"
    browser.get_log("browser")  # the 400 answer is logged by the browser: expected here


def test_the_run_page_draws_every_writer_with_the_spike_and_zooms_to_raw_points(
    browser: Any, site: dict[str, Any]
) -> None:
    _open(browser, site["server"], f"/run/{site['spiky']}", "run", charts=True)
    overview = browser.find_element(By.CSS_SELECTOR, "dl.kv").text
    assert "wine @abc123 (s3://data/wine.csv) for training" in overview and "ui-vision" in overview
    keys = [c.get_attribute("data-key") for c in browser.find_elements(By.CSS_SELECTOR, "#charts .chart")]
    assert keys == ["loss", "lr_sched"]
    loss = browser.execute_script("return window.runstream.charts.loss")
    assert loss["writers"] == 2 and [line["label"] for line in loss["lines"]] == ["rank0", "rank1"]
    assert loss["downsampled"] and len(loss["data"][0]) <= 2 * loss["width"] + 2
    plotted = [v for series in loss["data"][1:] for v in series if v is not None]
    assert SPIKE in plotted  # the spike survives downsampling (the bucket's max)
    high = {loss["data"][0][i] for series in loss["data"][1:] for i, v in enumerate(series) if v and v > 10}
    assert len(high) == 1 and abs(high.pop() - SPIKE_STEP) < 40, high  # at one x, the spike's bucket

    over = browser.find_element(By.CSS_SELECTOR, "#charts .chart[data-key=loss] .u-over")
    width = over.size["width"]
    before = len(browser.execute_script("return window.runstream.queries"))
    ActionChains(browser).move_to_element_with_offset(
        over, -width // 2 + int(width * 0.60), 0
    ).click_and_hold().move_by_offset(max(4, width // 100), 0).release().perform()
    zoomed = _wait(browser, "const c = window.runstream.charts.loss; return c && c.range && !c.downsampled && c")
    lo, hi = zoomed["range"]
    assert 0 < hi - lo < 1_000, zoomed["range"]
    asked = browser.execute_script("return window.runstream.queries")[before:]
    assert any(q["body"].get("min_step") == str(lo) for q in asked)
    steps = [x for x in zoomed["data"][0] if x is not None]
    assert steps == list(range(max(lo, 0), min(hi, 19_999) + 1))  # raw: every step of the window
    link = browser.current_url
    assert f"z=loss~{lo}~{hi}" in urllib.parse.unquote(link)
    browser.save_screenshot(str(SHOTS / "run-zoomed.png"))
    _no_console_errors(browser)
    browser.get("about:blank")
    browser.get(link)  # the link shows a colleague the same zoom
    again = _wait(browser, "const c = window.runstream.charts.loss; return c && c.range && c")
    assert again["range"] == [lo, hi] and again["data"][0] == zoomed["data"][0]


def test_the_x_axis_by_wall_time_plots_when_points_were_logged_and_zooms_by_step(
    browser: Any, site: dict[str, Any]
) -> None:
    _open(browser, site["server"], f"/run/{site['spiky']}?x=time", "run-wall-time", charts=True)
    loss = browser.execute_script("return window.runstream.charts.loss")
    assert loss["downsampled"] and [line["label"] for line in loss["lines"]] == ["rank0", "rank1"]
    seconds = [x for x in loss["data"][0] if x is not None]
    assert seconds == sorted(seconds) and abs(seconds[-1] - time.time()) < 600  # epoch seconds, not steps
    plotted = [v for series in loss["data"][1:] for v in series if v is not None]
    assert SPIKE in plotted  # buckets logged in the same millisecond share an x; the spike stays
    assert browser.find_element(By.ID, "x-axis").get_attribute("value") == "time"
    over = browser.find_element(By.CSS_SELECTOR, "#charts .chart[data-key=loss] .u-over")
    # Around the middle bucket of rank0's line (the writers logged one after the other: the
    # time axis has gaps where no one logged).
    at = browser.execute_script(
        "const c = window.runstream.charts.loss, x = c.lines[0].x;"
        "return window.runstream.plots.loss.valToPos(x[Math.floor(x.length / 2)], 'x')"
    )
    ActionChains(browser).move_to_element_with_offset(
        over, int(at - over.size["width"] / 2) - 4, 0
    ).click_and_hold().move_by_offset(8, 0).release().perform()
    zoomed = _wait(browser, "const c = window.runstream.charts.loss; return c && c.range && c")
    lo, hi = zoomed["range"]
    assert 0 <= lo < hi <= 19_999  # the time window turned into the steps drawn in it
    _no_console_errors(browser)


def test_a_chart_grows_while_a_writer_logs_without_a_reload(browser: Any, site: dict[str, Any]) -> None:
    server = site["server"]
    with runstream.Client(server.target) as client:
        run = client.start_run("ui-live", "live", record_source=False)
        for step in range(100):
            run.log_metric("live", step, step=step)
        run.flush(visible=True)
        _open(browser, server, f"/run/{run.run_id}", "run-live", charts=True)
        browser.execute_script("window.notReloaded = true")
        stop = threading.Event()

        def write() -> None:
            step = 100
            while not stop.is_set() and step < 5_000:
                for s in range(step, step + 50):
                    run.log_metric("live", s, step=s)
                step += 50
                time.sleep(0.02)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            grown = _wait(
                browser, "const c = window.runstream.charts.live; return c && c.live && Math.max(...c.data[0]) >= 1000"
            )
            assert grown
        finally:
            stop.set()
            writer.join()
        assert browser.execute_script("return window.notReloaded") is True
        browser.save_screenshot(str(SHOTS / "run-live-grown.png"))
        _no_console_errors(browser)
        run.end()


def test_an_artifact_downloads_byte_exact_and_previews(browser: Any, site: dict[str, Any]) -> None:
    _open(browser, site["server"], f"/run/{site['spiky']}", "run-artifacts", charts=True)
    link = browser.find_element(By.CSS_SELECTOR, "#artifacts a.download[data-path='notes.txt']")
    link.click()
    url = _wait(browser, "return document.querySelector(\"#artifacts a.download[data-path='notes.txt']\").dataset.url")
    with urllib.request.urlopen(url) as got:
        assert got.read() == (site["files"] / "notes.txt").read_bytes()
    browser.find_element(By.CSS_SELECTOR, "#artifacts a.dir").click()
    preview = _wait(browser, "return document.querySelector(\"li[data-path='configs/config.json'] button.preview\")")
    preview.click()
    text = _wait(browser, "const p = document.querySelector('pre.preview'); return p && p.textContent")
    assert '"layers": [' in text and '"lr": 0.1' in text
    _no_console_errors(browser)


def test_compare_marks_exactly_the_params_that_differ(browser: Any, site: dict[str, Any]) -> None:
    runs = ",".join(site["vision"])
    _open(browser, site["server"], f"/compare?runs={runs}", "compare", charts=True)
    differing = {
        r.get_attribute("data-param") for r in browser.find_elements(By.CSS_SELECTOR, "#compare-params tr.differs")
    }
    every = {r.get_attribute("data-param") for r in browser.find_elements(By.CSS_SELECTOR, "#compare-params tbody tr")}
    assert differing == {"lr"} and every == {"lr", "batch"}
    for table in ("compare-params", "compare-metrics"):  # each names the runs in its header
        assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, f"#{table} thead a")] == [
            "vision-0",
            "vision-1",
            "vision-2",
        ]
    best = browser.find_element(By.CSS_SELECTOR, "#compare-metrics tr[data-metric=loss] td.best")
    assert best.text == browser.find_elements(By.CSS_SELECTOR, "#compare-metrics tr[data-metric=loss] td.num")[0].text
    assert browser.execute_script("return Object.keys(window.runstream.charts).sort()") == ["acc", "loss"]


def test_hostile_names_and_params_are_shown_as_text(browser: Any, site: dict[str, Any]) -> None:
    nlp = site["experiments"]["ui-nlp"]
    _open(browser, site["server"], f"/runs?e={nlp}&c=params.html", "runs-hostile")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    names = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#runs-table td.name")]
    assert XSS in names
    assert "<b>bold</b>" in browser.find_element(By.CSS_SELECTOR, "#runs-table tbody").text
    _open(browser, site["server"], f"/run/{site['hostile']}", "run-hostile")
    assert browser.find_element(By.TAG_NAME, "h1").text == XSS
    assert not browser.find_elements(By.CSS_SELECTOR, "#params-table b, main script")


def test_the_models_pages_show_versions_lineage_and_take_a_comment(browser: Any, site: dict[str, Any]) -> None:
    _open(browser, site["server"], "/models", "models")
    assert [
        r.get_attribute("data-model") for r in browser.find_elements(By.CSS_SELECTOR, "#models-table tbody tr")
    ] == ["ui-model"]
    _open(browser, site["server"], "/models/ui-model", "model")
    lineage = browser.find_element(By.CSS_SELECTOR, "#lineage a")
    assert site["spiky"] in lineage.get_attribute("href")
    browser.find_element(By.ID, "review-comment").send_keys("looks good")
    browser.find_element(By.XPATH, "//button[text()='comment']").click()
    _wait(
        browser,
        "return [...document.querySelectorAll('#history-table td')].some(td => td.textContent === 'looks good')",
    )
    _no_console_errors(browser)


def test_the_page_and_its_assets_come_from_the_server_itself(site: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{site['server'].http_port}"
    with urllib.request.urlopen(base + "/") as page:
        html = page.read().decode()
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http" not in html.replace("http-equiv", "")  # nothing from a CDN
    with urllib.request.urlopen(base + "/ui/vendor/uPlot.iife.min.js") as script:
        assert script.read().startswith(b"/*! https://github.com/leeoniya/uPlot")


def test_a_history_by_writer_comes_in_one_answer_and_refuses_a_writer_beside_it(site: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{site['server'].http_port}/api/v1/runstream.v1.QueryService/GetMetricHistory"

    def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, got = post({"run_id": site["spiky"], "key": "loss", "max_points": 500, "by_writer": True})
    assert status == 200 and got["writers"] == ["rank0", "rank1"] and int(got["total_points"]) == 40_000
    rank1 = got["per_writer"][1]
    assert rank1["downsampled"] and max(rank1["bucket_max"]) == SPIKE and int(rank1["total_points"]) == 20_000
    status, timed = post(
        {"run_id": site["spiky"], "key": "loss", "max_points": 500, "by_writer": True, "with_time": True}
    )
    for part in timed["per_writer"]:  # the wall time of each bucket's last point, in the seeding's minutes
        stamps = [int(t) for t in part["bucket_last_timestamp_ms"]]
        assert len(stamps) == len(part["bucket_last_step"]) and stamps == sorted(stamps)
        assert abs(stamps[-1] / 1000 - time.time()) < 600
    status, refused = post({"run_id": site["spiky"], "key": "loss", "with_time": True, "aggregate": "AGGREGATE_MEAN"})
    assert status == 400 and "with_time" in refused["message"]
    status, refused = post({"run_id": site["spiky"], "key": "loss", "by_writer": True, "writer": "rank0"})
    assert status == 400 and refused["code"] == "INVALID_ARGUMENT" and "by_writer" in refused["message"]


def test_review_actions_show_only_for_a_token_that_may_review(
    browser: Any, make_server: Any, tmp_path: Path, site: dict[str, Any]
) -> None:
    server = make_server("--auth", "--data-dir", str(tmp_path / "data"))
    admin = (tmp_path / "data" / "admin-token").read_text().strip()
    with runstream.Client(server.target, token=admin) as client:
        run = client.start_run("ui-auth", record_source=False)
        run.log_artifact(site["files"] / "notes.txt")
        run.end()
        client.register_model(run.run_id, "notes.txt", "auth-model")
        reader = client.admin.create_token("ui-reader", ["read"]).secret
        reviewer = client.admin.create_token("ui-reviewer", ["read", "registry"]).secret

    def sign_in(token: str) -> None:
        browser.get(f"http://127.0.0.1:{server.http_port}/login")
        browser.find_element(By.NAME, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        _wait(browser, "return document.body.dataset.ready")  # the UI, after the sign-in's redirect

    sign_in(reader)
    _open(browser, server, "/models/auth-model", "model-read-only")
    note = browser.find_element(By.ID, "review-read-only").text
    assert "registry scope" in note and "ui-reader" in note and not browser.find_elements(By.ID, "review")
    sign_in(reviewer)
    _open(browser, server, "/models/auth-model", "model-reviewer")
    assert browser.find_elements(By.ID, "review") and not browser.find_elements(By.ID, "review-read-only")


def test_an_html_artifact_opened_by_a_signed_in_admin_runs_nothing(
    browser: Any, make_server: Any, tmp_path: Path
) -> None:
    """Issue 33, item 6: a write token uploads an HTML "report" whose script makes an admin
    token with the reader's cookie; an admin signed in at /login opens its link. The store serves
    it as an attachment that cannot run (and the UI's own preview shows it as text)."""
    server = make_server("--auth", "--data-dir", str(tmp_path / "data"))
    admin = (tmp_path / "data" / "admin-token").read_text().strip()
    attack = (
        "<!doctype html><title>report</title><script>"
        "fetch('/api/v1/runstream.v1.AdminService/CreateToken', {method: 'POST', "
        "headers: {'Content-Type': 'application/json'}, body: JSON.stringify({name: 'stolen', scopes: ['admin']})})"
        ".then(() => { document.title = 'ran'; });</script><p>accuracy 0.93</p>"
    )
    report = tmp_path / "report.html"
    report.write_text(attack)
    with runstream.Client(server.target, token=admin) as client:
        writer = client.admin.create_token("ui-writer", ["write", "read"], experiments="reports/*").secret
    with runstream.Client(server.target, token=writer) as client:
        run = client.start_run("reports/weekly", record_source=False)
        run.log_artifact(report)
        run.end()
        url = client.artifacts._stub.GetDownloadUrl(
            artifacts_pb2.ArtifactRef(run_id=run.run_id, path="report.html")
        ).url

    browser.get(f"http://127.0.0.1:{server.http_port}/login")
    browser.find_element(By.NAME, "token").send_keys(admin)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(browser, "return document.body.dataset.ready")
    browser.get(url)  # the admin opens the report's link
    time.sleep(2)  # time enough for a script to have run
    assert browser.title != "ran"
    with runstream.Client(server.target, token=admin) as client:
        names = [t.name for t in client.admin.tokens()]
    assert "stolen" not in names, names
    # The UI's own preview still shows the report, as text.
    _open(browser, server, f"/run/{run.run_id}", "artifact-html-preview")
    browser.find_element(By.CSS_SELECTOR, "li[data-path='report.html'] button.preview").click()
    text = _wait(browser, "const p = document.querySelector('pre.preview'); return p && p.textContent")
    assert "<script>" in text


def test_a_rewound_run_draws_what_it_superseded_faded_and_forks_link_both_ways(
    browser: Any, site: dict[str, Any]
) -> None:
    server = site["server"]
    with runstream.Client(server.target) as client:
        first = client.start_run("ui-vision", "rewound", record_source=False)
        for step in range(300):
            first.log_metric("loss", 1 / (step + 1), step=step)
        first.end()  # the job stops at step 299; it comes back from its checkpoint at step 150
        run_id = first.run_id
        again = client.start_run(resume=run_id, rewind_to=150, record_source=False)
        for step in range(151, 200):
            again.log_metric("loss", 2.0, step=step)
        again.end()
        fork = client.fork(run_id, 100, name="forked", record_source=False)
        fork.log_metric("loss", 3.0, step=101)
        fork.end()
    _open(browser, server, f"/run/{run_id}", "run-rewound", charts=True)
    overview = browser.find_element(By.CSS_SELECTOR, "dl.kv")
    assert "to step 150" in overview.find_element(By.ID, "rewinds").text
    assert overview.find_element(By.CSS_SELECTOR, "#forks a").get_attribute("href").endswith(f"#/run/{fork.run_id}")
    loss = browser.execute_script("return window.runstream.charts.loss")
    own, faded = loss["lines"]
    assert own["steps"] == list(range(0, 200)) and not own.get("faded")
    assert faded["faded"] and faded["label"] == "before rewind 1" and faded["steps"] == list(range(151, 300))
    note = browser.find_element(By.CSS_SELECTOR, "#charts .chart[data-key=loss] .note").text
    assert note.startswith("200 points (and 149 superseded by rewinds, faded)"), note
    _open(browser, server, f"/run/{fork.run_id}", "run-fork", charts=True)
    parent = browser.find_element(By.CSS_SELECTOR, "#fork-parent a")
    assert (
        parent.get_attribute("href").endswith(f"#/run/{run_id}")
        and "at step 100" in browser.find_element(By.ID, "fork-parent").text
    )
    (line,) = browser.execute_script("return window.runstream.charts.loss")["lines"]
    assert line["steps"] == [*range(0, 101), 101] and line["y"][-1] == 3.0
