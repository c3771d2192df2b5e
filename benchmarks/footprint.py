"""Footprint of the SDK on a training node: install size, cold import time, and the time from
`start_run` to the first acknowledged batch, beside mlflow-skinny and wandb.

    python benchmarks/footprint.py [--repeat 10] [--skip-others] [--work DIR]

Every install goes into a fresh venv of this Python, from a wheel built from this checkout:
- an empty venv, and one with just grpcio, protobuf and numpy (what the SDK may add);
- `runstream` (no extras) and `runstream[server]`;
- `mlflow-skinny` and `wandb`, each in its own venv (--skip-others leaves them out).

Size is every file under the venv, in MB (10^6 bytes), and what it adds to the empty venv.
Import time is the median wall time of `python -c "import X"` over --repeat new processes
(after one untimed run that writes the bytecode), interleaved with `import grpc, numpy` in the
grpcio + protobuf + numpy venv, so the difference is what the package costs beyond those.

First ack: a `runstream server` from the [server] venv on its embedded PostgreSQL and Redis
(the default, from the wheel), and --repeat new processes of the light venv, each timing
`start_run` + `log_metric` + `flush()` (acknowledged means durable in Redis). MLflow: a full
`mlflow server` (SQLite backend, its own venv) and mlflow-skinny timing `start_run` +
`log_metric` (a synchronous REST call). wandb has no server here: its `init` + `log` in
offline mode is shown for what it costs a training script, not as an acknowledgement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUNSTREAM_FIRST_ACK = r"""
import time, runstream
client = runstream.Client()
t0 = time.perf_counter()
run = client.start_run("footprint", "first-ack")
run.log_metric("loss", 1.0, step=0)
run.flush(30)
print("elapsed", time.perf_counter() - t0, flush=True)
run.end()
"""

MLFLOW_FIRST_ACK = r"""
import time, mlflow
t0 = time.perf_counter()
mlflow.start_run()
mlflow.log_metric("loss", 1.0, step=0)
print("elapsed", time.perf_counter() - t0, flush=True)
mlflow.end_run()
"""

WANDB_FIRST_LOG = r"""
import time, wandb
t0 = time.perf_counter()
run = wandb.init(project="footprint", mode="offline")
run.log({"loss": 1.0}, step=0)
print("elapsed", time.perf_counter() - t0, flush=True)
run.finish()
"""


@dataclass
class Env:
    label: str
    packages: list[str]
    modules: str  # what `import` times, e.g. "runstream"
    path: Path = Path()
    size_mb: float = 0.0
    import_ms: float | None = None
    base_import_ms: float | None = None  # `import grpc, numpy` in the reference venv, same run
    first_ack_ms: float | None = None
    first_ack_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tree_bytes(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def build_wheel(work: Path) -> Path:
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)], check=True
    )
    return next(dist.glob("runstream-*.whl"))


def make_venv(env: Env, work: Path) -> bool:
    env.path = work / env.label.replace("[", "-").replace("]", "").replace(" ", "-")
    progress(f"venv {env.label}: {' '.join(env.packages) or '(empty)'}")
    subprocess.run([sys.executable, "-m", "venv", str(env.path)], check=True)
    if env.packages:
        done = subprocess.run(
            [env.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *env.packages],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            env.notes.append("not installable here: " + (done.stderr.strip().splitlines() or ["?"])[-1][:120])
            return False
    env.size_mb = tree_bytes(env.path) / 1e6
    return True


def time_import(python: str, modules: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([python, "-c", f"import {modules}"], check=True)
    return (time.perf_counter() - t0) * 1000


def measure_imports(env: Env, reference: Env, repeat: int) -> None:
    """Median ms of `import <modules>` in env's venv, interleaved with `import grpc, numpy` in the
    reference venv (grpcio, protobuf and numpy alone), so both see the same machine."""
    base = "grpc, numpy"
    time_import(env.python, env.modules)  # writes the bytecode
    time_import(reference.python, base)
    own, ref = [], []
    for _ in range(repeat):
        own.append(time_import(env.python, env.modules))
        ref.append(time_import(reference.python, base))
    env.import_ms, env.base_import_ms = statistics.median(own), statistics.median(ref)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], ready: str, env: dict[str, str], timeout: float = 180) -> subprocess.Popen[str]:
    """A server subprocess, returned once a line of its output contains `ready`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if ready in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe from filling
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not start:\n" + "".join(seen[-20:]))


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def first_acks(python: str, script: str, env: dict[str, str], repeat: int) -> float:
    """Median ms over `repeat` new processes of the time the script prints (in seconds)."""
    times = []
    for _ in range(repeat):
        done = subprocess.run([python, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-2000:])
        # Libraries print their own lines (MLflow links the run): take ours.
        elapsed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("elapsed ")]
        times.append(float(elapsed[-1]) * 1000)
    return statistics.median(times)


