"""A profile of the steps a user asks for (``harness run/submit ... --profile-steps A:B``).

Steps are counted over the run from 1 (epoch e's batch b is step e x steps_per_epoch + b + 1).
Rank 0 records, for steps A..B:
- ``steps.json``: the harness's own trace in Chrome's trace-event format (Perfetto and
  chrome://tracing open it): one event per step call with its step numbers, on every engine;
- ``tensorflow/``: TensorFlow's profiler trace (``plugins/profile/*/*.xplane.pb``, TensorBoard's
  Profile tab), and on TensorFlow 2.15 (the Horovod engine) the same converted to
  ``tensorflow_trace.json`` for Perfetto;
- ``horovod_timeline.json`` (Horovod engine): Horovod's timeline of the allreduces (negotiation,
  queueing, the reduction itself), in the same format.
They go to the run's artifacts under ``profile/``.  Profiling costs time: benches/step_pace.py
--compare profile measures how much.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from harness.runtime.callbacks import HostFree


class ProfileSteps(HostFree):
    """Starts the profilers as step A's call begins and stops them once step B has run."""

    def __init__(self, first: int, last: int, steps_per_epoch: int, steps_per_call: int,
                 folder: Path, chief: bool, engine, tracker=None):
        super().__init__()
        self.first, self.last, self.steps = first, last, steps_per_epoch
        self.per_call = steps_per_call
        self.folder, self.chief, self.engine, self.tracker = folder, chief, engine, tracker
        self.epoch, self.running, self.done = 0, False, False
        self.calls: list[tuple[int, float]] = []  # (first step of the call, when it began)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self.epoch * self.steps + batch + 1  # the call runs steps step..step+per_call-1
        if self.running and step > self.last:
            self._stop(time.perf_counter(), step)
        elif not self.running and not self.done and step + self.per_call > self.first \
                and step <= self.last:
            self._start()
        if self.running:
            self.calls.append((step, time.perf_counter()))

    def on_test_begin(self, logs=None):  # the epoch's steps are over: its last call has ended
        epoch_end = (self.epoch + 1) * self.steps
        if self.running and epoch_end >= self.last:
            self._stop(time.perf_counter(), epoch_end + 1)

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()

    def on_train_end(self, logs=None):
        if self.running:
            self._stop(time.perf_counter(), (self.epoch + 1) * self.steps + 1)

    def _start(self) -> None:
        import tensorflow as tf
        self.running = True
        if self.chief:
            shutil.rmtree(self.folder, ignore_errors=True)  # nothing from an earlier attempt
            self.folder.mkdir(parents=True)
            tf.profiler.experimental.start(str(self.folder / "tensorflow"))
        # Every rank starts the engine's timeline (Horovod's; the coordinator writes it).
        self.engine.start_timeline(str(self.folder / "horovod_timeline.json"))

    def _stop(self, ended: float, next_step: int) -> None:
        import tensorflow as tf
        self.running, self.done = False, True
        self.engine.stop_timeline()
        if not self.chief:
            return
        tf.profiler.experimental.stop()
        write_step_trace(self.folder / "steps.json", self.calls, ended, next_step)
        convert_tensorflow_trace(self.folder)
        if self.tracker is not None:
            for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
                self.tracker.log_artifact(
                    path, str(Path("profile") / path.parent.relative_to(self.folder)))
        print(f"profile: steps {self.first}..{self.last} in {self.folder} (artifacts profile/: "
              "steps.json and *_trace.json open in https://ui.perfetto.dev, tensorflow/ in "
              "TensorBoard's Profile tab)", flush=True)


def write_step_trace(path: Path, calls: list, ended: float, next_step: int) -> None:
    """Chrome trace events: one complete event ("X") per step call, microseconds; the last call
    ends at ``ended``, before step ``next_step``."""
    if not calls:
        return
    origin = calls[0][1]
    bounds = [t for _, t in calls[1:]] + [ended]
    nexts = [s for s, _ in calls[1:]] + [next_step]
    events = [{"name": f"step {step}" + (f"-{upto - 1}" if upto - 1 > step else ""),
               "ph": "X", "pid": os.getpid(), "tid": 0, "ts": (began - origin) * 1e6,
               "dur": (end - began) * 1e6, "args": {"first_step": step, "last_step": upto - 1}}
              for (step, began), end, upto in zip(calls, bounds, nexts)]
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))


def convert_tensorflow_trace(folder: Path) -> Optional[Path]:
    """TensorFlow's xplane as Chrome trace JSON, where this TensorFlow can convert it (2.15)."""
    planes = sorted(glob.glob(str(folder / "tensorflow" / "plugins" / "profile" / "*" / "*.xplane.pb")))
    try:
        from tensorflow.python.profiler.internal import _pywrap_profiler
        convert = _pywrap_profiler.xspace_to_tools_data
    except (ImportError, AttributeError):
        return None
    if not planes:
        return None
    data, ok = convert(planes, "trace_viewer@", {"resolution": 0})
    if not ok:
        return None
    out = folder / "tensorflow_trace.json"
    out.write_bytes(data)
    return out
