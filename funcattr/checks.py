"""The model check: what a composite leaves that would make relevance quietly wrong.

``functionalize`` (and Zennit's ``composite.context``) resolve a composite on a model and
then check the result, reporting every problem at once in one :class:`ModelCheckWarning`
(or, with ``check='raise'``, one ``ValueError``):

- **unruled modules whose gradient is not a relevance rule** for the composite's form (in
  Zennit's form, for LRP composites: a composite of modified gradients alone, such as guided
  backprop, explains a gradient on purpose and is not checked):
  normalisations (LayerNorm, RMSNorm, GroupNorm), attention (``MultiheadAttention``, the
  attention modules of ``transformers``), recurrent layers (LSTM, GRU, RNN), non-linear
  activations (GELU, SiLU, Tanh, ``transformers``' activation classes; in Zennit's form every
  activation but ReLU) and, in Zennit's form, BatchNorm;
- **ruled modules whose forward never runs** (``MultiheadAttention.out_proj``: the attention
  uses its weight directly, so a rule on it has no effect);
- **an un-canonized BatchNorm or residual model** in Zennit's form where a canonizer is
  known (:func:`funcattr.canonizers.canonizers_for`): the fix names it;
- **modules in training mode whose output depends on it** (:func:`training_dependent`):
  dropout makes two calls differ, batch norm makes a sample's explanation depend on the rest
  of its batch. This one is checked for the plain gradient too (no composite): an
  attribution of a model in training mode is random or batch-dependent whatever the rules.
  Modules that behave alike in both modes are not reported (``nn.Module`` starts in training
  mode; a ``Linear``/``ReLU`` model left there is explained correctly).

The other checks concern rules: the plain gradient (no composite) claims no relevance rule.
Silence the warning with ``functionalize(..., check='ignore')`` or
``warnings.filterwarnings('ignore', category=funcattr.ModelCheckWarning)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from funcattr import types
from funcattr.canonizers import canonizers_for
from funcattr.core import LinearRule, Rule

__all__ = [
    "CHECKS",
    "ModelCheckWarning",
    "Problem",
    "check_argument",
    "find_problems",
    "is_activation",
    "is_attention",
    "is_norm",
    "never_called",
    "report_problems",
    "training_dependent",
    "training_problems",
]

#: ``check=`` values: warn (default), raise a ``ValueError``, or check nothing.
CHECKS = ("warn", "raise", "ignore")

_SILENCE = ("Silence this with functionalize(..., check='ignore') or "
            "warnings.filterwarnings('ignore', category=funcattr.ModelCheckWarning); make it an "
            "error with check='raise'.")
_TRANSFORMER_FIX = ("use funcattr.transformers.AttnLRP() or CPLRP() (and funcattr.relevance), "
                    "which have rules for them")


class ModelCheckWarning(UserWarning):
    """``functionalize`` found modules that would make the relevance quietly wrong (or, in
    training mode, any attribution).

    Silence it with ``functionalize(..., check='ignore')`` or
    ``warnings.filterwarnings('ignore', category=funcattr.ModelCheckWarning)``.
    """


@dataclass(frozen=True)
class Problem:
    """One module the check reports: its name, type, what is wrong and how to fix it."""

    name: str
    kind: str
    what: str
    fix: str


def never_called(parent: nn.Module) -> tuple[str, ...]:
    """Children of ``parent`` whose forward never runs (their weights are used directly):
    ``out_proj`` of ``torch.nn.MultiheadAttention``."""
    return ("out_proj",) if isinstance(parent, nn.MultiheadAttention) else ()


def _from_transformers(module: nn.Module) -> bool:
    return type(module).__module__.startswith("transformers.")


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer by type or name: torch's LayerNorm, RMSNorm, GroupNorm, or any
    class whose name ends in ``LayerNorm``/``RMSNorm``/``RmsNorm``."""
    return isinstance(module, nn.LayerNorm | nn.RMSNorm | nn.GroupNorm | nn.LocalResponseNorm) \
        or type(module).__name__.lower().endswith(("layernorm", "rmsnorm"))


