"""Copy the web UI's pinned JavaScript dependencies (package.json, package-lock.json) from
node_modules into the package, where the wheel picks them up: installing runstream needs no
Node, and the server needs no network. `--check` fails when the copies differ from the pinned
packages (make lint runs it).

    npm ci && python scripts/build_ui.py [--check]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "src" / "runstream" / "server" / "web" / "assets" / "vendor"
# (file in node_modules, name in the package)
ASSETS = [
    ("uplot/dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
    ("uplot/dist/uPlot.min.css", "uPlot.min.css"),
    ("uplot/LICENSE", "uPlot.LICENSE"),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that the copies are current")
    args = p.parse_args()
    stale = []
    for source, name in ASSETS:
        src = ROOT / "node_modules" / source
        if not src.is_file():
            print(f"{src} is missing: run `npm ci` first", file=sys.stderr)
            return 1
        dst = VENDOR / name
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        if args.check:
            stale.append(name)
        else:
            VENDOR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            print(f"wrote {dst.relative_to(ROOT)}")
    if stale:
        print(
            f"the UI's vendored assets differ from package-lock.json: {', '.join(stale)}; run `make ui`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
