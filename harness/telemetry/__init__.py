"""NVML and host telemetry: the per-node sampler and the end-of-run summary (no TensorFlow)."""
