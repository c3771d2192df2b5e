"""The SDK's settings, each declared once (runstream/settings.py): the RUNSTREAM_* environment
variables training code and the CLI read, their defaults and help, from which the settings
reference is made. `current()` reads them anew, so a variable set after import still counts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runstream import settings
from runstream.settings import setting, size

MODES = ("online", "offline", "auto")
FSYNC_POLICIES = ("interval", "batch", "close", "off")


def default_spool_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "runstream" / "spool"


def spool_limit(text: str) -> int:
    """RUNSTREAM_SPOOL_MAX_BYTES: 0, or at least 1MiB (below that the spool would hold less than
    the segments it is written in)."""
    limit = size(text)
    if 0 < limit < 2**20:
        raise ValueError("give 0 (a tenth of the free space) or at least 1MiB")
    return limit


@dataclass(frozen=True)
class SdkSettings:
    # -- the server
    url: str = setting(
        "127.0.0.1:50051",
        help="the server: host:port, or grpcs://host:port for TLS (Client(target) wins)",
        flag=False,
        group="Connecting",
    )
    token: str = setting(
        "", help="API token sent with every call (Client(token=...) wins)", flag=False, group="Connecting"
    )
    tls: bool = setting(False, help="TLS for a bare host:port", flag=False, group="Connecting")
    tls_ca: Path | None = setting(
        None,
        help="CA bundle to verify the server with, besides the system's",
        parse=Path,
        flag=False,
        group="Connecting",
    )
    tls_client_cert: Path | None = setting(
        None, help="client certificate (PEM) to present when the server asks (mTLS)", parse=Path, flag=False,
        group="Connecting",
    )  # fmt: skip
    tls_client_key: Path | None = setting(
        None, help="private key of RUNSTREAM_TLS_CLIENT_CERT", parse=Path, flag=False, group="Connecting"
    )
    connect_timeout: float = setting(
        10.0, help="seconds start_run waits for the server in auto mode before going offline", flag=False,
        group="Connecting",
    )  # fmt: skip
    user: str = setting(
        "", help="who acts while the server runs without auth", shown_default="the login name", flag=False,
        group="Connecting",
    )  # fmt: skip
    # -- runs
    run_id: str = setting("", help="start_run attaches to this run (every rank of a job)", flag=False, group="Runs")
    resume: str = setting(
        "",
        help="start_run continues this run from a new process (creating it under this id the first time)",
        flag=False,
        group="Runs",
    )
    mode: str = setting(
        "online",
        help="online; offline: the spool only, for runstream sync; auto: offline while the server is away",
        choices=MODES,
        parse=str.lower,
        flag=False,
        group="Runs",
    )
    flush_timeout: float = setting(
        60.0, help="seconds leaving `with start_run()` waits for the points to be acknowledged", flag=False,
        group="Runs",
    )  # fmt: skip
    heartbeat_s: float = setting(
        30.0, help="seconds between a writer's heartbeats (a run none is heard from is CRASHED)", flag=False,
        group="Runs",
    )  # fmt: skip
    # -- the spool
    spool: bool = setting(True, help="spool every batch to disk before it is sent", flag=False, group="Spool")
    spool_pending: bool = setting(
        True,
        help="keep points not yet batched in file mappings of the spool too, so a killed process loses none",
        flag=False,
        group="Spool",
    )
    spool_dir: Path = setting(
        help="where the spool lives",
        parse=Path,
        default_factory=default_spool_dir,
        shown_default="$XDG_CACHE_HOME/runstream/spool (~/.cache/runstream/spool)",
        flag=False,
        group="Spool",
    )
    spool_max_bytes: int = setting(
        0,
        help="most bytes one writer keeps unsent in the spool (then the writer's on_full applies: block or "
        "drop the oldest); 0: a tenth of the disk's free space when the writer starts",
        parse=spool_limit,
        shown_default="0 (a tenth of the free space)",
        flag=False,
        group="Spool",
    )
    spool_fsync: str = setting(
        "interval",
        help="when the spool is flushed to disk: every interval, every batch, at close, or never",
        choices=FSYNC_POLICIES,
        parse=str.lower,
        flag=False,
        group="Spool",
    )
    spool_fsync_s: float = setting(2.0, help="seconds between fsyncs of the interval policy", flag=False, group="Spool")
    sync_on_start: bool = setting(
        True, help="start_run sends in the background what earlier processes left in the spool", flag=False,
        group="Spool",
    )  # fmt: skip
    # -- what each writer records besides metrics
    system_metrics: bool = setting(
        True, help="sample the process and host (and NVIDIA GPUs) into system/ metrics", flag=False, group="Writers"
    )
    system_metrics_s: float = setting(10.0, help="seconds between system samples", flag=False, group="Writers")
    console: bool = setting(
        True, help="keep what the process prints as the artifact logs/<writer>.txt", flag=False, group="Writers"
    )
    console_upload_s: float = setting(
        30.0, help="seconds between uploads of the console log while it grows", flag=False, group="Writers"
    )


def current() -> SdkSettings:
    """The SDK's settings as the environment says now; a variable set to "" counts as unset."""
    return settings.from_environ(SdkSettings, {k: v for k, v in os.environ.items() if v and k.startswith("RUNSTREAM_")})
