"""The demo vision transformer: a small torchvision ViT trained on the demo shapes.

:func:`build_demo_vit` makes torchvision's ``VisionTransformer`` (64x64 images, 8x8 patches,
4 layers of 4 heads, width 64) with a convolutional stem (three 3x3 convolutions of stride 2
with BatchNorm and ReLU, then the 1x1 patch projection; torchvision's ``conv_stem_configs``,
"early convolutions help transformers see better"), which learns the shapes from a few
epochs of the stream where a plain 8x8 patch projection stalls near 50% accuracy on CPU
budgets. :func:`load_demo_vit` loads the weights shipped with the
package (``vit_weights.pt``), as trained by ``python -m funcattr.demo.train_vit``. It takes
the same ``[N, 3, 64, 64]`` images in ``[0, 1]`` as :class:`~funcattr.demo.model.DemoNet`,
and is explained with :class:`funcattr.transformers.AttnLRP` or ``CPLRP``
(``funcattr explain --model demo-vit``).

>>> from funcattr.demo.vit import load_demo_vit
>>> from funcattr.demo import load_demo_samples
>>> images, labels, _, _ = load_demo_samples()
>>> bool((load_demo_vit()(images).argmax(1) == labels).all())
True
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from funcattr.demo.data import IMAGE_SIZE, NUM_CLASSES

__all__ = ["VIT_CONFIG", "VIT_WEIGHTS_FILE", "build_demo_vit", "load_demo_vit"]

#: Name of the ViT's weights file inside the ``funcattr.demo`` package.
VIT_WEIGHTS_FILE = "vit_weights.pt"
#: torchvision ``VisionTransformer`` arguments of the demo ViT.
#: Output channels of the stem's stride-2 convolutions (64 -> 32 -> 16 -> 8 pixels).
VIT_STEM = (16, 32, 64)
VIT_CONFIG = {
    "image_size": IMAGE_SIZE,
    "patch_size": 8,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 64,
    "mlp_dim": 128,
    "num_classes": NUM_CLASSES,
}


def build_demo_vit(dtype: torch.dtype | None = None) -> nn.Module:
    """A fresh (randomly initialised) demo ViT, ``torchvision``'s ``VisionTransformer``."""
    from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

    stem = [ConvStemConfig(out_channels=channels, kernel_size=3, stride=2)
            for channels in VIT_STEM]
    model = VisionTransformer(**VIT_CONFIG, conv_stem_configs=stem)
    return model.to(dtype) if dtype is not None else model


def load_demo_vit(dtype: torch.dtype | None = torch.float32) -> nn.Module:
    """The trained demo ViT shipped with the package, in eval mode.

    Parameters
    ----------
    dtype : torch.dtype or None, optional
        Dtype of the returned model (the weights are stored as ``float32``); the default
        dtype if None.
    """
    model = build_demo_vit()
    with resources.files(__package__).joinpath(VIT_WEIGHTS_FILE).open("rb") as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(dtype or torch.get_default_dtype()).eval()
