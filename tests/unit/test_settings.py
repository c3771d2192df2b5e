"""One declaration per setting (runstream/settings.py): the server's flags and variables come
from it, a flag wins over its variable over the default, a bad value is one line naming where
it came from, every RUNSTREAM_* variable the code reads is declared, and the reference page is
generated from the same declarations."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runstream import settings
from runstream.client.settings import SdkSettings
from runstream.server.runtime.config import Settings
from tests.conftest import ROOT

INTERNAL = {"RUNSTREAM_FAILPOINT"}  # a testing hook (loading/loader.py), not a setting


def _declared() -> set[str]:
    return {spec.env for cls in (Settings, SdkSettings) for _, spec in settings.specs(cls) if spec.env}


def test_every_variable_the_code_reads_is_declared() -> None:
    read = set()
    for path in (ROOT / "src" / "runstream").rglob("*.py"):
        if "proto" not in path.parts:
            read |= set(re.findall(r"\"(RUNSTREAM_[A-Z0-9_]+)\"", path.read_text()))
    assert read - INTERNAL <= _declared(), sorted(read - INTERNAL - _declared())


def test_only_the_settings_tables_read_the_environment() -> None:
    """One way to read a setting: through its declaration. The server's logging hands its level
    and format to the loader processes it spawns through their environment; that is all."""
    handed = {"RUNSTREAM_LOG_LEVEL", "RUNSTREAM_LOG_FORMAT"}
    tables = {Path("settings.py"), Path("client/settings.py")}
    package = ROOT / "src" / "runstream"
    readers = {}
    for path in package.rglob("*.py"):
        if "proto" not in path.parts and path.relative_to(package) not in tables:
            found = set(re.findall(r"\"(RUNSTREAM_[A-Z0-9_]+)\"", path.read_text())) - INTERNAL - handed
            if found:
                readers[str(path.relative_to(package))] = sorted(found)
    assert readers == {}


def test_the_sdk_counts_an_empty_variable_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from runstream.client import settings as sdk

    for name in ("RUNSTREAM_TLS_CA", "RUNSTREAM_SPOOL_DIR", "RUNSTREAM_MODE", "RUNSTREAM_URL"):
        monkeypatch.setenv(name, "")
    now = sdk.current()
    assert (now.tls_ca, now.spool_dir, now.mode, now.url) == (
        None,
        sdk.default_spool_dir(),
        "online",
        "127.0.0.1:50051",
    )
    monkeypatch.setenv("RUNSTREAM_MODE", "sideways")
    with pytest.raises(settings.SettingError, match="RUNSTREAM_MODE='sideways': give one of online, offline, auto"):
        sdk.current()


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, Settings)
    env = {"RUNSTREAM_MAX_TAILS": "7", "RUNSTREAM_CRASH_AFTER": "12.5", "RUNSTREAM_AUTH": "yes"}
    got = settings.from_arguments(Settings, parser.parse_args(["--max-tails", "5", "--max-upload-size", "2MiB"]), env)
    assert (got.max_tails, got.max_upload_bytes, got.crash_after_s, got.auth) == (5, 2 * 2**20, 12.5, True)
    assert got.max_tails_per_token == Settings().max_tails_per_token  # neither given: the default
    off = settings.from_arguments(Settings, parser.parse_args(["--no-auth", "--no-reflection"]), env)
    assert (off.auth, off.reflection) == (False, False)
    assert Settings(port=6000).http_port == 6001  # derived from the port unless given


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUNSTREAM_PORT": "fifty"}, "RUNSTREAM_PORT='fifty': give a whole number"),
        ({"RUNSTREAM_MAX_TAILS": "0"}, "RUNSTREAM_MAX_TAILS='0': give a whole number of at least 1"),
        ({"RUNSTREAM_ROLE": "everything"}, "RUNSTREAM_ROLE='everything': give one of all, ingest, query, load"),
        ({"RUNSTREAM_AUTH": "maybe"}, "RUNSTREAM_AUTH='maybe': give 1, true, yes or on"),
        ({"RUNSTREAM_MAX_UPLOAD_SIZE": "1 parsec"}, "RUNSTREAM_MAX_UPLOAD_SIZE='1 parsec': give bytes"),
    ],
)
def test_a_bad_value_names_its_variable_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(settings.SettingError) as err:
        settings.from_environ(Settings, env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_server_refuses_a_bad_variable_in_one_line_and_exit_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "server", "--data-dir", str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RUNSTREAM_SHARDS": "-3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["runstream: RUNSTREAM_SHARDS='-3': give a whole number of at least 1"]


def test_the_sdk_reads_its_variables_when_asked() -> None:
    from runstream.client import settings as sdk

    now = settings.from_environ(SdkSettings, {"RUNSTREAM_SPOOL": "0", "RUNSTREAM_MODE": "AUTO"})
    assert (now.spool, now.mode, now.spool_fsync) == (False, "auto", "interval")
    assert sdk.current().url  # from the real environment, with its default


def test_the_reference_page_is_made_from_the_declarations() -> None:
    page = (ROOT / "docs" / "reference" / "settings.md").read_text()
    for cls in (Settings, SdkSettings):
        for row in settings.reference(cls):
            assert f"`{row['env']}`" in page and row["help"].replace("|", "\\|") in page, row["name"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_settings_docs.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
