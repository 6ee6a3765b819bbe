"""The MLflow side of the harness: one run per training job, created by rank 0 only."""
from tracking.run import open_tracker, tracking_uri, check_reachable  # noqa: F401
from tracking.tracker import NullTracker  # noqa: F401
