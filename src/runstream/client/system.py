"""System metrics of a writer's process and host, as W&B records them without being asked:
sampled every RUNSTREAM_SYSTEM_METRICS_S seconds (10) into `system/...` keys of the writer,
with the milliseconds since the writer started as their step (so they never move the training
step). `RUNSTREAM_SYSTEM_METRICS=0` turns them off.

CPU, memory, disk and network come from psutil; GPUs (utilisation, memory, temperature, power)
from NVIDIA's management library when nvidia-ml-py and a driver are present. Both are in
`pip install 'runstream[system]'`; without psutil there are no system metrics and one line says
why at debug level.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from runstream.client import settings

log = logging.getLogger(__name__)

PREFIX = "system/"


def enabled() -> bool:
    return settings.current().system_metrics


def interval_s() -> float:
    return settings.current().system_metrics_s


class SystemSampler:
    """A daemon thread that calls `emit(values, step)` every `interval` seconds."""

    def __init__(self, emit: Callable[[dict[str, float], int], None], interval: float) -> None:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # the [system] extra

        self._psutil = psutil
        self._emit = emit
        self._interval = interval
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # primes the counters: the first sample covers one interval
        psutil.cpu_percent(None)
        self._started = time.monotonic()
        self._last = (self._started, psutil.disk_io_counters(), psutil.net_io_counters())
        self._gpus = _gpus()
        self._failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runstream-system-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                values = self.sample()
            except Exception as exc:  # a sampler must never take the training job down with it
                self._failures += 1
                if self._failures == 1:  # once, not every interval
                    log.warning("system metrics: a sample failed (%s); samples that fail are skipped", exc)
                continue
            self._emit(values, int((time.monotonic() - self._started) * 1000))

    def sample(self) -> dict[str, float]:
        p = self._psutil
        now, disk, net = time.monotonic(), p.disk_io_counters(), p.net_io_counters()
        then, disk0, net0 = self._last
        self._last = (now, disk, net)
        seconds = max(now - then, 1e-6)
        memory = p.virtual_memory()
        values = {
            "system/process_cpu_percent": self._process.cpu_percent(None),
            "system/process_rss_bytes": float(self._process.memory_info().rss),
            "system/process_threads": float(self._process.num_threads()),
            "system/cpu_percent": p.cpu_percent(None),
            "system/memory_percent": memory.percent,
            "system/memory_used_bytes": float(memory.total - memory.available),
        }
        if disk is not None and disk0 is not None:
            values["system/disk_read_bytes_per_s"] = (disk.read_bytes - disk0.read_bytes) / seconds
            values["system/disk_write_bytes_per_s"] = (disk.write_bytes - disk0.write_bytes) / seconds
        if net is not None and net0 is not None:
            values["system/network_sent_bytes_per_s"] = (net.bytes_sent - net0.bytes_sent) / seconds
            values["system/network_received_bytes_per_s"] = (net.bytes_recv - net0.bytes_recv) / seconds
        for index, read in self._gpus:
            for name, value in read().items():
                values[f"system/gpu{index}/{name}"] = value
        return values


def _gpus() -> list[tuple[int, Callable[[], dict[str, float]]]]:
    """One reader per NVIDIA GPU, or none without nvidia-ml-py or a driver."""
    try:
        import pynvml  # type: ignore[import-untyped,import-not-found,unused-ignore]  # nvidia-ml-py

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:  # no library, no driver, no GPU: CPU metrics only
        log.debug("system metrics: no NVIDIA GPUs (%s)", exc)
        return []

    def reader(handle: Any) -> Callable[[], dict[str, float]]:
        def read() -> dict[str, float]:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            return {
                "utilization_percent": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                "memory_used_bytes": float(memory.used),
                "memory_percent": 100.0 * memory.used / max(memory.total, 1),
                "temperature_c": float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
                "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            }

        return read

    return [(i, reader(h)) for i, h in enumerate(handles)]


def start(emit: Callable[[dict[str, float], int], None]) -> SystemSampler | None:
    """A sampler for a new writer, unless turned off or psutil is missing."""
    if not enabled() or interval_s() <= 0:
        return None
    try:
        return SystemSampler(emit, interval_s())
    except ImportError:
        log.debug("no system metrics: psutil is missing (pip install 'runstream[system]')")
        return None
