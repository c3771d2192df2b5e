"""Artifact benchmark: a 1 GiB file up and down through each store on loopback.

    python benchmarks/artifacts.py [--size-mib 1024] [--repeat 2] [--postgres-url URL] [--redis-url URL]

- S3 store, against moto's standalone S3 server on 127.0.0.1: runstream (`run.log_artifact`,
  `client.download_artifacts`: signed URLs, 64 MiB parts 4 at a time, SHA-256 computed before the
  upload and checked after the download) next to boto3's `upload_file` / `download_file` with the
  AWS CLI's settings (8 MiB parts, 10 at a time; what `aws s3 cp` does) to the same endpoint in
  the same run.
- Local store (the embedded default): the same SDK calls through the server's signed URLs, next to
  the same boto3 copy to moto and a plain file copy on the same disk.

Each figure is the best of --repeat runs. The runstream server's peak RSS (VmHWM) is printed too:
artifact bytes must not pass through it (S3) or must stream through it (local store).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import BenchServer, _free_port, service_arguments, table

import runstream

MiB = 1024 * 1024
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def make_file(path: Path, size: int) -> Path:
    """`size` bytes that neither compress nor repeat within a part (so no store can shortcut)."""
    import numpy as np

    rng = np.random.default_rng(7)
    with path.open("wb") as f:
        for offset in range(0, size, 64 * MiB):
            f.write(rng.bytes(min(64 * MiB, size - offset)))
    return path


class Moto:
    """moto's standalone S3 server as a subprocess on loopback."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto did not start") from None
                time.sleep(0.2)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def best(label: str, repeat: int, fn: Callable[[int], None], size: int) -> float:
    """The best MiB/s of `repeat` runs of fn(attempt)."""
    rates = []
    for attempt in range(repeat):
        start = time.perf_counter()
        fn(attempt)
        elapsed = time.perf_counter() - start
        rates.append(size / MiB / elapsed)
        print(f"  {label}: {elapsed:.2f} s, {rates[-1]:,.0f} MiB/s", file=sys.stderr, flush=True)
    return max(rates)


def boto3_copy(moto: Moto, src: Path, work: Path, repeat: int) -> tuple[float, float, float]:
    """`aws s3 cp` up and down, as boto3's transfer manager does it with the CLI's defaults
    (downloads as ranged GETs, 10 at a time); and a download as one streamed get_object."""
    from boto3.s3.transfer import TransferConfig

    s3 = moto.client()
    bucket = f"boto3-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    cli = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=10)
    size = src.stat().st_size
    up = best("boto3 upload_file", repeat, lambda n: s3.upload_file(str(src), bucket, f"copy{n}", Config=cli), size)
    dst = work / "boto3-down.bin"
    down = best(
        "boto3 download_file", repeat, lambda n: s3.download_file(bucket, f"copy{n}", str(dst), Config=cli), size
    )

    def stream(n: int) -> None:
        body = s3.get_object(Bucket=bucket, Key=f"copy{n}")["Body"]
        with dst.open("wb") as out:
            for chunk in body.iter_chunks(MiB):
                out.write(chunk)

    streamed = best("boto3 get_object stream", repeat, stream, size)
    dst.unlink()
    return up, down, streamed


def runstream_copy(server: BenchServer, src: Path, work: Path, repeat: int, label: str) -> tuple[float, float]:
    size = src.stat().st_size
    with runstream.Client(server.target, timeout=300) as client:
        run = runstream.Run(client, client.create_run("bench-artifacts").run_id)
        up = best(f"{label} log_artifact", repeat, lambda n: run.log_artifact(src, f"up{n}"), size)
        dst = work / "rs-down"

        def download(n: int) -> None:
            got = client.download_artifacts(run.run_id, f"up{n}/{src.name}", dst)
            got.unlink()

        down = best(f"{label} download_artifacts", repeat, download, size)
    return up, down


def peak_rss_mib(server: BenchServer) -> float:
    status = Path(f"/proc/{server.proc.pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024


def disk_copy(src: Path, work: Path, repeat: int) -> float:
    dst = work / "cp.bin"

    def copy(_: int) -> None:
        shutil.copyfile(src, dst)
        with dst.open("rb+") as f:
            import os

            os.fsync(f.fileno())  # the local store's bytes end on disk too; count the flush
        dst.unlink()

    return best("file copy", repeat, copy, src.stat().st_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rs-bench-artifacts-"))
    moto = Moto()
    try:
        print(f"writing a {args.size_mib:,} MiB file", file=sys.stderr, flush=True)
        src = make_file(work / "checkpoint.bin", args.size_mib * MiB)
        boto_up, boto_ranged, boto_streamed = boto3_copy(moto, src, work, args.repeat)
        boto_down = max(boto_ranged, boto_streamed)  # the ratio is against boto3's faster download

        bucket = f"runstream-{uuid.uuid4().hex[:8]}"
        moto.client().create_bucket(Bucket=bucket)
        s3_args = ("--artifacts", f"s3://{bucket}/bench", "--s3-endpoint-url", moto.endpoint)
        server = BenchServer(args.postgres_url, args.redis_url, 1, s3_args, CREDENTIALS)
        try:
            s3_up, s3_down = runstream_copy(server, src, work, args.repeat, "runstream S3")
            s3_rss = peak_rss_mib(server)
        finally:
            server.close()

        local_dir = work / "store"
        server = BenchServer(args.postgres_url, args.redis_url, 1, ("--artifacts", local_dir.as_uri()))
        try:
            local_up, local_down = runstream_copy(server, src, work, args.repeat, "runstream local")
            local_rss = peak_rss_mib(server)
        finally:
            server.close()
        cp = disk_copy(src, work, args.repeat)
    finally:
        moto.close()
        shutil.rmtree(work, ignore_errors=True)

    def row(store: str, how: str, up: float, down: float, rss: str) -> list[str]:
        return [store, how, f"{up:,.0f}", f"{up / boto_up:.0%}", f"{down:,.0f}", f"{down / boto_down:.0%}", rss]

    print(f"\nArtifacts: {args.size_mib:,} MiB file on loopback, best of {args.repeat} (MiB/s)\n")
    print(
        table(
            ["store", "client", "upload MiB/s", "of boto3", "download MiB/s", "of boto3", "server peak RSS"],
            [
                [
                    "S3 (moto)",
                    "boto3 upload_file / download_file",
                    f"{boto_up:,.0f}",
                    "",
                    f"{boto_ranged:,.0f}",
                    "",
                    "-",
                ],
                ["S3 (moto)", "boto3 get_object, one stream", "", "", f"{boto_streamed:,.0f}", "", "-"],
                row("S3 (moto)", "runstream SDK", s3_up, s3_down, f"{s3_rss:,.0f} MiB"),
                row("local", "runstream SDK", local_up, local_down, f"{local_rss:,.0f} MiB"),
                row("local disk", "file copy + fsync", cp, cp, "-"),
            ],
        )
    )
    print(
        "\nrunstream's figures include its SHA-256 of the file (before the upload, while downloading).\n"
        "'of boto3' compares with boto3 to the same moto endpoint (downloads: boto3's faster way); the local\n"
        "store has no boto3 path of its own, so its ratio is against the same S3 copy and the file copy is\n"
        "the disk's ceiling."
    )


if __name__ == "__main__":
    main()
