"""Canonizers for torchvision models: VGG, ResNet (Zennit's), DenseNet and MobileNetV2/V3.

Each returns a new model view and params; the model is unchanged. In the view, residual
additions go through a :class:`funcattr.layer.Sum` child ``canonizer_sum`` (on
``torch.stack([identity, out], dim=-1)``: index 0 is the skip path), so that composites give
them a rule (``Norm`` in the LRP presets), and batch norms directly after a linear layer are
merged into it.

Beyond Zennit:

- :class:`DenseNetCanonizer` merges the batch norms that follow a convolution (``norm0`` and
  each dense layer's ``norm2``); the others normalise concatenated features and precede a
  ReLU, so they stay (the presets give them ``Pass``). The final functional ReLU and pooling
  become modules ``canonizer_relu`` and ``canonizer_avgpool``, which get ``Pass`` and ``Norm``.
- :class:`MobileNetV2Canonizer` and :class:`MobileNetV3Canonizer` merge conv-BN pairs and
  route the inverted residual's addition through ``canonizer_sum``; MobileNetV2's functional
  pooling becomes ``canonizer_avgpool``; squeeze-excitation blocks multiply through a
  :class:`GatedSum` (``canonizer_gate``), whose gate steers the value but takes no relevance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision.models.densenet import DenseNet, _DenseLayer
from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
from torchvision.models.mobilenetv3 import MobileNetV3
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vgg import VGG
from torchvision.ops.misc import SqueezeExcitation

# the submodules, not the package face: funcattr.canonizers.registry loads this module lazily
from funcattr.canonizers.attributes import AttributeCanonizer, AttributeMap
from funcattr.canonizers.base import CompositeCanonizer
from funcattr.canonizers.batchnorm import MergeBatchNorm, SequentialMergeBatchNorm
from funcattr.layer import GatedSum, Sum

__all__ = [
    "DenseNetCanonizer",
    "DenseNetMergeBatchNorm",
    "GatedSum",
    "MobileNetV2Canonizer",
    "MobileNetV3Canonizer",
    "ResNetBasicBlockCanonizer",
    "ResNetBottleneckCanonizer",
    "ResNetCanonizer",
    "SqueezeExcitationCanonizer",
    "VGGCanonizer",
]


def _contains(model: nn.Module, *kinds: type) -> bool:
    """Whether any module of ``model`` (the root included) is one of ``kinds``."""
    return any(isinstance(module, kinds) for module in model.modules())


# --------------------------------------------------------------------------------------------
# VGG and ResNet (Zennit's)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VGGCanonizer(SequentialMergeBatchNorm):
    """Canonizer for torchvision VGG models: :class:`SequentialMergeBatchNorm`.

    Examples
    --------
    >>> VGGCanonizer()
    VGGCanonizer()
    """

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains a torchvision VGG."""
        return _contains(model, VGG)


def _residual(module: nn.Module, identity: Tensor, out: Tensor) -> Tensor:
    return module.canonizer_sum(torch.stack([identity, out], dim=-1))


def _bottleneck_forward(self: Bottleneck, x: Tensor) -> Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(_residual(self, identity, out))


def _basic_block_forward(self: BasicBlock, x: Tensor) -> Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(_residual(self, identity, out))


def _forward_and_children(kind: type, forward, **children):
    """An attribute map: for modules of type ``kind``, a new forward and new children."""

    def attribute_map(name: str, module: nn.Module) -> dict | None:
        if not isinstance(module, kind):
            return None
        return {"forward": forward.__get__(module), **{k: f() for k, f in children.items()}}

    attribute_map.__qualname__ = f"attributes_of_{kind.__name__}"
    return attribute_map


_bottleneck_attributes = _forward_and_children(Bottleneck, _bottleneck_forward, canonizer_sum=Sum)
_basic_block_attributes = _forward_and_children(BasicBlock, _basic_block_forward,
                                                canonizer_sum=Sum)


