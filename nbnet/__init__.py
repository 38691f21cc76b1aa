"""nbnet: a small deep-learning toolkit whose compute runs as Numba kernels."""

import os

__version__ = "0.1.0"

# Numba's OpenMP threads spin-wait ~300k iterations after each parallel kernel; between
# kernels nbnet runs its matmuls on other threads (nbnet/kernels/matmul.py), which the
# spinning starves on 2 cores. A short spin measured 24 -> 18 ms per MNIST-CNN step. It
# only takes effect when set before libgomp loads (numba's first parallel kernel); a
# value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
