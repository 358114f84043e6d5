"""The rule mechanism: the vocabulary rule authors write rules in.

A rule never hooks a module. ``functionalize`` replaces each ruled module's call by
``rule.apply(module, forward, *args)``; the result has the module's ordinary value and the
rule's gradient, through a new-style ``torch.autograd.Function`` whose backward is written
with ordinary differentiable operations, so everything composes with ``torch.func.vjp``,
``vmap``, ``grad``, ``jacrev`` and ``torch.compile``.

- :mod:`.terms`: :class:`Stabilizer` / :func:`stabilize`, :class:`ParamMod`, :class:`Term`,
  :class:`Group`, :func:`expand`: what an LRP rule is made of;
- :mod:`.rule`: the bases :class:`Rule`, :class:`LinearRule` (LRP rules as groups of terms),
  :class:`ElementwiseRule` (rules that map the output gradient directly);
- :mod:`.reference`: **the reference rule**, the paper's four steps ``z, s, c, R`` for any
  module, the specification of every LRP rule;
- :mod:`.functions`: the transform-safe Functions :func:`modified_gradient` and
  :func:`elementwise_rule`, for rules that write their own ``apply``; :func:`scale_gradient`,
  :func:`stop_gradient` and :func:`replace_gradient` (from :mod:`.rule`, which picks the fast
  path where it may) scale, stop or replace a gradient at the rules' level only;
- :mod:`.levels`: what the surrounding ``torch.func`` transforms look like
  (:func:`is_transformed`, :func:`is_differentiated`, :func:`concrete_value`) and
  :func:`rules_at_this_level`;
- :mod:`.switch`: :func:`reference_path` (and ``FUNCATTR_REFERENCE=1``) runs every rule on
  the reference path;
- :mod:`.call`: :class:`ModuleCall`, the call site a rule's ``apply`` receives;
- ``_fast/``: the fast path (optional; delete it and every rule runs on the reference).
"""

from funcattr.core.call import ModuleCall
from funcattr.core.functions import elementwise_rule, modified_gradient
from funcattr.core.levels import (
    concrete_value,
    is_differentiated,
    is_transformed,
    no_transform_active,
    only_rule_level,
    rules_at_this_level,
)
from funcattr.core.reference import lrp_backward
from funcattr.core.rule import (
    ElementwiseRule,
    LinearRule,
    Rule,
    fast_path_available,
    replace_gradient,
    scale_gradient,
    stop_gradient,
)
from funcattr.core.switch import reference_path, uses_reference
from funcattr.core.terms import (
    Group,
    InputMod,
    ParamMod,
    ParamPrimitive,
    Stabilizer,
    Term,
    check_number,
    check_zero_params,
    divide,
    expand,
    stabilize,
)

__all__ = [
    "ElementwiseRule",
    "Group",
    "InputMod",
    "LinearRule",
    "ModuleCall",
    "ParamMod",
    "ParamPrimitive",
    "Rule",
    "Stabilizer",
    "Term",
    "check_number",
    "check_zero_params",
    "concrete_value",
    "divide",
    "elementwise_rule",
    "expand",
    "fast_path_available",
    "is_differentiated",
    "is_transformed",
    "lrp_backward",
    "modified_gradient",
    "no_transform_active",
    "only_rule_level",
    "reference_path",
    "replace_gradient",
    "rules_at_this_level",
    "scale_gradient",
    "stabilize",
    "stop_gradient",
    "uses_reference",
]
