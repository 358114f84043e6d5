"""Explanations inside the metrics: ``explain(input, target) -> attribution``.

Any callable of that form works; :func:`explainer` builds one from a model and a funcattr
attributor. The randomisation metrics also pass ``params=``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from funcattr.attribution import gradient, in_fast_layout, one_hot
from funcattr.attribution.options import chunk_ranges
from funcattr.attribution.targets import check_target
from funcattr.functional import functionalize
from funcattr.metrics.scores import Params

__all__ = ["Explain", "Explainer", "accepts_params", "call_explain", "chunked_explain",
           "explainer"]


class Explain(Protocol):
    """``explain(input, target) -> attribution`` (shaped like ``input``), optionally with
    ``params=``."""

    def __call__(self, input: Tensor, target: Tensor, /) -> Tensor: ...


def call_explain(explain: Callable, input: Tensor, target: Tensor, owner: str,
                 params: Params | None = None) -> Tensor:
    """Run ``explain`` and check that it returned one attribution per sample."""
    if params is None:
        attribution = explain(input, target)
    else:
        attribution = explain(input, target, params=params)
    if isinstance(attribution, tuple) and len(attribution) == 2:  # (output, attribution)
        attribution = attribution[1]
    if not isinstance(attribution, Tensor) or attribution.shape[:1] != input.shape[:1]:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else type(
            attribution).__name__
        raise ValueError(
            f"{owner}(explain=...): expected explain(input, target) to return an attribution "
            f"with the batch size {input.shape[0]} first, got {got}. Return one attribution "
            f"per sample (or (output, attribution))."
        )
    if (attribution.is_floating_point() or attribution.is_complex()) and not bool(
            torch.isfinite(attribution.detach()).all()):
        raise ValueError(
            f"{owner}(explain=...): expected finite attributions from explain(input, target), "
            f"got NaN or infinity. Fix the explanation method (e.g. a stabilizer > 0 for LRP "
            f"rules), or clean its result (torch.nan_to_num)."
        )
    return attribution.detach()


def chunked_explain(explain: Callable, input: Tensor, target: Tensor, chunk_size: int | None,
                    owner: str, params: Params | None = None) -> Tensor:
    """:func:`call_explain` on ``chunk_size`` samples at a time."""
    parts = [call_explain(explain, input[start:stop], target[start:stop], owner, params)
             for start, stop in chunk_ranges(input.shape[0], chunk_size)]
    return torch.cat(parts)


def accepts_params(explain: Callable) -> bool:
    """Whether ``explain`` takes a ``params`` keyword."""
    try:
        signature = inspect.signature(explain)
    except (TypeError, ValueError):
        return False
    return "params" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )


class Explainer:
    """``explain(input, target, params=None) -> attribution`` from a funcattr attributor.

    Built by :func:`explainer`; ``params`` replaces the model's parameters for one call (the
    randomisation metrics use this), nothing is stored between calls.
    """

    def __init__(self, fn: Callable, params: dict[str, Tensor], method: Callable,
                 times_output: bool, options: dict[str, Any], name: str) -> None:
        self.fn = fn
        self.params = params
        self.method = method
        self.times_output = times_output
        self.options = options
        self.name = name

    def __call__(self, input: Tensor, target: Tensor, params: Params | None = None) -> Tensor:
        target = check_target(target, input.shape[0], self.name)
        seed = one_hot(target, times_output=self.times_output)
        params = self.params if params is None else params

        def attribute(view: Tensor) -> Tensor:
            return self.method(self.fn, params, view, seed, **self.options)[1]

        # channels-last images: the demo CNN's explanations take 15% less time
        return in_fast_layout(attribute, input.detach()).detach().contiguous()

    def __repr__(self) -> str:
        return self.name


def explainer(model: Any, composite: Any = None, *, method: Callable | None = None,
              params: Params | None = None, canonizers: Any = None, times_output: bool = False,
              **options: Any) -> Explainer:
    """Build ``explain(input, target, params=None)`` from a model and a funcattr attributor.

    Parameters
    ----------
    model : nn.Module or callable
        An ``nn.Module`` (functionalized with ``composite`` and ``canonizers``; never changed)
        or a pure ``fn(params, input)`` such as the ``fn`` of :func:`funcattr.functionalize`,
        with ``params``.
    composite : Composite or str, optional
        The LRP composite for an ``nn.Module`` (``None``: the plain gradient).
    method : callable, optional
        A pure attributor ``method(fn, params, input, attr_output_fn, **options) -> (output,
        attribution)``; :func:`funcattr.gradient` by default (``smooth_grad``,
        ``integrated_gradients``, the ``function`` of any
        :data:`funcattr.attribution.ATTRIBUTORS` spec).
    params : dict of str to Tensor, optional
        The parameters of a pure ``fn``.
    canonizers : Canonizer or sequence, optional
        Extra canonizers for an ``nn.Module``.
    times_output : bool
        Seed with ``output * one_hot(target)`` (Zennit's relevance convention) instead of
        ``one_hot(target)``.
    **options
        Passed to ``method`` (e.g. ``n_iter=``, ``generator=``, ``chunk_size=``).

    Returns
    -------
    Explainer
        ``explain(input, target, params=None) -> attribution``.

    Examples
    --------
    >>> explain = explainer(model, "epsilon_plus_flat")              # doctest: +SKIP
    >>> curves = pixel_flipping(model, x, target, explain(x, target))  # doctest: +SKIP
    """
    if isinstance(model, nn.Module):
        fn, own = functionalize(model, composite, canonizers)
        params = own if params is None else dict(params)
    elif callable(model):
        if composite is not None or canonizers is not None:
            raise ValueError(
                "explainer(composite=...): expected no composite for a pure fn(params, input), "
                "got one; a composite applies to an nn.Module. Functionalize the model with it "
                "instead and pass fn, params=params."
            )
        if params is None:
            raise TypeError(
                f"explainer(model={type(model).__name__}, params=None): a pure fn(params, input) "
                f"needs its params; expected a dict, got None. Pass params=..."
            )
        fn, params = model, dict(params)
    else:
        raise TypeError(
            f"explainer(model={type(model).__name__}): expected an nn.Module or fn(params, "
            f"input), got {type(model).__name__}. Pass the model."
        )
    method = gradient if method is None else method
    if not callable(method):
        raise TypeError(
            f"explainer(method={method!r}): expected a callable attributor, got "
            f"{type(method).__name__}. Pass e.g. method=funcattr.attribution.smooth_grad."
        )
    name = getattr(method, "__name__", type(method).__name__)
    if composite is not None:
        name += f"[{composite if isinstance(composite, str) else type(composite).__name__}]"
    return Explainer(fn, params, method, times_output, options, name)