def runstream_first_ack(light: Env, server: Env, work: Path, repeat: int) -> None:
    port, http_port = free_port(), free_port()
    proc = start(
        [
            str(server.path / "bin" / "runstream"),
            "server",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--data-dir",
            str(work / "runstream-data"),
            "--log-level",
            "WARNING",
        ],
        "listening on",
        {**os.environ},
    )
    try:
        env = {**os.environ, "RUNSTREAM_URL": f"127.0.0.1:{port}"}
        light.first_ack_ms = first_acks(light.python, RUNSTREAM_FIRST_ACK, env, repeat)
        light.first_ack_note = "start_run + log_metric + flush (durable in Redis)"
    finally:
        stop(proc)


def start_mlflow_server(env: Env, backend_uri: str, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """`mlflow server` of `env`'s venv on a free loopback port, once it listens."""
    port = free_port()
    cmd = [str(env.path / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    proc = start([*cmd, "--backend-store-uri", backend_uri, *extra], "Uvicorn running on", {**os.environ}, 300)
    return proc, port


def mlflow_first_ack(skinny: Env, work: Path, repeat: int) -> None:
    full = Env("mlflow (server)", ["mlflow"], "mlflow")
    if not make_venv(full, work):
        skinny.first_ack_note = "no MLflow server: " + "; ".join(full.notes)
        return
    proc, port = start_mlflow_server(full, f"sqlite:///{work / 'mlflow.db'}", "--workers", "1")
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        skinny.first_ack_ms = first_acks(skinny.python, MLFLOW_FIRST_ACK, env, repeat)
        skinny.first_ack_note = "start_run + log_metric (synchronous REST), mlflow server on SQLite"
    except RuntimeError as exc:
        skinny.first_ack_note = f"failed: {str(exc).splitlines()[-1][:100]}"
    finally:
        stop(proc)


def wandb_first_log(wandb: Env, work: Path, repeat: int) -> None:
    env = {**os.environ, "WANDB_DIR": str(work / "wandb"), "WANDB_SILENT": "true"}
    (work / "wandb").mkdir(exist_ok=True)
    try:
        wandb.first_ack_ms = first_acks(wandb.python, WANDB_FIRST_LOG, env, repeat)
        wandb.first_ack_note = "init + log, offline mode (no server here, so no acknowledgement)"
    except RuntimeError as exc:
        wandb.first_ack_note = f"failed: {str(exc).splitlines()[-1][:100]}"


def table(envs: list[Env], empty_mb: float) -> str:
    head = ["install", "venv MB", "added MB", "import ms", "grpc+numpy ms (same run)", "difference ms", "first ack ms"]
    rows = []
    for e in envs:
        if not e.size_mb:
            rows.append([e.label, "-", "-", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                e.label,
                f"{e.size_mb:,.1f}",
                f"{e.size_mb - empty_mb:,.1f}",
                f"{e.import_ms:,.0f}" if e.import_ms is not None else "-",
                f"{e.base_import_ms:,.0f}" if e.base_import_ms is not None else "-",
                f"{e.import_ms - e.base_import_ms:+,.0f}"
                if e.import_ms is not None and e.base_import_ms is not None
                else "-",
                f"{e.first_ack_ms:,.0f}" if e.first_ack_ms is not None else "-",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| "
        + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        + " |"
        for r in rows
    ]
    return "\n".join([line, rule, *body])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10, help="new processes per timing (median)")
    ap.add_argument("--skip-others", action="store_true", help="leave out mlflow-skinny and wandb")
    ap.add_argument("--work", type=Path, help="keep the venvs here (default: a temporary directory, removed)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rs-footprint-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        wheel = build_wheel(work)
        empty = Env("empty venv", [], "sys")
        base = Env("grpcio + protobuf + numpy", ["grpcio", "protobuf", "numpy"], "grpc, numpy")
        light = Env("runstream", [str(wheel)], "runstream")
        server = Env("runstream[server]", [f"{wheel}[server]"], "runstream")
        others = (
            []
            if args.skip_others
            else [Env("mlflow-skinny", ["mlflow-skinny"], "mlflow"), Env("wandb", ["wandb"], "wandb")]
        )
        envs = [empty, base, light, server, *others]
        for e in envs:
            if make_venv(e, work) and e is not empty:
                progress(f"import {e.modules} in {e.label}")
                measure_imports(e, base, args.repeat)
        progress("runstream: start_run to first ack")
        runstream_first_ack(light, server, work, args.repeat)
        for e in others:
            if not e.size_mb:
                continue
            progress(f"{e.label}: start_run to first log")
            (mlflow_first_ack if e.modules == "mlflow" else wandb_first_log)(e, work, args.repeat)
        print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.repeat} new processes\n")
        print(table(envs, empty.size_mb))
        print()
        for e in envs:
            for note in ([e.first_ack_note] if e.first_ack_note else []) + e.notes:
                print(f"- {e.label}: {note}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
