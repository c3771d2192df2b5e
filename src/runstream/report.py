"""What people read: tables of runs and experiments for the terminal, CSV/JSON of metric
histories, and plots of compared runs."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from runstream.wire.proto import tracking_pb2 as pb
from runstream.wire.status import RUN_STATUS_NAMES

if TYPE_CHECKING:
    from pathlib import Path

    from runstream.client.query import Comparison, MetricHistory
    from runstream.wire.points import SeriesPoints
    from runstream.wire.proto import admin_pb2 as adm
    from runstream.wire.proto import artifacts_pb2 as apb
    from runstream.wire.proto import query_pb2 as qpb
    from runstream.wire.proto import registry_pb2 as rpb

STATUS = RUN_STATUS_NAMES


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numbers (cells starting with a digit or sign) right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, width in zip(cells, widths, strict=False):
            numeric = cell[:1].isdigit() or (cell[:1] in "-+" and cell[1:2].isdigit())
            out.append(cell.rjust(width) if numeric else cell.ljust(width))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def fmt(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"


FORMATS = ("table", "json", "csv")


@dataclass(frozen=True)
class When:
    """A time in ms since the epoch: local minutes in a table, ISO 8601 (UTC) in CSV and JSON."""

    ms: int


@dataclass(frozen=True)
class Bytes:
    """A size: KiB, MiB... in a table, the number of bytes in CSV and JSON."""

    n: int


@dataclass(frozen=True)
class RunId:
    """A run id: its first 8 characters in a table (any unique prefix finds it), whole elsewhere."""

    id: str


Cell = str | int | float | When | Bytes | RunId | None


def render(header: Sequence[str], rows: Sequence[Sequence[Cell]], format: str = "table") -> str:
    """Rows of typed cells as a terminal table, CSV or a JSON list of objects keyed by the header."""
    if format == "json":
        return json.dumps([dict(zip(header, map(_plain, row), strict=True)) for row in rows], indent=1)
    if format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if c is None else _plain(c) for c in row] for row in rows])
        return out.getvalue().rstrip("\n")
    return table(header, [[_shown(c) for c in row] for row in rows])


def _plain(cell: Cell) -> Any:
    if isinstance(cell, When):
        return datetime.fromtimestamp(cell.ms / 1000, timezone.utc).isoformat() if cell.ms else None
    if isinstance(cell, Bytes):
        return cell.n
    if isinstance(cell, RunId):
        return cell.id
    if isinstance(cell, float) and not math.isfinite(cell):
        return str(cell)  # JSON has no NaN or Infinity
    return cell


def _shown(cell: Cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, When):
        return _when(cell.ms)
    if isinstance(cell, Bytes):
        return human_bytes(cell.n)
    if isinstance(cell, RunId):
        return cell.id[:8]
    if isinstance(cell, bool):
        return str(cell)
    if isinstance(cell, int):
        return f"{cell:,}"
    if isinstance(cell, float):
        return fmt(cell)
    return _visible(cell)


def runs_table(runs: Sequence[pb.Run], columns: Sequence[str] | None = None, format: str = "table") -> str:
    """One row per run: id, name, status, start, duration, then `columns` (metrics.K for the
    last value, params.K, tags.K), by default the first three metric keys, and the points."""
    if columns is None:
        columns = [f"metrics.{k}" for k in sorted({m.key for r in runs for m in r.metrics})[:3]]
    header = ["id", "name", "status", "start", "duration", *columns, "points"]
    rows: list[list[Cell]] = []
    for run in runs:
        summary = {m.key: m.last_value for m in run.metrics}
        end = run.end_time_ms if run.end_time_ms > 0 else None
        duration = _duration((end or int(time.time() * 1000)) - run.start_time_ms) if run.start_time_ms else None
        rows.append(
            [
                RunId(run.run_id),
                run.name,
                STATUS.get(run.status, "?") + (" (deleted)" if run.lifecycle_stage == "deleted" else ""),
                When(run.start_time_ms),
                duration,
                *(_column(run, summary, c) for c in columns),
                sum(m.count for m in run.metrics),
            ]
        )
    return render(header, rows, format)


def _column(run: pb.Run, summary: dict[str, float], column: str) -> Cell:
    kind, _, key = column.partition(".")
    if kind == "metrics":
        return summary.get(key)
    if kind == "params":
        return run.params.get(key)
    if kind == "tags":
        return run.tags.get(key)
    raise ValueError(f"column {column!r}: give metrics.KEY, params.KEY or tags.KEY")


def _duration(ms: int) -> str:
    seconds = max(0, ms // 1000)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run_details(run: pb.Run) -> str:
    """Everything about one run, for `runs show`: attributes, params, tags, metric summaries."""
    lines = [
        f"run      {run.run_id}",
        f"name     {_visible(run.name)}",
        f"status   {STATUS.get(run.status, '?')}" + (" (deleted)" if run.lifecycle_stage == "deleted" else ""),
        f"started  {_when(run.start_time_ms)}" + (f"   ended {_when(run.end_time_ms)}" if run.end_time_ms > 0 else ""),
        f"experiment {run.experiment_id}",
    ]
    if run.parent_run_id:
        lines.append(f"forked from {run.parent_run_id} at step {run.fork_step:,} (reads its points up to there)")
    if run.fork_ids:
        lines.append(f"forks    {', '.join(run.fork_ids)}")
    if run.rewinds:
        rows = [[str(r.number), f"{r.step:,}", _when(r.time_ms), f"{r.superseded_points:,}"] for r in run.rewinds]
        lines += ["", table(["rewind (branch)", "to step", "when", "points superseded"], rows)]
    if run.params:
        lines += ["", table(["param", "value"], [[_visible(k), _visible(v)] for k, v in sorted(run.params.items())])]
    if run.tags:
        lines += ["", table(["tag", "value"], [[_visible(k), _visible(v)[:80]] for k, v in sorted(run.tags.items())])]
    if run.metrics:
        rows = [
            [_visible(m.key), fmt(m.last_value), fmt(m.min_value), fmt(m.max_value), f"{m.count:,}"]
            for m in run.metrics
        ]
        lines += ["", table(["metric", "last", "min", "max", "points"], rows)]
    return "\n".join(lines)


def write_history(history: MetricHistory, fmt: str, out: TextIO) -> None:
    """Points (step, value, timestamp_ms, writer) or buckets as CSV rows or one JSON document."""
    columns: dict[str, Any]
    if history.downsampled:
        columns = dict(history.buckets)
    else:
        columns = {"step": history.step, "value": history.value}
        if len(history.timestamp_ms):
            columns |= {"timestamp_ms": history.timestamp_ms, "writer": history.writer}
    names = list(columns)
    rows = zip(*(c.tolist() if hasattr(c, "tolist") else c for c in columns.values()), strict=True)
    if fmt == "json":
        json.dump(
            {
                "key": history.key,
                "total_points": history.total_points,
                "downsampled": history.downsampled,
                "rows": [dict(zip(names, r, strict=True)) for r in rows],
            },
            out,
        )
        out.write("\n")
        return
    writer = csv.writer(out)
    writer.writerow(names)
    writer.writerows(rows)


def comparison_rows(c: Comparison) -> tuple[list[str], list[list[Cell]]]:
    """Params (those that differ first, marked *) and last metric values, best run marked <."""
    header = ["", *(run.name for run in c.runs)]
    rows: list[list[Cell]] = []
    for key in [*c.differs, *(k for k in c.params if k not in c.differs)]:
        mark = "* " if key in c.differs else "  "
        rows.append([f"{mark}params.{key}", *(v if v is not None else "-" for v in c.params[key])])
    for key, values in c.metrics.items():
        best = c.best[key]
        cells: list[Cell] = [("-" if v is None else fmt(v)) + (" <" if i == best else "") for i, v in enumerate(values)]
        rows.append([f"  {key} ({c.direction[key]})", *cells])
    return header, rows


def comparison_table(c: Comparison, format: str = "table") -> str:
    return render(*comparison_rows(c), format)


def experiments_table(experiments: Sequence[qpb.ExperimentCounts], format: str = "table") -> str:
    header = ["id", "name", "runs", "running", "finished", "failed", "killed", "deleted", "last run"]
    rows: list[list[Cell]] = []
    for x in experiments:
        e = x.experiment
        name = e.name + (" (deleted)" if e.lifecycle_stage == "deleted" else "")
        counts = (x.runs, x.running, x.finished, x.failed, x.killed, x.deleted_runs)
        rows.append([e.experiment_id, name, *counts, When(x.last_run_start_ms)])
    return render(header, rows, format)


def artifacts_table(artifacts: Sequence[apb.Artifact], format: str = "table") -> str:
    rows: list[list[Cell]] = []
    for a in artifacts:
        kind = "dir" if a.is_dir else (a.content_type or "")
        rows.append([a.path + ("/" if a.is_dir else ""), Bytes(a.size), kind, a.sha256, When(a.created_ms)])
    if format == "table":
        rows = [[*r[:3], str(r[3])[:12], r[4]] for r in rows]
    return render(["path", "size", "type", "sha256", "created"], rows, format)


def dead_letters_table(letters: Sequence[adm.DeadLetter], format: str = "table") -> str:
    rows: list[list[Cell]] = [
        [d.id, RunId(d.run_id), d.writer_id[:24], d.seq, d.points, When(d.failed_ms), d.reason[:80]] for d in letters
    ]
    return render(["id", "run", "writer", "seq", "points", "failed", "reason"], rows, format)


def storage_table(f: adm.StorageFootprint, format: str = "table") -> str:
    """What metric points cost in PostgreSQL (cold points: their rows there, the points in the
    artifact store), one figure a row."""
    rows: list[list[Cell]] = [
        ["points", f.points],
        ["bytes on disk", f.bytes],
        ["bytes per point", round(f.bytes / f.points, 2) if f.points else math.nan],
        ["bytes in live rows (no free space, no index)", f.live_bytes],
        ["bytes per point in live rows", round(f.live_bytes / f.points, 2) if f.points else math.nan],
        ["chunks", f.chunks],
        ["points in compacted chunks", f.compacted_points],
        ["points waiting for the compactor", f.backlog_points],
        ["points in the cold tier", f.cold_points],
        ["cold objects", f.cold_objects],
        ["bytes of cold objects", f.cold_bytes],
    ]
    return render(["figure", "value"], rows, format)


def tokens_table(tokens: Sequence[adm.ApiToken], format: str = "table") -> str:
    rows: list[list[Cell]] = [
        [
            t.name[:40],
            t.token_id,
            ",".join(t.scopes),
            t.experiments or "all",
            t.created_by[:24],
            When(t.created_ms),
            When(t.expires_ms) if t.expires_ms else "never",
            "revoked" if t.revoked_ms else "live",
        ]
        for t in tokens
    ]
    return render(["name", "id", "scopes", "experiments", "created by", "created", "expires", "state"], rows, format)


def _visible(text: str) -> str:
    """Control characters escaped, so a hostile string cannot rewrite the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else ""


