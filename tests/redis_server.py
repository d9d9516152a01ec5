"""A real redis-server per test, on a free loopback port, that tests may stop, kill and restart;
and a Sentinel-managed group (a master, replicas, Sentinels) whose master tests may kill."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.servers import free_port, wait_for_port


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run ./dev setup (it installs it)")
    return binary


class RedisServer:
    def __init__(self, directory: Path, persistent: bool = False, replica_of: RedisServer | None = None) -> None:
        self.binary = redis_binary()
        self.directory = directory
        self.persistent = persistent
        self.replica_of = replica_of
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        replication = ["--replicaof", "127.0.0.1", str(self.replica_of.port)] if self.replica_of else []
        replication += ["--repl-diskless-sync-delay", "0"]  # as a master, sync a new replica at once, not after 5 s
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory),
             "--protected-mode", "yes", *persistence, *replication],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def info(self, section: str) -> dict[str, Any]:
        with redis.Redis(port=self.port, socket_timeout=5, decode_responses=True) as client:
            return client.info(section)

    def stop(self) -> None:
        """A clean shutdown (an append-only file is complete)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def wipe(self) -> None:
        """Forget everything on disk, as a restart without persistence would."""
        for path in self.directory.glob("*"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout:.0f} s: {what}")
        time.sleep(0.1)


class SentinelGroup:
    """A master, its replicas and Sentinels watching it as `service`, each on its own free loopback port.

    The Sentinels call the master down after one second without an answer, so a killed
    master is replaced within a few seconds.
    """

    def __init__(self, directory: Path, replicas: int = 1, sentinels: int = 1, service: str = "cdn-master") -> None:
        self.directory = directory
        self.service = service
        self.quorum = sentinels // 2 + 1
        self.servers = [RedisServer(self._dir("redis-0"))]
        self.servers += [RedisServer(self._dir(f"redis-{i + 1}"), replica_of=self.servers[0]) for i in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def _dir(self, name: str) -> Path:
        path = self.directory / name  # one each: a replica writes the RDB of its full sync there
        path.mkdir(parents=True, exist_ok=True)
        return path

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/{db}"

    def start(self) -> SentinelGroup:
        for server in self.servers:
            server.start()
        replicas = len(self.servers) - 1
        wait_until(lambda: sum(k.startswith("slave") and v.get("state") == "online"
                               for k, v in self.servers[0].info("replication").items()) == replicas,
                   15, f"{replicas} replica(s) in sync with the master")
        for port in self.sentinel_ports:
            directory = self._dir(f"sentinel-{port}")
            config = directory / "sentinel.conf"  # a Sentinel rewrites its own file as it learns
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.servers[0].port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n")
            self.sentinels.append(subprocess.Popen([redis_binary(), str(config), "--sentinel"],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_port(port)
        # A failover needs each Sentinel to know the replicas and (for a quorum) the other Sentinels.
        wait_until(self._sentinels_ready, 30, "every Sentinel knows the replicas and the other Sentinels")
        return self

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def _named_master_port(self, sentinel_port: int) -> int:
        with self._sentinel(sentinel_port) as sentinel:
            _, port = sentinel.sentinel_get_master_addr_by_name(self.service)
            return int(port)

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            with self._sentinel(port) as sentinel:
                master = sentinel.sentinel_master(self.service)
            if master["num-slaves"] < len(self.servers) - 1:
                return False
            if master["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                return False
        return True

    def master(self) -> RedisServer:
        """The server the Sentinels name as master now."""
        port = self._named_master_port(self.sentinel_ports[0])
        return next(s for s in self.servers if s.port == port)

    def wait_for_failover(self, old: RedisServer, timeout: float = 30) -> RedisServer:
        """Wait until every Sentinel names another master and it says it is one; that master."""

        def promoted() -> bool:
            if any(self._named_master_port(port) == old.port for port in self.sentinel_ports):
                return False
            return self.master().info("replication")["role"] == "master"

        wait_until(promoted, timeout, f"the Sentinels promote a replica in place of 127.0.0.1:{old.port}")
        return self.master()

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
        for process in self.sentinels:
            process.wait(timeout=10)
        self.sentinels = []
        for server in self.servers:
            server.kill()
