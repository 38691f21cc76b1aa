"""Dropout's kernel: keep a unit, scaled by 1/(1 - rate), where 32 bits hashed from the
layer's key for this step and the unit's index reach the threshold rate * 2**32.

The key is one draw from the layer's seeded generator per training step, so a seeded run
drops the same units every time, on the CPU and on the GPU (whose twin hashes alike), and
backward recomputes the mask from the key instead of storing one. The hash is SplitMix64's
finaliser over key + (index + 1) * 0x9E3779B97F4A7C15, its upper 32 bits: what Java's
SplittableRandom and others use to seed streams, statistically uniform per index. Before,
32 bits a unit were drawn on the host and copied in: tools/bench_zoo.py's kaggle_bn (three
Dropout layers) took 86.4 / 83.8 ms a step at batch 128 that way, 80.6 / 77.0 with the
hash (two runs alternating; the kernel then on two threads, see apply_mask).
"""

import numpy as np
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)


@njit(inline="always")
def keep_bits(key, index):
    """The 32 random bits of unit ``index`` (uint64) under ``key`` (uint64), as a uint64."""
    z = key + (index + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX_1
    z = (z ^ (z >> np.uint64(27))) * MIX_2
    return (z ^ (z >> np.uint64(31))) >> np.uint64(32)


# One thread: on two, 128x14x14x32 units took 0.33 ms instead of 0.65, but the parallel
# kernel compiled in 0.6 s instead of 0.3, a cost the MLPs' small Dropout layers (128x512)
# would not earn back in several epochs.
@njit(cache=True)
def apply_mask(values, key, threshold, scale, out):
    """out = values * scale where keep_bits(key, i) >= threshold (a uint32 scalar), else 0,
    elementwise over 1-D views; ``out`` may be ``values``."""
    zero = out.dtype.type(0.0)
    limit = np.uint64(threshold)
    for i in range(values.shape[0]):
        # A select of the factor, not of the result: no branch on random bits.
        factor = scale if keep_bits(key, np.uint64(i)) >= limit else zero
        out[i] = values[i] * factor
