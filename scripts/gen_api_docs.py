"""docs/reference/grpc.md from the protos (python scripts/gen_api_docs.py [--check]).

Every service with its methods (request and response), every message with its fields (number,
type, comment) and every enum with its values, in the order of the .proto files. The structure is
read from the generated descriptors in runstream.wire.proto, the code both sides run; the comments
come from protoc's own parse of protos/ (`--include_source_info`), matched by position in the same
descriptors, so a comment above a declaration or after it on its line is the one shown. When
protos/ and the generated code differ, the generator stops and says to run scripts/gen_protos.py.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from docgen import DOCS, ROOT, emit, escape, notice, one_line
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

SCRIPT = "gen_api_docs.py"
PAGE = DOCS / "reference" / "grpc.md"
PROTOS = ROOT / "protos"
# The order a reader meets the services in; a .proto not named here follows, alphabetically.
ORDER = ["tracking.proto", "query.proto", "registry.proto", "artifacts.proto", "admin.proto"]

# FileDescriptorProto field numbers, as SourceCodeInfo paths use them.
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, NESTED, NESTED_ENUM = 2, 3, 4
VALUE, METHOD = 2, 2

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in FDP.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


@dataclass
class Comment:
    leading: str = ""
    trailing: str = ""

    @property
    def text(self) -> str:
        return "\n\n".join(t for t in (self.leading, self.trailing) if t)


def _clean(comment: str) -> str:
    """A .proto comment without the space after each `//`, paragraphs kept."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.rstrip().split("\n")]
    return "\n".join(lines).strip()


def _without_json_names(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """protoc fills json_name in a descriptor set, the Python plugin leaves it out: compare without."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(fdp)
    copy.ClearField("source_code_info")

    def clear(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            clear(m.nested_type)

    clear(copy.message_type)
    return copy


def protoc_parse() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """protos/ as protoc reads it, with source info (comments), by file name."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "protos.pb"
        args = ["protoc", f"-I{PROTOS}", f"-I{include}", "--include_source_info", f"--descriptor_set_out={out}"]
        if protoc.main([*args, *protos]) != 0:
            raise SystemExit("protoc failed on protos/")
        parsed = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in parsed.file}


def generated() -> list[descriptor_pb2.FileDescriptorProto]:
    """The descriptors of runstream.wire.proto, in ORDER."""
    import runstream.wire.proto as package

    files = []
    for m in pkgutil.iter_modules(package.__path__):
        if m.name.endswith("_pb2"):
            module = importlib.import_module(f"{package.__name__}.{m.name}")
            files.append(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))

    def rank(f: descriptor_pb2.FileDescriptorProto) -> tuple[int, str]:
        base = f.name.rsplit("/", 1)[-1]
        return (ORDER.index(base) if base in ORDER else len(ORDER), base)

    return sorted(files, key=rank)


def comments(source: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], Comment]:
    return {
        tuple(loc.path): Comment(_clean(loc.leading_comments), _clean(loc.trailing_comments))
        for loc in source.source_code_info.location
        if loc.leading_comments or loc.trailing_comments
    }


def anchor(full_name: str) -> str:
    return full_name.lstrip(".").replace(".", "-")


