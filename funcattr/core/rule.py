"""The rule base classes: :class:`Rule`, :class:`LinearRule` and :class:`ElementwiseRule`.

A rule is a frozen value. ``functionalize`` replaces each ruled module's call by
``rule.apply(module, forward, *args, **kwargs)``, where ``forward`` is the call site
(:class:`~funcattr.core.call.ModuleCall`): calling it runs the module's ordinary forward. The
result must have the value of ``forward(*args, **kwargs)``; its gradient is the rule's.

- :class:`LinearRule`: the LRP rules, given as groups of terms (:mod:`funcattr.core.terms`);
  the reference rule (:mod:`funcattr.core.reference`) computes them for any module, and the
  fast path (:mod:`funcattr.core._fast`, if present) takes over where it covers a call,
  unless :func:`funcattr.core.reference_path` says otherwise.
- :class:`ElementwiseRule`: rules that map the output gradient directly (``Pass``, the
  modified-ReLU rules, the identity rule of AttnLRP).
- :class:`Rule` itself: anything else, e.g. a rule on a module that takes several tensors or
  returns a tuple (multi-head attention); such a rule writes :meth:`Rule.apply` with the
  Functions of :mod:`funcattr.core.functions` (see ``docs/rules.md``).

Rules never store anything on themselves: what the machinery derives for a call site lives
in the call site's ``memo``, which ``functionalize``'s result owns.
"""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar

from torch import Tensor, nn

from funcattr.core import functions
from funcattr.core.call import ModuleCall, describe_arguments, describe_value
from funcattr.core.functions import elementwise_rule
from funcattr.core.reference import reference_rule
from funcattr.core.switch import uses_reference
from funcattr.core.terms import Group, Stabilizer, check_zero_params, normalize_zero_params

try:  # the fast path is optional: without it every rule runs on the reference path
    import funcattr.core._fast as _fast
except ModuleNotFoundError as error:  # pragma: no cover - exercised by deleting the folder
    if error.name != "funcattr.core._fast":
        raise
    _fast = None

__all__ = [
    "ElementwiseRule",
    "LinearRule",
    "Rule",
    "fast_path_available",
    "replace_gradient",
    "rule_error",
    "scale_gradient",
    "stop_gradient",
]


def fast_path_available() -> bool:
    """Whether the fast path is installed (``funcattr/core/_fast``)."""
    return _fast is not None


def scale_gradient(x: Tensor, factor: float | Tensor, *, fresh: bool = False) -> Tensor:
    """``x`` whose gradient, at the level the rules act on, is ``factor * grad``.

    For rules that write their own :meth:`Rule.apply` (AttnLRP's uniform rule: the gradients
    of q and k times 1/4, of v times 1/2). ``factor`` is a number or a tensor that broadcasts
    to ``x`` (one factor per slice of a packed projection). At other levels (an outer
    ``torch.func.grad`` of an explanation) the gradient is the true one. The fast path returns
    ``x.detach()`` for 0 and a hooked view otherwise where nothing else differentiates ``x``
    (``fresh=True``, for a tensor the rule's module just made and nothing else holds, such as
    its output: ``x`` itself hooked, without the view); the reference path always uses the
    Function :func:`funcattr.core.functions.scale_gradient`.

    Examples
    --------
    >>> query = scale_gradient(query, 0.25)                          # doctest: +SKIP
    """
    if _fast is not None and not uses_reference():
        return _fast.scale_gradient(x, factor, fresh=fresh)
    return functions.scale_gradient(x, factor)


def replace_gradient(x: Tensor, y: Tensor, backward: Callable[..., Tensor],
                     *tensors: Tensor | None) -> Tensor:
    """``y`` whose gradient with respect to ``x`` is ``backward(x, None, tensors, grad)``.

    :func:`funcattr.core.functions.modified_gradient` for a ``backward`` that does not read
    ``y`` (it gets ``None``): on the fast path, plain tensors need no copy of ``y`` and a
    light Function (AttnLRP's LayerNorm rule, called dozens of times per explanation).
    """
    if _fast is not None and not uses_reference():
        return _fast.replace_gradient(x, y, backward, *tensors)
    return functions.modified_gradient(x, y, _ignoring_output(backward), *tensors)


