"""The composites :class:`AttnLRP` and :class:`CPLRP` (registered as ``attn_lrp``, ``cp_lrp``).

They find the places AttnLRP and CP-LRP change the gradient by module type and by attribute
name under a parent, in torchvision's ``VisionTransformer`` (and any model built from
``torch.nn.MultiheadAttention``), ``transformers`` BERT-family models (BERT, MiniLM), GPT-2
and LLaMA-family models (LLaMA, Mistral, Qwen, Gemma):

=====================================  ===============================  =====================
place                                  AttnLRP                          CP-LRP
=====================================  ===============================  =====================
element-wise activation                ``IdentityRule()``               ``IdentityRule()``
LayerNorm / RMSNorm                    ``NormRule(kind)``               ``NormRule(kind)``
``MultiheadAttention``                 ``AttentionInputs(.25, .25, .5)``  ``(0, 0, 1)``
``query/key/value``, ``q_proj``...     ``ScaleOutput(.25/.25/.5)``      q, k ``ScaleOutput(0)``
packed ``c_attn`` (GPT-2)              ``ScaleOutput((.25, .25, .5))``  ``((0, 0, 1))``
gated MLP ``down_proj`` / ``gate_proj``  ``ScaleInput(.5)`` / -           - / ``ScaleOutput(0)``
everything else                        the plain gradient               the plain gradient
=====================================  ===============================  =====================

Both are in the Gradient x Input form (``form = 'gradient_x_input'``): relevance is the input
times the modified gradient, which :func:`funcattr.relevance` computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from funcattr import types
from funcattr.checks import is_activation, is_norm, never_called
from funcattr.composites import Composite, register_composite
from funcattr.composites.maps import record_arguments
from funcattr.core import Rule
from funcattr.rules import Gamma
from funcattr.transformers.rules import (
    AsGradient,
    AttentionInputs,
    IdentityRule,
    NormRule,
    ScaleInput,
    ScaleOutput,
    norm_kind,
)

__all__ = [
    "CPLRP",
    "GATED_MLP",
    "PACKED_QKV",
    "SEPARATE_QKV",
    "AttnLRP",
    "TransformerComposite",
    "plan_rules",
]

#: Child names of attention modules with separate q, k, v projections.
SEPARATE_QKV: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),  # BERT family
    ("q_proj", "k_proj", "v_proj"),  # LLaMA, Mistral, Qwen, Gemma, OPT, BART, ...
    ("q", "k", "v"),  # T5
)
#: Child names of packed projections whose output is ``[q | k | v]`` in equal thirds.
PACKED_QKV: tuple[str, ...] = ("c_attn",)  # GPT-2
#: Child names of a gated MLP ``down(act(gate(x)) * up(x))``.
GATED_MLP: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")


def _linear_like(module: nn.Module | None) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, Tensor) and weight.ndim == 2


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _attention_rules(name: str, module: nn.Module, q: float, k: float, v: float
                     ) -> dict[str, Rule]:
    """The rules on one module's attention projections (empty if it has none)."""
    if isinstance(module, nn.MultiheadAttention):
        return {name: AttentionInputs(q, k, v)}
    children = dict(module.named_children())
    for names in SEPARATE_QKV:
        if all(_linear_like(children.get(child)) for child in names):
            return {_join(name, child): ScaleOutput(factor)
                    for child, factor in zip(names, (q, k, v), strict=True) if factor != 1.0}
    for packed in PACKED_QKV:
        if _linear_like(children.get(packed)):
            if _linear_like(children.get("q_attn")):  # GPT-2 cross-attention: c_attn = [k | v]
                return {_join(name, "q_attn"): ScaleOutput(q),
                        _join(name, packed): ScaleOutput((k, v))}
            return {_join(name, packed): ScaleOutput((q, k, v))}
    return {}


def _gated_rules(name: str, module: nn.Module, cp: bool) -> dict[str, Rule]:
    children = dict(module.named_children())
    if not all(_linear_like(children.get(child)) for child in GATED_MLP):
        return {}
    gate, _, down = GATED_MLP
    if cp:  # the gate held constant: relevance flows through up only
        return {_join(name, gate): ScaleOutput(0.0)}
    return {_join(name, down): ScaleInput(0.5)}


