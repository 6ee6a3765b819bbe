"""Throughput scaling: the sweep, its statistics, the communication model and the probe."""
