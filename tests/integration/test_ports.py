"""A taken port stops a second server at once, with one line naming the port and the flag to
change it (grpcio would otherwise share the gRPC port and split clients between the two)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import runstream


def _second(server, *args: str) -> subprocess.CompletedProcess[str]:
    argv = list(server.args)
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli", "server", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )


def test_a_taken_grpc_port_stops_the_second_server(server) -> None:
    done = _second(server, "--port", str(server.port), "--http-port", str(_free()))
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"runstream: the gRPC port 127.0.0.1:{server.port} is taken: choose another with --port"
    assert "Traceback" not in done.stderr
    with runstream.Client(server.target) as client:  # the first one still has every client
        assert client.create_run("ports").run_id


def test_a_taken_http_port_stops_the_second_server(server) -> None:
    done = _second(server, "--port", str(_free()), "--http-port", str(server.http_port))
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"runstream: the HTTP port 127.0.0.1:{server.http_port} is taken")
    assert last.endswith("choose another with --http-port")
    assert "Traceback" not in done.stderr


def test_the_demo_on_a_taken_port_says_so(tmp_path) -> None:
    with socket.socket() as taken:  # something that is not a runstream server holds the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
        done = subprocess.run(
            [sys.executable, "-m", "runstream.cli", "demo", "--url", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"runstream: the gRPC port 127.0.0.1:{port} is taken: choose another with --port"
    )


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
