"""Keras-named layers: ``from nbnet import layers`` then ``layers.Conv2D(...)``."""

from .base import Layer
from .convolutional import Conv2D
from .core import Activation, Dense, Dropout, Flatten, LeakyReLU, ReLU, Softmax
from .input import Input, InputLayer
from .normalization import BatchNormalization
from .pooling import AveragePooling2D, MaxPooling2D
from .preprocessing import Rescaling

MaxPool2D, AvgPool2D = MaxPooling2D, AveragePooling2D

__all__ = ["Input", "InputLayer", "Layer", "Conv2D", "Dense", "Dropout", "Flatten", "Activation", "ReLU", "Softmax", "LeakyReLU",
           "BatchNormalization", "MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AvgPool2D", "Rescaling"]