def models_table(models: Sequence[rpb.RegisteredModel], format: str = "table") -> str:
    rows: list[list[Cell]] = []
    for m in models:
        stages = ", ".join(f"{v.stage}: v{v.version}" for v in m.latest_versions)
        aliases = ", ".join(f"{a}: v{v}" for a, v in sorted(m.aliases.items()))
        rows.append([m.name, stages, aliases, When(m.updated_ms), m.description[:40]])
    return render(["name", "latest per stage", "aliases", "updated", "description"], rows, format)


def versions_table(versions: Sequence[rpb.ModelVersion], format: str = "table") -> str:
    rows: list[list[Cell]] = [
        [
            v.version,
            v.stage,
            ", ".join(v.aliases),
            f"runs:/{v.run_id}/{v.artifact_path}",
            Bytes(v.source_size),
            v.source_digest[:12] if format == "table" else v.source_digest,
            v.created_by,
            When(v.created_ms),
        ]
        for v in versions
    ]
    return render(["version", "stage", "aliases", "source", "size", "digest", "by", "created"], rows, format)


def lineage_text(lineage: rpb.ModelVersionLineage) -> str:
    """What produced a model version, as a person reads it top to bottom."""
    v, run = lineage.version, lineage.run
    lines = [
        f"{v.name} version {v.version} ({v.stage}{', ' + ', '.join(v.aliases) if v.aliases else ''})",
        f"  artifact   runs:/{v.run_id}/{v.artifact_path}  {v.source_files} file(s), {human_bytes(v.source_size)}, "
        f"sha256 {v.source_digest}",
        f"  run        {run.run_id} '{run.name}' in experiment '{lineage.experiment_name}', "
        f"{STATUS.get(run.status, '?')}, started {_when(run.start_time_ms)}",
    ]
    source = {
        k.removeprefix("runstream.source."): val for k, val in run.tags.items() if k.startswith("runstream.source.")
    }
    if source:
        dirty = " (uncommitted changes)" if source.get("git.dirty") == "true" else ""
        lines.append(f"  code       {source.get('git.commit', '?')}{dirty} {source.get('git.remote', '')}".rstrip())
        lines.append(f"  entry      {source.get('entry_point', '?')}  (Python {source.get('python', '?')})")
        if source.get("packages"):
            lines.append(f"  packages   {source['packages']}")
    for key, value in sorted(run.params.items()):
        lines.append(f"  param      {key} = {value}")
    for m in run.metrics:
        lines.append(f"  metric     {m.key} = {fmt(m.last_value)} (step {m.last_step}, min {fmt(m.min_value)})")
    for i in lineage.inputs:
        lines.append(f"  dataset    {i.name} {i.digest} from {i.source}" + (f" ({i.context})" if i.context else ""))
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def write_points(parts: Iterable[SeriesPoints], out: TextIO, with_key: bool = False) -> int:
    """Streamed points as CSV rows (step, value, timestamp_ms, writer, and the key if
    `with_key`); returns how many."""
    writer = csv.writer(out)
    writer.writerow(["step", "value", "timestamp_ms", "writer", *(["key"] if with_key else [])])
    total = 0
    for part in parts:
        names = [[part.writer] * len(part)] + ([[part.key] * len(part)] if with_key else [])
        writer.writerows(zip(part.step.tolist(), part.value.tolist(), part.timestamp_ms.tolist(), *names, strict=True))
        total += len(part)
    return total


