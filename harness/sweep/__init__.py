"""``harness sweep``: a hyperparameter search as one SLURM job array (or local processes),
reviewed as one parent MLflow run with a child run per point."""
