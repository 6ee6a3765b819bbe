"""The tracking server's own PostgreSQL cluster, kept under the tracking home.

``harness tracking serve --store postgres`` initialises it the first time (``initdb``) and starts
it for as long as the server runs.  It listens on a Unix socket only, in a folder that only its
owner can enter, so no password ever crosses the network and no other user of the head node can
connect; MLflow reaches it by ``postgresql://mlflow@/mlflow?host=SOCKET_DIR``, a URI that both
SQLAlchemy (psycopg2) and PostgreSQL's own tools (pg_dump, pg_restore) read.

PostgreSQL refuses to run as root.  Run as the lab's service account, the cluster runs as that
account in ``HOME/postgres``.  Run as root (a container, CI), it runs as Debian's ``postgres``
account, which cannot enter root's folders, so it lives where Debian keeps clusters:
``/var/lib/postgresql/lars-harness/<a digest of the home's path>``.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from harness.errors import UserError

ROLE = "mlflow"  # the cluster's superuser, and the owner of every database in it
DATABASE = "mlflow"
INSTALL_HINT = ("install PostgreSQL: `WITH_POSTGRES=1 make setup` (Debian's postgresql package) "
                "or your distribution's postgresql server package")


def tool(name: str) -> str:
    """A PostgreSQL program: on PATH, else in Debian's versioned folder (newest first)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)
    if not found:
        raise UserError(f"{name}: not found; {INSTALL_HINT}")
    return found


def _as_owner() -> list[str]:
    """The prefix that runs a server-side command as the cluster's owner."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise UserError("PostgreSQL will not run as root and runuser is missing; "
                        "run harness tracking serve as an ordinary account")
    return ["runuser", "-u", "postgres", "--"]


ROOT_CLUSTERS = Path("/var/lib/postgresql/lars-harness")


def run_tool(cmd: list, what: str, hint: str = "") -> None:
    """Run a PostgreSQL tool; when it fails, one line: what failed and its last words."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{what} failed: {tail[0][:300]}{hint}")


def cluster_root(home: Path) -> Path:
    """Where the tracking home's cluster lives (see the module's docstring)."""
    home = Path(home).resolve()
    if os.geteuid() != 0:
        return home / "postgres"
    return ROOT_CLUSTERS / hashlib.sha256(str(home).encode()).hexdigest()[:16]


def _give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class Cluster:
    """One PostgreSQL cluster: ``ROOT/data`` (its files), ``ROOT`` (its socket), ``ROOT/log``."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def uri(self, database: str = DATABASE) -> str:
        return f"postgresql://{ROLE}@/{database}?host={self.socket_dir}"

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def running(self) -> bool:
        if not self.initialised():
            return False
        return subprocess.run([*_as_owner(), tool("pg_ctl"), "status", "-D", str(self.data)],
                              capture_output=True).returncode == 0

    def _run(self, *cmd: str, what: str) -> None:
        run_tool(list(cmd), what, f"; see {self.log}")

    def init(self) -> None:
        """A new cluster: trust on its own socket (a folder only its owner enters), no TCP."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        _give_to_owner(self.root)
        if self.root.parent == ROOT_CLUSTERS:
            _give_to_owner(ROOT_CLUSTERS)
        self._run(*_as_owner(), tool("initdb"), "-D", str(self.data), "-U", ROLE, "-E", "UTF8",
                  "--auth-local=trust", "--auth-host=reject", "--no-instructions",
                  what="initdb")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# harness tracking serve: a Unix socket only, beside the data folder\n"
                       "listen_addresses = ''\n"
                       f"unix_socket_directories = '{self.socket_dir}'\n"
                       "max_connections = 200\n")

    def start(self) -> None:
        self.log.touch()
        _give_to_owner(self.log)
        self._run(*_as_owner(), tool("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
                  "-w", "-t", "60", what="pg_ctl start")

    def stop(self) -> None:
        subprocess.run([*_as_owner(), tool("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                        "-w"], capture_output=True)

    def ensure_database(self, name: str = DATABASE) -> None:
        """Create the database unless it exists."""
        exists = subprocess.run([tool("psql"), "-h", str(self.socket_dir), "-U", ROLE, "-d",
                                 "postgres", "-tAc",
                                 f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
                                capture_output=True, text=True)
        if exists.stdout.strip() != "1":
            self._run(tool("createdb"), "-h", str(self.socket_dir), "-U", ROLE, name,
                      what=f"createdb {name}")


def up(home: Path, say=print) -> tuple[Cluster, bool]:
    """The tracking home's cluster, initialised if new and started if stopped; (cluster, True
    when this call started it and so should stop it)."""
    cluster = Cluster(cluster_root(home))
    if not cluster.initialised():
        say(f"tracking store: initialising a PostgreSQL cluster in {cluster.data}")
        cluster.init()
    started = False
    if not cluster.running():
        cluster.start()
        started = True
    cluster.ensure_database()
    return cluster, started


def libpq_uri(uri: str) -> str:
    """A SQLAlchemy URI (postgresql+psycopg2://...) as PostgreSQL's own tools read it."""
    scheme, _, rest = uri.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgresql") else uri


def socket_of(uri: str) -> Optional[str]:
    """The socket folder a ``?host=`` URI names (None for a TCP address)."""
    from urllib.parse import parse_qs, urlsplit
    return (parse_qs(urlsplit(uri).query).get("host") or [None])[0]
