"""The demo: train softmax regression on scikit-learn's wine data with several learning rates,
each run in its own process, one of them data-parallel over two ranks logging into one run,
then compare the runs, best first.

Starts an embedded `runstream server` when nothing answers at the URL, and stops it at the
end (the data stays in the data directory).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

import runstream
from runstream.report import fmt, table
from runstream.wire.proto import tracking_pb2 as pb

EXPERIMENT = "wine-softmax"
KEYS = ("loss", "train_acc", "val_acc", "grad_norm", "weight_norm")
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Config:
    lr: float
    epochs: int
    batch_size: int = 8
    ranks: int = 1
    seed: int = 0


def load_data(seed: int) -> tuple[FloatArray, npt.NDArray[np.int64], FloatArray, npt.NDArray[np.int64]]:
    """Wine (178 samples, 13 features, 3 classes), standardised, split 75/25."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order].astype(np.int64)
    cut = int(len(y) * 0.75)
    mean, std = x[:cut].mean(0), x[:cut].std(0)
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _softmax_loss(w: FloatArray, x: FloatArray, y: npt.NDArray[np.int64]) -> tuple[float, FloatArray, FloatArray]:
    """Cross-entropy loss, its gradient with respect to w (bias in the last row) and the logits."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    logits = xb @ w
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    p[np.arange(len(y)), y] -= 1.0
    return loss, xb.T @ p / len(y), logits


def _accuracy(w: FloatArray, x: FloatArray, y: npt.NDArray[np.int64]) -> float:
    return float((_softmax_loss(w, x, y)[2].argmax(1) == y).mean())


def train(
    cfg: Config,
    run_id: str,
    url: str,
    rank: int = 0,
    grads: SynchronizedArray[Any] | None = None,
    barrier: Barrier | None = None,
) -> None:
    """One rank's training loop. With several ranks each takes its shard of every minibatch
    and the gradients are averaged through shared memory (an all-reduce) before the step."""
    x, y, xv, yv = load_data(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    w = np.zeros((x.shape[1] + 1, 3))
    client = runstream.Client(url)
    run = client.attach(run_id, writer_id=f"rank{rank}")
    step = 0
    for _ in range(cfg.epochs):
        order = rng.permutation(len(y))  # the same on every rank: they share the seed
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start : start + cfg.batch_size][rank :: cfg.ranks]
            loss, grad, _ = _softmax_loss(w, x[idx], y[idx])
            if grads is not None and barrier is not None:
                buffer: Any = grads.get_obj()  # a ctypes array: a buffer numpy can view
                shared = np.frombuffer(buffer, dtype=np.float64).reshape(cfg.ranks, *grad.shape)
                shared[rank] = grad
                barrier.wait()
                grad = shared.mean(0)
                barrier.wait()  # everyone has read before anyone writes the next step's gradient
            w -= cfg.lr * grad
            metrics = {"loss": loss, "grad_norm": float(np.linalg.norm(grad))}
            if rank == 0:
                metrics |= {
                    "train_acc": _accuracy(w, x, y),
                    "val_acc": _accuracy(w, xv, yv),
                    "weight_norm": float(np.linalg.norm(w)),
                }
            run.log_metrics(metrics, step=step)
            step += 1
    run.end()
    client.close()


def _train_run(cfg: Config, url: str) -> tuple[str, list[int]]:
    """Create the run, train it on `cfg.ranks` processes, and finish it; the run id and the
    exit codes of the processes that failed."""
    client = runstream.Client(url)
    run = client.create_run(
        EXPERIMENT,
        f"lr={cfg.lr:g}" + (f" x{cfg.ranks} ranks" if cfg.ranks > 1 else ""),
        tags={"source": "runstream demo", "model": "softmax regression"},
    )
    client.log_params(
        run.run_id,
        {"lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "ranks": cfg.ranks, "seed": cfg.seed},
    )
    ctx = mp.get_context("spawn")
    grads = ctx.Array("d", cfg.ranks * 14 * 3) if cfg.ranks > 1 else None
    barrier = ctx.Barrier(cfg.ranks) if cfg.ranks > 1 else None
    procs = [ctx.Process(target=train, args=(cfg, run.run_id, url, r, grads, barrier)) for r in range(cfg.ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode if p.exitcode is not None else -1 for p in procs if p.exitcode != 0]
    client.update_run(run.run_id, status="FAILED" if failed else "FINISHED")
    client.close()
    return run.run_id, failed


_announced: list[str] = []  # what the embedded server said when it started


def _server_answers(url: str, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(url) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False


def _ui_url(url: str, said: list[str], experiment_id: str) -> str:
    """The web UI's page of the demo's runs: on the HTTP port the server announced, or (a server
    that was already running) the default one, its gRPC port + 1."""
    found = next((re.search(r"(https?://[^/\s]+)/metrics", line) for line in said if "/metrics on" in line), None)
    host, port = url.rsplit(":", 1)
    base = found.group(1) if found else f"http://{host}:{int(port) + 1}"
    return f"{base}/#/runs?e={experiment_id}"


def _start_server(url: str, data_dir: Path) -> subprocess.Popen[str]:
    host, port = url.rsplit(":", 1)
    print(f"no server at {url}: starting an embedded one (data in {data_dir})", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runstream.cli", "server", "--host", host, "--port", port, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    said = ""
    for line in proc.stdout:
        if line.startswith("runstream"):  # not the embedded services' own chatter
            print("  server:", line.rstrip(), flush=True)
            said = line.strip()
            _announced.append(said)
        if "listening on" in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe from filling
            return proc
    code = proc.wait()
    raise SystemExit(said if said.startswith("runstream: ") else f"runstream: the server exited with code {code}")


def _wait_loaded(client: runstream.Client, run_ids: list[str], timeout: float = 60.0) -> list[pb.Run]:
    """Runs as PostgreSQL has them once the loaders committed every point (counts stop rising)."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        runs = [client.get_run(r) for r in run_ids]
        total = sum(m.count for r in runs for m in r.metrics)
        if total == last or time.monotonic() > deadline:
            return runs
        last = total
        time.sleep(0.5)


