"""A real mlflow server (SQLite backend, free port) for the tracking tests."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from tracking import server


class MlflowServer:
    def __init__(self, root: Path, host: str = "127.0.0.1", name: str = "",
                 aliases: tuple = ()):
        """``name``: how clients reach it (default: the bind address); ``aliases``: --allow-host."""
        self.root, self.host, self.aliases = root, host, list(aliases)
        self.port = server.free_port("127.0.0.1" if host == "0.0.0.0" else host)
        self.url = f"http://{name or host}:{self.port}"
        self.proc = None

    def start(self) -> "MlflowServer":
        self.proc = server.start(f"sqlite:///{self.root / 'server.db'}", self.host, self.port,
                                 self.root / "artifacts", log=self.root / "server.log",
                                 aliases=self.aliases)
        server.wait_ready(self.url, self.proc)
        return self

    def kill(self) -> None:
        """Kill the whole server (gunicorn/uvicorn workers too), as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    stop = kill