def plan_rules(model: nn.Module, *, cp: bool, epsilon: float = 1e-10,
               conv_gamma: float | None = None, linear_gamma: float | None = None
               ) -> dict[str, Rule]:
    """The rule of every module of ``model`` that AttnLRP (``cp=False``) or CP-LRP changes.

    Attention and gated MLPs are found by type and child names (:data:`SEPARATE_QKV`,
    :data:`PACKED_QKV`, :data:`GATED_MLP`), activations and normalisations by type
    (:func:`is_activation`, :func:`norm_kind`); with ``conv_gamma``/``linear_gamma`` the
    remaining convolutions / dense layers get ``AsGradient(Gamma(...))``. Modules whose forward
    never runs (:func:`never_called`) get no rule.
    """
    q, k, v = (0.0, 0.0, 1.0) if cp else (0.25, 0.25, 0.5)
    rules: dict[str, Rule] = {}
    skipped: set[str] = set()
    modules = dict(model.named_modules())
    for name, module in modules.items():
        skipped.update(_join(name, child) for child in never_called(module))
        for target, rule in (*_attention_rules(name, module, q, k, v).items(),
                             *_gated_rules(name, module, cp).items()):
            rules.setdefault(target, rule)
    for name, module in modules.items():
        if name in rules or name in skipped:
            continue
        if is_activation(module):
            rules[name] = IdentityRule(epsilon)
        elif is_norm(module) and (kind := norm_kind(module)) is not None:
            rules[name] = NormRule(kind)
        elif conv_gamma is not None and isinstance(module, types.Convolution):
            rules[name] = AsGradient(Gamma(conv_gamma))
        elif linear_gamma is not None and (
                isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
            rules[name] = AsGradient(Gamma(linear_gamma))
    return rules


class _Shown(str):
    """Text shown as it is in a table row (a rule that depends on the module)."""

    def __repr__(self) -> str:
        return str(self)


def _check_gamma(owner: str, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{owner}({name}={value!r}): expected None or a finite number >= 0, "
                         f"got {value!r}. Pass e.g. {name}=0.25.")


@dataclass(frozen=True, init=False, repr=False)
class TransformerComposite(Composite):
    """Base of :class:`AttnLRP` and :class:`CPLRP`: rules found per model by
    :func:`plan_rules` when the composite is resolved (``assign_rules``, ``functionalize``)."""

    form: ClassVar[str] = "gradient_x_input"
    cp: ClassVar[bool] = False

    epsilon: float
    conv_gamma: float | None
    linear_gamma: float | None

    def __init__(self, *, epsilon: float = 1e-10, conv_gamma: float | None = None,
                 linear_gamma: float | None = None, canonizers=None) -> None:
        owner = type(self).__name__
        IdentityRule(epsilon)  # checks epsilon
        _check_gamma(owner, "conv_gamma", conv_gamma)
        _check_gamma(owner, "linear_gamma", linear_gamma)
        super().__init__(canonizers=canonizers)
        self._store(epsilon=float(epsilon), conv_gamma=conv_gamma, linear_gamma=linear_gamma)
        optional = {"conv_gamma": conv_gamma, "linear_gamma": linear_gamma,
                    "canonizers": canonizers}
        record_arguments(self, {"epsilon": float(epsilon)},
                         **{key: value for key, value in optional.items() if value is not None})

    def module_map(self, ctx: dict, name: str, module: nn.Module) -> Rule | None:
        if "plan" not in ctx:  # the first module visited is the model itself
            ctx["plan"] = plan_rules(module, cp=self.cp, epsilon=self.epsilon,
                                     conv_gamma=self.conv_gamma, linear_gamma=self.linear_gamma)
        return ctx["plan"].get(name)

    def rows(self) -> list[tuple[str, str, Any]]:
        q, k, v = (0.0, 0.0, 1.0) if self.cp else (0.25, 0.25, 0.5)
        rows = [
            ("activations", "element-wise", IdentityRule(self.epsilon)),
            ("norms", "LayerNorm, RMSNorm", _Shown("NormRule(kind)")),
            ("attention", "MultiheadAttention", AttentionInputs(q, k, v)),
            ("attention", "q, k, v projections",
             _Shown(f"ScaleOutput({q}), ScaleOutput({k}), ScaleOutput({v})")),
            ("attention", "packed c_attn", ScaleOutput((q, k, v))),
            ("gated MLP", "gate_proj" if self.cp else "down_proj",
             ScaleOutput(0.0) if self.cp else ScaleInput(0.5)),
        ]
        if self.conv_gamma is not None:
            rows.append(("gamma", "convolutions", AsGradient(Gamma(self.conv_gamma))))
        if self.linear_gamma is not None:
            rows.append(("gamma", "Linear, Conv1D", AsGradient(Gamma(self.linear_gamma))))
        return rows


@register_composite("attn_lrp")
class AttnLRP(TransformerComposite):
    """AttnLRP [achtibat2024]: the uniform rule on attention, identity rules elsewhere.

    The Gradient x Input form: relevance is ``input * gradient`` (use
    :func:`funcattr.relevance`). ``conv_gamma``/``linear_gamma`` add LRP-gamma on the
    convolutions / dense layers (LXT's ViT recipe), through :class:`AsGradient`.

    >>> print(AttnLRP().table())
    activations  element-wise         IdentityRule(epsilon=1e-10)
    norms        LayerNorm, RMSNorm   NormRule(kind)
    attention    MultiheadAttention   AttentionInputs(query=0.25, key=0.25, value=0.5)
    attention    q, k, v projections  ScaleOutput(0.25), ScaleOutput(0.25), ScaleOutput(0.5)
    attention    packed c_attn        ScaleOutput(factor=(0.25, 0.25, 0.5))
    gated MLP    down_proj            ScaleInput(factor=0.5)
    """


@register_composite("cp_lrp")
class CPLRP(TransformerComposite):
    """CP-LRP [ali2022]: attention weights held constant (q and k gradients stopped).

    The Gradient x Input form, as :class:`AttnLRP`; relevance flows only through the values,
    and with every bias zero it is conserved.

    >>> print(CPLRP().table())
    activations  element-wise         IdentityRule(epsilon=1e-10)
    norms        LayerNorm, RMSNorm   NormRule(kind)
    attention    MultiheadAttention   AttentionInputs(query=0.0, key=0.0, value=1.0)
    attention    q, k, v projections  ScaleOutput(0.0), ScaleOutput(0.0), ScaleOutput(1.0)
    attention    packed c_attn        ScaleOutput(factor=(0.0, 0.0, 1.0))
    gated MLP    gate_proj            ScaleOutput(factor=0.0)
    """

    cp: ClassVar[bool] = True
