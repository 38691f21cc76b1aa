"""Keras-named layers: ``from nbnet import layers`` then ``layers.Conv2D(...)``."""

from .base import Layer
from .convolutional import Conv2D, DepthwiseConv2D
from .core import ELU, Activation, Dense, Dropout, Flatten, LeakyReLU, ReLU, Softmax
from .input import Input, InputLayer
from .merging import (Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract, add, average, concatenate,
                      maximum, minimum, multiply, subtract)
from .normalization import BatchNormalization
from .onnx_ops import BroadcastOperation, Clip, ConstantOperation, LogSoftmax, Permute, Take
from .pooling import AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D
from .preprocessing import RandomFlip, Rescaling
from .reshaping import Reshape, UpSampling2D, ZeroPadding2D

MaxPool2D, AvgPool2D = MaxPooling2D, AveragePooling2D
GlobalAvgPool2D, GlobalMaxPool2D = GlobalAveragePooling2D, GlobalMaxPooling2D

__all__ = ["Input", "InputLayer", "Layer", "Conv2D", "DepthwiseConv2D", "Dense", "Dropout", "Flatten", "Activation", "ReLU", "Softmax", "LeakyReLU", "ELU",
           "BatchNormalization", "MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AvgPool2D", "Rescaling", "RandomFlip",
           "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "Reshape",
           "ZeroPadding2D", "UpSampling2D", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
           "Permute", "ConstantOperation", "BroadcastOperation", "Clip", "LogSoftmax", "Take",
           "add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate"]
