"""The launcher's half of a local launch's tracking: rank 0's journal replayed into the run.

``JournalShipper`` waits for the run (the launcher is creating it while the processes start),
opens it as rank 0 used to (a resumed run set RUNNING again, the steps it already holds
skipped), then replays the journal (tracking/journal.py) into an ``MlflowTracker`` as it grows:
the same sender, retries and fallback file as before, in a process that had MLflow loaded
anyway.  ``settle`` runs when every rank has exited: the rest of the journal is shipped, and a
run its rank 0 never finished (a crash, a kill) is flushed and left for the launcher to mark.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Optional

from harness.errors import UserError
from tracking.deferred import WARM_MODULES  # the plotting code, for the summary drawn here
from tracking.journal import CALLS, FILES, LOCATION, Reader

RUN_FILE = "run.json"  # the run the journal goes to: what `harness tracking import` reads
POLL_S = 0.2
UNFINISHED_REASON = "stopped before rank 0 ended the run (Ctrl-C, a signal, or its launcher killed)"


class JournalShipper(threading.Thread):
    def __init__(self, folder: Path, run_id_of: Callable[[], Optional[str]], uri: str,
                 fallback_folder: Path, resumed: bool):
        super().__init__(name="journal-shipper", daemon=True)
        self.folder, self.run_id_of, self.uri = Path(folder), run_id_of, uri
        self.fallback_folder, self.resumed = Path(fallback_folder), resumed
        self.reader = Reader(self.folder / CALLS)
        self.tracker = None
        self.finished = False
        self.shipped = 0  # records replayed
        self.error: Optional[BaseException] = None
        self._ending = threading.Event()

    @classmethod
    def fresh(cls, folder: Path, *args, **kwargs) -> "JournalShipper":
        """A shipper for a new journal folder (one from an earlier launch is removed)."""
        shutil.rmtree(folder, ignore_errors=True)
        Path(folder).mkdir(parents=True)
        return cls(folder, *args, **kwargs)

    def run(self) -> None:
        try:
            self.tracker = self._open()
        except BaseException as e:  # creating the run failed (the supervisor says so), or the
            self.error = e          # store refused to reopen it: the journal stays on disk
            (self.folder / LOCATION).write_text("")  # rank 0 does not wait for a link
            if self._run_created():
                print(f"tracking: could not open the run ({type(e).__name__}: {e}); what "
                      f"rank 0 records stays in {self.folder}: send it later with "
                      f"harness tracking import {self.folder}", flush=True)
            return
        for module in WARM_MODULES:
            importlib.import_module(module)
        while not self._ending.is_set():
            self._ship()
            self._ending.wait(POLL_S)
        self._ship()

    def _open(self):
        from tracking.links import run_line
        from tracking.run import attach, reopen_run
        run_id = self.run_id_of()
        (self.folder / RUN_FILE).write_text(json.dumps(
            {"run_id": run_id, "uri": self.uri, "fallback_folder": str(self.fallback_folder)}))
        already = reopen_run(run_id) if self.resumed else {}
        tracker = attach(run_id, self.fallback_folder / f"mlflow-fallback-{run_id}.jsonl", already)
        (self.folder / LOCATION).write_text(run_line(tracker.client, self.uri, run_id))
        return tracker

    def _run_created(self) -> bool:
        try:
            return bool(self.run_id_of())
        except BaseException:
            return False

    def _ship(self) -> None:
        for name, args, kwargs in self.reader.new():
            if self.finished:
                return
            self.shipped += 1
            if name == "finish":
                self.finished = True
                self.tracker.finish(*args, flush_s=None if args[0] != "KILLED" else 10.0)
            else:
                self._apply(name, args, kwargs)

    def _apply(self, name: str, args: tuple, kwargs: dict) -> None:
        try:
            getattr(self.tracker, name)(*args, **kwargs)
        except Exception as e:  # one call that fails must not stop the rest reaching the run
            print(f"tracking: {name} failed ({type(e).__name__}: {e})", flush=True)

    def _drop_uploaded_files(self) -> None:
        """A run that ended with every file uploaded needs no second copy of them (the model
        is saved into the journal); one that did not keeps them, as its lines say."""
        if not self.tracker.files_not_uploaded:
            shutil.rmtree(self.folder / FILES, ignore_errors=True)

    def settle(self, unfinished_status: Optional[str] = None) -> None:
        """Every rank has exited: ship the rest.  A run rank 0 did not finish is flushed, and
        marked ``unfinished_status`` when given (the launcher marks a failure itself)."""
        self._ending.set()
        self.join()
        if self.tracker is None:
            return
        if self.finished:
            self._drop_uploaded_files()
            return
        if unfinished_status:
            self.tracker.finish(unfinished_status, UNFINISHED_REASON)
        else:
            self.tracker.close()


def import_journal(folder: Path) -> str:
    """``harness tracking import JOURNAL``: a journal its launcher did not finish shipping (the
    launcher was killed outright) replayed into its run; what the run already holds is not
    logged twice.  A run its rank 0 never finished is marked KILLED.  The line to print."""
    folder = Path(folder)
    if not (folder / CALLS).is_file():
        raise UserError(f"{folder}: not a journal folder (no {CALLS}); a local launch's journal "
                        "is runs/<name>/launches/<digest>/journal-<index>")
    if not (folder / RUN_FILE).is_file():
        raise UserError(f"{folder}: its launcher never opened the run, so there is no run to "
                        "import into; train again with --resume")
    run = json.loads((folder / RUN_FILE).read_text())
    os.environ["MLFLOW_TRACKING_URI"] = run["uri"]
    shipper = JournalShipper(folder, lambda: run["run_id"], run["uri"],
                             Path(run["fallback_folder"]), resumed=True)
    shipper.start()
    shipper.settle("KILLED")
    if shipper.error is not None:
        raise shipper.error
    ended = "its end included" if shipper.finished else "rank 0 never finished it: marked KILLED"
    return f"imported {shipper.shipped} journaled calls into MLflow run {run['run_id']} at " \
           f"{run['uri']} ({ended})"
