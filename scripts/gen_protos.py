"""Regenerate src/runstream/wire/proto from protos/ (python scripts/gen_protos.py [--check]).

The generated modules import each other as `runstream.wire.proto.<name>_pb2`, so they live in
one package of our own and are never edited by hand.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "src" / "runstream" / "wire" / "proto"
IMPORT = re.compile(r"^from runstream\.v1 import (\w+) as", re.M)


def generate() -> dict[str, str]:
    """Generated files by name, with imports rewritten to the runstream.wire.proto package."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{protoc_include()}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = {}
        for path in sorted((Path(tmp) / "runstream" / "v1").iterdir()):
            text = IMPORT.sub(r"from runstream.wire.proto import \1 as", path.read_text())
            files[path.name] = text
    files["__init__.py"] = '"""Generated from protos/runstream/v1 by scripts/gen_protos.py; do not edit."""\n'
    return files


def protoc_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def main() -> int:
    files = generate()
    if "--check" in sys.argv:
        current = {p.name: p.read_text() for p in OUT.iterdir() if p.is_file()}
        if current != files:
            stale = sorted(set(current) ^ set(files) | {n for n in files if current.get(n) != files[n]})
            print("generated code does not match protos/: run python scripts/gen_protos.py", stale)
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.is_file():
            old.unlink()
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"wrote {len(files)} files to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
