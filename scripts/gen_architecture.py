"""The folder tree of src/runstream/ in docs/architecture.md, one line per module from the first
sentence of its docstring (python scripts/gen_architecture.py [--check]).

Only the block between the page's `<!-- BEGIN scripts/gen_architecture.py -->` and `<!-- END ... -->`
lines is generated; the prose around it is kept by hand. A folder's line is its `__init__.py`'s
first sentence; a module without a docstring stops the generator, so every module says what it is.
Folders without Python (SQL migrations, the web UI's assets) list their files, and the generated
protobuf package (wire/proto/) only its own line.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from docgen import DOCS, ROOT, between, emit, escape

SCRIPT = "gen_architecture.py"
PAGE = DOCS / "architecture.md"
PACKAGE = ROOT / "src" / "runstream"
GENERATED = {PACKAGE / "wire" / "proto"}  # packages whose modules are generated, never edited
SKIP = {"__pycache__"}
# The end of a sentence: a full stop (not of "e.g." or "i.e.") before a space and what starts one.
_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Za-z`(\"'])")


def first_sentence(path: Path) -> str:
    """The first sentence of the module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path)))
    if not doc:
        raise SystemExit(f"{path.relative_to(ROOT)} has no docstring: say in one sentence what it is")
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    m = _END.search(paragraph)
    sentence = paragraph[: m.start() + 1] if m else paragraph
    if sentence.endswith(":"):  # "...as follows:" leads into a list
        sentence = sentence[:-1] + "."
    return sentence


def _item(depth: int, name: str, what: str) -> str:
    return f"{'    ' * depth}- `{name}` — {what}\n" if what else f"{'    ' * depth}- `{name}`\n"


def _folder(path: Path, depth: int) -> str:
    """The lines of a folder's contents: modules first, then subfolders, each alphabetically."""
    entries = sorted(p for p in path.iterdir() if p.name not in SKIP)
    files = [p for p in entries if p.is_file()]
    folders = [p for p in entries if p.is_dir() and any(p.iterdir())]
    out = []
    for f in files:
        if f.suffix == ".py" and (f.name != "__init__.py" or path == PACKAGE):
            out.append(_item(depth, f.name, escape(first_sentence(f))))
    for d in folders:
        if (d / "__init__.py").exists():
            out.append(_item(depth, d.name + "/", escape(first_sentence(d / "__init__.py"))))
            if d not in GENERATED:
                out.append(_folder(d, depth + 1))
        else:
            out.append(_item(depth, d.name + "/", escape(", ".join(_plain(d)))))
    return "".join(out)


def _plain(folder: Path) -> list[str]:
    """The files of a folder without Python, subfolders as `name/` followed by theirs."""
    names = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            names.append(f"{p.name}/ ({', '.join(_plain(p))})")
        elif p.is_file():
            names.append(p.name)
    return names


def tree() -> str:
    return f"- `src/runstream/`\n{_folder(PACKAGE, 1)}"


def render() -> str:
    return between(PAGE.read_text(), f"scripts/{SCRIPT}", "\n" + tree() + "\n")


if __name__ == "__main__":
    sys.exit(emit(PAGE, render(), SCRIPT))
