"""Seeding: one global seed from which each new model draws its own Generator."""

import numpy as np

_seed_sequence = None


def set_seed(seed):
    """Make weights, shuffling and dropout repeatable: every model built after this call
    draws its seed, in order, from ``seed`` (as ``keras.utils.set_random_seed``)."""
    global _seed_sequence
    _seed_sequence = np.random.SeedSequence(int(seed))
    np.random.seed(int(seed) % 2**32)


def next_model_seed():
    """The seed for the next model: drawn from set_seed's sequence, else fresh entropy."""
    if _seed_sequence is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    return int(_seed_sequence.spawn(1)[0].generate_state(1)[0])