PARQUET_ROWS = 1_048_576  # rows a row group gathers before it is written


def write_parquet(parts: Iterable[SeriesPoints], path: Path) -> int:
    """Streamed points as a Parquet file, one row a point: run_id, key, writer (dictionary
    encoded), step, timestamp (ms, UTC), value; for pandas, polars or DuckDB. Returns how many."""
    import pyarrow as pa  # type: ignore[import-untyped]  # optional: pip install 'runstream[parquet]'
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = pa.schema(
        [
            ("run_id", pa.dictionary(pa.int32(), pa.string())),
            ("key", pa.dictionary(pa.int32(), pa.string())),
            ("writer", pa.dictionary(pa.int32(), pa.string())),
            ("step", pa.int64()),
            ("timestamp", pa.timestamp("ms", tz="UTC")),
            ("value", pa.float64()),
        ]
    )
    total = 0
    pending: list[SeriesPoints] = []

    def flush(writer: Any) -> None:
        if not pending:
            return
        n = [len(p) for p in pending]

        def labels(values: list[str]) -> Any:
            names = sorted(set(values))
            codes = np.repeat([names.index(v) for v in values], n).astype(np.int32)
            return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(names, pa.string()))

        columns = [
            labels([p.run_id for p in pending]),
            labels([p.key for p in pending]),
            labels([p.writer for p in pending]),
            pa.array(np.concatenate([p.step for p in pending])),
            pa.array(np.concatenate([p.timestamp_ms for p in pending]), pa.timestamp("ms", tz="UTC")),
            pa.array(np.concatenate([p.value for p in pending])),
        ]
        writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=PARQUET_ROWS)
        pending.clear()

    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        held = 0
        for part in parts:
            pending.append(part)
            held += len(part)
            total += len(part)
            if held >= PARQUET_ROWS:
                flush(writer)
                held = 0
        flush(writer)
    return total


def plot_comparison(c: Comparison, path: Path) -> None:
    """One panel per metric key, one line per run; downsampled series are drawn through each
    bucket's last value with its min-max range shaded, so spikes stay visible."""
    import matplotlib  # optional: pip install 'runstream[plot]'

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(c.series)
    fig, axes = plt.subplots(len(keys), 1, figsize=(9, 3 * max(1, len(keys))), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for run, h in zip(c.runs, c.series[key], strict=True):
            if h.downsampled:
                b = h.buckets
                (line,) = ax.plot(b["last_step"], b["last"], label=run.name, linewidth=1)
                ax.fill_between(b["last_step"], b["min"], b["max"], color=line.get_color(), alpha=0.2, linewidth=0)
            elif len(h.step):
                ax.plot(h.step, h.value, label=run.name, linewidth=1)
        ax.set_title(f"{key} ({c.direction.get(key, '')})")
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