def comparison(runs: list[pb.Run]) -> str:
    """Best first: the highest final validation accuracy, then the lowest final loss."""

    def summary(run: pb.Run, key: str) -> pb.MetricSummary | None:
        return next((m for m in run.metrics if m.key == key), None)

    def rank_key(run: pb.Run) -> tuple[float, float]:
        acc, loss = summary(run, "val_acc"), summary(run, "loss")
        return (-(acc.last_value if acc else 0.0), loss.last_value if loss else float("inf"))

    rows = []
    for i, run in enumerate(sorted(runs, key=rank_key), 1):
        acc, loss = summary(run, "val_acc"), summary(run, "loss")
        rows.append(
            [
                str(i),
                run.name,
                run.params.get("lr", ""),
                run.params.get("ranks", ""),
                fmt(acc.last_value) if acc else "",
                fmt(acc.max_value) if acc else "",
                fmt(loss.last_value) if loss else "",
                fmt(loss.min_value) if loss else "",
                str(acc.last_step + 1) if acc else "",
                f"{sum(m.count for m in run.metrics):,}",
            ]
        )
    return table(["#", "run", "lr", "ranks", "val_acc", "best val_acc", "loss", "min loss", "steps", "points"], rows)


def main(url: str, data_dir: Path, epochs: int, lrs: tuple[float, ...] = (0.003, 0.03, 0.3, 1.0, 3.0)) -> int:
    server = None if _server_answers(url) else _start_server(url, data_dir)
    try:
        configs = [Config(lr=lr, epochs=epochs) for lr in lrs] + [Config(lr=0.3, epochs=epochs, ranks=2)]
        started = time.monotonic()
        run_ids = []
        failures = 0
        with ThreadPoolExecutor(2) as pool:  # two runs at a time, each in its own processes
            pending = [pool.submit(_train_run, cfg, url) for cfg in configs]
            for i, result in enumerate(pending, 1):
                run_id, failed = result.result()
                run_ids.append(run_id)
                if failed:
                    failures += 1
                    codes = ", ".join(str(c) for c in failed)
                    print(f"[{i}/{len(configs)}] FAILED {configs[i - 1]}: training exited with {codes}", flush=True)
                else:
                    print(f"[{i}/{len(configs)}] trained {configs[i - 1]}", flush=True)
        if failures:
            print(
                f"runstream demo: training failed in {failures} of {len(configs)} runs (their errors are above)",
                file=sys.stderr,
            )
            return 1
        with runstream.Client(url) as client:
            runs = _wait_loaded(client, run_ids)
        points = sum(m.count for r in runs for m in r.metrics)
        elapsed = time.monotonic() - started
        print(f"\nexperiment {EXPERIMENT!r}: {len(runs)} runs, {points:,} points in {elapsed:.1f} s\n")
        print(comparison(runs))
        print(f"\nserver: {url}   runs: {' '.join(r[:8] for r in run_ids)}")
        print(f"web UI: {_ui_url(url, _announced, runs[0].experiment_id)}")
        if server is not None and sys.stdin.isatty():
            print("the embedded server keeps serving the UI until Ctrl-C", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(120)
            print(f"stopped the embedded server; its data stays in {data_dir}")