@dataclass(frozen=True)
class ResNetBottleneckCanonizer(AttributeCanonizer):
    """ResNet ``Bottleneck``: the residual addition goes through a ``Sum`` (``canonizer_sum``).

    Examples
    --------
    >>> ResNetBottleneckCanonizer()
    ResNetBottleneckCanonizer()
    """

    attribute_map: AttributeMap = field(
        default_factory=lambda: _bottleneck_attributes, init=False, repr=False)

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains a ResNet ``Bottleneck``."""
        return _contains(model, Bottleneck)


@dataclass(frozen=True)
class ResNetBasicBlockCanonizer(AttributeCanonizer):
    """ResNet ``BasicBlock``: the residual addition goes through a ``Sum`` (``canonizer_sum``).

    Examples
    --------
    >>> ResNetBasicBlockCanonizer()
    ResNetBasicBlockCanonizer()
    """

    attribute_map: AttributeMap = field(
        default_factory=lambda: _basic_block_attributes, init=False, repr=False)

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains a ResNet ``BasicBlock``."""
        return _contains(model, BasicBlock)


class ResNetCanonizer(CompositeCanonizer):
    """Canonizer for torchvision ResNets: merge batch norms, residual additions through ``Sum``.

    ``CompositeCanonizer([SequentialMergeBatchNorm(), ResNetBottleneckCanonizer(),
    ResNetBasicBlockCanonizer()])``, as in Zennit.

    Examples
    --------
    >>> ResNetCanonizer()
    ResNetCanonizer()
    """

    def __init__(self) -> None:
        super().__init__((SequentialMergeBatchNorm(), ResNetBottleneckCanonizer(),
                          ResNetBasicBlockCanonizer()))

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains ResNet blocks (ResNet, ResNeXt, Wide ResNet)."""
        return _contains(model, Bottleneck, BasicBlock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------------
# DenseNet
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DenseNetMergeBatchNorm(MergeBatchNorm):
    """Merge DenseNet's batch norms that follow a convolution: ``features.norm0`` and ``norm2``.

    Found by structure (``_DenseLayer.conv1`` → ``norm2``, and the stem's ``conv0`` →
    ``norm0``), not by registration order, which would merge a dense layer's ``conv2`` into the
    next layer's ``norm1`` (a norm of the *concatenated* features).
    """

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains a torchvision DenseNet."""
        return _contains(model, DenseNet)

    def pairs(self, model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
        found = []
        for name, module in model.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, DenseNet):
                features = dict(module.features.named_children())
                if isinstance(features.get("conv0"), self.linear_type) and isinstance(
                        features.get("norm0"), self.batch_norm_type):
                    found.append(((f"{prefix}features.conv0",), f"{prefix}features.norm0"))
            elif isinstance(module, _DenseLayer) and isinstance(
                    module.conv1, self.linear_type) and isinstance(module.norm2,
                                                                   self.batch_norm_type):
                found.append(((f"{prefix}conv1",), f"{prefix}norm2"))
        return found


def _densenet_forward(self: DenseNet, x: Tensor) -> Tensor:
    out = self.canonizer_relu(self.features(x))
    out = torch.flatten(self.canonizer_avgpool(out), 1)
    return self.classifier(out)


_densenet_attributes = _forward_and_children(
    DenseNet, _densenet_forward, canonizer_relu=nn.ReLU,
    canonizer_avgpool=lambda: nn.AdaptiveAvgPool2d((1, 1)),
)


@dataclass(frozen=True)
class _DenseNetModules(AttributeCanonizer):
    attribute_map: AttributeMap = field(
        default_factory=lambda: _densenet_attributes, init=False, repr=False)


