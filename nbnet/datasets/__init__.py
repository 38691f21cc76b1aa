"""Data sets: ``idx`` reads MNIST-format files; ``mnist`` and ``fashion_mnist`` fetch and
verify those data sets, with Keras's ``load_data()``."""

from . import fashion_mnist, idx, mnist

__all__ = ["fashion_mnist", "idx", "mnist"]