def is_attention(module: nn.Module) -> bool:
    """``torch.nn.MultiheadAttention`` or a ``transformers`` class named ``*Attention``."""
    return isinstance(module, nn.MultiheadAttention) or (
        _from_transformers(module) and type(module).__name__.endswith("Attention"))


def is_activation(module: nn.Module) -> bool:
    """An element-wise activation: torch's (``funcattr.types.Activation``) or one of
    ``transformers.activations`` (``GELUActivation``, ``NewGELUActivation``, ...)."""
    return isinstance(module, types.Activation) or (
        type(module).__module__ == "transformers.activations")


#: Activations whose gradient is a relevance rule already: Zennit's form (ReLU passes the
#: relevance of active units), the Gradient x Input form (the identity rule ``f(x) / x`` of a
#: piecewise linear activation through 0 is its derivative).
_SAFE_ACTIVATIONS = {
    "relevance": (nn.ReLU,),
    "gradient_x_input": (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.RReLU),
}


def _unsafe(module: nn.Module, form: str) -> tuple[str, str] | None:
    """``(what, fix)`` if ``module`` must not keep its plain gradient in ``form``."""
    if is_norm(module):
        return ("no rule: a normalisation's gradient (through its standard deviation) is not "
                "a relevance rule", _TRANSFORMER_FIX)
    if is_attention(module):
        return ("no rule: the gradient through attention (q k^T, softmax, A V) is not a "
                "relevance rule", _TRANSFORMER_FIX)
    if isinstance(module, nn.RNNBase | nn.RNNCellBase):
        return ("no rule: funcattr has no LRP rule for recurrent layers",
                "explain the model with plain gradient attributors (composite=None)")
    if is_activation(module) and not isinstance(module, _SAFE_ACTIVATIONS[form]):
        fix = ("map it to funcattr.rules.Pass(), e.g. MixedComposite([LayerMapComposite("
               "[(its type, Pass())]), composite])" if form == "relevance" else
               "map it to funcattr.transformers.IdentityRule()")
        return "no rule: the gradient of a non-linear activation is not a relevance rule", fix
    if form == "relevance" and isinstance(module, types.BatchNorm):
        return ("no rule: a batch norm's gradient rescales relevance",
                "merge it into the layer before it with a canonizer (funcattr.canonizers_for("
                "model)), or give it funcattr.rules.Pass() as the LRP presets do")
    return None


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_INSTANCE_NORM = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def training_dependent(module: nn.Module) -> str | None:
    """What ``module`` does wrong in training mode, or ``None`` (in eval mode, or a
    module that computes the same in both): dropout with ``p > 0`` (and attention dropout of
    ``MultiheadAttention`` and ``transformers``' attention modules), ``RReLU``'s random slope,
    batch norm (batch statistics) and instance norm (its own statistics instead of the
    tracked ones). Norms that track no running statistics are left out: ``eval()`` would not
    change them."""
    if not module.training:
        return None
    if isinstance(module, _DROPOUT) and module.p > 0:
        return "dropout makes two calls differ"
    if isinstance(module, nn.RReLU) and module.lower != module.upper:
        return "its random slope makes two calls differ"
    if is_attention(module) and _positive(getattr(module, "dropout", None)
                                          if isinstance(module, nn.MultiheadAttention)
                                          else getattr(module, "attention_dropout", None)):
        return "attention dropout makes two calls differ"
    tracked = getattr(module, "running_mean", None) is not None
    if isinstance(module, _BATCH_NORM) and tracked:
        return "batch statistics make a sample's explanation depend on the rest of its batch"
    if isinstance(module, _INSTANCE_NORM) and tracked:
        return "each sample is normalised by its own statistics, not the tracked ones"
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def training_problems(model: nn.Module) -> list[Problem]:
    """A problem for each module of ``model`` in training mode whose output depends on it
    (:func:`training_dependent`)."""
    problems = []
    for name, module in model.named_modules():
        what = training_dependent(module)
        if what is not None:
            problems.append(Problem(name or "<root>", type(module).__name__,
                                    f"in training mode, {what}",
                                    "call model.eval() before explaining the model"))
    return problems


