"""A real Redis Cluster on loopback for the tests: Debian's redis-server in cluster mode, three
masters with a replica each, made by `redis-cli --cluster create`. It can lose a master
(SIGKILL) and move a hash slot from one master to another while the cluster serves."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.conftest import free_port

NODE_TIMEOUT_MS = 1_000  # a master not heard from this long is failed over


def system_tool(name: str) -> str:
    """Debian's `name` (redis-server 7: cluster bus ports), never the older build that the
    embedded default's wheel puts in the virtualenv, whatever PATH says first."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed outside the virtualenv (apt-get install redis-server)")
    return found


class LocalCluster:
    def __init__(self, root: Path, masters: int = 3, replicas: int = 1) -> None:
        self.root, self.masters, self.replicas = root, masters, replicas
        free: list[int] = []
        while len(free) < 2 * masters * (1 + replicas):  # distinct: free_port may say the same twice
            if (port := free_port()) not in free:
                free.append(port)
        nodes = masters * (1 + replicas)
        self.ports = free[:nodes]
        self.bus_ports = dict(zip(self.ports, free[nodes:], strict=True))  # not port + 10000: that may be taken
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """runstream's spelling: two seed nodes, so the first may be the one that died."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for port in self.ports:
            self._run_node(port)
        for port in self.ports:
            self.wait_until(lambda port=port: redis.Redis(port=port).ping(), f"redis-server on {port}")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        create = [
            system_tool("redis-cli"),
            "--cluster",
            "create",
            *nodes,
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        self.wait_ok()
        for master in self.masters_now():  # synced: a replica that never was would not take over
            self.wait_until(lambda m=master: self.replicas_of(m) == self.replicas, f"the replicas of {master}")

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.live_ports()[0])

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Every live node says the cluster is ok and knows the same master for every slot."""

        def ok() -> bool:
            for port in self.live_ports():
                info = redis.Redis(port=port).execute_command("CLUSTER INFO")
                if info.get("cluster_state") != "ok":
                    return False
            return len({str(self.slot_owners(p)) for p in self.live_ports()}) == 1

        self.wait_until(ok, "the cluster to be ok")

    def slot_owners(self, port: int) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) as the node on `port` sees them."""
        slots = redis.Redis(port=port).execute_command("CLUSTER SLOTS")
        return sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots)

    def master_of(self, key: str) -> int:
        slot = RedisCluster.keyslot(self.client(), key)
        return next(port for first, last, port in self.slot_owners(self.live_ports()[0]) if first <= slot <= last)

    def node_id(self, port: int) -> str:
        node_id: bytes = redis.Redis(port=port).execute_command("CLUSTER MYID")
        return node_id.decode()

    def masters_now(self) -> list[int]:
        return sorted({port for _, _, port in self.slot_owners(self.live_ports()[0])})

    def _run_node(self, port: int) -> None:
        """A node on `port`; started again, it finds its cluster in its nodes.conf."""
        folder = self.root / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--logfile", "redis.log"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-port", str(self.bus_ports[port])]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no"]
        args += ["--repl-diskless-sync-delay", "0"]  # replicas in sync at once, not after 5 s
        self.procs[port] = subprocess.Popen(
            [system_tool("redis-server"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def restart(self, port: int) -> None:
        """A node that died, back: a master that was failed over rejoins as a replica."""
        self._run_node(port)
        self.wait_until(lambda: redis.Redis(port=port).ping(), f"redis-server on {port}")
        self.wait_ok()

    def replicas_of(self, master: int) -> int:
        info = redis.Redis(port=master).info("replication")
        return sum(1 for k, v in info.items() if k.startswith("slave") and v.get("state") == "online")

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)

    def wait_failover(self, dead: int, key: str, timeout: float = 60.0) -> int:
        """The master that serves `key` once a replica took over from `dead`."""
        self.wait_until(lambda: dead not in self.masters_now(), f"a replica to take over from {dead}", timeout)
        self.wait_ok(timeout)
        return self.master_of(key)

    def migrate_slot(self, key: str, to: int, pause_s: float = 1.0) -> None:
        """Move the slot of `key` (and every key in it) to the master on `to`, as
        `redis-cli --cluster reshard` does, pausing while the slot is half moved so clients meet
        ASK and TRYAGAIN answers."""
        source = self.master_of(key)
        slot = RedisCluster.keyslot(self.client(), key)
        src, dst = redis.Redis(port=source), redis.Redis(port=to)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(to))
        time.sleep(pause_s)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10):
            for moved in keys:
                src.execute_command("MIGRATE", "127.0.0.1", to, moved, 0, 10_000)
                time.sleep(pause_s)
        for port in self.masters_now():
            redis.Redis(port=port).execute_command("CLUSTER SETSLOT", slot, "NODE", self.node_id(to))
        self.wait_ok()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            proc.wait(30)

    @staticmethod
    def wait_until(check: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if check():  # type: ignore[operator]
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"waited {timeout:.0f} s for {what}; last error: {last}")
