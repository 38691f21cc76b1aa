"""Data sets: ``idx`` reads MNIST-format files, ``mnist`` fetches and verifies MNIST itself."""

from . import idx, mnist

__all__ = ["idx", "mnist"]