class DenseNetCanonizer(CompositeCanonizer):
    """Canonizer for torchvision DenseNets (121, 161, 169, 201).

    Merges the batch norms that follow a convolution (:class:`DenseNetMergeBatchNorm`). The
    other batch norms act on concatenated features and come before a ReLU: merging them into
    the next convolution would be wrong (the ReLU is between), so they stay and the presets
    give them ``Pass``. The final functional ReLU and average pooling become the modules
    ``canonizer_relu`` and ``canonizer_avgpool`` (``Pass`` and ``Norm`` in the presets).
    Concatenations keep their ordinary gradient, which splits the relevance exactly.

    Examples
    --------
    >>> DenseNetCanonizer()
    DenseNetCanonizer()
    """

    def __init__(self) -> None:
        super().__init__((DenseNetMergeBatchNorm(), _DenseNetModules()))

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains a torchvision DenseNet."""
        return _contains(model, DenseNet)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------------
# MobileNet V2 / V3 and squeeze-excitation
# --------------------------------------------------------------------------------------------

def _inverted_residual_v2_forward(self: InvertedResidualV2, x: Tensor) -> Tensor:
    return _residual(self, x, self.conv(x))


def _inverted_residual_v3_forward(self: InvertedResidualV3, x: Tensor) -> Tensor:
    return _residual(self, x, self.block(x))


def _mobilenet_v2_forward(self: MobileNetV2, x: Tensor) -> Tensor:
    out = self.canonizer_avgpool(self.features(x))
    return self.classifier(torch.flatten(out, 1))


def _squeeze_excitation_forward(self: SqueezeExcitation, x: Tensor) -> Tensor:
    return self.canonizer_gate(x.unsqueeze(-1), self._scale(x).unsqueeze(-1))


def _residual_attributes(kind: type, forward):
    base = _forward_and_children(kind, forward, canonizer_sum=Sum)

    def attribute_map(name: str, module: nn.Module) -> dict | None:
        return base(name, module) if getattr(module, "use_res_connect", False) else None

    attribute_map.__qualname__ = base.__qualname__
    return attribute_map


_v2_attributes = _residual_attributes(InvertedResidualV2, _inverted_residual_v2_forward)
_v3_attributes = _residual_attributes(InvertedResidualV3, _inverted_residual_v3_forward)
_v2_root_attributes = _forward_and_children(
    MobileNetV2, _mobilenet_v2_forward, canonizer_avgpool=lambda: nn.AdaptiveAvgPool2d((1, 1))
)
_squeeze_excitation_attributes = _forward_and_children(
    SqueezeExcitation, _squeeze_excitation_forward, canonizer_gate=GatedSum
)


@dataclass(frozen=True)
class _MobileNetV2Modules(AttributeCanonizer):
    attribute_map: AttributeMap = field(
        default_factory=lambda: _v2_attributes, init=False, repr=False)


@dataclass(frozen=True)
class _MobileNetV2Root(AttributeCanonizer):
    attribute_map: AttributeMap = field(
        default_factory=lambda: _v2_root_attributes, init=False, repr=False)


@dataclass(frozen=True)
class _MobileNetV3Modules(AttributeCanonizer):
    attribute_map: AttributeMap = field(
        default_factory=lambda: _v3_attributes, init=False, repr=False)


@dataclass(frozen=True)
class SqueezeExcitationCanonizer(AttributeCanonizer):
    """torchvision ``SqueezeExcitation``: ``scale * input`` through a :class:`GatedSum`.

    The relevance goes to the block's input only (the gate is treated like a weight, as for
    gates in LSTMs); the ordinary gradient is unchanged.

    Examples
    --------
    >>> SqueezeExcitationCanonizer()
    SqueezeExcitationCanonizer()
    """

    attribute_map: AttributeMap = field(
        default_factory=lambda: _squeeze_excitation_attributes, init=False, repr=False)

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains torchvision's ``SqueezeExcitation``."""
        return _contains(model, SqueezeExcitation)


class MobileNetV2Canonizer(CompositeCanonizer):
    """Canonizer for torchvision MobileNetV2.

    Merges conv-BN pairs (:class:`~funcattr.canonizers.SequentialMergeBatchNorm`), routes each
    inverted residual's addition through ``canonizer_sum`` and the functional average pooling
    through the module ``canonizer_avgpool``.

    Examples
    --------
    >>> MobileNetV2Canonizer()
    MobileNetV2Canonizer()
    """

    def __init__(self) -> None:
        super().__init__((SequentialMergeBatchNorm(), _MobileNetV2Modules(), _MobileNetV2Root()))

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains a torchvision MobileNetV2."""
        return _contains(model, MobileNetV2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MobileNetV3Canonizer(CompositeCanonizer):
    """Canonizer for torchvision MobileNetV3 (small and large).

    Merges conv-BN pairs, routes each inverted residual's addition through ``canonizer_sum``
    and squeeze-excitation through :class:`GatedSum` (:class:`SqueezeExcitationCanonizer`);
    Hardswish is an activation (``Pass`` in the presets).

    Examples
    --------
    >>> MobileNetV3Canonizer()
    MobileNetV3Canonizer()
    """

    def __init__(self) -> None:
        super().__init__((SequentialMergeBatchNorm(), _MobileNetV3Modules(),
                          SqueezeExcitationCanonizer()))

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        """Whether ``model`` contains a torchvision MobileNetV3 (small or large)."""
        return _contains(model, MobileNetV3)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
