"""``functionalize``: a model with rules applied, as a pure function of (params, input).

The user's model is never changed. ``functionalize`` canonizes a *view* of the model, resolves
the composite's rules on it, and returns the :class:`~funcattr.ruled.FunctionalModel` that
runs a private ruled copy of the view (:mod:`funcattr.ruled`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from funcattr.canonizers import Canonizer, CompositeCanonizer, identity_transform
from funcattr.checks import (
    check_argument,
    find_problems,
    report_problems,
    training_problems,
)
from funcattr.composites import (
    COMPOSITES,
    Composite,
    assign_rules,
    get_composite,
    required_arguments,
    suggest_composites,
)
from funcattr.ruled import FunctionalModel, LiveModel, ParamKeys, model_params

__all__ = ["FunctionalModel", "RuledModule", "functionalize", "model_params"]


def _canonizer_list(value: Any, owner: str) -> tuple[Canonizer, ...]:
    if value is None:
        return ()
    if isinstance(value, Canonizer):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        items = tuple(value)
        for item in items:
            if not isinstance(item, Canonizer):
                raise TypeError(
                    f"{owner}(canonizers=...): expected Canonizer instances, got "
                    f"{type(item).__name__}. Pass e.g. canonizers=[SequentialMergeBatchNorm()]."
                )
        return items
    raise TypeError(
        f"{owner}(canonizers={value!r}): expected a Canonizer or a list of Canonizers, got "
        f"{type(value).__name__}."
    )


def _resolve_composite(composite: Any, owner: str) -> Composite | None:
    if composite is None or isinstance(composite, Composite):
        return composite
    if isinstance(composite, str):
        if composite not in COMPOSITES:
            raise ValueError(
                f"{owner}(composite={composite!r}): expected a registered composite name, got "
                f"an unknown one; registered names are {', '.join(sorted(COMPOSITES))}."
                f"{suggest_composites(composite)}"
            )
        required = required_arguments(composite)
        if required:
            arguments = ", ".join(f"{name}=..." for name in required)
            raise TypeError(
                f"{owner}(composite={composite!r}): this composite needs arguments "
                f"({', '.join(required)}), which a name cannot carry; pass an instance, e.g. "
                f"composite=funcattr.composites.get_composite({composite!r}, {arguments})."
            )
        return get_composite(composite)
    raise TypeError(
        f"{owner}(composite={composite!r}): expected a Composite, a registered name such as "
        f"'epsilon_plus', or None, got {type(composite).__name__}."
    )


def functionalize(
    model: nn.Module,
    composite: Composite | str | None = None,
    canonizers: Canonizer | Sequence[Canonizer] | None = None,
    *,
    check: str = "warn",
) -> tuple[FunctionalModel, dict[str, Tensor]]:
    """Turn ``model`` with ``composite``'s rules into a pure function and its params.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is never changed (parameters, buffers, hooks and training flag).
    composite : Composite or str, optional
        The rules to apply (a registry name is instantiated with its defaults).
    canonizers : Canonizer or sequence of Canonizer, optional
        Applied after the composite's own canonizers.
    check : {'warn', 'raise', 'ignore'}
        The model check (:mod:`funcattr.checks`): modules the composite leaves unruled
        although their gradient is not a relevance rule (LayerNorm, attention, GELU, LSTM,
        ...), rules that never run (``MultiheadAttention.out_proj``), an un-canonized
        BatchNorm/residual model with a known canonizer, and (also without a composite)
        dropout or batch norm in training mode (call ``model.eval()``). All problems are
        reported in one :class:`funcattr.ModelCheckWarning` (``'warn'``) or ``ValueError``
        (``'raise'``).

    Returns
    -------
    fn : FunctionalModel
        ``fn(params, input)`` computes ``model(input)``; its gradient (``torch.func.vjp``,
        ``torch.autograd``) is the composite's modified gradient.
    params : dict of str to Tensor
        The model's parameters and buffers, detached, sharing storage with the model.

    Examples
    --------
    >>> fn, params = functionalize(model, EpsilonPlusFlat())          # doctest: +SKIP
    >>> output, relevance = gradient(fn, params, x, one_hot(target))   # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"functionalize(model={type(model).__name__}): expected a torch.nn.Module."
        )
    check = check_argument(check, "functionalize")
    composite = _resolve_composite(composite, "functionalize")
    chain = (composite.canonizers if composite is not None else ()) + _canonizer_list(
        canonizers, "functionalize"
    )
    view, transform = model, identity_transform
    if chain:
        view, transform = CompositeCanonizer(chain).apply(model)
    rules = assign_rules(view, composite)
    form = composite.form if composite is not None else "gradient_x_input"
    if check != "ignore":
        owner = (f"functionalize(model={type(model).__name__}, composite="
                 f"{type(composite).__name__ if composite is not None else None})")
        if composite is None:  # no rules to check; a model in training mode still is wrong
            report_problems(training_problems(model), owner, check, subject="attribution")
        else:
            report_problems(find_problems(model, view, rules, form, bool(chain)), owner, check)
    params = model_params(model)
    return FunctionalModel(view, rules, transform, params, ParamKeys.of(model), form=form), params


class RuledModule(LiveModel):
    """A module computing ``model(input)`` with ``composite``'s rules; ``model`` is unchanged.

    It computes with the model's own (live) parameters (:class:`~funcattr.ruled.LiveModel`),
    so it can stand in for the model in Zennit-style code.
    """

    def __init__(self, model: nn.Module, composite: Composite | None,
                 canonizers: Sequence[Canonizer] | None = None) -> None:
        super().__init__(model, functionalize(model, composite, canonizers)[0])
