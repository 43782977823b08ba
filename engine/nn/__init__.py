"""`engine.nn`: PyTorch-style modules over the engine's tensors.

`Module` registers parameters, buffers and submodules by attribute; layers mirror
`torch.nn`'s names, argument names, parameter layouts and default initialisations, so a
PyTorch state_dict loads into the matching engine model.
"""

from engine.nn import functional, init, utils
from engine.nn.activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from engine.nn.container import ModuleList, Sequential
from engine.nn.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    Conv2d,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
)
from engine.nn.module import Module
from engine.nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from engine.nn.rnn import LSTM
from engine.tensor import Parameter

__all__ = [
    "GELU",
    "LSTM",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Embedding",
    "Flatten",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MaxPool2d",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "functional",
    "init",
    "utils",
]
