"""Layer-type groups for ``isinstance`` checks in composites.

Each group is a class whose ``isinstance``/``issubclass`` test accepts any of its member
types; groups may contain other groups. Membership follows Zennit 1.0.0. A member from a
package that is costly to import (torchvision's ``FrozenBatchNorm2d``) is named by module
and class and tested once that module is imported: an instance of the class cannot exist
before, and ``import funcattr`` does not import torchvision.
"""

from __future__ import annotations

import sys

from torch import nn

__all__ = [
    "Activation",
    "AvgPool",
    "BatchNorm",
    "Convolution",
    "ConvolutionStandard",
    "ConvolutionTranspose",
    "LayerGroup",
    "Linear",
    "MaxPool",
]


class LayerGroup(type):
    """Metaclass of layer groups: ``isinstance(module, Group)`` tests the group's members."""

    members: tuple[type, ...]
    #: members named ``(module, class name)``, tested once their module is imported
    imported_members: tuple[tuple[str, str], ...]

    def __instancecheck__(cls, instance: object) -> bool:
        return cls.__subclasscheck__(type(instance))

    def __subclasscheck__(cls, subclass: type) -> bool:
        if type.__subclasscheck__(cls, subclass):
            return True
        if any(issubclass(subclass, member) for member in cls.__dict__.get("members", ())):
            return True
        for module, name in cls.__dict__.get("imported_members", ()):
            member = getattr(sys.modules.get(module), name, None)
            if isinstance(member, type) and issubclass(subclass, member):
                return True
        return False

    def __repr__(cls) -> str:
        return f"funcattr.types.{cls.__name__}"


class ConvolutionTranspose(metaclass=LayerGroup):
    """Transposed convolutions (1-, 2- and 3-d)."""

    members = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class ConvolutionStandard(metaclass=LayerGroup):
    """Standard convolutions (1-, 2- and 3-d)."""

    members = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Convolution(metaclass=LayerGroup):
    """All convolutions, standard and transposed."""

    members = (ConvolutionStandard, ConvolutionTranspose)


class Linear(metaclass=LayerGroup):
    """Any linear layer: dense ``torch.nn.Linear`` and every convolution."""

    members = (Convolution, nn.Linear)


class BatchNorm(metaclass=LayerGroup):
    """Batch normalisation layers, including torchvision's ``FrozenBatchNorm2d``."""

    members = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    imported_members = (("torchvision.ops.misc", "FrozenBatchNorm2d"),)


class AvgPool(metaclass=LayerGroup):
    """Average pooling, plain and adaptive."""

    members = (
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AvgPool3d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d,
    )


class MaxPool(metaclass=LayerGroup):
    """Max pooling, plain and adaptive."""

    members = (
        nn.MaxPool1d,
        nn.MaxPool2d,
        nn.MaxPool3d,
        nn.AdaptiveMaxPool1d,
        nn.AdaptiveMaxPool2d,
        nn.AdaptiveMaxPool3d,
    )


class Activation(metaclass=LayerGroup):
    """Element-wise activation modules (Softmax, LogSoftmax and Mish are not members)."""

    members = (
        nn.ELU,
        nn.Hardshrink,
        nn.Hardsigmoid,
        nn.Hardtanh,
        nn.Hardswish,
        nn.LeakyReLU,
        nn.LogSigmoid,
        nn.PReLU,
        nn.ReLU,
        nn.ReLU6,
        nn.RReLU,
        nn.SELU,
        nn.CELU,
        nn.GELU,
        nn.Sigmoid,
        nn.SiLU,
        nn.Softplus,
        nn.Softshrink,
        nn.Softsign,
        nn.Tanh,
        nn.Tanhshrink,
        nn.Threshold,
    )