def _ignoring_output(backward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def without_output(x: Tensor, y: Tensor | None, tensors: tuple, grad: Tensor) -> Tensor:
        return backward(x, None, tensors, grad)

    return without_output


def stop_gradient(x: Tensor) -> Tensor:
    """``x`` whose gradient is stopped at the level the rules act on (CP-LRP's constant
    attention): :func:`scale_gradient` with factor 0, so an outer ``torch.func.grad`` of an
    explanation still sees the true derivative; a plain attribution skips the stopped branch.
    """
    return scale_gradient(x, 0.0)


class Rule(ABC):
    """A rule: how one module call changes its gradient. Rules are frozen dataclasses.

    Subclasses implement :meth:`apply` and may override :meth:`check`, which reports why the
    rule cannot be applied to a module (``None`` when it can). The resolver calls ``check``
    for the whole model and reports every problem at once.
    """

    requires: ClassVar[tuple[str, ...]] = ()

    def check(self, module: nn.Module) -> str | None:
        """Return a description of why this rule cannot handle ``module``, or ``None``."""
        missing = [
            name for name in self.requires if not isinstance(getattr(module, name, None), Tensor)
        ]
        if missing:
            return f"needs the parameter(s) {', '.join(missing)}, which the module lacks"
        return None

    @abstractmethod
    def apply(self, module: nn.Module, forward: Callable[..., Any], *args, **kwargs) -> Any:
        """Compute ``forward(*args, **kwargs)`` so that its gradient follows the rule.

        Parameters
        ----------
        module : torch.nn.Module
            The module being called; its parameters are the ones of this call.
        forward : ModuleCall
            The call site: the module's ordinary forward (see :class:`ModuleCall`).
        *args, **kwargs
            The call's arguments, any number of tensors and others; the result may be
            anything the module returns (a tensor, a tuple).
        """


def rule_error(rule: Rule, module: nn.Module, forward: Any, args: tuple,
               kwargs: Mapping[str, Any], problem: str) -> str:
    """A message for a call ``rule`` cannot handle, naming the rule, the module's type and
    path, and the call's arguments: ``<rule> on <Type> '<path>' called with (<arguments>):
    <problem>``, where ``problem`` says what was expected, what came and the fix."""
    where = forward.where() if isinstance(forward, ModuleCall) else type(module).__name__
    return (f"{_short_repr(rule)} on {where} called with "
            f"{describe_arguments(args, kwargs)}: {problem}")


def _short_repr(rule: Rule) -> str:
    """``repr(rule)`` with tensors shown by their shape (ZBox bounds)."""
    if not dataclasses.is_dataclass(rule):
        return repr(rule)
    shown = ", ".join(f"{field.name}={describe_value(getattr(rule, field.name))}"
                      for field in dataclasses.fields(rule) if field.repr)
    return f"{type(rule).__name__}({shown})"


def _first_tensor(rule: Rule, module: nn.Module, forward: Any, args: tuple,
                  kwargs: Mapping[str, Any]) -> Tensor:
    x = args[0] if args else None
    if not isinstance(x, Tensor):
        got = type(x).__name__ if args else "no positional arguments"
        raise TypeError(rule_error(
            rule, module, forward, args, kwargs,
            f"expected a tensor as the first positional argument, got {got}. Call the module "
            f"with its input tensor first, or give it a rule written for this call (a Rule "
            f"subclass with its own apply)."))
    return x


_OTHER_RULE = ("Give this module no rule, or a rule written for its outputs (a Rule subclass "
               "with its own apply; see docs/rules.md).")
_NOT_LINEAR = "is not linear in its input; LRP rules of this kind need a linear layer"


class LinearRule(Rule):
    """Base of the LRP rules: a rule given by its :class:`Group` s of :class:`Term` s.

    Subclasses define :meth:`groups` and a ``stabilizer`` field; ``zero_params`` (if present)
    names parameters that every term sets to zero. The rule modifies the gradient of the
    module's first positional argument (a tensor); further arguments are held constant and
    get no gradient through the rule. The module must return one tensor.
    """

    stabilizer: Any
    zero_params: Any = None

    @abstractmethod
    def groups(self) -> tuple[Group, ...]:
        """The rule's groups of terms."""

    def stabilizer_fn(self) -> Callable[[Tensor], Tensor]:
        return Stabilizer.ensure(self.stabilizer, owner=type(self).__name__, name="stabilizer")

    def check_settings(self) -> None:
        """Check the shared settings at construction (call it in ``__post_init__``): the
        stabilizer (a number ``>= 0`` or a callable) and the kind of ``zero_params`` (whether
        the names exist is checked when the rule meets its layer, by :meth:`check`)."""
        self.stabilizer_fn()
        check_zero_params(self.zero_params, type(self).__name__)

    def zeroed(self) -> tuple[str, ...]:
        """The parameters every term sets to zero (``zero_params`` as a tuple)."""
        return normalize_zero_params(self.zero_params)

    def check(self, module: nn.Module) -> str | None:
        from funcattr import types  # local: types imports torchvision, keep core import light

        if isinstance(module, types.Activation | types.MaxPool) or isinstance(
            module, nn.Softmax | nn.LogSoftmax | nn.Dropout
        ):
            return _NOT_LINEAR
        # a typo in zero_params would silently zero nothing; a module without parameters
        # has nothing to zero anyway (Zennit's composites name 'bias' for pooling layers too)
        unknown = [name for name in self.zeroed()
                   if module._parameters and name not in module._parameters]
        if unknown:
            own = ", ".join(repr(name) for name in module._parameters) or "none"
            close = difflib.get_close_matches(unknown[0], list(module._parameters), n=1)
            fix = f"zero_params={close[0]!r}" if close else "names from its parameters"
            return (f"zero_params names {', '.join(repr(name) for name in unknown)}, which is "
                    f"not a parameter of the module (its parameters: {own}); use {fix}")
        return super().check(module)

    def check_input(self, x: Tensor) -> str | None:
        """Why this rule cannot take ``x`` as the module's input (``None`` when it can):
        ``'expected ..., got .... <fix>.'``; checked in the forward pass, before any backward
        (e.g. ZBox's bounds)."""
        return None

    def apply(self, module: nn.Module, forward: Callable[..., Any], *args, **kwargs) -> Tensor:
        if not isinstance(forward, ModuleCall):
            raise TypeError(
                f"{self!r}.apply(forward={type(forward).__name__}): expected the call site "
                f"that funcattr.functionalize passes, got {type(forward).__name__}. Apply rules "
                f"through functionalize(model, composite) and call the functionalized model."
            )
        x = _first_tensor(self, module, forward, args, kwargs)
        problem = self.check_input(x)
        if problem is not None:
            raise ValueError(rule_error(self, module, forward, args, kwargs, problem))
        output = forward(*args, **kwargs)
        if not isinstance(output, Tensor):
            raise TypeError(rule_error(
                self, module, forward, args, kwargs,
                f"expected a module that returns one tensor, got {type(output).__name__}. "
                f"{_OTHER_RULE}"))
        if _fast is not None and not uses_reference():
            result = _fast.linear_rule(self, forward, x, output, args[1:], kwargs)
            if result is not None:
                return result
        return reference_rule(self.groups(), self.stabilizer_fn(), self.zeroed(), forward, x,
                              output, args[1:], kwargs)


def _checked_forward(rule: ElementwiseRule, module: nn.Module, forward: Callable[..., Any],
                     args: tuple, kwargs: Mapping[str, Any], x: Tensor) -> Tensor:
    """``forward(x, *rest)``, which an element-wise rule needs to return one tensor shaped
    like ``x``."""
    y = forward(x, *args[1:], **kwargs)
    if not isinstance(y, Tensor):
        raise TypeError(rule_error(
            rule, module, forward, args, kwargs,
            f"expected a module that returns one tensor shaped like its input, got "
            f"{type(y).__name__}. {_OTHER_RULE}"))
    if y.shape != x.shape:
        raise ValueError(rule_error(
            rule, module, forward, args, kwargs,
            f"expected a module whose output has the shape of its input {tuple(x.shape)}, got "
            f"{tuple(y.shape)}. Give this module another rule (e.g. Epsilon())."))
    return y


class ElementwiseRule(Rule):
    """Base of the rules that map the output gradient directly: ``R_in = backward(x, R_out)``.

    The module must keep the shape of its first argument (an activation, BatchNorm for
    ``Pass``); the result's value is the module's output, and its gradient with respect to
    the first argument is :meth:`backward`'s. Set the class variable ``reads_input = False``
    when :meth:`backward` ignores its input: it then gets ``None``, and an in-place module
    (``ReLU(inplace=True)``) may overwrite its input as in the original model. Set
    ``reads_output = True`` when it needs the module's output: it is then called as
    ``backward(input, grad_output, output)`` (AttnLRP's identity rule, ``grad * f(x) / x``).

    Examples
    --------
    >>> @dataclass(frozen=True)                                        # doctest: +SKIP
    ... class HalfPass(ElementwiseRule):
    ...     reads_input: ClassVar[bool] = False
    ...
    ...     def backward(self, input, grad_output):
    ...         return 0.5 * grad_output
    """

    reads_input: ClassVar[bool] = True
    reads_output: ClassVar[bool] = False

    @abstractmethod
    def backward(self, input: Tensor | None, grad_output: Tensor, *output: Tensor) -> Tensor:
        """The input gradient from the output gradient (``input`` is ``None`` unless
        ``reads_input``); ``grad_output`` is shaped like the input; the module's output follows
        when ``reads_output``."""

    def apply(self, module: nn.Module, forward: Callable[..., Any], *args, **kwargs) -> Tensor:
        x = args[0] if args else None
        if not isinstance(x, Tensor):
            _first_tensor(self, module, forward, args, kwargs)  # raises
        checked = partial(_checked_forward, self, module, forward, args, kwargs)
        in_place = getattr(module, "inplace", None) is True
        rule = _fast.elementwise_rule if _fast is not None and not uses_reference() else (
            elementwise_rule)
        return rule(x, checked, self.backward, self.reads_input, in_place, self.reads_output)
