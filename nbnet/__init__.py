"""nbnet: a small deep-learning toolkit whose compute runs as Numba kernels."""

__version__ = "0.1.0"
