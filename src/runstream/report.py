"""What people read: tables of runs and experiments for the terminal, CSV/JSON of metric
histories, and plots of compared runs."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from runstream.wire.proto import tracking_pb2 as pb

if TYPE_CHECKING:
    from pathlib import Path

    from runstream.client.query import Comparison, MetricHistory
    from runstream.wire.points import SeriesPoints
    from runstream.wire.proto import admin_pb2 as adm
    from runstream.wire.proto import artifacts_pb2 as apb
    from runstream.wire.proto import query_pb2 as qpb
    from runstream.wire.proto import registry_pb2 as rpb

STATUS = {pb.RUNNING: "RUNNING", pb.FINISHED: "FINISHED", pb.FAILED: "FAILED", pb.KILLED: "KILLED"}


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


def runs_table(
    runs: Sequence[pb.Run], params: Sequence[str] | None = None, metrics: Sequence[str] | None = None
) -> str:
    """One row per run: name, status, the chosen params, and each metric's last value and count."""
    params = list(params) if params is not None else sorted({k for r in runs for k in r.params})
    metrics = list(metrics) if metrics is not None else sorted({m.key for r in runs for m in r.metrics})
    header = ["run", "status", *params, *(f"{m} (last)" for m in metrics), "points"]
    rows = []
    for run in runs:
        summary = {m.key: m for m in run.metrics}
        rows.append(
            [
                run.name,
                STATUS.get(run.status, "?"),
                *(run.params.get(p, "") for p in params),
                *(fmt(summary[m].last_value) if m in summary else "" for m in metrics),
                f"{sum(m.count for m in run.metrics):,}",
            ]
        )
    return table(header, rows)


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


def comparison_table(c: Comparison) -> str:
    """Params (those that differ first, marked *) and last metric values, best run marked <."""
    header = ["", *(run.name for run in c.runs)]
    rows = []
    for key in [*c.differs, *(k for k in c.params if k not in c.differs)]:
        mark = "* " if key in c.differs else "  "
        rows.append([f"{mark}params.{key}", *(v if v is not None else "-" for v in c.params[key])])
    for key, values in c.metrics.items():
        best = c.best[key]
        cells = [("-" if v is None else fmt(v)) + (" <" if i == best else "") for i, v in enumerate(values)]
        rows.append([f"  {key} ({c.direction[key]})", *cells])
    return table(header, rows)


def experiments_table(experiments: Sequence[qpb.ExperimentCounts]) -> str:
    header = ["id", "name", "runs", "running", "finished", "failed", "killed", "deleted", "last run"]
    rows = []
    for x in experiments:
        e = x.experiment
        last = _when(x.last_run_start_ms)
        name = e.name + (" (deleted)" if e.lifecycle_stage == "deleted" else "")
        counts = (x.runs, x.running, x.finished, x.failed, x.killed, x.deleted_runs)
        rows.append([e.experiment_id, name, *(f"{c:,}" for c in counts), last])
    return table(header, rows)


def artifacts_table(artifacts: Sequence[apb.Artifact]) -> str:
    rows = []
    for a in artifacts:
        kind = "dir" if a.is_dir else (a.content_type or "")
        rows.append([a.path + ("/" if a.is_dir else ""), human_bytes(a.size), kind, a.sha256[:12], _when(a.created_ms)])
    return table(["path", "size", "type", "sha256", "created"], rows)


def dead_letters_table(letters: Sequence[adm.DeadLetter]) -> str:
    rows = [
        [
            d.id,
            d.run_id[:8],
            _visible(d.writer_id)[:24],
            str(d.seq),
            f"{d.points:,}",
            _when(d.failed_ms),
            _visible(d.reason)[:80],
        ]
        for d in letters
    ]
    return table(["id", "run", "writer", "seq", "points", "failed", "reason"], rows)


def tokens_table(tokens: Sequence[adm.ApiToken]) -> str:
    rows = [
        [
            _visible(t.name)[:40],
            t.token_id,
            ",".join(t.scopes),
            _visible(t.experiments) or "all",
            _visible(t.created_by)[:24],
            _when(t.created_ms),
            _when(t.expires_ms) or "never",
            "revoked " + _when(t.revoked_ms) if t.revoked_ms else "live",
        ]
        for t in tokens
    ]
    return table(["name", "id", "scopes", "experiments", "created by", "created", "expires", "state"], rows)


def _visible(text: str) -> str:
    """Control characters escaped, so a hostile string cannot rewrite the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else ""


def models_table(models: Sequence[rpb.RegisteredModel]) -> str:
    rows = []
    for m in models:
        stages = ", ".join(f"{v.stage}: v{v.version}" for v in m.latest_versions)
        aliases = ", ".join(f"{a}: v{v}" for a, v in sorted(m.aliases.items()))
        rows.append([m.name, stages, aliases, _when(m.updated_ms), m.description[:40]])
    return table(["name", "latest per stage", "aliases", "updated", "description"], rows)


def versions_table(versions: Sequence[rpb.ModelVersion]) -> str:
    rows = [
        [
            str(v.version),
            v.stage,
            ", ".join(v.aliases),
            f"runs:/{v.run_id}/{v.artifact_path}",
            human_bytes(v.source_size),
            v.source_digest[:12],
            v.created_by,
            _when(v.created_ms),
        ]
        for v in versions
    ]
    return table(["version", "stage", "aliases", "source", "size", "digest", "by", "created"], rows)


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


def write_points(parts: Iterable[SeriesPoints], out: TextIO) -> int:
    """Streamed points as CSV rows (step, value, timestamp_ms, writer); returns how many."""
    writer = csv.writer(out)
    writer.writerow(["step", "value", "timestamp_ms", "writer"])
    total = 0
    for part in parts:
        name = [part.writer] * len(part)
        writer.writerows(zip(part.step.tolist(), part.value.tolist(), part.timestamp_ms.tolist(), name, strict=True))
        total += len(part)
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
