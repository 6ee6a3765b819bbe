"""``harness tracking ACTION``: the tracking server and its store, as the CLI asks for them."""
from __future__ import annotations

from pathlib import Path

from harness.errors import UserError
from tracking import server


def run(args) -> int:
    return {"serve": serve, "import": import_file, "backup": backup, "restore": restore,
            "add-user": add_user}[args.action](args)


def serve(args) -> int:
    return server.serve(args.backend, args.host, args.port, args.artifacts, args.auth,
                        args.aliases, args.store, args.workers)


def _artifacts(args) -> Path:
    return Path(args.artifacts).expanduser() if args.artifacts else server.DEFAULT_HOME / "artifacts"


def _with_store(args, action):
    """``action(backend URI)`` on the chosen store; a PostgreSQL cluster this started stops after."""
    backend, cluster, _ = server.open_store(args.backend, args.store)
    try:
        return action(backend)
    finally:
        if cluster is not None:
            cluster.stop()


def backup(args) -> int:
    from tracking import backup as copies
    dest = Path(args.dest).expanduser().resolve()
    facts = _with_store(args, lambda uri: copies.backup(dest, uri, _artifacts(args),
                                                       server.DEFAULT_HOME))
    print(f"backup: {copies.describe(facts, dest)}")
    return 0


def restore(args) -> int:
    from tracking import backup as copies
    src = Path(args.src).expanduser().resolve()
    facts = _with_store(args, lambda uri: copies.restore(src, uri, _artifacts(args),
                                                        server.DEFAULT_HOME))
    print(f"restore: {copies.describe(facts)} from {src}; start the server on it: "
          f"harness tracking serve{' --store ' + args.store if args.store else ''}"
          f"{' --backend ' + args.backend if args.backend else ''}")
    return 0


def import_file(args) -> int:
    from tracking import backup as copies
    path = Path(args.file).expanduser()
    if path.is_dir():
        from tracking.shipper import import_journal
        print(import_journal(path))
        return 0
    if not path.is_file():
        raise UserError(f"{path}: not found (give a fallback .jsonl file, a launch's journal "
                        "folder or an SQLite store)")
    if copies.is_sqlite_file(path):
        if not (args.store or args.backend) or args.store == "sqlite":
            raise UserError(f"{path}: an SQLite store; say where it goes: --store postgres or "
                            "--backend postgresql://USER@HOST/DB")
        runs = _with_store(args, lambda uri: copies.import_store(path.resolve(), uri))
        print(f"imported {runs} runs from {path}; their artifacts stay where they are")
        return 0
    from tracking.runs import import_fallback_file
    sent, uri = import_fallback_file(path)
    print(f"imported {sent} metric values into {uri}")
    return 0


def add_user(args) -> int:
    from tracking import auth
    text = auth.add_user(server.DEFAULT_HOME, args.url, args.username)
    print(f"user {args.username!r} created at {args.url}. Give them this, for their "
          f"~/.mlflow/credentials (mode 600; shown once):\n{text}", end="")
    return 0
