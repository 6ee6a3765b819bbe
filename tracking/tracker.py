"""The interface training code talks to; ranks other than 0 get the do-nothing twin."""
from __future__ import annotations

from typing import Mapping, Optional


class NullTracker:
    """Accepts every call and records nothing: what ranks other than 0 use."""

    run_id: Optional[str] = None
    location: str = ""

    def log_params(self, params: Mapping) -> None:
        pass

    def set_tags(self, tags: Mapping) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_system_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        pass

    def log_summary(self, spec, history, final, verdict, best=None, telemetry_lines=(),
                    timeline=None) -> None:
        pass

    def log_timeline(self, spec, samples, epoch_ends):
        return None

    def log_model(self, model) -> None:
        pass

    def finish(self, status: str, reason: str = "", flush_s: Optional[float] = None) -> None:
        pass
