"""How LXT 2.1 is applied for each reference (imported only in LXT's side environment).

LXT 2.1 ships patch maps for torchvision's ViT (CP-LRP only), BERT (AttnLRP only), GPT-2, LLaMA,
Qwen2/3 and Gemma3 (both). The two variants it does not ship are composed here from its own
patch functions and rules, the way its shipped maps do it:

- AttnLRP for ``torch.nn.MultiheadAttention`` (torchvision ViT): its ``vit_torch.cp_LRP`` map
  with the MHA entry replaced by the uniform rule of its HF attention wrapper.
- CP-LRP for BERT: ``transformers``' own BERT classes with LXT's LayerNorm, Dropout and
  activation patches, and forward hooks that detach the query and key projections.

All patches are process-wide and cannot be undone (``patch_method`` keeps no undo), so every
variant runs in its own process (``regenerate.py``) or with :class:`PatchStates`
(``benchmarks/lxt_side.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

_MISSING = object()


def attnlrp_multi_head_attention_forward(self, query, key, value, *args, **kwargs):
    """AttnLRP on ``torch.nn.MultiheadAttention`` from LXT's rule ``divide_gradient``.

    Mirrors LXT's ``patches.cp_multi_head_attention_forward`` with the uniform rule of its
    ``patches.wrap_attention_forward`` (query / 4, key / 4, value / 2) in place of the detach.
    The in-projection is linear, so dividing the gradient at its input equals dividing it at
    q, k and v.
    """
    from lxt.efficient.rules import divide_gradient

    query = divide_gradient(query, 4)
    key = divide_gradient(key, 4)
    value = divide_gradient(value, 2)
    return self.original_forward(query, key, value, *args, **kwargs)


def vit_patch_map(variant: str) -> dict[Any, Any]:
    """LXT's patch map for torchvision's ViT: ``"cp"`` is LXT's own ``vit_torch.cp_LRP``."""
    from lxt.efficient.models import vit_torch
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method
    from torchvision.models import vision_transformer

    if variant == "cp":
        return vit_torch.cp_LRP
    return {
        vision_transformer.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
        vision_transformer.nn.LayerNorm: partial(patch_method, layer_norm_forward),
        vision_transformer.nn.MultiheadAttention: partial(
            patch_method, attnlrp_multi_head_attention_forward, keep_original=True
        ),
    }


def bert_composed_patch_map() -> dict[Any, Any]:
    """LXT's LayerNorm, Dropout and identity-rule patches for ``transformers``' own BERT."""
    import transformers.activations
    from lxt.efficient.patches import (
        dropout_forward,
        layer_norm_forward,
        non_linear_forward,
        patch_method,
    )

    return {
        torch.nn.LayerNorm: partial(patch_method, layer_norm_forward),
        torch.nn.Dropout: partial(patch_method, dropout_forward),
        transformers.activations.GELUActivation: partial(
            patch_method, non_linear_forward, keep_original=True
        ),
    }


def bert_attention_rules(variant: str) -> dict[str, Any]:
    """Output rule per projection of ``BertSelfAttention``: CP detaches q and k; ``"attnlrp"``
    is the uniform rule (q / 4, k / 4, v / 2), the net effect of LXT's BERT copy."""
    from lxt.efficient.rules import divide_gradient, stop_gradient

    if variant == "cp":
        return {"query": stop_gradient, "key": stop_gradient}
    return {
        "query": partial(divide_gradient, factor=4),
        "key": partial(divide_gradient, factor=4),
        "value": partial(divide_gradient, factor=2),
    }


def hook_bert_attention(model: nn.Module, variant: str) -> list[Any]:
    """Register :func:`bert_attention_rules` as forward hooks on every layer; the handles."""
    handles = []
    for layer in model.encoder.layer:
        attention = layer.attention.self
        for name, rule in bert_attention_rules(variant).items():
            handles.append(
                getattr(attention, name).register_forward_hook(
                    lambda module, args, output, rule=rule: rule(output)
                )
            )
    return handles


class PatchStates:
    """Snapshots of the attributes LXT patches, to switch between patch sets in one process.

    ``capture(label)`` records the current value of every ``(owner, name)`` target (a mapping
    such as ``ALL_ATTENTION_FUNCTIONS`` is copied: LXT's CP wrapper mutates it in place);
    ``activate(label)`` puts those values back.
    """

    def __init__(self, targets: list[tuple[Any, str]]) -> None:
        self.targets = targets
        self.states: dict[str, dict[tuple[int, str], Any]] = {}

    def capture(self, label: str) -> None:
        state = {}
        for owner, name in self.targets:
            value = vars(owner).get(name, _MISSING)
            if isinstance(value, Mapping):
                value = dict(value.items())
            state[(id(owner), name)] = value
        self.states[label] = state

    def activate(self, label: str) -> None:
        state = self.states[label]
        for owner, name in self.targets:
            value = state[(id(owner), name)]
            if value is _MISSING:
                if name in vars(owner):
                    delattr(owner, name)
            else:
                setattr(owner, name, dict(value) if isinstance(value, dict) else value)
