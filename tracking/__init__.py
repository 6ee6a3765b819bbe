"""The MLflow side of the harness: one run per training job, created by rank 0 only."""
from tracking.run import (open_tracker, open_tracker_in_background, tracking_uri,  # noqa: F401
                          check_reachable)
from tracking.tracker import NullTracker  # noqa: F401
