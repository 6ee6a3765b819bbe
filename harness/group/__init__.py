"""A group of launches: a hyperparameter sweep's points or a scaling run's sizes.

The one core both orchestrators share: points (a resolved spec each, with its own process
layout), one parent MLflow run with a child per point (``runs``), one launch manifest for all
points, and the local runner (``local``).  ``harness sweep`` and ``harness scale`` differ only in
how they choose the points and what they analyse afterwards.
"""