class Page:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.files = files
        self.package = ""
        self.local = {
            f".{f.package}.{name}" for f in files for name in self._names(f.package, f.message_type, f.enum_type)
        }
        self.maps = {f".{f.package}.{name}": m for f in files for name, m in self._map_entries(f.message_type)}

    @staticmethod
    def _names(
        package: str,
        messages: Iterable[descriptor_pb2.DescriptorProto],
        enums: Iterable[descriptor_pb2.EnumDescriptorProto],
        prefix: str = "",
    ) -> Iterator[str]:
        """The names of the types declared here, nested ones as `Outer.Inner`."""
        for m in messages:
            yield prefix + m.name
            yield from Page._names(package, m.nested_type, m.enum_type, prefix + m.name + ".")
        for e in enums:
            yield prefix + e.name

    @staticmethod
    def _map_entries(
        messages: Iterable[descriptor_pb2.DescriptorProto], prefix: str = ""
    ) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
        """The synthetic `XEntry` messages of map fields, by name: shown as `map<K, V>`."""
        for m in messages:
            if m.options.map_entry:
                yield prefix + m.name, m
            yield from Page._map_entries(m.nested_type, prefix + m.name + ".")

    def type_of(self, name: str) -> str:
        """A message or enum type as a link when it is one of ours, else as code."""
        if name in self.local:
            return f"[`{name.lstrip('.').rsplit('.', 1)[-1]}`](#{anchor(name)})"
        return f"`{name.lstrip('.')}`"

    def field_type(self, f: descriptor_pb2.FieldDescriptorProto) -> str:
        if f.type_name in self.maps:
            key, value = self.maps[f.type_name].field
            return f"map&lt;{self.field_type(key)}, {self.field_type(value)}&gt;"
        base = self.type_of(f.type_name) if f.type_name else f"`{SCALARS[f.type]}`"
        if f.label == FDP.LABEL_REPEATED:
            return f"repeated {base}"
        if f.proto3_optional:
            return f"optional {base}"
        return base

    def render(self, sources: dict[str, descriptor_pb2.FileDescriptorProto]) -> str:
        out = [
            notice(SCRIPT),
            "# gRPC API\n\n",
            "Every service, message and enum of `protos/runstream/v1/`, with the comments of the `.proto`\n",
            "files. The files ship inside the wheel: "
            '`python -c "import runstream.wire; print(runstream.wire.proto_path())"`\n',
            "prints the directory to give `protoc -I`. Every unary method is also "
            "`POST /api/v1/<package.Service>/<Method>`\n",
            "with the request as JSON on the HTTP port (see [Security](../security.md#the-json-http-api)).\n",
        ]
        for f in self.files:
            source = sources.get(f.name)
            if source is None or _without_json_names(source) != _without_json_names(f):
                raise SystemExit(f"{f.name}: protos/ and runstream.wire.proto differ: run python scripts/gen_protos.py")
            out.append(self._file(f, comments(source)))
        return "".join(out)

    def _short(self, name: str) -> str:
        """A type's name within its package: `Run`, or `MetricHistory.Bucket` for a nested one."""
        return name.lstrip(".").removeprefix(self.package + ".")

    def _file(self, f: descriptor_pb2.FileDescriptorProto, notes: dict[tuple[int, ...], Comment]) -> str:
        self.package = f.package
        out = [f"\n## {f.name.rsplit('/', 1)[-1]}\n\n`package {f.package};` (`protos/{f.name}`)\n"]
        for i, s in enumerate(f.service):
            out.append(self._service(f.package, s, (SERVICE, i), notes))
        if f.message_type:
            out.append("\n### Messages\n")
            for i, m in enumerate(f.message_type):
                out.append(self._message(f.package, m, (MESSAGE, i), notes))
        if f.enum_type:
            out.append("\n### Enums\n")
            for i, e in enumerate(f.enum_type):
                out.append(self._enum(f.package, e, (ENUM, i), notes))
        return "".join(out)

    def _describe(self, note: Comment | None) -> str:
        return f"\n{escape(note.text)}\n" if note and note.text else ""

    def _service(
        self,
        package: str,
        s: descriptor_pb2.ServiceDescriptorProto,
        path: tuple[int, ...],
        notes: dict[tuple[int, ...], Comment],
    ) -> str:
        name = f".{package}.{s.name}"
        out = [f"\n### {s.name} {{ #{anchor(name)} }}\n", self._describe(notes.get(path))]
        out.append("\n| method | request | response | |\n|---|---|---|---|\n")
        for i, m in enumerate(s.method):
            request = ("stream " if m.client_streaming else "") + self.type_of(m.input_type)
            response = ("stream " if m.server_streaming else "") + self.type_of(m.output_type)
            note = notes.get((*path, METHOD, i))
            text = escape(one_line(note.text)) if note else ""
            out.append(f"| `{m.name}` | {request} | {response} | {text} |\n")
        return "".join(out)

    def _message(
        self,
        scope: str,
        m: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        notes: dict[tuple[int, ...], Comment],
    ) -> str:
        if m.options.map_entry:
            return ""
        name = f".{scope}.{m.name}"
        out = [f"\n#### {self._short(name)} {{ #{anchor(name)} }}\n", self._describe(notes.get(path))]
        if m.field:
            out.append("\n| field | # | type | |\n|---|---|---|---|\n")
            for i, f in enumerate(m.field):
                note = notes.get((*path, FIELD, i))
                text = escape(one_line(note.text)) if note else ""
                if f.HasField("oneof_index") and not f.proto3_optional:
                    group = f"one of `{m.oneof_decl[f.oneof_index].name}`"
                    text = f"{group}: {text}" if text else group
                out.append(f"| `{f.name}` | {f.number} | {self.field_type(f)} | {text} |\n")
        else:
            out.append("\nNo fields.\n")
        for i, nested in enumerate(m.nested_type):
            out.append(self._message(name.lstrip("."), nested, (*path, NESTED, i), notes))
        for i, e in enumerate(m.enum_type):
            out.append(self._enum(name.lstrip("."), e, (*path, NESTED_ENUM, i), notes))
        return "".join(out)

    def _enum(
        self,
        scope: str,
        e: descriptor_pb2.EnumDescriptorProto,
        path: tuple[int, ...],
        notes: dict[tuple[int, ...], Comment],
    ) -> str:
        name = f".{scope}.{e.name}"
        out = [f"\n#### {self._short(name)} {{ #{anchor(name)} }}\n", self._describe(notes.get(path))]
        out.append("\n| value | # | |\n|---|---|---|\n")
        for i, v in enumerate(e.value):
            note = notes.get((*path, VALUE, i))
            text = escape(one_line(note.text)) if note else ""
            out.append(f"| `{v.name}` | {v.number} | {text} |\n")
        return "".join(out)


def render() -> str:
    return Page(generated()).render(protoc_parse())


if __name__ == "__main__":
    sys.exit(emit(PAGE, render(), SCRIPT))
