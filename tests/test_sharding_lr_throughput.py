"""Sharding covers every sample once; LR rules; throughput arithmetic (the verdict: test_overfitting)."""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from harness.runtime import sharding
from harness.runtime.lr import rate_at, scaled_rate
from harness.runtime.throughput import Throughput


@given(n=st.integers(1, 3000), size=st.integers(1, 9), batch=st.integers(1, 300),
       epoch=st.integers(0, 5))
def test_each_sample_once_per_epoch_with_equal_steps(n, size, batch, epoch):
    steps = sharding.steps_per_epoch(n, size, batch)
    assume(n // size >= steps)  # the smallest shard fills every step (else refused: next test)
    seen = []
    for rank in range(size):
        batches = sharding.epoch_batches(sharding.shard_indices(n, rank, size), steps, seed=3,
                                         epoch=epoch)
        assert len(batches) == steps  # every rank takes the same number of allreduce steps
        assert max(map(len, batches)) <= batch
        seen.extend(np.concatenate(batches).tolist())
    assert sorted(seen) == list(range(n))
    sizes = sharding.global_batch_sizes(n, size, steps)
    assert sizes.sum() == n and len(sizes) == steps


@given(size=st.integers(2, 9), q=st.integers(0, 300), data=st.data())
def test_a_shard_too_small_for_the_steps_is_refused(size, q, data):
    """n = q x size + r with 0 < r < size and one sample per step: the last shards hold q
    samples but every rank must take q + 1 steps (q = 0: fewer samples than ranks)."""
    n = size * q + data.draw(st.integers(1, size - 1))
    steps = sharding.steps_per_epoch(n, size, batch_size=1)
    smallest = sharding.shard_indices(n, size - 1, size)  # np.array_split puts the short ones last
    assert len(smallest) == q and steps == q + 1
    with pytest.raises(ValueError, match="cannot fill"):
        sharding.epoch_batches(smallest, steps, seed=0, epoch=0)


def test_epochs_are_reshuffled_deterministically():
    shard = np.arange(100)
    a = np.concatenate(sharding.epoch_batches(shard, 4, seed=1, epoch=0))
    b = np.concatenate(sharding.epoch_batches(shard, 4, seed=1, epoch=1))
    again = np.concatenate(sharding.epoch_batches(shard, 4, seed=1, epoch=0))
    assert not np.array_equal(a, b) and np.array_equal(a, again)


def test_lr_rules():
    assert scaled_rate(0.001, "linear", 8) == pytest.approx(0.008)
    assert scaled_rate(0.001, "sqrt", 4) == pytest.approx(0.002)
    assert scaled_rate(0.001, "none", 8) == pytest.approx(0.001)
    with pytest.raises(ValueError):
        scaled_rate(0.001, "cubic", 2)


def test_warmup_ramps_from_base_to_target():
    assert rate_at(0.0, 0.1, 0.4, 3) == pytest.approx(0.1)
    assert rate_at(1.5, 0.1, 0.4, 3) == pytest.approx(0.25)
    assert rate_at(3.0, 0.1, 0.4, 3) == pytest.approx(0.4)
    assert rate_at(7.0, 0.1, 0.4, 3) == pytest.approx(0.4)
    assert rate_at(0.0, 0.1, 0.4, 0) == pytest.approx(0.4)


def test_cosine_decay_follows_the_warmup_down_to_zero_at_the_last_epoch():
    # warm-up 0.1 -> 0.4 over 2 epochs, then 0.4 * (1 + cos(pi * (p - 2) / 8)) / 2 up to epoch 10
    assert rate_at(1.0, 0.1, 0.4, 2, "cosine", 10) == pytest.approx(0.25)
    assert rate_at(2.0, 0.1, 0.4, 2, "cosine", 10) == pytest.approx(0.4)
    assert rate_at(6.0, 0.1, 0.4, 2, "cosine", 10) == pytest.approx(0.2)
    assert rate_at(8.0, 0.1, 0.4, 2, "cosine", 10) == pytest.approx(0.2 * (1 - 2 ** -0.5))
    assert rate_at(10.0, 0.1, 0.4, 2, "cosine", 10) == pytest.approx(0.0)
    assert rate_at(4.0, 0.1, 0.4, 0, "cosine", 8) == pytest.approx(0.2)


def test_throughput_drops_warmup_and_rejects_backwards_counters():
    meter = Throughput(warmup_steps=2, processes=4)
    meter.update(0.0, 0)
    assert meter.compute() == {}
    meter.update(10.0, 100)  # the compile step: the window starts here
    meter.update(12.0, 300)
    meter.update(14.0, 500)
    assert meter.compute() == {"throughput/samples_per_sec": 100.0,
                               "throughput/samples_per_sec_per_gpu": 25.0}
    with pytest.raises(ValueError, match="backwards"):
        meter.update(13.0, 600)
