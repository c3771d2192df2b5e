"""The committed generated code must match protos/ (regenerate: python scripts/gen_protos.py)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_generated_code_matches_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
