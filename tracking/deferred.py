"""A Tracker whose MLflow run opens in the background while training starts (batch jobs, and a
script run by hand; a local launch journals instead, tracking/journal.py).

Opening a run costs rank 0 seconds before its first step: importing MLflow (3 s here), opening
or creating the SQLite store (2 to 4 s: MLflow checks or migrates the schema), the parameters,
the package list, the dataset.  Every other rank used to wait for it.  ``DeferredTracker``
opens the run on a thread instead; calls made before it is open are kept in order and replayed
into it, so nothing logged is lost and the order is the same.  What needs the run itself
(``run_id``, ``location``, the end-of-run artifacts, ``finish``) waits for it.  Once open, the
thread also imports the plotting code the end of the run needs, so that is not paid at the end.
"""
from __future__ import annotations

import importlib
import threading
from typing import Callable, Optional

from tracking.tracker import NullTracker

QUEUED = ("log_params", "set_tags", "log_metrics", "log_system_metrics", "log_artifact",
          "log_dict", "log_dataset", "log_dataset_description")
WARM_MODULES = ("tracking.report",)  # matplotlib: about 1.5 s of the end of every run


class DeferredTracker:
    def __init__(self, open_run: Callable[[], object], on_open: Callable[[object], None] = None,
                 run_id: Optional[str] = None, run_id_of: Optional[Callable[[], str]] = None):
        # The run's id when the launch created the run (``run_id``), or where to read it
        # (``run_id_of``: the launcher is creating it): a checkpoint records it without waiting
        # for the run to open (on a loaded machine that wait was seconds of training).
        self._known_run_id, self._run_id_of = run_id, run_id_of
        self._lock = threading.Lock()
        self._calls: Optional[list] = []
        self._real = None
        self._error: Optional[BaseException] = None
        self._open_done = threading.Event()
        self._thread = threading.Thread(target=self._open, args=(open_run, on_open),
                                        name="mlflow-open", daemon=True)
        self._thread.start()

    def _open(self, open_run, on_open) -> None:
        try:
            real = open_run()
            if on_open is not None:
                on_open(real)
        except BaseException as e:  # surfaces in the training thread, at the first wait()
            self._error, real = e, NullTracker()
        with self._lock:
            for name, args, kwargs in self._calls:
                getattr(real, name)(*args, **kwargs)
            self._real, self._calls = real, None
        self._open_done.set()
        if self._error is None:
            for module in WARM_MODULES:
                importlib.import_module(module)

    def wait(self):
        """The open tracker; raises what opening it raised."""
        self._open_done.wait()
        if self._error is not None:
            raise self._error
        return self._real

    def __getattr__(self, name):
        if name not in QUEUED:
            raise AttributeError(name)

        def call(*args, **kwargs):
            with self._lock:
                if self._real is None:
                    self._calls.append((name, args, kwargs))
                    return None
            return getattr(self._real, name)(*args, **kwargs)
        return call

    @property
    def run_id(self) -> Optional[str]:
        if self._known_run_id is None and self._run_id_of is not None:
            self._known_run_id = self._run_id_of()
        return self._known_run_id or self.wait().run_id

    @property
    def location(self) -> str:
        return self.wait().location

    def log_summary(self, *args, **kwargs) -> None:
        return self.wait().log_summary(*args, **kwargs)

    def log_timeline(self, *args, **kwargs):
        return self.wait().log_timeline(*args, **kwargs)

    def log_model(self, model) -> None:
        return self.wait().log_model(model)

    def close(self) -> None:
        self._finish_with(lambda real: real.close())

    def finish(self, status: str, reason: str = "", flush_s: Optional[float] = None) -> None:
        self._finish_with(lambda real: real.finish(status, reason, flush_s))

    def _finish_with(self, action) -> None:
        """On the way out, a run that never opened has nothing to close; say so, do not raise
        over the exception that is already on its way."""
        self._open_done.wait()
        if self._error is not None:
            print(f"tracking: the run never opened ({type(self._error).__name__}: "
                  f"{self._error})", flush=True)
            return
        action(self._real)
