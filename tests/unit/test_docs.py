"""The documentation follows the code: the generated pages (the command line, the gRPC API, and the
architecture page's tree of every module) match what their generators make from the code today,
and every link of the README, the door to docs/, leads to a file that exists. `make lint` builds
the site itself with `mkdocs build --strict`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

GENERATORS = ["gen_settings_docs.py", "gen_api_docs.py", "gen_cli_docs.py", "gen_architecture.py"]


@pytest.mark.parametrize("script", GENERATORS)
def test_the_generated_page_is_up_to_date(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_link_of_the_readme_leads_to_a_file() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert any(t.startswith("docs/") for t in local)
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def test_the_readme_is_a_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
