"""The SLURM side: cluster profiles, the sbatch template, submit and status, a step's environment,
and the preemption protocol.  Data files live beside the code: clusters/ (profiles), templates/
(the Jinja2 sbatch template a site may replace) and dev/ (real test clusters on one machine)."""
