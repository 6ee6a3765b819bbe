"""The training runtime: launcher, worker process, trainer, callbacks, checkpoints, sharding, lr."""
