"""A real redis-server per test, on a free loopback port, that tests may stop, kill and restart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.servers import free_port, wait_for_port


class RedisServer:
    def __init__(self, directory: Path, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run ./dev setup (it installs it)")
        self.binary = binary
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory),
             "--protected-mode", "yes", *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

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