def _covered(name: str, rules: Mapping[str, Rule]) -> bool:
    """Whether ``name`` or a module inside it has a rule (attention ruled at its projections)."""
    prefix = f"{name}." if name else ""
    return name in rules or any(other.startswith(prefix) for other in rules)


def find_problems(model: nn.Module, view: nn.Module, rules: Mapping[str, Rule], form: str,
                  canonized: bool) -> list[Problem]:
    """Every problem of ``rules`` (resolved on ``view``, the canonized ``model``) in ``form``.

    ``canonized``: whether canonizers were applied (then no canonizer is suggested). In
    Zennit's form only LRP composites are checked for rules (some rule is an LRP rule): a
    composite of modified gradients alone (guided backprop, DeconvNet) explains a gradient on
    purpose. Modules in training mode (:func:`training_problems`) are reported for every
    composite.
    """
    problems = training_problems(model)
    if form == "relevance" and not any(isinstance(rule, LinearRule) for rule in rules.values()):
        return problems
    modules = dict(view.named_modules())
    for name, module in modules.items():
        for child in never_called(module):
            path = f"{name}.{child}" if name else child
            if path in rules:
                problems.append(Problem(
                    path, type(modules[path]).__name__,
                    f"{rules[path]!r} never runs: {type(module).__name__} uses the weight of "
                    f"its {child} directly, not its forward",
                    f"drop the rule on it; give the {type(module).__name__} a rule instead"))
        if name in rules:
            continue
        unsafe = _unsafe(module, form)
        if unsafe is None or (is_attention(module) and (
                (form == "gradient_x_input" and _covered(name, rules))
                or any(is_attention(inner) for inner in module.modules() if inner is not module))):
            continue  # ruled at its projections, or reported at the attention inside it
        problems.append(Problem(name or "<root>", type(module).__name__, *unsafe))
    if form == "relevance" and not canonized and any(
            isinstance(module, types.BatchNorm) for module in modules.values()):
        suggested = canonizers_for(model)
        if suggested:
            problems.append(Problem(
                "<model>", type(model).__name__,
                "un-canonized: its batch norms are not merged into the layers before them (and "
                "residual additions, if any, have no rule)",
                f"pass canonizers=funcattr.canonizers_for(model), here {suggested!r}"))
    return problems


def report_problems(problems: Sequence[Problem], owner: str, check: str,
                    stacklevel: int = 3, subject: str = "relevance") -> None:
    """Warn (``check='warn'``) or raise (``'raise'``) one message listing every problem,
    grouped by what is wrong; ``subject`` names what would be wrong (``'attribution'`` for the
    plain gradient)."""
    if not problems or check == "ignore":
        return
    groups: dict[tuple[str, str], list[Problem]] = {}
    for problem in problems:
        key = (problem.what, problem.fix)
        groups.setdefault(key, []).append(problem)
    lines = [f"{owner}: {len(problems)} module(s) would make the {subject} quietly wrong:"]
    for (what, fix), members in groups.items():
        kinds = sorted({member.kind for member in members})
        names = ", ".join(member.name for member in members)
        lines.append(f"- {'/'.join(kinds)} {names}: {what}. Fix: {fix}.")
    lines.append(_SILENCE)
    message = "\n".join(lines)
    if check == "raise":
        raise ValueError(message)
    warnings.warn(message, ModelCheckWarning, stacklevel=stacklevel)


def check_argument(check: Any, owner: str) -> str:
    """``check`` validated against :data:`CHECKS`."""
    if check not in CHECKS:
        raise ValueError(f"{owner}(check={check!r}): expected one of {CHECKS}, got {check!r}. "
                         f"Pass check='warn' (default), 'raise' or 'ignore'.")
    return check
